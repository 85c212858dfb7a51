"""The token contract: derived rates, shapes, sample serialization and stable shard hashing."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from musiclm.tokenizers.contract import (
    TokenSpec,
    decode_sample,
    encode_sample,
    fingerprint_files,
    shard_index,
)


def test_paper_spec_rates_and_shapes():
    spec = TokenSpec()
    assert spec.acoustic_rate == 50 and spec.semantic_rate == 25
    assert spec.acoustic_per_semantic == 2 and spec.fine_levels == 8
    n = spec.clip_samples(30.0)
    assert n == 30 * 24_000
    assert spec.semantic_frames(n) == 750 and spec.acoustic_frames(n) == 1500
    # Any length: acoustic frames are always twice the semantic frames.
    for samples in (1, 959, 960, 12_345, 24_000 * 7 + 17):
        assert spec.acoustic_frames(samples) == 2 * spec.semantic_frames(samples)


@pytest.mark.parametrize(
    "bad",
    [
        {"acoustic_hop": 7},
        {"semantic_rate": 30},
        {"coarse_levels": 12},
        {"semantic_vocab": 70_000},
    ],
)
def test_inconsistent_specs_are_refused(bad):
    with pytest.raises(ValueError):
        TokenSpec(**bad)


def _sample(spec: TokenSpec, frames: int = 10) -> dict:
    rng = np.random.default_rng(0)
    return {
        "semantic": rng.integers(0, spec.semantic_vocab, frames),
        "acoustic": rng.integers(
            0, spec.acoustic_codebook_size, (spec.acoustic_levels, 2 * frames)
        ),
        "mulan": rng.integers(0, spec.mulan_codebook_size, spec.mulan_levels),
        "mulan_emb": rng.standard_normal(spec.mulan_dim),
    }


def test_sample_round_trip_uses_contract_dtypes():
    spec = TokenSpec()
    tokens = _sample(spec)
    raw = encode_sample("piece_001-0000", **tokens, caption="a waltz", meta={"offset": 0.0})
    back = decode_sample(raw)
    spec.check_sample(back)
    assert back["semantic"].dtype == np.int16 and back["mulan_emb"].dtype == np.float16
    np.testing.assert_array_equal(back["acoustic"], tokens["acoustic"])
    assert back["caption"] == "a waltz" and back["meta"] == {"offset": 0.0}


def test_broken_samples_are_named():
    spec = TokenSpec()
    tokens = _sample(spec)
    back = decode_sample(encode_sample("k", **tokens, caption="", meta={}))
    back["acoustic"] = back["acoustic"][:, :-1]
    with pytest.raises(ValueError, match="acoustic frames 19 != 2 x semantic frames 10"):
        spec.check_sample(back)
    with pytest.raises(ValueError, match="must not contain"):
        encode_sample("a.b", **tokens, caption="", meta={})


def test_shard_index_is_stable_across_processes():
    keys = [f"folder/piece-{i}" for i in range(50)]
    here = [shard_index(k, 7) for k in keys]
    script = f"from musiclm.tokenizers.contract import shard_index; print([shard_index(k, 7) for k in {keys!r}])"
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    there = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env
    ).stdout
    assert str(here) == there.strip()
    assert len(set(here)) == 7  # every shard gets sources


def test_fingerprint_follows_file_contents_and_configs(tmp_path):
    (tmp_path / "codec").mkdir()
    (tmp_path / "codec" / "weights.bin").write_bytes(b"\x00" * 10)
    first = fingerprint_files(tmp_path, extra={"size": "tiny"})
    assert first == fingerprint_files(tmp_path, extra={"size": "tiny"})
    assert first != fingerprint_files(tmp_path, extra={"size": "small"})
    (tmp_path / "codec" / "weights.bin").write_bytes(b"\x00" * 9 + b"\x01")
    assert first != fingerprint_files(tmp_path, extra={"size": "tiny"})
