"""``musiclm-fit`` / the last step of ``make tokenizers``: fit codebooks, write the bundle.

    python -m musiclm.pipelines.fit_cli --dataset data/demo/train --runs runs --size small \\
        --out runs/bundle [--codec DIR] [--semantic DIR] [--mulan DIR] [Beam options]

Components default to what the training CLI exports: ``RUNS/soundstream/model``,
``RUNS/semantic/model``, ``RUNS/mulan/model``. Pass ``--codec`` / ``--semantic`` /
``--mulan`` for other saved components (e.g. an EnCodec or w2v-BERT backend directory).
Options of :class:`~musiclm.pipelines.fit.FitConfig` come from
``configs/pipelines/fit/<size>.yaml``, a ``--config`` YAML, or flags.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from musiclm.pipelines.cli_args import add_config_flags, parse_config
from musiclm.pipelines.fit import FitConfig, fit_bundle, iter_component_dirs

CONFIG_DIRS = (
    Path("configs/pipelines/fit"),  # the repository checkout (make tokenizers)
    Path(__file__).resolve().parent.parent / "configs" / "pipelines" / "fit",
)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="musiclm-fit",
        description="Fit semantic k-means and MuLan RVQ codebooks on a dataset; write a bundle.",
        epilog="Unrecognized arguments are Beam pipeline options (--runner, --project, ...).",
    )
    parser.add_argument("--dataset", required=True, help="folder, JSONL, MusicCaps CSV or FMA")
    parser.add_argument("--out", required=True, help="bundle directory to write")
    parser.add_argument("--runs", default="runs", help="where the tokenizer trainers wrote")
    parser.add_argument("--size", default=None, help="tiny | small | paper fit config")
    for name in ("codec", "semantic", "mulan"):
        parser.add_argument(f"--{name}", help=f"saved {name} component directory")
    add_config_flags(parser, FitConfig)
    argv = list(sys.argv[1:] if argv is None else argv)
    known, _ = parser.parse_known_args(argv)
    if known.size and not known.config:
        found = [
            d / f"{known.size}.yaml" for d in CONFIG_DIRS if (d / f"{known.size}.yaml").is_file()
        ]
        config_file = found[0] if found else CONFIG_DIRS[0] / f"{known.size}.yaml"
        if not found:
            sys.exit(f"musiclm-fit: no fit config {config_file}; sizes: tiny, small, paper")
        argv += ["--config", str(config_file)]
    args, config, beam_args = parse_config(parser, FitConfig, argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("apache_beam", "root"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    components = dict(iter_component_dirs(args.runs, args.codec, args.semantic, args.mulan))
    for name, directory in components.items():
        if "://" not in directory and not (Path(directory) / "config.json").is_file():
            sys.exit(
                f"musiclm-fit: no saved {name} at {directory}; train it first "
                f"(make train-tokenizer) or pass --{name} DIR"
            )
    try:
        summary = fit_bundle(args.dataset, components, args.out, config, beam_args)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"musiclm-fit: {err}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
