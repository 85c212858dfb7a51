"""The demo music's sources: what each offers, what it needs, how it is arranged.

The source names and their shares of the minutes, the Debian/PyPI packages each needs (and
:func:`require_packages`, which names the missing ones), the General MIDI instruments and
tempo ranges pieces are arranged with, the licences, the :class:`Settings` that decide a
build and the :class:`Piece` candidates each source offers (:func:`candidates`). See
:mod:`musiclm.pipelines.demo_data` for the dataset these make.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
OPENMSX_DIR = Path("/usr/share/games/openttd/baseset/openmsx")
WESNOTH_DIR = Path("/usr/share/games/wesnoth/1.16/data/core/music")
SINGULARITY_DIR = Path("/usr/share/games/singularity/music")
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
