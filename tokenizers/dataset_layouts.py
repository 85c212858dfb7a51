"""Dataset layouts: one :class:`~musiclm.tokenizers.source_records.SourceRecord` per audio
input, read from four layouts (pure Python and streaming, like the records).

Layouts (``read_sources`` picks one from the path; ``kind=`` forces it):

``folder``
    A directory of audio files, searched recursively (hidden files and folders are
    skipped). Audio = the extensions in
    :data:`~musiclm.tokenizers.source_records.AUDIO_EXTENSIONS` (case-insensitive).
    Optional sidecars share the audio file's stem: ``song.txt`` (the caption) and/or
    ``song.json`` (``caption``/``description``/``text`` and tags such as ``genre``,
    ``moods``, ``instrument``, ``title``, ``artist``, ``tags``, ``keywords``). A file with
    another extension is not listed in a folder (nothing tells it from a stray document);
    list it in a JSONL manifest, or pass the file itself to ``read_sources``, and it is
    taken as audio whatever its extension.
``jsonl``
    audiocraft's manifest: one JSON object per line with ``path`` (relative to the
    manifest's directory, or absolute), ``duration`` and ``sample_rate``, optionally
    ``start``/``end`` seconds and inline caption fields; the sidecar ``<audio>.json``
    beside each audio file (audiocraft's ``MusicInfo``: ``description``, ``genre``,
    ``moods``, ``instrument``, ``title``, ``artist``, ``keywords``, ...). ``.jsonl.gz`` too.
``musiccaps``
    A MusicCaps-style CSV (``ytid, start_s, end_s, caption, aspect_list, ...``) with audio
    files named ``<ytid>.<ext>`` in an audio directory (``audio/``, ``wav/`` or the CSV's
    own directory). A file as long as the labelled segment (+1 s) is taken as already cut;
    a longer one is read from ``start_s`` to ``end_s``.
``fma``
    FMA's ``tracks.csv`` (two header rows, ``album/artist/set/track`` over the field names,
    then a ``track_id`` row) with audio at ``<audio_dir>/<id[:3]>/<id>.mp3`` (``id`` zero-
    padded to 6 digits, e.g. ``fma_small/000/000002.mp3``). Tracks without an audio file
    are not part of the downloaded subset and are skipped; ``genres.csv`` beside
    ``tracks.csv``, if present, names the genre ids.

Nothing here opens audio (except MusicCaps' header check), so a broken file still becomes
a record and the pipeline reports it as a failure. Keys, captions and sidecars are those of
:mod:`musiclm.tokenizers.source_records`.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from musiclm.tokenizers.source_records import (
    SourceRecord,
    as_list,
    build_caption,
    is_audio_name,
    jsonable,
    make_key,
    read_file,
    read_folder,
    read_sidecars,
    source_record,
)

log = logging.getLogger(__name__)

SOURCE_KINDS = ("folder", "jsonl", "musiccaps", "fma")
JSONL_NAMES = ("manifest.jsonl", "manifest.jsonl.gz", "data.jsonl", "data.jsonl.gz")


# ----- JSONL (audiocraft) ----------------------------------------------------------------
def _open_text(path: Path) -> io.TextIOBase:
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return path.open(encoding="utf-8")


def read_jsonl(manifest: str | Path) -> Iterator[SourceRecord]:
    """Records of an audiocraft-style JSONL manifest (paths relative to its directory)."""
    manifest = Path(manifest).resolve()
    root = manifest.parent
    with _open_text(manifest) as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                raw = row["path"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(
                    f"{manifest}, line {number}: not a JSON object with a 'path' field ({err}); "
                    "each line must look like "
                    '{"path": "audio/x.wav", "duration": 12.5, "sample_rate": 44100}'
                ) from err
            if "://" in raw:
                yield SourceRecord.from_dict(
                    {"key": make_key(raw), "path": raw, "metadata": jsonable(row)}
                )
                continue
            path = Path(raw) if os.path.isabs(raw) else root / raw
            info = read_sidecars(path)
            info.update({k: v for k, v in row.items() if k not in ("path", "start", "end")})
            yield source_record(root, path, info, row.get("start"), row.get("end"))


# ----- MusicCaps -------------------------------------------------------------------------
def _audio_index(directory: Path) -> dict[str, Path]:
    """stem -> audio file in ``directory`` (one listing, no per-row globbing)."""
    index: dict[str, Path] = {}
    with os.scandir(directory) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.is_file() and is_audio_name(entry.name):
                index.setdefault(os.path.splitext(entry.name)[0], Path(entry.path))
    return index


def _already_cut(path: Path, seconds: float) -> bool:
    import soundfile  # only header reading; keeps module import light

    try:
        return soundfile.info(str(path)).duration <= seconds + 1.0
    except Exception:  # a broken file: let the pipeline report it on decoding
        return False


def read_musiccaps(
    csv_path: str | Path, audio_dir: str | Path | None = None
) -> Iterator[SourceRecord]:
    """Records of a MusicCaps-style CSV; rows without an audio file are logged and skipped."""
    csv_path = Path(csv_path).resolve()
    root = csv_path.parent
    if audio_dir is None:
        audio_dir = next((root / d for d in ("audio", "wav") if (root / d).is_dir()), root)
    audio_dir = Path(audio_dir).resolve()
    index = _audio_index(audio_dir)
    missing = 0
    with csv_path.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            ytid = (row.get("ytid") or "").strip()
            path = index.get(ytid)
            if path is None:
                missing += 1
                continue
            start, end = float(row.get("start_s") or 0), float(row.get("end_s") or 0)
            cut = end <= start or _already_cut(path, end - start)
            info = {
                "caption": row.get("caption", ""),
                "tags": as_list(row.get("aspect_list")),
                "audioset_labels": as_list(row.get("audioset_positive_labels")),
                "ytid": ytid,
                "start_s": start,
                "end_s": end,
            }
            info.update(
                {k: v for k, v in row.items() if k not in info and k not in ("aspect_list",)}
            )
            info.pop("audioset_positive_labels", None)
            yield source_record(root, path, info, None if cut else start, None if cut else end)
    if missing:
        log.warning("%s: %d rows have no audio file in %s; skipped", csv_path, missing, audio_dir)


# ----- FMA -------------------------------------------------------------------------------
def _fma_columns(reader: Iterator[list[str]]) -> list[str]:
    """``level0.level1`` names from FMA's header rows (level 0 forward-filled)."""
    top, sub = next(reader), next(reader)
    names, current = [], ""
    for i, name in enumerate(sub):
        current = (top[i] if i < len(top) else "").strip() or current
        names.append(f"{current}.{name.strip()}" if current and name.strip() else name.strip())
    return names


