"""The stage data module: aligned crops, validation split, fingerprints, node/worker split."""

import json

import numpy as np
import pytest
import torch
from musiclm.training.shard_data import (
    CoarseData,
    FineData,
    SemanticData,
    ShardDataError,
    crop_streams,
)


def counting_clip(spec, style, frames, rng):
    """Semantic frame t carries t; every acoustic level at frame a carries a // 2 (mod size)."""
    r = spec.acoustic_per_semantic
    t = np.arange(frames) + rng.integers(0, 1000)
    acoustic = np.repeat(t, r)[None].repeat(spec.acoustic_levels, 0) % spec.acoustic_codebook_size
    return {
        "semantic": t % spec.semantic_vocab,
        "acoustic": acoustic,
        "mulan": np.full(spec.mulan_levels, style),
        "mulan_emb": np.zeros(spec.mulan_dim),
    }


@pytest.fixture(scope="module")
def counting_dataset(tmp_path_factory, make_tokens):
    return make_tokens(tmp_path_factory.mktemp("counting"), clip_fn=counting_clip)


def test_crop_streams_start_on_the_acoustic_frame_of_their_semantic_frame(tiny_spec):
    spec = tiny_spec
    acoustic = np.repeat(np.arange(50), 2)[None].repeat(4, 0)
    sample = {"mulan": np.zeros(3), "semantic": np.arange(50), "acoustic": acoustic}
    starts = set()
    for _ in range(30):
        crop = crop_streams(sample, 10, spec, random_start=True)
        assert crop["semantic"].shape == (10,) and crop["acoustic"].shape == (4, 20)
        assert np.array_equal(crop["acoustic"][:, ::2][0], crop["semantic"])
        starts.add(int(crop["semantic"][0]))
    assert len(starts) > 5  # random starts
    whole = crop_streams(sample, 80, spec, random_start=True)  # shorter clip: used whole
    assert whole["semantic"].shape == (50,) and whole["acoustic"].shape == (4, 100)


def test_coarse_batches_hold_aligned_crops(counting_dataset):
    data = CoarseData(str(counting_dataset), crop_seconds=1.0, batch_size=4, num_workers=0)
    layout = data.layout
    batch = next(iter(data.train_dataloader()))
    prefix = layout.prefix_length(data.crop_frames)
    assert batch["tokens"].shape == (4, layout.sequence_length(data.crop_frames))
    semantic = batch["tokens"][:, 1 + 3 + 1 : 1 + 3 + 1 + data.crop_frames] - layout.offset(
        "semantic"
    )
    coarse = layout.parse_targets(batch["tokens"][:, prefix:])  # [B, Qc, T_a]
    assert coarse.shape == (4, 2, 2 * data.crop_frames)
    assert torch.equal(coarse[:, 0, ::2] % 32, semantic % 32)
    assert torch.equal(coarse[:, 1, 1::2] % 32, semantic % 32)


def test_fine_batches_condition_on_coarse_levels_of_the_same_frames(counting_dataset):
    data = FineData(str(counting_dataset), crop_seconds=0.4, batch_size=2, num_workers=0)
    layout = data.layout
    batch = next(iter(data.train_dataloader()))
    frames = 2 * data.crop_frames
    coarse_flat = batch["tokens"][:, 1 : 1 + frames * 2]
    coarse = (coarse_flat.reshape(2, frames, 2) - layout.offset("acoustic")) % 32
    fine = layout.parse_targets(batch["tokens"][:, layout.prefix_length(data.crop_frames) :])
    assert torch.equal(fine[:, 0], coarse[:, :, 0])


def test_validation_split_is_by_source_and_deterministic(token_dataset):
    data = SemanticData(
        str(token_dataset),
        crop_seconds=1.0,
        batch_size=4,
        num_workers=0,
        val_fraction=0.2,
        epoch_samples=96,
    )
    val_sources = {k.rsplit("-", 1)[0] for k in data.val_keys}
    assert val_sources and len(data.val_keys) == 4 * len(val_sources)  # whole sources
    train_keys = {k for b in data.train_dataloader() for k in b["keys"]}
    assert train_keys and not train_keys & data.val_keys
    first = [b["tokens"] for b in data.val_dataloader()]
    again = [b["tokens"] for b in data.val_dataloader()]
    assert sum(len(b) for b in first) == len(data.val_keys)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    same = SemanticData(str(token_dataset), val_fraction=0.2)
    assert same.val_keys == data.val_keys


def test_epoch_length_is_fixed_and_ranks_read_different_shards(token_dataset, monkeypatch):
    seen = {}
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        data = SemanticData(
            str(token_dataset), batch_size=4, num_workers=0, epoch_samples=64, val_fraction=0.0
        )
        data.world_size = lambda: 2
        batches = list(data.train_dataloader())
        assert len(batches) == 8  # 64 samples / (4 per batch x 2 ranks)
        seen[rank] = {s for b in batches for s in b["shards"]}
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert seen[0] | seen[1] == {f"shard-{i:06d}.tar" for i in range(4)}


def test_fewer_shards_than_readers_is_refused(token_dataset):
    data = SemanticData(str(token_dataset), num_workers=5)
    with pytest.raises(ShardDataError, match="4 shards but training uses 5 data readers"):
        data.train_dataloader()


def test_other_bundle_fingerprint_is_refused(tmp_path, make_tokens):
    root = make_tokens(tmp_path / "a", sources=4, num_shards=2)
    other = make_tokens(tmp_path / "b", sources=4, num_shards=2, fingerprint="0000aaaa0000aaaa")
    (other / "shards" / "shard-000001.tar").rename(root / "shards" / "shard-000001.tar")
    data = SemanticData(str(root), batch_size=2, num_workers=0, shard_shuffle=0, val_fraction=0)
    with pytest.raises(
        ShardDataError, match=r"shard-000001.tar was tokenized with bundle 0000aaaa0000aaaa"
    ):
        list(data.train_dataloader())


def test_dataset_errors_name_the_input_and_the_fix(tmp_path, make_tokens):
    with pytest.raises(ShardDataError, match="make tokenize"):
        SemanticData(str(tmp_path))
    root = make_tokens(tmp_path / "d", sources=2, num_shards=1)
    info = json.loads((root / "dataset.json").read_text())
    del info["spec"]
    (root / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(ShardDataError, match="token spec"):
        SemanticData(str(root))


def test_a_single_shard_dataset_trains_on_it_and_warns_that_nothing_is_held_out(
    tmp_path, make_tokens
):
    root = make_tokens(tmp_path / "one", sources=3, num_shards=1)
    with pytest.warns(UserWarning, match="no shard is held out for validation"):
        data = SemanticData(str(root), num_workers=0, val_fraction=0.1)
    assert data.val_shards == [] and data.val_dataloader() == []
    assert len(data.train_shards) == 1 and data.train_counts == [12]
