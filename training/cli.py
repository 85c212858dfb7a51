"""One training entry point for every model: ``python -m musiclm.training.cli <entry> --config ...``.

Entries are the three tokenizer trainers and one ``stage-<name>`` trainer per stage of the
stage registry (:mod:`musiclm.training.stage_registry`). Each is a
LightningCLI over a (LightningModule, LightningDataModule) pair, so every option of the
module, the data module and the ``Trainer`` can be set in YAML or on the command line::

    python -m musiclm.training.cli stage-coarse --config configs/stages/small.yaml \\
        --config configs/stages/coarse/small.yaml --data.root runs/tokens \\
        --trainer.max_steps 2000 --ckpt_path last

``--ckpt_path`` resumes a run (``last`` picks the run directory's newest ``last*.ckpt``,
else its newest checkpoint; with none it starts afresh). A module that has an
``export_component(directory)`` method (the tokenizer trainers) writes its inference model
to ``<trainer.default_root_dir>/model`` after fitting, which is what ``make tokenizers``
packs into the bundle.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from musiclm.training.checkpoints import newest_checkpoint
from musiclm.training.stage_registry import STAGES
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

# tokenizer entry -> ("module:LightningModule", "module:LightningDataModule")
TOKENIZER_ENTRIES: dict[str, tuple[str, str]] = {
    "tokenizer-semantic": (
        "musiclm.training.semantic_trainer:SemanticModule",
        "musiclm.training.audio_data:AudioCropDataModule",
    ),
    "tokenizer-mulan": (
        "musiclm.training.mulan_trainer:MuLanModule",
        "musiclm.training.audio_data:AudioCropDataModule",
    ),
    "tokenizer-soundstream": (
        "musiclm.training.soundstream_trainer:SoundStreamModule",
        "musiclm.training.audio_data:AudioCropDataModule",
    ),
}
# one ``stage-<name>`` entry per stage of the registry
STAGE_ENTRIES: dict[str, str] = {f"stage-{name}": name for name in STAGES}
ENTRIES: tuple[str, ...] = (*TOKENIZER_ENTRIES, *STAGE_ENTRIES)


class TrainCLI(LightningCLI):
    """LightningCLI with a ``--ckpt_path`` option for resuming."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--ckpt_path",
            type=str | None,
            default=None,
            help="checkpoint to resume from; 'last' = this run's newest last*.ckpt, else newest *.ckpt",
        )


def entry_classes(entry: str) -> tuple[type, type]:
    """The (LightningModule, LightningDataModule) classes of an entry of :data:`ENTRIES`."""
    if entry in STAGE_ENTRIES:  # imported here: a tokenizer run needs no stage modules
        from musiclm.training.shard_data import stage_data
        from musiclm.training.stages import stage_module

        return stage_module(STAGE_ENTRIES[entry]), stage_data(STAGE_ENTRIES[entry])
    classes = []
    for target in TOKENIZER_ENTRIES[entry]:
        module, name = target.split(":")
        classes.append(getattr(importlib.import_module(module), name))
    return classes[0], classes[1]


def _save_final_last(trainer) -> None:
    """Write ``last.ckpt`` at the final step (Lightning keeps an older one when a periodic
    save already wrote a ``last.ckpt``); every rank calls it, rank 0 writes."""
    for callback in trainer.checkpoint_callbacks:
        if callback.save_last and callback.dirpath:
            name = callback.CHECKPOINT_NAME_LAST + callback.FILE_EXTENSION
            trainer.save_checkpoint(Path(callback.dirpath) / name)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ENTRIES:
        names = ", ".join(sorted(ENTRIES))
        sys.exit(
            f"usage: python -m musiclm.training.cli <entry> [LightningCLI options]; entries: {names}"
        )
    model_class, data_class = entry_classes(argv[0])
    cli = TrainCLI(
        model_class,
        data_class,
        args=argv[1:],
        run=False,
        save_config_kwargs={"overwrite": True},
    )
    if hasattr(cli.model, "run_config"):  # stage modules keep the full config in checkpoints
        cli.model.run_config = json.loads(json.dumps(cli.config.clone().as_dict(), default=str))
    root = Path(cli.trainer.default_root_dir)
    ckpt_path = cli.config.get("ckpt_path")
    if ckpt_path == "last":
        found = newest_checkpoint(root)
        ckpt_path = str(found) if found else None
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    _save_final_last(cli.trainer)
    if hasattr(cli.model, "export_component") and cli.trainer.is_global_zero:
        cli.model.export_component(root / "model")
        print(f"exported the trained model to {root / 'model'}")


if __name__ == "__main__":
    main()