def _genre_names(tracks_csv: Path) -> dict[str, str]:
    genres = tracks_csv.with_name("genres.csv")
    if not genres.is_file():
        return {}
    with genres.open(encoding="utf-8", newline="") as handle:
        return {row["genre_id"]: row["title"] for row in csv.DictReader(handle) if row.get("title")}


def find_fma_audio(root: Path) -> Path | None:
    """The FMA audio folder under ``root``: ``fma_full``/``fma_large``/... or ``audio``."""
    for name in ("fma_full", "fma_large", "fma_medium", "fma_small", "audio"):
        if (root / name).is_dir():
            return root / name
    return None


def read_fma(
    tracks_csv: str | Path, audio_dir: str | Path | None = None, subset: str | None = None
) -> Iterator[SourceRecord]:
    """Records of FMA's ``tracks.csv`` whose mp3 exists in ``audio_dir`` (streamed row by row).

    ``subset`` (``small``/``medium``/``large``) keeps only tracks of that subset (FMA's
    subsets nest: small is inside medium, medium inside large). Caption: genres, title,
    artist (e.g. ``"Hip-Hop music; 'Food' by AWOL"``); tags: all genres plus the track tags.
    """
    tracks_csv = Path(tracks_csv).resolve()
    if audio_dir is None:
        for base in (tracks_csv.parent, tracks_csv.parent.parent):
            audio_dir = find_fma_audio(base)
            if audio_dir is not None:
                break
        else:
            raise FileNotFoundError(
                f"{tracks_csv}: no FMA audio folder (fma_small/, fma_medium/, fma_large/, "
                "fma_full/ or audio/) beside it or one level up; pass audio_dir"
            )
    audio_dir = Path(audio_dir).resolve()
    order = ("small", "medium", "large", "full")
    keep = set(order[: order.index(subset) + 1]) if subset else None
    names = _genre_names(tracks_csv)
    skipped = 0
    with tracks_csv.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        columns = _fma_columns(reader)
        for values in reader:
            if not values or not values[0].strip().isdigit():
                continue  # the 'track_id' index-name row, blank lines
            row = dict(zip(columns, values, strict=False))
            if keep is not None and row.get("set.subset") not in keep:
                continue
            track_id = int(values[0])
            tid = f"{track_id:06d}"
            path = audio_dir / tid[:3] / f"{tid}.mp3"
            if not path.is_file():
                skipped += 1
                continue
            top = row.get("track.genre_top", "").strip()
            ids = as_list(row.get("track.genres_all") or row.get("track.genres"))
            genres = list(dict.fromkeys([g for g in [top] if g] + [names.get(i, "") for i in ids]))
            info = {
                "genre": [g for g in genres if g],
                "title": row.get("track.title", ""),
                "artist": row.get("artist.name", ""),
                "album": row.get("album.title", ""),
                "track_id": track_id,
                "license": row.get("track.license", ""),
                "duration": row.get("track.duration", ""),
                "split": row.get("set.split", ""),
                "subset": row.get("set.subset", ""),
            }
            caption, tags = build_caption(info)
            track_tags = as_list(row.get("track.tags"))
            yield source_record(
                audio_dir,
                path,
                {**info, "caption": caption, "tags": list(dict.fromkeys([*tags, *track_tags]))},
            )
    if skipped:
        log.info(
            "%s: %d tracks have no audio in %s (not in this subset)", tracks_csv, skipped, audio_dir
        )


