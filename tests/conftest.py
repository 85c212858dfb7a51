"""Shared fixtures: ``demo_music``, a small real-music subset of the demo dataset."""

from __future__ import annotations

import fcntl
import shutil
import time
from pathlib import Path

import pytest
from musiclm.pipelines.demo_data import BUILDER_VERSION, Settings, build_demo, settings_id

CACHE = Path(__file__).parent / ".cache"
# A few pieces of every source, cut to 12 s: about 3.6 minutes of audio.
DEMO_SUBSET = Settings(minutes=60.0, max_pieces=3, max_piece_seconds=12.0, small_scores=True)


@pytest.fixture(scope="session")
def demo_music() -> Path:
    """Path of the demo music subset, with ``train/`` and ``heldout/`` folders.

    Every source of the demo (Bach chorales, folk tunes, string quartets, OpenTTD MIDI,
    Wesnoth and Singularity recordings) has 3 pieces of 12 s: 2 in train, 1 held out;
    each audio file has a sidecar ``.json`` with its caption. Built once into
    ``tests/.cache/demo-subset/<builder version and settings>/`` and reused; a folder is
    never rebuilt in place, so concurrent test runs never see it half-written.
    """
    root = CACHE / "demo-subset"
    root.mkdir(parents=True, exist_ok=True)
    out = root / f"v{BUILDER_VERSION}-{settings_id(DEMO_SUBSET)}"
    with (root / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent test runs share the cache
        build_demo(out, DEMO_SUBSET)
        for old in root.iterdir():  # builds of other versions, unused for a day
            if old.is_dir() and old != out and time.time() - old.stat().st_mtime > 86400:
                shutil.rmtree(old, ignore_errors=True)
    return out
