"""A saved acoustic codec (SoundStream or EnCodec) and long audio coded window by window.

:func:`load_codec` opens a saved codec directory (its ``config.json`` names the kind) or a
tokenizer bundle (its ``codec/``). :func:`encode_file` and :func:`decode_codes` code long
audio in windows, each with :data:`CONTEXT_SECONDS` of context before it, so memory stays
flat and SoundStream's codes and audio equal those of coding the whole file at once.
``musiclm-codec`` (:mod:`musiclm.tokenizers.codec_cli`) is the command line over them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from musiclm.tokenizers.audio import load_audio
from musiclm.tokenizers.bundle import load_component
from musiclm.tokenizers.contract import TOKEN_DTYPE
from musiclm.tokenizers.saved_config import CONFIG_FILE

CONTEXT_SECONDS = 1.0


def load_codec(path: str | Path, device: str = "cpu") -> Any:
    """The codec saved at ``path``: a codec directory or a bundle root with ``codec/``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"codec directory {path} does not exist")
    if not (path / CONFIG_FILE).is_file() and (path / "codec" / CONFIG_FILE).is_file():
        path = path / "codec"
    return load_component(path, device=device)


def encode_file(
    codec: Any, audio_path: str | Path, levels: int | None, window_seconds: float
) -> tuple[np.ndarray, int]:
    """(int16 codes [levels, frames], input samples) of an audio file, window by window.

    Each window is encoded with :data:`CONTEXT_SECONDS` of the audio before it, whose
    frames are dropped: for a causal codec whose receptive field fits in that context
    (SoundStream's is about 0.3 s) the codes equal those of the whole file at once.
    """
    wav = load_audio(audio_path, codec.sample_rate)
    window = _frames(codec, window_seconds) * codec.hop
    context = _frames(codec, CONTEXT_SECONDS) * codec.hop
    device = next(codec.parameters()).device
    parts = []
    with torch.inference_mode():
        for start in range(0, wav.numel(), window):
            first = max(0, start - context)
            chunk = wav[first : start + window].to(device)[None, None]
            codes = codec.encode(chunk, levels=levels)[0]
            parts.append(codes[:, (start - first) // codec.hop :].cpu())
    codes = torch.cat(parts, dim=-1).numpy()
    if codes.max(initial=0) > np.iinfo(TOKEN_DTYPE).max:
        raise ValueError(f"codes do not fit {np.dtype(TOKEN_DTYPE)}")
    return codes.astype(TOKEN_DTYPE), wav.numel()


def _frames(codec: Any, seconds: float) -> int:
    return max(1, round(seconds * codec.sample_rate / codec.hop))


def decode_codes(
    codec: Any, codes: np.ndarray, levels: int | None, window_seconds: float
) -> np.ndarray:
    """float32 audio [frames * hop] from codes [Q, frames] (the first ``levels`` used).

    Decoded window by window with :data:`CONTEXT_SECONDS` of codes before each window.
    """
    if codes.ndim != 2:
        raise ValueError(f"codes must be [levels, frames], got shape {codes.shape}")
    if levels is not None:
        if not 1 <= levels <= codes.shape[0]:
            raise ValueError(f"--levels must be in 1..{codes.shape[0]} for these codes")
        codes = codes[:levels]
    window = _frames(codec, window_seconds)
    context = _frames(codec, CONTEXT_SECONDS)
    device = next(codec.parameters()).device
    tensor = torch.from_numpy(codes.astype(np.int64)).to(device)
    parts = []
    with torch.inference_mode():
        for start in range(0, tensor.shape[-1], window):
            first = max(0, start - context)
            audio = codec.decode(tensor[None, :, first : start + window])[0, 0]
            parts.append(audio[(start - first) * codec.hop :].cpu())
    return torch.cat(parts).numpy()