# ----- dispatch --------------------------------------------------------------------------
def detect_kind(location: str | Path) -> tuple[str, Path]:
    """(kind, file or folder to read) for a dataset root, a manifest or one audio file."""
    path = Path(location)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such dataset file or folder")
    if path.is_file():
        name = path.name.lower()
        if name.endswith((".jsonl", ".jsonl.gz")):
            return "jsonl", path
        if name.endswith(".csv"):
            return _csv_kind(path), path
        return "file", path
    for name in JSONL_NAMES:
        if (path / name).is_file():
            return "jsonl", path / name
    for candidate in (path / "tracks.csv", path / "fma_metadata" / "tracks.csv"):
        if candidate.is_file():
            return "fma", candidate
    for candidate in sorted(path.glob("*.csv")):
        if candidate.name.lower().startswith("musiccaps") or _csv_kind(candidate) == "musiccaps":
            return "musiccaps", candidate
    return "folder", path


def _csv_kind(path: Path) -> str:
    with path.open(encoding="utf-8", newline="") as handle:
        header = next(csv.reader(handle), [])
    fields = {h.strip() for h in header}
    if "ytid" in fields:
        return "musiccaps"
    if {"track", "album", "artist"} & fields:
        return "fma"
    raise ValueError(
        f"{path}: unknown CSV layout (header {header[:6]}); expected a MusicCaps CSV "
        "(ytid, start_s, end_s, caption, aspect_list) or FMA's tracks.csv"
    )


def read_sources(location: str | Path, kind: str | None = None) -> Iterator[SourceRecord]:
    """Records of a dataset: a folder, a JSONL manifest, a MusicCaps CSV, FMA's tracks.csv.

    ``location`` may also be a dataset root holding ``manifest.jsonl``/``data.jsonl(.gz)``,
    ``tracks.csv`` (or ``fma_metadata/tracks.csv``) or a ``musiccaps*.csv``, or one audio
    file. ``kind`` (one of :data:`SOURCE_KINDS`) skips the detection.
    """
    if kind is not None and kind not in SOURCE_KINDS:
        raise ValueError(f"unknown source kind {kind!r}; use one of {SOURCE_KINDS}")
    path = Path(location)
    if kind is None or (kind != "folder" and path.is_dir()):
        detected, path = detect_kind(location)
        if kind is not None and detected != kind:
            raise ValueError(f"{location}: asked for a {kind} dataset but found a {detected} one")
        kind = detected
    readers = {
        "folder": read_folder,
        "jsonl": read_jsonl,
        "musiccaps": read_musiccaps,
        "fma": read_fma,
        "file": read_file,
    }
    return readers[kind](path)
