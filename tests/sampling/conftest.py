"""Tiny untrained sampler parts: a tokenizer bundle in memory and stage checkpoints on disk."""

from __future__ import annotations

import pytest
import torch
from musiclm.tokenizers.bundle import TokenizerBundle, load_bundle, write_bundle_manifest
from musiclm.tokenizers.contract import TokenSpec
from musiclm.tokenizers.mulan import MuLanTokenizer
from musiclm.tokenizers.semantic import SemanticTokenizer
from musiclm.tokenizers.soundstream import SoundStream
from musiclm.training.stages import CoarseStage, FineStage, SemanticStage

SPEC = TokenSpec(
    acoustic_levels=4,
    acoustic_codebook_size=16,
    coarse_levels=2,
    semantic_vocab=12,
    mulan_levels=3,
    mulan_codebook_size=8,
)
CAPTIONS = ["a slow organ chorale", "fast piano jazz", "rock guitar with drums", "calm strings"]
STAGE_CLASSES = {"semantic": SemanticStage, "coarse": CoarseStage, "fine": FineStage}


def tiny_codec(spec: TokenSpec) -> SoundStream:
    return SoundStream(
        sample_rate=spec.sample_rate,
        hop=spec.acoustic_hop,
        channels=2,
        dim=8,
        num_levels=spec.acoustic_levels,
        codebook_size=spec.acoustic_codebook_size,
    ).eval()


def tiny_mulan(spec: TokenSpec) -> MuLanTokenizer:
    mulan = MuLanTokenizer.tiny(CAPTIONS, spec)
    gen = torch.Generator().manual_seed(0)
    mulan.set_codebooks(
        torch.randn(spec.mulan_levels, spec.mulan_codebook_size, spec.mulan_dim, generator=gen)
    )
    return mulan.eval()


def save_stage(path, stage: str, spec: TokenSpec, fingerprint: str, crop_seconds: float) -> None:
    """A stage checkpoint as the trainer writes it (``on_save_checkpoint`` + state dict)."""
    module = STAGE_CLASSES[stage](
        dim=32, depth=2, heads=2, ff_dim=64, dropout=0.0,
        token_spec=spec.to_dict(), bundle_fingerprint=fingerprint,
    )  # fmt: skip
    module.run_config = {"data": {"crop_seconds": crop_seconds}}
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)


@pytest.fixture(autouse=True)
def one_thread():
    """Token-by-token decoding of tiny models is latency bound: one thread avoids the
    OpenMP spin-waits that make it ~10x slower on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory):
    """A tokenizer bundle on disk, exactly as `make tokenizers` lays it out (untrained)."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("bundle")
    tiny_codec(SPEC).save(root / "codec")
    semantic = SemanticTokenizer.tiny(SPEC)
    gen = torch.Generator().manual_seed(1)
    semantic.set_centroids(torch.randn(SPEC.semantic_vocab, semantic.dim, generator=gen).numpy())
    semantic.save(root / "semantic")
    tiny_mulan(SPEC).save(root / "mulan")
    write_bundle_manifest(root, SPEC, {"size": "test"})
    return root


@pytest.fixture(scope="session")
def tiny_bundle(bundle_dir) -> TokenizerBundle:
    return load_bundle(bundle_dir)


@pytest.fixture(scope="session")
def stage_checkpoints(tmp_path_factory, tiny_bundle) -> dict:
    """Checkpoints with 2 s / 1 s / 0.6 s crops (windows) so short clips need several windows."""
    root = tmp_path_factory.mktemp("stages")
    crops = {"semantic": 2.0, "coarse": 1.0, "fine": 0.6}
    paths = {}
    for i, stage in enumerate(("semantic", "coarse", "fine")):
        torch.manual_seed(10 + i)
        paths[stage] = root / stage / "checkpoints" / "last.ckpt"
        paths[stage].parent.mkdir(parents=True)
        save_stage(paths[stage], stage, SPEC, tiny_bundle.fingerprint, crops[stage])
    return paths
