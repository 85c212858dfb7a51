"""The fit pipeline: fixed-size feature sampling, k-means + MuLan RVQ, a loadable bundle."""

from __future__ import annotations

import json

import apache_beam as beam
import numpy as np
import pytest
import torch
from apache_beam.testing.util import assert_that
from musiclm.pipelines import fit_cli
from musiclm.pipelines.fit import ReservoirCombineFn, bundle_spec
from musiclm.tokenizers.bundle import load_bundle, load_component
from musiclm.tokenizers.contract import TokenSpec

from .conftest import FAST_BEAM, TINY_SPEC


def test_reservoir_sample_is_fixed_size_and_made_of_input_rows():
    batches = [(i + np.arange(150).reshape(50, 3) / 1000).astype(np.float32) for i in range(40)]
    seen = {tuple(row) for batch in batches for row in batch}

    def check(outputs):
        (sample,) = outputs
        assert sample.shape == (300, 3)
        assert all(tuple(row) in seen for row in sample)
        assert len({tuple(row) for row in sample}) == 300  # without replacement
        # Rows come from across the stream, not only its head.
        assert len(np.unique(sample[:, 0].astype(int))) > 30

    with beam.Pipeline(argv=FAST_BEAM) as pipeline:
        sample = (
            pipeline
            | beam.Create(batches, reshuffle=False)
            | beam.CombineGlobally(ReservoirCombineFn(capacity=300, seed=0))
        )
        assert_that(sample, check)


def test_reservoir_keeps_everything_when_the_stream_is_small():
    fn = ReservoirCombineFn(capacity=100, seed=0)
    acc = fn.add_input(fn.create_accumulator(), np.ones((10, 4), np.float32))
    acc = fn.merge_accumulators([acc, None, fn.add_input(None, np.zeros((5, 4), np.float32))])
    assert fn.extract_output(acc).shape == (15, 4)


@pytest.mark.slow
def test_fit_writes_a_bundle_that_tokenizes(tiny_bundle, tiny_components, demo_music):
    bundle = load_bundle(tiny_bundle)  # re-hashes the files against bundle.json
    manifest = json.loads((tiny_bundle / "bundle.json").read_text())
    assert manifest["components"] == {
        "codec": "soundstream",
        "semantic": "semantic",
        "mulan": "mulan",
    }
    assert manifest["configs"]["fit"]["semantic_sample_frames"] == 5000  # configs/.../tiny.yaml
    assert bundle.spec == TINY_SPEC
    wav = np.random.default_rng(0).normal(0, 0.1, (2, 4 * TINY_SPEC.sample_rate)).astype(np.float32)

    semantic = bundle.semantic.encode(torch.from_numpy(wav))
    assert semantic.shape == (2, 100) and semantic.min() >= 0 and semantic.max() < 16
    # The centroids were fitted: more than one cluster is used on real-ish audio.
    mulan = bundle.mulan.audio_tokens(torch.from_numpy(wav))
    assert mulan.shape == (2, TINY_SPEC.mulan_levels)
    # The untouched codec is saved as it was.
    codec = load_component(tiny_components["codec"])
    for (name, a), b in zip(
        codec.state_dict().items(), bundle.codec.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_bundle_spec_takes_each_field_from_its_component(tiny_components):
    codec = load_component(tiny_components["codec"])
    mulan = load_component(tiny_components["mulan"])
    semantic = type("Semantic", (), {"spec": TokenSpec(semantic_vocab=512)})()
    spec = bundle_spec(codec, semantic, mulan)
    assert spec.semantic_vocab == 512  # from the semantic tokenizer
    assert (spec.acoustic_levels, spec.acoustic_codebook_size) == (4, 64)  # from the codec
    assert (spec.mulan_dim, spec.coarse_levels) == (16, 2)  # from MuLan
    # a codec of another hop (EnCodec: 320, 75 Hz) gives 3 acoustic frames per semantic one
    encodec_like = type("Codec", (), {"sample_rate": 24_000, "hop": 320, "num_levels": 8,
                                      "codebook_size": 1024})()  # fmt: skip
    assert bundle_spec(encodec_like, semantic, mulan).acoustic_per_semantic == 3


def test_components_that_do_not_fit_together_are_refused(tiny_components):
    codec = load_component(tiny_components["codec"])
    mulan = load_component(tiny_components["mulan"])
    other_rate = type("Semantic", (), {"spec": TokenSpec(sample_rate=16_000, acoustic_hop=320)})()
    with pytest.raises(ValueError, match="sample rates codec 24000 Hz, semantic tokenizer 16000"):
        bundle_spec(codec, other_rate, mulan)
    odd_rate = type("Semantic", (), {"spec": TokenSpec(semantic_rate=30, acoustic_hop=400)})()
    with pytest.raises(ValueError, match="do not make one token spec: semantic_rate 30"):
        bundle_spec(codec, odd_rate, mulan)


def test_missing_component_names_the_fix(tmp_path, demo_music):
    with pytest.raises(SystemExit, match="train-tokenizer"):
        fit_cli.main(
            ["--dataset", str(demo_music), "--runs", str(tmp_path), "--out", str(tmp_path / "b")]
        )
