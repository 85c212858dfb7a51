"""Building one demo piece: render or copy its audio and write a caption that is true.

A MIDI piece (:func:`build_midi_piece`) gets a seeded instrument and tempo, is cut and
rendered with fluidsynth (:mod:`musiclm.pipelines.midi_render`); its caption states the
collection, genre, instrument, tempo word (:func:`tempo_word`) and, when clear, the key
(:func:`estimate_key`). A recorded piece (:func:`build_recorded_piece`) keeps its format
and rate and is captioned from its Vorbis comments. :func:`build_piece` picks one.
"""

from __future__ import annotations

import random
import re
import shutil
import string
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from musiclm.pipelines.demo_sources import (
    ARRANGEMENTS,
    INSTRUMENTS,
    RENDER_FORMATS,
    SOUNDFONT,
    STRING_PROGRAMS,
    STRING_QUARTET,
    TEMPO,
    Piece,
    Settings,
)


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
