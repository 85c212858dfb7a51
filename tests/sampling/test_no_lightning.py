"""Sampling runs on torch alone: loading the stages and generating never imports Lightning."""

from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = """
import json, sys
import torch
from musiclm.sampling.sampler import Sampler

paths = json.loads(sys.argv[1])
sampler = Sampler.from_paths(sys.argv[2], paths)
out = sampler.generate(["a slow organ chorale"], 0.4, seed=0, progress=False)
assert out.audio.shape == (1, round(0.4 * out.sample_rate)), out.audio.shape
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("pytorch_lightning", "lightning"))))
"""


def test_sampler_loads_and_generates_without_importing_lightning(bundle_dir, stage_checkpoints):
    paths = json.dumps({stage: str(path) for stage, path in stage_checkpoints.items()})
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, paths, str(bundle_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == []
