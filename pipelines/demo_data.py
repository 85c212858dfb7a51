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
import importlib.util
import json
import logging
import os
import random
import re
import shutil
import string
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from musiclm.tokenizers.source_records import held_out_share

log = logging.getLogger(__name__)

BUILDER_VERSION = 7
SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
OPENMSX_DIR = Path("/usr/share/games/openttd/baseset/openmsx")
WESNOTH_DIR = Path("/usr/share/games/wesnoth/1.16/data/core/music")
SINGULARITY_DIR = Path("/usr/share/games/singularity/music")
STAMP = "demo.json"
SOURCES = ("bach", "folk", "quartet", "openmsx", "wesnoth", "singularity")
# share of the total minutes each source aims for
SHARES = {
    "bach": 0.15,
    "folk": 0.1,
    "quartet": 0.15,
    "openmsx": 0.2,
    "wesnoth": 0.2,
    "singularity": 0.2,
}
# source -> Debian package (or PyPI package) it needs, and the path that proves it is there
REQUIREMENTS = {
    "bach": [("fluidsynth", "fluidsynth"), ("fluid-soundfont-gm", SOUNDFONT)],
    "openmsx": [("fluidsynth", "fluidsynth"), ("fluid-soundfont-gm", SOUNDFONT)],
    "wesnoth": [("wesnoth-1.16-music", WESNOTH_DIR)],
    "singularity": [("singularity-music", SINGULARITY_DIR)],
}
REQUIREMENTS["folk"] = REQUIREMENTS["quartet"] = REQUIREMENTS["bach"]
REQUIREMENTS["openmsx"] = [*REQUIREMENTS["openmsx"], ("openttd-openmsx", OPENMSX_DIR)]

# name -> (GM program, 0-based; caption phrase)
INSTRUMENTS = {
    "grand piano": (0, "a grand piano"),
    "electric piano": (4, "an electric piano"),
    "harpsichord": (6, "a harpsichord"),
    "vibraphone": (11, "a vibraphone"),
    "marimba": (12, "a marimba"),
    "drawbar organ": (16, "a drawbar organ"),
    "church organ": (19, "a church organ"),
    "accordion": (21, "an accordion"),
    "harmonica": (22, "a harmonica"),
    "nylon guitar": (24, "a nylon-string guitar"),
    "violin": (40, "a violin"),
    "harp": (46, "a harp"),
    "string ensemble": (48, "a string ensemble"),
    "choir": (52, "a choir"),
    "brass section": (61, "a brass section"),
    "clarinet": (71, "a clarinet"),
    "flute": (73, "a flute"),
    "synth lead": (81, "a sawtooth synth lead"),
}
STRING_QUARTET = "string quartet"  # keep the score's violin/viola/cello programs
STRING_PROGRAMS = {40: "violin", 41: "viola", 42: "cello"}
ARRANGEMENTS = {
    "bach": [
        "church organ",
        "grand piano",
        "harpsichord",
        "string ensemble",
        "choir",
        "brass section",
    ],
    "folk": [
        "violin",
        "flute",
        "accordion",
        "nylon guitar",
        "harmonica",
        "clarinet",
        "grand piano",
        "harp",
    ],
    "quartet": [STRING_QUARTET, STRING_QUARTET, "grand piano", "harpsichord", "church organ"],
    "openmsx": [
        "grand piano",
        "electric piano",
        "vibraphone",
        "marimba",
        "nylon guitar",
        "drawbar organ",
        "synth lead",
        "harp",
    ],
}
# corpus sources: absolute bpm range; openmsx: factor range on the file's own tempo
TEMPO = {"bach": (50, 100), "folk": (72, 150), "quartet": (60, 140), "openmsx": (0.8, 1.2)}
RENDER_FORMATS = [("wav", 44100), ("flac", 44100), ("flac", 48000), ("wav", 32000)]
ESSEN_GERMAN = ("altdeu", "ballad", "boehme", "dva", "erk", "fink", "kinder")
LICENSES = {
    "bach": "score: public domain (music21 corpus); sound: FluidR3_GM soundfont (MIT)",
    "folk": "score: public domain (music21 corpus); sound: FluidR3_GM soundfont (MIT)",
    "quartet": "score: public domain (music21 corpus); sound: FluidR3_GM soundfont (MIT)",
    "openmsx": "GPL-2.0 (OpenMSX for OpenTTD); sound: FluidR3_GM soundfont (MIT)",
    "wesnoth": "GPL-2.0-or-later (The Battle for Wesnoth music)",
    "singularity": "CC-BY-SA-3.0 (Endgame: Singularity music by Max McCracken)",
}


@dataclass(frozen=True)
class Settings:
    """What decides the dataset's content (the reuse stamp compares these)."""

    minutes: float = 90.0
    max_pieces: int | None = None
    max_piece_seconds: float = 150.0
    heldout_fraction: float = 0.15
    seed: int = 0
    sources: tuple[str, ...] = SOURCES
    small_scores: bool = False  # corpus pieces only from the smallest score files (fast tests)


@dataclass(frozen=True)
class Piece:
    """One candidate piece: ``origin`` is a file path or a music21 corpus path."""

    source: str
    piece_id: str
    origin: str
    number: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, hash=False)


# ----- system check ------------------------------------------------------------------------
def missing_packages(sources: tuple[str, ...]) -> list[str]:
    """Debian packages the chosen sources need and this machine lacks."""
    missing = []
    for source in sources:
        for package, proof in REQUIREMENTS[source]:
            present = shutil.which(proof) if isinstance(proof, str) else Path(proof).exists()
            if not present and package not in missing:
                missing.append(package)
    return missing


def require_packages(sources: tuple[str, ...]) -> None:
    """Raise ``SystemExit`` naming the Debian packages to install, if any is missing."""
    if {"bach", "folk", "quartet", "openmsx"} & set(sources) and not importlib.util.find_spec(
        "music21"
    ):
        raise SystemExit(
            "The demo music needs the Python package music21 (the scores and MIDI handling): "
            "`make install` installs it, or `.venv/bin/pip install -e '.[demo]'`."
        )
    missing = missing_packages(sources)
    if not missing:
        return
    names = " ".join(missing)
    who = "" if os.geteuid() == 0 else "sudo "
    raise SystemExit(
        f"The demo music needs these Debian packages, which are not installed: {names}.\n"
        f"Install them with:  {who}apt-get install {names}   (or `make system-deps` as root),\n"
        f"or leave their sources out with --sources."
    )


# ----- candidates ----------------------------------------------------------------------------
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()


def candidates(source: str) -> list[Piece]:
    """Every piece a source offers, in a fixed order."""
    if source in ("bach", "folk", "quartet"):
        from music21 import corpus
    if source == "bach":
        paths = [p for p in corpus.getComposer("bach") if re.match(r"bwv\d+\.\d+\.mxl$", p.name)]
        return [Piece(source, _slug(p.stem), str(p)) for p in sorted(paths)]
    if source == "folk":
        pieces = [
            Piece(source, "ryans_" + _slug(p.stem), str(p), extra={"collection": "ryans"})
            for p in sorted(corpus.getComposer("ryansMammoth"))
        ]
        for path in sorted(corpus.getComposer("essenFolksong")):
            if path.stem.rstrip("0123456789") not in ESSEN_GERMAN:
                continue
            numbers = re.findall(r"^X:\s*(\d+)", path.read_text(errors="replace"), re.M)
            pieces += [
                Piece(source, f"essen_{path.stem}_{n}", str(path), int(n), {"collection": "essen"})
                for n in numbers
            ]
        return pieces
    if source == "quartet":
        pieces = []
        for composer in ("haydn", "mozart", "beethoven"):
            for path in sorted(corpus.getComposer(composer)):
                if path.suffix != ".mxl" or "k545" in path.parts:
                    continue
                home = next(d for d in path.parents if d.name == composer)
                pid = f"{composer}_{_slug(str(path.relative_to(home).with_suffix('')))}"
                pieces.append(Piece(source, pid, str(path), extra={"composer": composer.title()}))
        return pieces
    if source == "openmsx":
        return [Piece(source, _slug(p.stem), str(p)) for p in sorted(OPENMSX_DIR.glob("*.mid"))]
    directory = WESNOTH_DIR if source == "wesnoth" else SINGULARITY_DIR
    return [
        Piece(source, _slug(p.relative_to(directory).with_suffix("").as_posix()), str(p))
        for p in sorted(directory.rglob("*.ogg"))
    ]


# ----- captions ------------------------------------------------------------------------------
def tempo_word(bpm: float) -> str:
    if bpm < 76:
        return "slow"
    if bpm < 108:
        return "moderately paced"
    return "fast" if bpm < 160 else "very fast"


