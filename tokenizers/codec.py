"""The acoustic codec interface that SoundStream and EnCodec implement.

MusicLM's coarse and fine stages model the codes of a neural audio codec; the tokenizer
bundle's ``codec/`` component, the Beam pipeline's acoustic step, the sampler's decoder,
``musiclm-codec`` and the codec metrics all use one through this interface (like MuLan
through :class:`~musiclm.tokenizers.mulan.MuLanTokens`).

Shapes (``hop = sample_rate / frame_rate``, ``Q = num_levels``)::

    encode(wav [B, 1, N], levels=None)              -> int64 codes [B, levels or Q, ceil(N / hop)]
    decode(codes [B, Q', T])                        -> float wav [B, 1, T * hop]  (1 <= Q' <= Q)
    encode_windowed(wav [B, 1, N], levels, seconds) -> the same codes as encode, window by window
    decode_windowed(codes [B, Q', T], seconds)      -> the same audio as decode, window by window

The windowed forms code long audio with flat memory: each window is coded with
:data:`CONTEXT_SECONDS` of input before it, whose output is dropped, so a causal codec whose
receptive field fits in that context (SoundStream's is about 0.3 s) gives the codes and the
audio of coding the whole input at once.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

CONTEXT_SECONDS = 1.0


class Codec(nn.Module, abc.ABC):
    """A saved, loadable neural audio codec with a residual vector quantizer.

    Subclasses set ``sample_rate`` (Hz), ``hop`` (samples per code frame), ``num_levels``
    (RVQ levels Q) and ``codebook_size`` (codes per level) in their constructor, and
    provide :meth:`encode`, :meth:`decode`, :meth:`save` and :meth:`load`.
    """

    kind: ClassVar[str]  # the "kind" of its saved config.json
    sample_rate: int
    hop: int
    num_levels: int
    codebook_size: int

    @abc.abstractmethod
    def encode(self, wav: torch.Tensor, levels: int | None = None) -> torch.Tensor:
        """Codes of mono audio: wav [B, 1, N] -> int64 [B, levels or Q, ceil(N / hop)]."""

    @abc.abstractmethod
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Audio from codes [B, Q', T] (1 <= Q' <= Q) -> float wav [B, 1, T * hop]."""

    @abc.abstractmethod
    def save(self, directory: str | Path) -> None:
        """Write ``config.json`` (with this class's ``kind``) and the weights to ``directory``."""

    @classmethod
    @abc.abstractmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> Codec:
        """Load a codec written by :meth:`save`, in eval mode on ``device``."""

    # ----- rates -------------------------------------------------------------------------
    @property
    def frame_rate(self) -> float:
        """Code frames per second: ``sample_rate / hop``."""
        return self.sample_rate / self.hop

    @property
    def device(self) -> torch.device:
        """Where the codec's weights live (inputs are moved there)."""
        return next(self.parameters()).device

    def frames_for(self, seconds: float) -> int:
        """Whole code frames nearest to ``seconds`` of audio (at least 1)."""
        return max(1, round(seconds * self.frame_rate))

    # ----- long audio --------------------------------------------------------------------
    @torch.inference_mode()
    def encode_windowed(
        self, wav: torch.Tensor, levels: int | None, window_seconds: float
    ) -> torch.Tensor:
        """Codes of long audio wav [B, 1, N] -> int64 [B, levels or Q, ceil(N / hop)].

        Coded in windows of ``window_seconds`` (rounded to whole frames), each with
        :data:`CONTEXT_SECONDS` of the audio before it; the codes are returned on the CPU.
        """
        window = self.frames_for(window_seconds) * self.hop
        context = self.frames_for(CONTEXT_SECONDS) * self.hop
        parts = []
        for start in range(0, wav.shape[-1], window):
            first = max(0, start - context)
            codes = self.encode(wav[..., first : start + window].to(self.device), levels)
            parts.append(codes[..., (start - first) // self.hop :].cpu())
        return torch.cat(parts, dim=-1)

    @torch.inference_mode()
    def decode_windowed(self, codes: torch.Tensor, window_seconds: float) -> torch.Tensor:
        """Audio of many code frames: codes [B, Q', T] -> float wav [B, 1, T * hop] (CPU).

        Decoded in windows of ``window_seconds`` with :data:`CONTEXT_SECONDS` of codes
        before each window.
        """
        if codes.ndim != 3:
            raise ValueError(f"codes must be [batch, levels, frames], got {tuple(codes.shape)}")
        window = self.frames_for(window_seconds)
        context = self.frames_for(CONTEXT_SECONDS)
        codes = codes.long()
        parts = []
        for start in range(0, codes.shape[-1], window):
            first = max(0, start - context)
            audio = self.decode(codes[..., first : start + window].to(self.device))
            parts.append(audio[..., (start - first) * self.hop :].float().cpu())
        return torch.cat(parts, dim=-1)
