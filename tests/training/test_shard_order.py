"""Stage training reads the whole dataset: epochs go on through the shards (one worker,
2 ranks x 2 workers), a resumed run goes on where it stopped, seeded runs repeat, and a
validation pass reads only the held-out shards.

The dataset has 128 clips in 16 shards of 8 and epochs far shorter than the data, the
scale at which replaying an epoch's start shows (webdataset's seeded shard shuffle
replayed the same shards every epoch: 21 of 80 draws were distinct here).
"""

import pytest
import pytorch_lightning as pl
import torch
from musiclm.training.shard_data import SemanticData
from musiclm.training.shard_order import ReaderStream, assign_shards
from musiclm.training.stages import SemanticStage

CLIPS, SHARDS, BUFFER = 128, 16, 8
TINY = dict(dim=32, depth=1, heads=2, ff_dim=64, dropout=0.0, num_buckets=8, max_distance=32)


@pytest.fixture(scope="module")
def wide(tmp_path_factory, make_tokens):
    """32 sources x 4 clips of 1 s in 16 shards (8 clips a shard)."""
    return make_tokens(tmp_path_factory.mktemp("wide"), sources=32, num_shards=SHARDS, seconds=1.0)


def data(root, **kw):
    args = dict(
        crop_seconds=0.4,
        batch_size=4,
        num_workers=1,
        epoch_samples=16,
        val_fraction=0,
        shuffle_buffer=BUFFER,
        shard_shuffle=8,
    )
    return SemanticData(str(root), **(args | kw))


def epochs(module, count):
    loader = module.train_dataloader()
    return [
        [(k, s) for b in loader for k, s in zip(b["keys"], b["shards"], strict=True)]
        for _ in range(count)
    ]


def test_epochs_go_on_through_the_data_with_a_persistent_worker(wide):
    torch.manual_seed(0)
    run = epochs(data(wide), 10)
    seen: set[str] = set()
    for k, epoch in enumerate(run, start=1):
        assert len(epoch) == 16
        seen |= {key for key, _ in epoch}
        # every clip once per pass; only clips still in the shuffle buffer can be missing
        assert len(seen) >= min(16 * k, CLIPS) - (BUFFER if 16 * k + BUFFER > CLIPS else 0), k
    first = [epoch[0][0] for epoch in run[:5]]
    assert len(set(first)) == 5  # no epoch starts with the clip another started with
    shards_before: set[str] = set()
    for epoch in run[:8]:  # the first pass: each epoch reads shards no earlier epoch read
        shards = {shard for _, shard in epoch}
        assert shards - shards_before
        shards_before |= shards


def test_two_ranks_of_two_workers_cover_the_data_on_disjoint_shards(wide, monkeypatch):
    keys, shards = {}, {}
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        module = data(wide, num_workers=2, epoch_samples=32)
        module.world_size = lambda: 2
        run = epochs(module, 3)  # 3 epochs x 2 workers x 2 batches x 4 = 48 clips per rank
        assert [len(epoch) for epoch in run] == [16, 16, 16]
        keys[rank] = {k for epoch in run for k, _ in epoch}
        shards[rank] = {s for epoch in run for _, s in epoch}
    assert len(keys[0] | keys[1]) == 96 == min(3 * 32, CLIPS)
    assert not shards[0] & shards[1]


class RecordKeys(pl.Callback):
    def __init__(self) -> None:
        self.keys: list[str] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.keys += batch["keys"]


def fit(root, tmp_path, steps, ckpt_path=None, every=None):
    pl.seed_everything(0)
    module = data(root, num_workers=0, shuffle_buffer=4)
    stage = SemanticStage(**TINY, warmup_steps=1)
    record = RecordKeys()
    callbacks = [record]
    if every:
        callbacks.append(
            pl.callbacks.ModelCheckpoint(
                tmp_path, every_n_train_steps=every, save_top_k=-1, filename="{step}"
            )
        )
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=bool(every),
        limit_val_batches=0,
        callbacks=callbacks,
        default_root_dir=tmp_path,
    )
    trainer.fit(stage, datamodule=module, ckpt_path=ckpt_path)
    return record.keys


def test_a_resumed_run_goes_on_covering_the_data(wide, tmp_path):
    first = fit(wide, tmp_path, steps=6, every=6)  # killed after 6 batches = 24 clips
    resumed = fit(wide, tmp_path, steps=14, ckpt_path=tmp_path / "step=6.ckpt")
    assert len(first) == 24 and len(resumed) == 32
    # the resumed run starts at clip 24 of the same stream: it repeats at most the clips
    # the first run's shuffle buffer had read ahead
    assert len(set(first) | set(resumed)) >= 56 - 4
    assert len(set(first) & set(resumed)) <= 4


def test_seeded_runs_repeat_and_another_seed_reads_another_order(wide):
    def run(seed):
        torch.manual_seed(0)
        return epochs(data(wide, num_workers=0, seed=seed), 3)

    assert run(0) == run(0)
    assert run(0) != run(1)


def test_readers_get_balanced_disjoint_shards_and_any_position_resumes(wide):
    counts = [8, 1, 5, 5, 3, 2]
    assigned = assign_shards(counts, 3)
    assert sorted(i for shards in assigned for i in shards) == list(range(6))
    assert [sum(counts[i] for i in shards) for shards in assigned] == [8, 8, 8]
    stream = ReaderStream(tuple(f"s{i}" for i in range(6)), tuple(counts), seed=0, reader=1)
    order = stream.order(2)
    # 2 passes of 24 clips, the first shard of pass 2, all but one clip of its second
    last = counts[order[1]] - 1
    assert stream.locate(48 + counts[order[0]] + last) == (2, 1, last)
    assert stream.locate(48 + counts[order[0]] + last + 1)[:2] == (2, 2)
    assert sorted(stream.order(0)) == sorted(stream.order(1)) and any(
        not (stream.order(p) == stream.order(0)).all() for p in range(1, 4)
    )


def test_a_validation_pass_reads_only_the_held_out_shards(wide):
    module = data(wide, num_workers=0, val_fraction=0.1)
    batches = list(module.val_dataloader())
    read = {s for b in batches for s in b["shards"]}
    assert len(module.val_shards) == round(0.1 * SHARDS) == 2
    assert read == {p.rsplit("/", 1)[-1] for p in module.val_shards}
    assert sum(len(b["keys"]) for b in batches) == 2 * CLIPS // SHARDS == len(module.val_keys)
    trained = {s for epoch in epochs(module, 8) for _, s in epoch}
    assert len(trained) == SHARDS - 2 and not trained & read
