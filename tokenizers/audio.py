"""Audio reading: decode any file libsndfile reads, in blocks, to mono float at a target rate.

Formats: wav, flac, ogg/vorbis, ogg/opus, mp3, aiff, ... (whatever ``soundfile`` opens).
Long files are decoded and resampled block by block with overlap, so memory holds the
output plus one block, never the whole file at its native rate and channel count.

What cannot be music is rejected with :class:`AudioError`, whose message names the file
and the reason: undecodable bytes, no audio frames, NaN or infinite samples, a decode
error mid-file, an Ogg stream without its end-of-stream page. Silence, stereo or
multichannel audio and any sample rate are valid input.

Truncation is judged by what is missing, not by exact counts. A header's frame count
is not always exact: an mp3 without a Xing/LAME header has an estimate from its size
and bitrate (off by a few 1152-sample frames), and a Vorbis stream's last granule
position can run past its last decoded sample. So a file that decodes to at most
``max_missing_seconds`` (default 1 s) fewer frames than its header says is read from
the frames that decode; a larger shortfall -- a file cut short -- is an
:class:`AudioError`. :class:`DecodeStats` tells the caller both counts.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

DEFAULT_BLOCK_SECONDS = 60.0
# Largest shortfall of decoded frames against the header that is not damage. Real files
# miss up to ~0.4 s (mp3 length estimates: 0.25 and 0.38 s on 22.05 kHz game music, a
# few hundred ms on CBR files without a Xing header) or ~100 frames (Vorbis granule
# overshoot); a file cut anywhere before its last second misses more.
DEFAULT_MAX_MISSING_SECONDS = 1.0


class AudioError(ValueError):
    """An input that cannot be read as music. ``str()`` names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class AudioInfo:
    """What the file header says: native rate, channel count, frames and format name.

    ``frames`` is what libsndfile offers to read; ``header_frames`` what the container
    declares (more than ``frames`` for a WAV whose data chunk runs past the file's end).
    """

    sample_rate: int
    channels: int
    frames: int
    format: str
    header_frames: int = 0

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


@dataclass
class DecodeStats:
    """Native frames of one decoded segment: what the header promised, what decoded."""

    sample_rate: int = 0
    header_frames: int = 0
    decoded_frames: int = 0

    @property
    def missing_seconds(self) -> float:
        return (self.header_frames - self.decoded_frames) / max(1, self.sample_rate)


def audio_info(path: str | Path) -> AudioInfo:
    """Header of ``path``; raises :class:`AudioError` if it cannot be decoded or is empty."""
    try:
        info = sf.info(str(path))
    except Exception as err:  # libsndfile raises several types for bad bytes
        raise AudioError(path, f"cannot decode audio ({_plain(err)})") from err
    declared = info.frames + _container_shortfall(Path(path), info.format, info.frames)
    if info.frames <= 0 or info.channels <= 0:
        raise AudioError(path, "file has no audio frames")
    return AudioInfo(info.samplerate, info.channels, info.frames, info.format, declared)


