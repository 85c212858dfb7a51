"""Token datasets in the exact shard contract, for the stage trainer tests.

Until real tokenized music is at hand these are written from *structured* random tokens:
each source has a style; its MuLan tokens name the style, its semantic ids follow a
style-specific Markov chain, its first RVQ level lies in a style-specific quarter of the
codebook at an offset given by the semantic id, each further level lies in the same quarter
at an offset given by the level before, and every stream has random noise tokens. So a stage can
only beat the unigram entropy by learning, and only the semantic/coarse stages' held-out
loss depends on the MuLan tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import pytorch_lightning as pl
import torch
import webdataset as wds
from musiclm.tokenizers.contract import (
    DATASET_FILE,
    MANIFEST_FILE,
    SHARD_DIR,
    TokenSpec,
    encode_sample,
    shard_name,
)

TINY_SPEC = TokenSpec(
    acoustic_levels=4,
    acoustic_codebook_size=32,
    coarse_levels=2,
    semantic_vocab=32,
    mulan_levels=3,
    mulan_codebook_size=16,
    mulan_dim=8,
)
FINGERPRINT = "feedc0de12345678"


def synthetic_clip(spec: TokenSpec, style: int, frames: int, rng: np.random.Generator) -> dict:
    """Token streams of one clip of ``frames`` semantic frames in style ``style``."""
    style_rng = np.random.default_rng(1000 + style)
    mulan = style_rng.integers(0, spec.mulan_codebook_size, spec.mulan_levels)
    step = 1 + style_rng.integers(0, spec.semantic_vocab - 1)
    semantic = np.empty(frames, dtype=np.int64)
    semantic[0] = rng.integers(0, spec.semantic_vocab)
    jumps = rng.random(frames) < 0.15
    noise = rng.integers(0, spec.semantic_vocab, frames)
    for t in range(1, frames):
        semantic[t] = noise[t] if jumps[t] else (semantic[t - 1] + step) % spec.semantic_vocab
    r, k = spec.acoustic_per_semantic, spec.acoustic_codebook_size
    t_a = frames * r
    sem_a = np.repeat(semantic, r)
    acoustic = np.empty((spec.acoustic_levels, t_a), dtype=np.int64)
    block = k // 4  # the style picks a quarter of the codebook; noise hides it from context
    noisy = rng.random(t_a) < 0.3
    acoustic[0] = np.where(
        noisy, rng.integers(0, k, t_a), (style % 4) * block + (sem_a + np.arange(t_a) % r) % block
    )
    for q in range(1, spec.acoustic_levels):
        flip = rng.random(t_a) < 0.1
        follow = (style % 4) * block + (acoustic[q - 1] * 7 + q) % block
        acoustic[q] = np.where(flip, rng.integers(0, k, t_a), follow)
    emb = style_rng.standard_normal(spec.mulan_dim)
    return {"semantic": semantic, "acoustic": acoustic, "mulan": mulan, "mulan_emb": emb}


def make_token_dataset(
    root: Path,
    spec: TokenSpec = TINY_SPEC,
    sources: int = 24,
    clips_per_source: int = 4,
    seconds: float = 4.0,
    num_shards: int = 4,
    styles: int = 4,
    fingerprint: str = FINGERPRINT,
    seed: int = 0,
    clip_fn=synthetic_clip,
) -> Path:
    """Write ``root/{shards/*.tar, manifest.parquet, dataset.json}`` of synthetic clips.

    Source ``i`` goes to shard ``i % num_shards`` (every shard gets sources) and has style
    ``(i // num_shards) % styles``, so every shard holds several styles, as shards of
    hashed sources do (whole shards are held out for validation).
    """
    rng = np.random.default_rng(seed)
    frames = round(seconds * spec.semantic_rate)
    (root / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    rows = []
    writers = [wds.TarWriter(str(root / SHARD_DIR / shard_name(i))) for i in range(num_shards)]
    for i in range(sources):
        source, shard = f"src{i:04d}", i % num_shards
        style = (i // num_shards) % styles
        for c in range(clips_per_source):
            clip = clip_fn(spec, style, frames, rng)
            key = f"{source}-{c:03d}"
            meta = {
                "source": source,
                "offset": c * seconds,
                "seconds": seconds,
                "bundle": fingerprint,
            }
            writers[shard].write(encode_sample(key, caption=f"style {style}", meta=meta, **clip))
            rows.append(
                {
                    "key": key,
                    "shard": shard,
                    "source": source,
                    "start": c * seconds,
                    "seconds": seconds,
                    "caption": f"style {style}",
                    "semantic_frames": frames,
                    "acoustic_frames": frames * spec.acoustic_per_semantic,
                }
            )
    for writer in writers:
        writer.close()
    pq.write_table(pa.Table.from_pylist(rows), root / MANIFEST_FILE)
    info = {"fingerprint": fingerprint, "spec": spec.to_dict(), "counts": {"ok": len(rows)}}
    (root / DATASET_FILE).write_text(json.dumps(info))
    return root


@pytest.fixture(scope="session")
def token_dataset(tmp_path_factory) -> Path:
    """A small synthetic token dataset (24 sources x 4 clips of 4 s, 4 shards)."""
    return make_token_dataset(tmp_path_factory.mktemp("tokens"))


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def make_tokens():
    """The dataset writer :func:`make_token_dataset` (test modules cannot import conftest)."""
    return make_token_dataset


@pytest.fixture(scope="session")
def tiny_spec() -> TokenSpec:
    return TINY_SPEC


# Token spec of the real-music dataset: small vocabularies so k-means and the RVQ codebooks
# fit on a few minutes of music.
DEMO_SPEC = TokenSpec(
    acoustic_levels=4,
    acoustic_codebook_size=64,
    coarse_levels=2,
    semantic_vocab=32,
    mulan_levels=3,
    mulan_codebook_size=8,
    mulan_dim=16,
)
IN_MEMORY_BEAM = ["--direct_running_mode=in_memory"]


@pytest.fixture(scope="session")
def demo_tokens(tmp_path_factory, demo_music: Path) -> Path:
    """The demo music subset tokenized by the real pipeline: tiny untrained codec, semantic
    model (with k-means centroids fitted on the music) and MuLan (with fitted RVQ), 4 s clips
    with a 2 s hop, train and held-out pieces together (the stage data module holds out
    whole sources itself). Real music, real pipeline, small vocabularies."""
    from musiclm.pipelines import fit_cli, tokenize_cli
    from musiclm.tokenizers.dataset_layouts import read_sources
    from musiclm.tokenizers.mulan import MuLanTokenizer
    from musiclm.tokenizers.semantic import SemanticTokenizer
    from musiclm.tokenizers.soundstream import SoundStream

    root = tmp_path_factory.mktemp("demo-tokens")
    torch.manual_seed(0)
    captions = [r.caption for r in read_sources(demo_music) if r.caption] or ["music"]
    SoundStream(
        sample_rate=DEMO_SPEC.sample_rate,
        hop=DEMO_SPEC.acoustic_hop,
        strides=(2, 4, 6, 10),
        channels=2,
        dim=8,
        num_levels=DEMO_SPEC.acoustic_levels,
        codebook_size=DEMO_SPEC.acoustic_codebook_size,
    ).save(root / "codec")
    SemanticTokenizer.tiny(DEMO_SPEC).save(root / "semantic")
    MuLanTokenizer.tiny(captions, DEMO_SPEC).save(root / "mulan")
    bundle = root / "bundle"
    args = ["--dataset", str(demo_music), "--out", str(bundle), "--size", "tiny"]
    for name in ("codec", "semantic", "mulan"):
        args += [f"--{name}", str(root / name)]
    fit_cli.main(args + IN_MEMORY_BEAM)
    out = root / "tokens"
    paths = ["--dataset", str(demo_music), "--bundle", str(bundle), "--out", str(out)]
    clips = ["--clip_seconds", "4", "--hop_seconds", "2", "--min_seconds", "2"]
    tokenize_cli.main([*paths, *clips, "--num_shards", "4", "--threads", "1", *IN_MEMORY_BEAM])
    return out


def _quiet_trainer(root: Path, steps: int, **options: Any) -> pl.Trainer:
    """A CPU Trainer for ``steps`` steps with no logger, bars, summary or validation;
    ``options`` add or override Trainer arguments."""
    defaults = {
        "max_steps": steps,
        "accelerator": "cpu",
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "limit_val_batches": 0,
        "default_root_dir": root,
    }
    return pl.Trainer(**(defaults | options))


@pytest.fixture(scope="session")
def quiet_trainer():
    """The Trainer factory :func:`_quiet_trainer` ``(root, steps, **options)``."""
    return _quiet_trainer
