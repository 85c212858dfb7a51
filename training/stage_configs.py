"""Where a stage's training config lives: a size file plus a stage overlay.

``configs/stages/<size>.yaml`` holds what every stage of a size shares (trainer, model widths,
data loading); ``configs/stages/<stage>/<size>.yaml`` holds only what that stage changes (its
crop, the fine stage's zero conditioning dropout). The trainer composes them with LightningCLI's
repeated ``--config`` (a later file overrides an earlier one key by key; a list such as
``trainer.callbacks`` is replaced whole)::

    python -m musiclm.training.cli stage-coarse --config configs/stages/small.yaml \\
        --config configs/stages/coarse/small.yaml --data.root runs/tokens
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

# the checkout's configs/stages (this package's directory is the repository root)
STAGE_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "stages"


def stage_config_files(stage: str, size: str, root: Path = STAGE_CONFIGS) -> list[Path]:
    """The files to pass, in order, as ``--config`` for ``stage`` at ``size``: [size, overlay]."""
    files = [root / f"{size}.yaml", root / stage / f"{size}.yaml"]
    for path in files:
        if not (STAGE_CONFIGS / path.relative_to(root)).is_file():
            raise FileNotFoundError(f"no stage config {path} for stage {stage!r} size {size!r}")
    return files


def stage_config_args(stage: str, size: str, root: Path = STAGE_CONFIGS) -> list[str]:
    """``["--config", size_file, "--config", overlay]`` for a ``musiclm.training.cli`` command."""
    return [
        arg for path in stage_config_files(stage, size, root) for arg in ("--config", str(path))
    ]


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on ``base`` as LightningCLI composes config files: dicts key by key, else replace."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_stage_config(stage: str, size: str) -> dict[str, Any]:
    """The composed YAML (size file, then overlay) of ``stage`` at ``size``, as a plain dict."""
    merged: dict[str, Any] = {}
    for path in stage_config_files(stage, size):
        merged = _merge(merged, yaml.safe_load(path.read_text()) or {})
    return merged
