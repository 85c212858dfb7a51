"""Audio reading: decode any file libsndfile reads, in blocks, to mono float at a target rate.

Formats: wav, flac, ogg/vorbis, ogg/opus, mp3, aiff, ... (whatever ``soundfile`` opens).
Long files are decoded and resampled block by block with overlap, so memory holds the
output plus one block, never the whole file at its native rate and channel count.

What cannot be music is rejected with :class:`AudioError`, whose message names the file
and the reason: undecodable bytes, no audio frames, NaN or infinite samples. Silence,
stereo or multichannel audio and any sample rate are valid input.
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


class AudioError(ValueError):
    """An input that cannot be read as music. ``str()`` names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class AudioInfo:
    """What the file header says: native rate, channel count, frames and format name."""

    sample_rate: int
    channels: int
    frames: int
    format: str

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


def audio_info(path: str | Path) -> AudioInfo:
    """Header of ``path``; raises :class:`AudioError` if it cannot be decoded or is empty."""
    try:
        info = sf.info(str(path))
    except Exception as err:  # libsndfile raises several types for bad bytes
        raise AudioError(path, f"cannot decode audio ({_plain(err)})") from err
    missing = _truncation(Path(path), info.format)
    if missing:
        raise AudioError(path, f"file is truncated ({missing})")
    if info.frames <= 0 or info.channels <= 0:
        raise AudioError(path, "file has no audio frames")
    return AudioInfo(info.samplerate, info.channels, info.frames, info.format)


def iter_blocks(
    path: str | Path,
    sample_rate: int,
    start: float = 0.0,
    end: float | None = None,
    block_seconds: float = DEFAULT_BLOCK_SECONDS,
) -> Iterator[torch.Tensor]:
    """Yield consecutive mono float32 blocks [n] of ``path`` resampled to ``sample_rate``.

    ``start``/``end`` are seconds in the file (``end=None``: to the end). The concatenated
    blocks equal resampling the whole segment at once (block edges get filter context from
    their neighbours). Raises :class:`AudioError` for undecodable, empty or non-finite audio.
    """
    info = audio_info(path)
    native = info.sample_rate
    first, last = _segment(path, info, start, end)

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
                if data.shape[0] < stop - lo:
                    raise AudioError(
                        path,
                        f"file is truncated: {info.frames} frames in the header, "
                        f"decoding stopped near frame {lo + data.shape[0]}",
                    )
                mono = torch.from_numpy(_downmix(data))
                if not torch.isfinite(mono).all():
                    raise AudioError(path, "audio contains NaN or infinite samples")
                # Zero context outside the segment, as resampling the whole segment sees.
                padded = torch.zeros(context + (stop - pos) + context)
                padded[context - (pos - lo) : context - (pos - lo) + mono.numel()] = mono
                yield _resample_block(padded, native, sample_rate, context, stop - pos)
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
) -> torch.Tensor:
    """Decode ``path`` (or its ``start``..``end`` seconds) to mono float32 [N] at ``sample_rate``.

    The output is allocated once and filled block by block.
    """
    info = audio_info(path)
    first, last = _segment(path, info, start, end)
    out = torch.empty(math.ceil((last - first) * sample_rate / info.sample_rate))
    filled = 0
    for chunk in iter_blocks(path, sample_rate, start, end, block_seconds):
        out[filled : filled + chunk.numel()] = chunk
        filled += chunk.numel()
    return out


def _segment(path: str | Path, info: AudioInfo, start: float, end: float | None) -> tuple[int, int]:
    """First and last (exclusive) native frames of ``start``..``end`` seconds."""
    first = max(0, round(start * info.sample_rate))
    last = info.frames if end is None else min(info.frames, round(end * info.sample_rate))
    if last <= first:
        raise AudioError(
            path, f"segment {start:.2f}-{end} s is empty (file is {info.seconds:.2f} s)"
        )
    return first, last


def _truncation(path: Path, container: str) -> str:
    """Why a WAV or Ogg file is cut short, or ``""``.

    libsndfile quietly decodes the part of a truncated WAV or Ogg file that is there, so
    the container is checked: a WAV ``data`` chunk longer than the bytes that follow it,
    or an Ogg stream whose last page lacks the end-of-stream flag.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        if container in ("WAV", "WAVEX"):
            handle.seek(12)
            while (header := handle.read(8)) and len(header) == 8:
                chunk, length = header[:4], int.from_bytes(header[4:], "little")
                if chunk == b"data":
                    have = size - handle.tell()
                    return f"data chunk of {length} bytes, {have} present" if length > have else ""
                handle.seek(length + (length & 1), 1)
        elif container == "OGG":
            handle.seek(max(0, size - 65_536))
            tail = handle.read()
            last_page = tail.rfind(b"OggS")
            if last_page >= 0 and last_page + 5 < len(tail) and not tail[last_page + 5] & 0x04:
                return "the Ogg stream has no end-of-stream page"
    return ""


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
