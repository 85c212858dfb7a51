"""A trained stage for inference, loaded from its checkpoint with torch alone.

Stage checkpoints (written by :mod:`musiclm.training.stages`) carry
``checkpoint["musiclm"] = {stage, layout, bundle_fingerprint, transformer, config}`` next to
the Lightning ``state_dict`` (the transformer's weights under ``model.``).
:func:`load_stage` reads them back (``weights_only=True``) without importing Lightning, so
the sampler and generation run on torch and the token layout only.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from musiclm.training.layout import TokenLayout
from musiclm.training.stage_registry import crop_seconds
from musiclm.training.transformer import DecoderTransformer, TransformerConfig


class StageCheckpointError(ValueError):
    """A stage checkpoint that does not fit the data, bundle or stage it is used with."""


@dataclasses.dataclass
class StageModel:
    """One trained stage: the transformer (eval mode), its layout, the bundle fingerprint
    it was trained on, its run ``config`` (None when not recorded), ``crop_frames`` (the
    semantic frames of its training crop: the generation window) and the file it came from."""

    model: DecoderTransformer
    layout: TokenLayout
    bundle_fingerprint: str
    config: dict[str, Any] | None
    crop_frames: int
    path: str = "<in memory>"


def read_stage_info(path: str | Path) -> dict[str, Any]:
    """The ``musiclm`` entry of a stage checkpoint (its stage, layout, fingerprint, ...).

    Raises :class:`StageCheckpointError` naming the file if it is missing or not a stage
    checkpoint.
    """
    return _read(Path(path), "cpu")[1]


def _read(path: Path, device: str | torch.device) -> tuple[dict[str, Any], dict[str, Any]]:
    if not path.is_file():
        raise StageCheckpointError(f"stage checkpoint {path} does not exist")
    checkpoint = torch.load(path, map_location=device, weights_only=True)
    info = checkpoint.get("musiclm")
    if not info or "layout" not in info:
        raise StageCheckpointError(
            f"{path} is not a MusicLM stage checkpoint (no 'musiclm' entry); pass a .ckpt "
            "written by `make train-stage`"
        )
    return checkpoint, info


def load_stage(path: str | Path, device: str | torch.device = "cpu") -> StageModel:
    """Load a stage checkpoint written by the trainers (``weights_only=True``).

    Its window is its training crop (``data.crop_seconds`` of the stored config, else the
    stage's paper crop). Raises :class:`StageCheckpointError` naming the file if it is not
    a stage checkpoint.
    """
    checkpoint, info = _read(Path(path), device)
    layout = TokenLayout.from_dict(info["layout"])
    model = DecoderTransformer(TransformerConfig(**info["transformer"]))
    state = {
        k.removeprefix("model."): v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith("model.")
    }
    model.load_state_dict(state)
    config = info.get("config")
    seconds = crop_seconds(layout.stage, config)
    frames = max(1, round(seconds * layout.spec.semantic_rate))
    return StageModel(
        model.to(device).eval(), layout, info["bundle_fingerprint"], config, frames, str(path)
    )
