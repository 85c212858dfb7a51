"""Build the demo music: real music from public packages, with captions that are true.

``python -m musiclm.pipelines.demo_data --out data/demo`` (``make demo-data``) writes::

    OUT/train/<source>/<piece>.{wav,flac,ogg} + <piece>.json (+ <piece>.mid for renders)
    OUT/heldout/<source>/...
    OUT/demo.json            settings, per-piece list and the summary (the reuse stamp)

Sources (every piece is one file; the split is by piece, so no clip of a held-out piece
is ever in train):

- ``bach``, ``folk``, ``quartet``: scores of the music21 corpus (Bach chorales; German
  folk songs of the Essen collection and dance tunes of Ryan's Mammoth Collection;
  string quartet movements by Haydn, Mozart and Beethoven), written as MIDI by music21;
- ``openmsx``: the MIDI files of Debian's ``openttd-openmsx``;
- ``wesnoth``, ``singularity``: recorded Ogg Vorbis music of Debian's
  ``wesnoth-1.16-music`` and ``singularity-music``, kept in their own format and rate.

Each MIDI piece gets a seeded General MIDI instrument and tempo, is cut after
``--max-piece-seconds`` and rendered with fluidsynth and the FluidR3 GM soundfont to wav
or flac at 32, 44.1 or 48 kHz. Its caption states what was rendered: composer or
collection, genre, instrument (the program set on every melodic channel of the ``.mid``
kept beside the audio), tempo word (from the rendered bpm) and key/mode (music21's
key analysis (Aarden-Essen) of the whole score's notes, given only when the correlation is clear).
Recorded pieces are captioned from their Vorbis comments (title, artist, genre, album).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import shutil
import sys
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict
from pathlib import Path
from typing import Any

from musiclm.pipelines.demo_pieces import build_piece
from musiclm.pipelines.demo_sources import (
    LICENSES,
    SHARES,
    SOURCES,
    Piece,
    Settings,
    candidates,
    require_packages,
)
from musiclm.tokenizers.source_records import held_out_share

log = logging.getLogger(__name__)

BUILDER_VERSION = 7
STAMP = "demo.json"


# ----- the whole dataset ----------------------------------------------------------------------
def _hash_order(seed: int, piece: Piece) -> str:
    return hashlib.blake2b(f"{seed}:{piece.source}:{piece.piece_id}".encode()).hexdigest()


def _select(settings: Settings, source: str) -> Iterator[Piece]:
    """Candidates of ``source`` in a seeded order."""
    pool = candidates(source)
    if settings.small_scores and source in ("bach", "folk", "quartet"):
        sizes = {p.origin: os.path.getsize(p.origin) for p in pool}
        pool = sorted(pool, key=lambda p: (sizes[p.origin], p.piece_id))[: max(4, len(pool) // 4)]
    random.Random(f"{settings.seed}:{source}").shuffle(pool)
    yield from pool


def build_demo(
    out: str | Path, settings: Settings | None = None, workers: int = 2, overwrite: bool = False
) -> dict[str, Any]:
    """Build the demo dataset into ``out`` and return its stamp.

    A demo already in ``out`` with the same settings and builder version is reused unless
    ``overwrite``; one built otherwise is replaced; a folder that is not a demo is refused.
    """
    settings = settings or Settings()
    out = Path(out)
    wanted = {"version": BUILDER_VERSION, "settings": _settings_dict(settings)}
    stamp_path = out / STAMP
    if stamp_path.is_file():
        stamp = json.loads(stamp_path.read_text())
        if {k: stamp.get(k) for k in wanted} == wanted and not overwrite:
            log.info("%s is up to date (same settings); reusing it", out)
            return stamp
        log.info("%s holds a demo built otherwise; rebuilding it", out)
    elif out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} exists and is not a demo dataset; choose another --out")
    require_packages(settings.sources)

    started = time.time()
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    staging = partial / ".staging"
    pieces: list[dict[str, Any]] = []
    failures: list[str] = []
    budget = {
        s: settings.minutes * 60 * SHARES[s] / _share_total(settings) for s in settings.sources
    }
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for source in settings.sources:
            done = _build_source(pool, source, staging, settings, budget[source], workers, failures)
            pieces += _split_and_place(done, source, staging, partial, settings)
    shutil.rmtree(staging, ignore_errors=True)
    summary = _summary(pieces, time.time() - started)
    stamp = {**wanted, "summary": summary, "failures": failures, "pieces": pieces}
    (partial / STAMP).write_text(json.dumps(stamp, indent=1, ensure_ascii=False))
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return stamp


def settings_id(settings: Settings) -> str:
    """Short hash of the settings (names cache folders of different builds apart)."""
    text = json.dumps(_settings_dict(settings), sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=4).hexdigest()


def _share_total(settings: Settings) -> float:
    return sum(SHARES[s] for s in settings.sources)


def _settings_dict(settings: Settings) -> dict[str, Any]:
    values = asdict(settings)
    values["sources"] = list(settings.sources)
    return values


def _build_source(
    pool: ProcessPoolExecutor,
    source: str,
    staging: Path,
    settings: Settings,
    budget_seconds: float,
    workers: int,
    failures: list[str],
) -> list[tuple[Piece, dict[str, Any]]]:
    """Build pieces of one source until its minutes or ``max_pieces`` are reached."""
    done: list[tuple[Piece, dict[str, Any]]] = []
    running: dict[Future, Piece] = {}
    total = 0.0
    order = _select(settings, source)

    def full() -> bool:
        count = len(done) + len(running)
        return total >= budget_seconds or (
            settings.max_pieces is not None and count >= settings.max_pieces
        )

    exhausted = False
    while True:
        while not exhausted and len(running) < workers and not full():
            piece = next(order, None)
            if piece is None:
                exhausted = True
                break
            running[pool.submit(build_piece, piece, staging, settings)] = piece
        if not running:
            break
        finished, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in finished:
            piece = running.pop(future)
            try:
                info = future.result()
            except Exception as err:  # one bad score must not stop the build
                failures.append(f"{piece.source}/{piece.piece_id}: {err}")
                log.warning("skipped %s/%s: %s", piece.source, piece.piece_id, err)
                continue
            done.append((piece, info))
            total += info["seconds"]
    done.sort(key=lambda item: item[0].piece_id)
    return done


def _split_and_place(
    done: list[tuple[Piece, dict[str, Any]]],
    source: str,
    staging: Path,
    out: Path,
    settings: Settings,
) -> list[dict[str, Any]]:
    """Assign pieces to train/heldout (seeded, by piece) and move them into place."""
    held_items = held_out_share(
        done, settings.heldout_fraction, lambda item: _hash_order(settings.seed, item[0])
    )
    held = {piece.piece_id for piece, _ in held_items}
    placed = []
    for piece, info in done:
        split = "heldout" if piece.piece_id in held else "train"
        target = out / split / source
        target.mkdir(parents=True, exist_ok=True)
        for name in (info["audio"], info.get("midi")):
            if name:
                shutil.move(str(staging / source / name), str(target / name))
        sidecar = {
            "caption": info["caption"],
            "tags": info["tags"],
            "source": source,
            "license": LICENSES[source],
            "piece": f"{source}/{piece.piece_id}",
            "split": split,
            **{k: v for k, v in info.items() if k not in ("caption", "tags", "audio", "midi")},
        }
        stem = Path(info["audio"]).stem
        (target / f"{stem}.json").write_text(json.dumps(sidecar, indent=1, ensure_ascii=False))
        placed.append({"file": f"{split}/{source}/{info['audio']}", **sidecar})
    return placed


def _summary(pieces: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    table: dict[str, dict[str, dict[str, float]]] = {}
    for piece in pieces:
        cell = table.setdefault(piece["source"], {}).setdefault(
            piece["split"], {"pieces": 0, "minutes": 0.0}
        )
        cell["pieces"] += 1
        cell["minutes"] = round(cell["minutes"] + piece["seconds"] / 60, 2)
    total = sum(p["seconds"] for p in pieces) / 60
    return {
        "sources": table,
        "pieces": len(pieces),
        "minutes": round(total, 2),
        "build_seconds": round(seconds, 1),
    }


def print_summary(stamp: dict[str, Any], out: Path) -> None:
    summary = stamp["summary"]
    print(
        f"demo music in {out}: {summary['pieces']} pieces, {summary['minutes']:.1f} minutes "
        f"(built in {summary['build_seconds']:.0f} s)"
    )
    print(f"{'source':<12} {'train':>18} {'heldout':>18}")
    for source, splits in summary["sources"].items():
        cells = []
        for split in ("train", "heldout"):
            cell = splits.get(split, {"pieces": 0, "minutes": 0.0})
            cells.append(f"{cell['pieces']:>3} pieces {cell['minutes']:5.1f} min")
        print(f"{source:<12} {cells[0]:>18} {cells[1]:>18}")
    if stamp.get("failures"):
        print(f"skipped {len(stamp['failures'])} pieces that could not be built:")
        for line in stamp["failures"]:
            print("  " + line)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m musiclm.pipelines.demo_data", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", default="data/demo", help="output folder (default data/demo)")
    parser.add_argument(
        "--minutes",
        type=float,
        default=Settings.minutes,
        help="total minutes to aim for, shared among the sources",
    )
    parser.add_argument(
        "--max-pieces", type=int, default=None, help="at most this many pieces per source"
    )
    parser.add_argument(
        "--max-piece-seconds",
        type=float,
        default=Settings.max_piece_seconds,
        help="cut every piece after this many seconds",
    )
    parser.add_argument("--heldout-fraction", type=float, default=Settings.heldout_fraction)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sources", nargs="+", choices=SOURCES, default=list(SOURCES))
    parser.add_argument("--workers", type=int, default=2, help="parallel renders")
    parser.add_argument(
        "--overwrite", action="store_true", help="rebuild even if OUT is up to date"
    )
    parser.add_argument(
        "--small-scores",
        action="store_true",
        help="take corpus pieces from the smallest score files only (quick builds for tests)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = Settings(
        minutes=args.minutes,
        max_pieces=args.max_pieces,
        max_piece_seconds=args.max_piece_seconds,
        heldout_fraction=args.heldout_fraction,
        seed=args.seed,
        sources=tuple(args.sources),
        small_scores=args.small_scores,
    )
    stamp = build_demo(args.out, settings, workers=args.workers, overwrite=args.overwrite)
    print_summary(stamp, Path(args.out))


if __name__ == "__main__":
    sys.exit(main())
