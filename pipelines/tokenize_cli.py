"""``musiclm-tokenize`` / ``make tokenize``: tokenize a dataset into webdataset shards.

    python -m musiclm.pipelines.tokenize_cli --dataset data/demo/train \\
        --bundle runs/bundle --out runs/tokens [--clip_seconds 30] [--num_shards 64] \\
        [--overwrite] [Beam options, e.g. --direct_num_workers 4 or --runner DataflowRunner ...]

Every option of :class:`~musiclm.pipelines.tokenize.TokenizeConfig` is a flag (or a key
of a ``--config`` YAML file); any other argument is passed to Beam.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from musiclm.pipelines.cli_args import add_config_flags, parse_config
from musiclm.pipelines.tokenize import TokenizeConfig, tokenize_dataset


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="musiclm-tokenize",
        description="Tokenize a music dataset into webdataset shards (semantic, acoustic, MuLan).",
        epilog="Unrecognized arguments are Beam pipeline options (--runner, --project, ...).",
    )
    parser.add_argument("--dataset", required=True, help="folder, JSONL, MusicCaps CSV or FMA")
    parser.add_argument("--bundle", required=True, help="tokenizer bundle (make tokenizers)")
    parser.add_argument("--out", required=True, help="output directory (local, gs://, s3://)")
    add_config_flags(parser, TokenizeConfig)
    args, config, beam_args = parse_config(parser, TokenizeConfig, argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("apache_beam", "root"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        summary = tokenize_dataset(args.dataset, args.bundle, args.out, config, beam_args)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"musiclm-tokenize: {err}")
    counts = summary["counts"]
    print(
        f"{counts['clips']} clips ({counts['audio_hours']:.2f} h) from {counts['ok']} of "
        f"{counts['inputs']} inputs in {counts['shards']} shards at {args.out}; "
        f"{counts['failed']} failed (see failures.parquet)"
    )
    print(json.dumps(summary["last_run"]))


if __name__ == "__main__":
    main()
