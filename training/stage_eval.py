"""Held-out evaluation of a trained stage: its loss next to unigram baselines, and what its
conditioning is worth.

    python -m musiclm.training.stage_eval runs/coarse --heldout runs/tokens/heldout \
        --train runs/tokens/train [--out runs/eval/stage-coarse.json]

``runs/coarse`` is a run folder (its newest ``last*.ckpt``, else its newest ``.ckpt``) or a
``.ckpt`` file.
Every clip of ``--heldout`` is scored once, on its first crop of the stage's training crop
length (the stage's validation pass with ``val_fraction = 1``). Prints (and writes) JSON:

* ``loss``: mean next-token cross entropy (nats per target token) with each clip's own
  conditioning; ``loss_null`` with the null conditioning, ``loss_shuffled_mulan`` with the
  MuLan tokens of another clip, and for coarse ``loss_shuffled_semantic`` with another
  clip's semantic tokens (lower own-conditioning loss = the conditioning is used);
* ``heldout_unigram_entropy``: entropy of the held-out targets' own unigram distribution per
  level (an oracle baseline: it knows the held-out counts), and
  ``train_unigram_cross_entropy``: what the training split's unigram distribution (add-one
  smoothed) scores on them -- the fair baseline a model must beat to have learnt context;
* ``uniform``: the loss of a uniform guess over each level's ids.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from musiclm.training.checkpoints import newest_checkpoint
from musiclm.training.layout import TokenLayout
from musiclm.training.shard_data import StageData, stage_data
from musiclm.training.stage_registry import STAGES
from musiclm.training.stage_registry import crop_seconds as crop_seconds_of
from musiclm.training.stages import StageCheckpointError, stage_module


def level_counts(batches: Iterable[dict[str, Any]], layout: TokenLayout) -> list[Counter]:
    """Per target level, how often each token id occurs as a target in ``batches``
    (``{"tokens", "levels"}`` [B, T] as the stage data modules yield them)."""
    counts = [Counter() for _ in range(layout.num_target_levels)]
    for batch in batches:
        for level, counter in enumerate(counts):
            counter.update(batch["tokens"][batch["levels"] == level].tolist())
    return counts


def unigram_baselines(
    held: list[Counter], train: list[Counter], layout: TokenLayout
) -> tuple[float, float]:
    """(entropy of the held-out targets' own unigram distribution, cross entropy of the
    training targets' add-one smoothed unigram distribution on them), in nats per held-out
    target token, each level scored over its own id range."""
    entropy = cross = 0.0
    for level, (h, t) in enumerate(zip(held, train, strict=True)):
        start, stop = layout.target_range(level)
        n_h, n_t = sum(h.values()), sum(t.values())
        entropy -= sum(c * math.log(c / n_h) for c in h.values())
        cross -= sum(c * math.log((t[tok] + 1) / (n_t + stop - start)) for tok, c in h.items())
    n = sum(sum(h.values()) for h in held)
    if n == 0:
        raise ValueError("no held-out target tokens to score")
    return entropy / n, cross / n


def find_checkpoint(path: str | Path) -> Path:
    """``path`` if it is a file, else the run folder's newest checkpoint (``newest_checkpoint``)."""
    path = Path(path)
    found = path if path.is_file() else newest_checkpoint(path)
    if found is None:
        raise StageCheckpointError(f"no checkpoint under {path}; pass a .ckpt file or a run folder")
    return found


def evaluate_stage(
    checkpoint: str | Path,
    heldout: str | Path,
    train: str | Path,
    crop_seconds: float | None = None,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Scores of the stage in ``checkpoint`` on every clip of ``heldout`` (see the module
    docstring); ``train`` is the tokens root its unigram baseline is counted on (the first
    crop of every clip). ``crop_seconds`` defaults to the stage's training crop."""
    path = find_checkpoint(checkpoint)
    info = torch.load(path, map_location="cpu", weights_only=True).get("musiclm") or {}
    if info.get("stage") not in STAGES:
        raise StageCheckpointError(f"{path} is not a MusicLM stage checkpoint")
    module = stage_module(info["stage"]).load_from_checkpoint(path, map_location="cpu")
    crop = crop_seconds or crop_seconds_of(info["stage"], info.get("config"))

    def loader(root: str | Path) -> StageData:
        return stage_data(info["stage"])(
            str(root), crop_seconds=crop, batch_size=batch_size, num_workers=0, val_fraction=1.0
        )

    held_data = loader(heldout)
    trainer = pl.Trainer(  # one device: a GPU when there is one
        accelerator="auto",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    (metrics,) = trainer.validate(module, datamodule=held_data, verbose=False)
    layout = held_data.layout
    held_counts = level_counts(held_data.val_dataloader(), layout)
    train_counts = level_counts(loader(train).val_dataloader(), layout)
    entropy, cross = unigram_baselines(held_counts, train_counts, layout)
    start, stop = layout.target_range(0)
    report: dict[str, Any] = {
        "stage": info["stage"],
        "checkpoint": str(path),
        "heldout": str(heldout),
        "crop_seconds": crop,
        "heldout_target_tokens": sum(sum(c.values()) for c in held_counts),
    }
    per_level = {f"val/loss_{name}" for name in layout.level_names}
    for name, value in sorted(metrics.items()):
        if name.startswith("val/loss") and name not in per_level:
            report[name.removeprefix("val/")] = round(float(value), 4)
    report["heldout_unigram_entropy"] = round(entropy, 4)
    report["train_unigram_cross_entropy"] = round(cross, 4)
    report["uniform"] = round(math.log(stop - start), 4)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="stage run folder (its newest checkpoint) or .ckpt file")
    parser.add_argument("--heldout", required=True, help="tokens root of the held-out clips")
    parser.add_argument("--train", required=True, help="tokens root the stage trained on")
    parser.add_argument("--crop-seconds", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    report = evaluate_stage(
        args.checkpoint, args.heldout, args.train, args.crop_seconds, args.batch_size
    )
    emit_json(report, args.out)


def emit_json(report: dict, out: Path | None) -> None:
    """Print ``report`` as indented JSON and, with ``out``, also write it there."""
    text = json.dumps(report, indent=2)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