def iter_blocks(
    path: str | Path,
    sample_rate: int,
    start: float = 0.0,
    end: float | None = None,
    block_seconds: float = DEFAULT_BLOCK_SECONDS,
    max_missing_seconds: float = DEFAULT_MAX_MISSING_SECONDS,
    stats: DecodeStats | None = None,
) -> Iterator[torch.Tensor]:
    """Yield consecutive mono float32 blocks [n] of ``path`` resampled to ``sample_rate``.

    ``start``/``end`` are seconds in the file (``end=None``: to the end). The concatenated
    blocks equal resampling the decoded segment at once (block edges get filter context
    from their neighbours). A segment that decodes to at most ``max_missing_seconds``
    fewer frames than the header promises ends where decoding ends; ``stats``, if given,
    receives both counts. Raises :class:`AudioError` for undecodable, empty, non-finite
    or truncated audio.
    """
    info = audio_info(path)
    native = info.sample_rate
    first, last = _segment(path, info, start, end)
    promised = info.header_frames if end is None else min(info.header_frames, last)
    stats = stats if stats is not None else DecodeStats()
    stats.sample_rate, stats.header_frames, stats.decoded_frames = native, promised - first, 0

    def check_missing(decoded_end: int) -> None:
        missing = promised - decoded_end
        if missing > max_missing_seconds * native:
            raise AudioError(
                path,
                f"file is truncated: the header promises {promised} frames, decoding "
                f"stopped at frame {decoded_end} ({missing / native:.2f} s missing, more "
                f"than max_missing_seconds {max_missing_seconds:g})",
            )

    check_missing(last)  # a WAV data chunk longer than the file is known before decoding

    # Input blocks and context are whole multiples of `step`, so each maps to a whole
    # number of output samples and the resampled blocks line up exactly.
    step = native // math.gcd(native, sample_rate)
    context = 0 if native == sample_rate else step * math.ceil(256 / step)
    block = max(step, step * (int(block_seconds * native) // step))
    try:
        with sf.SoundFile(str(path)) as handle:
            pos = first
            while pos < last:
                stop = min(last, pos + block)
                lo, hi = max(first, pos - context), min(last, stop + context)
                handle.seek(lo)
                data = handle.read(hi - lo, dtype="float32", always_2d=True)
                if lo + data.shape[0] < stop:  # decoding ended before the header's end
                    check_missing(lo + data.shape[0])
                    last = stop = lo + data.shape[0]
                    if stop <= pos:
                        break
                mono = torch.from_numpy(_downmix(data))
                if not torch.isfinite(mono).all():
                    raise AudioError(path, "audio contains NaN or infinite samples")
                # Zero context outside the segment, as resampling the whole segment sees.
                padded = torch.zeros(context + (stop - pos) + context)
                padded[context - (pos - lo) : context - (pos - lo) + mono.numel()] = mono
                yield _resample_block(padded, native, sample_rate, context, stop - pos)
                stats.decoded_frames = stop - first
                pos = stop
    except AudioError:
        raise
    except Exception as err:
        raise AudioError(path, f"cannot decode audio ({_plain(err)})") from err


def load_audio(
    path: str | Path,
    sample_rate: int,
    start: float = 0.0,
    end: float | None = None,
    block_seconds: float = DEFAULT_BLOCK_SECONDS,
    max_missing_seconds: float = DEFAULT_MAX_MISSING_SECONDS,
) -> torch.Tensor:
    """Decode ``path`` (or its ``start``..``end`` seconds) to mono float32 [N] at ``sample_rate``.

    The output is allocated once (header length) and filled block by block; it ends
    where decoding ends (see :func:`iter_blocks` for the shortfall allowed).
    """
    info = audio_info(path)
    first, last = _segment(path, info, start, end)
    out = torch.empty(math.ceil((last - first) * sample_rate / info.sample_rate))
    filled = 0
    for chunk in iter_blocks(path, sample_rate, start, end, block_seconds, max_missing_seconds):
        out[filled : filled + chunk.numel()] = chunk
        filled += chunk.numel()
    return out[:filled]


def _segment(path: str | Path, info: AudioInfo, start: float, end: float | None) -> tuple[int, int]:
    """First and last (exclusive) native frames of ``start``..``end`` seconds."""
    first = max(0, round(start * info.sample_rate))
    last = info.frames if end is None else min(info.frames, round(end * info.sample_rate))
    if last <= first:
        raise AudioError(
            path, f"segment {start:.2f}-{end} s is empty (file is {info.seconds:.2f} s)"
        )
    return first, last


def _container_shortfall(path: Path, container: str, frames: int) -> int:
    """Frames a WAV's ``data`` chunk declares beyond the ``frames`` present (0 if none).

    libsndfile quietly decodes the part of a truncated WAV or Ogg file that is there, so
    the container is checked: a WAV ``data`` chunk longer than the bytes that follow it
    (its shortfall, in frames, is judged like any other), or an Ogg stream whose last
    page lacks the end-of-stream flag or is cut short (always an :class:`AudioError`:
    the stream was cut, and how much is lost is unknown).
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        if container in ("WAV", "WAVEX"):
            handle.seek(12)
            while (header := handle.read(8)) and len(header) == 8:
                chunk, length = header[:4], int.from_bytes(header[4:], "little")
                if chunk == b"data":
                    have = size - handle.tell()
                    return round(frames * (length - have) / have) if 0 < have < length else 0
                handle.seek(length + (length & 1), 1)
        elif container == "OGG":
            handle.seek(max(0, size - 65_536))
            tail = handle.read()
            page = tail[tail.rfind(b"OggS") :] if b"OggS" in tail else b""
            if page and (len(page) < 27 or not page[5] & 0x04):
                raise AudioError(
                    path, "file is truncated: the Ogg stream has no end-of-stream page"
                )
            lacing = page[27 : 27 + page[26]] if page else b""
            if page and len(page) < 27 + page[26] + sum(lacing):
                raise AudioError(path, "file is truncated: its end-of-stream page is cut short")
    return 0


def _downmix(data: np.ndarray) -> np.ndarray:
    """[n, channels] -> [n] by averaging channels."""
    return data[:, 0].copy() if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)


def _resample_block(
    mono: torch.Tensor, native: int, target: int, offset: int, length: int
) -> torch.Tensor:
    """Resample ``mono`` and keep the output of input samples ``offset .. offset+length``."""
    if native == target:
        return mono[offset : offset + length]
    out = AF.resample(mono, native, target)
    lo = offset * target // native
    n = math.ceil(length * target / native)
    return out[lo : lo + n]


def _plain(err: Exception) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]
