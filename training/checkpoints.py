"""Finding a run's checkpoint: what ``--ckpt_path last``, the sampler and ``stage_eval`` use."""

from __future__ import annotations

from pathlib import Path


def newest_checkpoint(root: str | Path) -> Path | None:
    """The newest ``last*.ckpt`` under ``root``, else the newest ``*.ckpt``; ``None`` if none."""
    for pattern in ("last*.ckpt", "*.ckpt"):
        found = sorted(Path(root).rglob(pattern), key=lambda p: p.stat().st_mtime)
        if found:
            return found[-1]
    return None