def _article(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def estimate_key(weights: np.ndarray) -> tuple[str, float]:
    """('G major', correlation) from [12] pitch-class durations.

    music21's default key analysis (Aarden-Essen profiles, as ``Score.analyze('key')``).
    """
    from music21 import analysis, note, stream

    notes = stream.Stream()
    for pc, weight in enumerate(weights):
        if weight > 0:
            notes.append(note.Note(60 + pc, quarterLength=max(0.25, round(weight * 4) / 4)))
    if not len(notes):
        return "", 0.0
    key = analysis.discrete.AardenEssen().getSolution(notes)
    tonic = key.tonic.name.replace("-", "-flat").replace("#", "-sharp")
    return f"{tonic} {key.mode}", float(key.correlationCoefficient)


def _instrument_phrase(arrangement: str, programs: dict[int, int]) -> tuple[str, list[str]]:
    if arrangement == STRING_QUARTET:
        names = sorted(
            {STRING_PROGRAMS[p] for p in programs.values()}, key="violin viola cello".find
        )
        return "a string quartet (" + ", ".join(names) + ")", [*names, "strings"]
    return INSTRUMENTS[arrangement][1], [arrangement]


# ----- building one piece -----------------------------------------------------------------------
_FILE_NAME = re.compile(r"\.(mxl|xml|musicxml|krn|abc)$", re.I)


def _score_midi(piece: Piece, midi_path: Path) -> dict[str, Any]:
    """Write the corpus score to MIDI; return title facts from its metadata."""
    from music21 import corpus, key, meter, tempo

    score = corpus.parse(piece.origin, number=piece.number)
    for mark in list(score.recurse().getElementsByClass(tempo.MetronomeMark)):
        mark.activeSite.remove(mark)
    # some ABC tunes parse with one signature object in two measures; MIDI export refuses it
    seen: set[int] = set()
    for sig in list(score.recurse().getElementsByClass((meter.TimeSignature, key.KeySignature))):
        if id(sig) in seen:
            sig.activeSite.remove(sig)
        seen.add(id(sig))
    score.write("midi", fp=str(midi_path))
    if piece.source == "bach":
        return {"title": "BWV " + Path(piece.origin).stem.removeprefix("bwv")}
    meta = score.metadata
    names = [meta.title, meta.movementName] if meta else []
    title = next(
        (n.strip() for n in names if n and not _FILE_NAME.search(n) and not n.strip().isdigit()),
        "",
    )
    return {"title": string.capwords(title) if title.isupper() else title}


def _render_caption(piece: Piece, arrangement: str, facts: Any, title: str) -> dict[str, Any]:
    instrument, instrument_tags = _instrument_phrase(arrangement, facts.programs)
    bpm = round(float(facts.bpm))
    word = tempo_word(bpm)
    key, confidence = estimate_key(facts.pitch_weights)
    key_part = f" in {key}" if key and confidence >= 0.7 else ""
    drums = " with drums" if facts.drums else ""
    tags = [word, *instrument_tags]
    if piece.source == "bach":
        text = f"a {word} Bach chorale played on {instrument}{key_part}"
        tags += ["Bach", "chorale", "baroque"]
    elif piece.source == "folk" and piece.extra["collection"] == "essen":
        text = f"a {word} German folk song played on {instrument}{key_part}"
        tags += ["folk song", "German"]
    elif piece.source == "folk":
        name, _, dance = title.partition("--")
        dance = dance.strip().lower().replace("slipjig", "slip jig") or "dance tune"
        text = f"a {word} folk {dance} played on {instrument}{key_part}"
        tags += ["folk", dance]
        title = name.strip()
    elif piece.source == "quartet":
        composer = piece.extra["composer"]
        played = "played by" if arrangement == STRING_QUARTET else "arranged for"
        text = (
            f"a {word} movement of a string quartet by {composer} {played} {instrument}{key_part}"
        )
        tags += ["classical", "string quartet", composer]
    else:
        text = f"a {word} game music tune from OpenTTD played on {instrument}{drums}{key_part}"
        tags += ["game music", "OpenTTD"] + (["drums"] if facts.drums else [])
    if title:
        text += f" ('{title}')"
    if key_part:
        tags.append(key)
    return {
        "caption": text,
        "tags": tags,
        "title": title,
        "instrument": arrangement,
        "gm_programs": sorted(set(facts.programs.values())),
        "drums": facts.drums,
        "bpm": bpm,
        "tempo": word,
        "key": key if key_part else "",
        "key_confidence": round(confidence, 3),
    }


def build_midi_piece(piece: Piece, staging: Path, settings: Settings) -> dict[str, Any]:
    """Arrange, render, cut and write one MIDI piece; return its sidecar fields."""
    from musiclm.pipelines.midi_render import arrange_midi, render_midi

    rng = random.Random(f"{settings.seed}:{piece.source}:{piece.piece_id}")
    arrangement = rng.choice(ARRANGEMENTS[piece.source])
    fmt, rate = rng.choice(RENDER_FORMATS)
    low, high = TEMPO[piece.source]
    out_dir = staging / piece.source
    out_dir.mkdir(parents=True, exist_ok=True)
    midi_path = out_dir / f"{piece.piece_id}.mid"
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "score.mid"
        if piece.source == "openmsx":
            shutil.copyfile(piece.origin, raw)
            title = re.sub(r"_(redfarn|imuh3)$", "", Path(piece.origin).stem).replace("_", " ")
            title, tempo = title.title(), {"tempo_factor": rng.uniform(low, high)}
        else:
            title = _score_midi(piece, raw)["title"]
            tempo = {"bpm": rng.uniform(low, high)}
        programs = None if arrangement == STRING_QUARTET else [INSTRUMENTS[arrangement][0]]
        cut = settings.max_piece_seconds
        facts = arrange_midi(raw, midi_path, programs, max_seconds=cut, **tempo)
        if arrangement == STRING_QUARTET and not set(facts.programs.values()) <= set(
            STRING_PROGRAMS
        ):
            arrangement = "string ensemble"  # the score lacks string instruments: set them
            facts = arrange_midi(raw, midi_path, [48], max_seconds=cut, **tempo)
        wav = Path(tmp) / "render.wav"
        render_midi(midi_path, wav, SOUNDFONT, rate)
        audio, sr = sf.read(str(wav), dtype="float32", always_2d=True)
    audio = _cut(audio, sr, settings.max_piece_seconds)
    audio_path = out_dir / f"{piece.piece_id}.{fmt}"
    sf.write(str(audio_path), audio, sr, format=fmt.upper(), subtype="PCM_16")
    info = _render_caption(piece, arrangement, facts, title)
    info.update(origin=_origin(piece), seconds=round(len(audio) / sr, 3))
    return {"audio": audio_path.name, "midi": midi_path.name, **info}


def _cut(audio: np.ndarray, sr: int, max_seconds: float, fade: float = 1.5) -> np.ndarray:
    """[n, c] -> at most ``max_seconds`` with a fade-out when cut."""
    n = int(max_seconds * sr)
    if len(audio) <= n:
        return audio
    audio = audio[:n].copy()
    k = min(n, int(fade * sr))
    audio[n - k :] *= np.linspace(1.0, 0.0, k, dtype=np.float32)[:, None]
    return audio


def _origin(piece: Piece) -> str:
    suffix = f"#{piece.number}" if piece.number is not None else ""
    if "music21/corpus/" in piece.origin:
        return "music21 corpus: " + piece.origin.split("music21/corpus/")[1] + suffix
    return piece.origin + suffix


def build_recorded_piece(piece: Piece, staging: Path, settings: Settings) -> dict[str, Any]:
    """Copy (or cut and re-encode as Ogg Vorbis at its own rate) one recorded piece."""
    with sf.SoundFile(piece.origin) as handle:
        tags = handle.copy_metadata()
        seconds = handle.frames / handle.samplerate
    title = tags.get("title", "").strip()
    if not title or seconds < 8.0:
        raise ValueError(f"{piece.origin}: no title tag or shorter than 8 s (not a music piece)")
    out_dir = staging / piece.source
    out_dir.mkdir(parents=True, exist_ok=True)
    audio_path = out_dir / f"{piece.piece_id}.ogg"
    if seconds <= settings.max_piece_seconds:
        shutil.copyfile(piece.origin, audio_path)
    else:
        with sf.SoundFile(piece.origin) as handle:
            sr = handle.samplerate
            audio = handle.read(
                int(settings.max_piece_seconds * sr), dtype="float32", always_2d=True
            )
        audio = _cut(audio, sr, settings.max_piece_seconds)
        _write_vorbis(audio_path, audio, sr)
        seconds = len(audio) / sr
    artist = tags.get("artist", "").strip()
    by = f" by {artist}" if artist else ""
    if piece.source == "wesnoth":
        genre = tags.get("genre", "").strip()
        style = "game music" if genre.lower() in ("", "game") else f"{genre.lower()} music"
        caption = f"'{title}'{by}, {style} from the soundtrack of The Battle for Wesnoth"
        labels = [style, "game soundtrack", "The Battle for Wesnoth"]
    else:
        # the package README: tracks made with the Psycle and Renoise trackers
        caption = (
            f"'{title}'{by}, electronic tracker music from the soundtrack of Endgame: Singularity"
        )
        labels = ["electronic", "tracker music", "game soundtrack", "Endgame: Singularity"]
    return {
        "audio": audio_path.name,
        "caption": caption,
        "tags": labels + ([artist] if artist else []),
        "title": title,
        "artist": artist,
        "album": tags.get("album", ""),
        "origin": piece.origin,
        "seconds": round(seconds, 3),
    }


def _write_vorbis(path: Path, audio: np.ndarray, sr: int, block: int = 1 << 15) -> None:
    """Write [n, c] as Ogg Vorbis in blocks (libsndfile's Vorbis encoder can overflow its
    stack when one call writes millions of frames)."""
    with sf.SoundFile(str(path), "w", sr, audio.shape[1], format="OGG", subtype="VORBIS") as out:
        for lo in range(0, len(audio), block):
            out.write(audio[lo : lo + block])


def build_piece(piece: Piece, staging: Path, settings: Settings) -> dict[str, Any]:
    if piece.source in ("wesnoth", "singularity"):
        return build_recorded_piece(piece, staging, settings)
    return build_midi_piece(piece, staging, settings)


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
