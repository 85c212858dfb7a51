"""One :class:`SourceRecord` per audio input: its stable key, its sidecar caption and tags.

Pure Python and streaming (iterators; nothing holds the whole dataset list), so the Beam
pipelines, the trainers' data modules and small scripts all list audio files the same way
(:mod:`musiclm.tokenizers.dataset_layouts` reads the other dataset layouts into these
records).

* Audio = the extensions in :data:`AUDIO_EXTENSIONS` (case-insensitive), the one list the
  project uses.
* Sidecars share the audio file's stem: ``song.txt`` (the caption) and/or ``song.json``
  (``caption``/``description``/``text`` and tags such as ``genre``, ``moods``,
  ``instrument``, ``title``, ``artist``, ``tags``, ``keywords``).
* Keys are stable (a function of the relative path and segment only), unique, free of
  ``.`` (webdataset splits keys on the first dot), of ``/`` and of whitespace, and
  NFC-normalized unicode; :func:`held_out` splits sources into train/held-out by key.

Nothing here opens audio, so a broken file still becomes a record and the pipeline reports
it as a failure.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

AUDIO_EXTENSIONS = (
    ".wav",
    ".flac",
    ".ogg",
    ".oga",
    ".opus",
    ".mp3",
    ".aiff",
    ".aif",
    ".aifc",
)
CAPTION_FIELDS = ("caption", "description", "text")


@dataclass(frozen=True)
class SourceRecord:
    """One audio input: where it is, which part of it, and what describes it.

    ``path`` is absolute (or a URL kept as given); ``start``/``end`` are seconds in the
    file (``None``: from the beginning / to the end); ``caption`` may be empty; ``tags``
    are short labels (genres, moods, instruments, aspects); ``metadata`` holds the rest
    of what the source said (JSON-serializable).
    """

    key: str
    path: str
    start: float | None = None
    end: float | None = None
    caption: str = ""
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable form (``from_dict`` inverts it)."""
        out = asdict(self)
        out["tags"] = list(self.tags)
        out["metadata"] = dict(self.metadata)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SourceRecord:
        return cls(
            key=values["key"],
            path=values["path"],
            start=values.get("start"),
            end=values.get("end"),
            caption=values.get("caption", ""),
            tags=tuple(values.get("tags", ())),
            metadata=dict(values.get("metadata", {})),
        )


# ----- keys ------------------------------------------------------------------------------
_UNSAFE = re.compile(r"[\s./\\:*?\"<>|#%\x00-\x1f]+")


def make_key(relative: str, start: float | None = None, end: float | None = None) -> str:
    """Stable, unique webdataset key of a relative path (+ segment).

    Readable part: the path without its extension, ``/`` -> ``-``, dots, whitespace and
    unsafe characters -> ``_``; then 8 hex digits of a hash of the exact (NFC) relative
    path and segment, so ``a.b.wav`` and ``a_b.wav`` or ``x.wav`` and ``x.flac`` differ.
    """
    relative = unicodedata.normalize("NFC", relative.replace("\\", "/")).strip("/")
    stem, ext = os.path.splitext(relative)
    if ext.lower() not in AUDIO_EXTENSIONS:
        stem = relative
    readable = "-".join(_UNSAFE.sub("_", part).strip("_") or "_" for part in stem.split("/"))
    identity = relative
    if start is not None or end is not None:
        segment = f"{_ms(start)}-{_ms(end)}"
        readable += f"-{segment}"
        identity += f"@{segment}"
    digest = hashlib.blake2b(identity.encode(), digest_size=4).hexdigest()
    return f"{readable}-{digest}"


def _ms(seconds: float | None) -> str:
    return "x" if seconds is None else str(round(seconds * 1000))


# ----- captions --------------------------------------------------------------------------
def as_list(value: Any) -> list[str]:
    """Tags from a list, a comma-separated string, or a Python/JSON list literal."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text.strip("[]").split(",")
        else:
            value = text.split(",")
    if not isinstance(value, Iterable):
        value = [value]
    return [str(v).strip().strip("'\"").strip() for v in value if str(v).strip()]


def build_caption(info: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    """Caption and tags from sidecar-style fields.

    An explicit ``caption``/``description``/``text`` wins. Otherwise the caption is composed
    from what is known, e.g. ``"rock, pop music with guitar; energetic mood; 'Food' by
    AWOL; live, lo-fi"``; empty when nothing is known. Tags collect genres, moods,
    instruments and keywords.
    """
    genres = as_list(info.get("genre")) + as_list(info.get("genres"))
    moods = as_list(info.get("moods")) + as_list(info.get("mood"))
    instruments = as_list(info.get("instrument")) + as_list(info.get("instruments"))
    keywords = as_list(info.get("keywords")) + as_list(info.get("tags"))
    tags = tuple(dict.fromkeys(genres + moods + instruments + keywords))
    for name in CAPTION_FIELDS:
        text = info.get(name)
        if isinstance(text, str) and text.strip():
            return " ".join(text.split()), tags
    parts = []
    if genres or instruments:
        phrase = f"{', '.join(genres)} music" if genres else "music"
        if instruments:
            phrase += f" with {', '.join(instruments)}"
        parts.append(phrase)
    if moods:
        parts.append(f"{', '.join(moods)} mood")
    title, artist = str(info.get("title") or "").strip(), str(info.get("artist") or "").strip()
    if title:
        parts.append(f"'{title}'" + (f" by {artist}" if artist else ""))
    elif artist:
        parts.append(f"by {artist}")
    if keywords:
        parts.append(", ".join(keywords))
    return "; ".join(parts), tags


def read_sidecars(audio: Path) -> dict[str, Any]:
    """Fields of ``<stem>.json`` and ``<stem>.txt`` beside ``audio`` (the txt is the caption).

    A sidecar that cannot be parsed is logged and ignored: it never hides the audio.
    """
    info: dict[str, Any] = {}
    side = audio.with_suffix(".json")
    if side.is_file():
        try:
            loaded = json.loads(side.read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                info.update(loaded)
            else:
                log.warning("%s: sidecar is not a JSON object; ignored", side)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            log.warning("%s: unreadable sidecar (%s); ignored", side, err)
    text = audio.with_suffix(".txt")
    if text.is_file():
        try:
            caption = " ".join(text.read_text(encoding="utf-8").split())
            if caption:
                info["caption"] = caption
        except (OSError, UnicodeDecodeError) as err:
            log.warning("%s: unreadable caption file (%s); ignored", text, err)
    return info


def source_record(
    root: Path,
    path: Path,
    info: Mapping[str, Any],
    start: float | None = None,
    end: float | None = None,
) -> SourceRecord:
    """The record of audio ``path`` under dataset ``root``, described by ``info`` (sidecar-
    style fields): caption and tags built from them, the rest kept as metadata."""
    caption, tags = build_caption(info)
    try:
        relative = path.relative_to(root).as_posix()
    except ValueError:
        relative = path.as_posix()
    metadata = {k: v for k, v in info.items() if k not in CAPTION_FIELDS}
    metadata["relative_path"] = relative
    return SourceRecord(
        key=make_key(relative, start, end),
        path=str(path),
        start=start,
        end=end,
        caption=caption,
        tags=tags,
        metadata=jsonable(metadata),
    )


def jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` as plain JSON types (what is not JSON becomes its ``str``)."""
    return json.loads(json.dumps(dict(values), default=str))


# ----- folder ----------------------------------------------------------------------------
def is_audio_name(name: str) -> bool:
    return name.lower().endswith(AUDIO_EXTENSIONS)


def read_folder(root: str | Path) -> Iterator[SourceRecord]:
    """Every audio file under ``root`` (recursive, sorted, hidden entries skipped)."""
    root = Path(root).resolve()
    for directory, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        base = Path(directory)
        for name in sorted(files):
            if not name.startswith(".") and is_audio_name(name):
                path = base / name
                yield source_record(root, path, read_sidecars(path))


def read_file(path: str | Path) -> Iterator[SourceRecord]:
    """One record for one file given explicitly (taken as audio whatever its extension)."""
    path = Path(path).resolve()
    yield source_record(path.parent, path, read_sidecars(path))


# ----- train / held-out ------------------------------------------------------------------
def held_out(key: str, fraction: float) -> bool:
    """Whether source ``key`` belongs to the held-out fraction (stable across runs)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def held_out_share(items: Sequence[T], fraction: float, rank: Callable[[T], Any]) -> list[T]:
    """The ``round(fraction x n)`` of the ``n`` items held out: those of lowest ``rank`` (a
    stable hash), at least 1 and at most ``n - 1`` when ``n >= 2``; none at ``fraction <= 0``
    or ``n < 2``, all at ``fraction >= 1``. Used where whole units (shards, pieces) are held
    out, so the share is exact rather than :func:`held_out`'s per-key draw."""
    if fraction <= 0 or not items:
        return []
    if fraction >= 1:
        return list(items)
    if len(items) < 2:
        return []
    take = min(len(items) - 1, max(1, round(fraction * len(items))))
    return sorted(items, key=rank)[:take]
