"""SoundStream: the acoustic codec (causal SEANet encoder, RVQ, SEANet decoder).

The encoder may also take a causal log-mel branch (``mel_bands``; off in the paper), and the
decoder may be an STFT decoder (``decoder: stft``, :mod:`~musiclm.tokenizers.stft_decoder`)
instead of the paper's SEANet one.

The paper's codec for MusicLM: 24 kHz mono, total stride 480 (50 frames a second), an
RVQ of 12 levels x 1024 codes (6 kbps). Every number is a constructor argument (saved in
``config.json``), so ``tiny``/``small``/``paper`` sizes are configs of one class.

Shapes (``hop = prod(strides)``, ``Q = num_levels``)::

    encode(wav [B, 1, N], levels=None) -> int64 codes [B, levels or Q, ceil(N / hop)]
    decode(codes [B, Q', T])           -> float wav [B, 1, T * hop]      (any 1 <= Q' <= Q)
    forward(wav [B, 1, N])             -> (wav [B, 1, ceil(N / hop) * hop], QuantizerOutput)

``encode`` pads the audio on the right with silence to a whole number of frames, so
``decode(encode(x))[..., :N]`` has the input's length. A saved codec is a directory
with ``config.json`` (``"kind": "soundstream"`` plus the constructor arguments) and
``model.pt`` (a state dict, read with ``torch.load(..., weights_only=True)``).
It implements :class:`~musiclm.tokenizers.codec.Codec` (windowed coding of long audio there).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from musiclm.tokenizers.codec import Codec
from musiclm.tokenizers.mel_frontend import LogMelBranch
from musiclm.tokenizers.rvq import QuantizerOutput, ResidualVectorQuantizer
from musiclm.tokenizers.saved_config import CONFIG_FILE, read_saved_config
from musiclm.tokenizers.seanet import SEANetDecoder, SEANetEncoder
from musiclm.tokenizers.stft_decoder import STFTDecoder
from torch import nn

KIND = "soundstream"
WEIGHTS_FILE = "model.pt"


class SoundStream(Codec):
    """Causal convolutional codec with a residual vector quantizer.

    Args:
        sample_rate: audio rate in Hz (the token spec's ``sample_rate``).
        hop: samples per code frame (the spec's ``acoustic_hop``); must equal
            ``prod(strides)``.
        strides: the encoder's downsampling factors, first to last.
        channels: width of the first convolution; it doubles at each stride.
        dim: dimension of the quantized frame embeddings.
        num_levels: RVQ levels Q (the spec's ``acoustic_levels``).
        codebook_size: codes per level (the spec's ``acoustic_codebook_size``).
        decay, commitment_weight, dead_code_threshold, quantizer_dropout: see
            :class:`~musiclm.tokenizers.rvq.ResidualVectorQuantizer`.
        mel_bands: when above 0, the encoder's output gets ``proj(log mel)`` of this many
            causal mel bands added (:class:`~musiclm.tokenizers.mel_frontend.LogMelBranch`);
            0 is the paper's waveform-only encoder.
        decoder: ``"seanet"`` (the paper's, mirroring the encoder) or ``"stft"``
            (:class:`~musiclm.tokenizers.stft_decoder.STFTDecoder`: frame-rate residual
            units predict STFT frames, inverted by overlap-add; far cheaper on a CPU).
        decoder_width, decoder_blocks: the STFT decoder's channels and residual groups.
    """

    kind = KIND

    def __init__(
        self,
        sample_rate: int = 24_000,
        hop: int = 480,
        strides: Sequence[int] = (2, 4, 6, 10),
        channels: int = 32,
        dim: int = 128,
        num_levels: int = 12,
        codebook_size: int = 1024,
        decay: float = 0.99,
        commitment_weight: float = 1.0,
        dead_code_threshold: float = 0.05,
        quantizer_dropout: float = 1.0,
        mel_bands: int = 0,
        decoder: str = "seanet",
        decoder_width: int = 256,
        decoder_blocks: int = 1,
    ) -> None:
        super().__init__()
        strides = [int(s) for s in strides]
        if math.prod(strides) != hop:
            raise ValueError(
                f"the product of the strides {strides} is {math.prod(strides)}, but the hop is "
                f"{hop}: choose strides whose product equals the token spec's acoustic_hop"
            )
        if sample_rate % hop:
            raise ValueError(f"hop {hop} must divide the sample rate {sample_rate}")
        if decoder not in ("seanet", "stft"):
            raise ValueError(f"decoder must be 'seanet' or 'stft', got {decoder!r}")
        self.config: dict[str, Any] = {
            "sample_rate": sample_rate,
            "hop": hop,
            "strides": strides,
            "channels": channels,
            "dim": dim,
            "num_levels": num_levels,
            "codebook_size": codebook_size,
            "decay": decay,
            "commitment_weight": commitment_weight,
            "dead_code_threshold": dead_code_threshold,
            "quantizer_dropout": quantizer_dropout,
            "mel_bands": mel_bands,
            "decoder": decoder,
            "decoder_width": decoder_width,
            "decoder_blocks": decoder_blocks,
        }
        self.sample_rate = sample_rate
        self.hop = hop
        self.num_levels = num_levels
        self.codebook_size = codebook_size
        self.encoder = SEANetEncoder(channels, dim, strides)
        self.mel_branch = LogMelBranch(sample_rate, hop, mel_bands, dim) if mel_bands else None
        self.quantizer = ResidualVectorQuantizer(
            dim,
            num_levels=num_levels,
            codebook_size=codebook_size,
            decay=decay,
            commitment_weight=commitment_weight,
            dead_code_threshold=dead_code_threshold,
            quantizer_dropout=quantizer_dropout,
        )
        if decoder == "stft":
            self.decoder = STFTDecoder(dim, hop, decoder_width, decoder_blocks)
        else:
            self.decoder = SEANetDecoder(channels, dim, strides)

    # ----- shapes ------------------------------------------------------------------------
    def frames(self, num_samples: int) -> int:
        """Code frames for ``num_samples`` samples: ceil(num_samples / hop)."""
        return -(-num_samples // self.hop)

    def pad(self, wav: torch.Tensor) -> torch.Tensor:
        """wav [B, 1, N] -> [B, 1, frames(N) * hop], padded on the right with silence."""
        if wav.ndim != 3 or wav.shape[1] != 1:
            raise ValueError(
                f"expected mono audio [batch, 1, samples], got shape {tuple(wav.shape)}; "
                "add the channel axis with wav[:, None] (and mix stereo down to mono)"
            )
        extra = self.frames(wav.shape[-1]) * self.hop - wav.shape[-1]
        return nn.functional.pad(wav, (0, extra)) if extra else wav

    def embed(self, wav: torch.Tensor) -> torch.Tensor:
        """Encoder output before quantization: wav [B, 1, N] -> [B, dim, frames(N)]."""
        wav = self.pad(wav)
        embeddings = self.encoder(wav)
        if self.mel_branch is not None:
            embeddings = embeddings + self.mel_branch(wav).to(embeddings.dtype)
        return embeddings

    # ----- codec -------------------------------------------------------------------------
    def encode(self, wav: torch.Tensor, levels: int | None = None) -> torch.Tensor:
        """Codes of mono audio: wav [B, 1, N] -> int64 [B, levels or Q, ceil(N / hop)]."""
        if levels is not None and not 1 <= levels <= self.num_levels:
            raise ValueError(f"levels must be in 1..{self.num_levels}, got {levels}")
        return self.quantizer.encode(self.embed(wav), levels)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Audio from codes [B, Q', T] (1 <= Q' <= Q) -> wav [B, 1, T * hop]."""
        if codes.ndim != 3 or not 1 <= codes.shape[1] <= self.num_levels:
            raise ValueError(
                f"codes must be [batch, levels, frames] with 1..{self.num_levels} levels, "
                f"got shape {tuple(codes.shape)}"
            )
        return self.decoder(self.quantizer.decode(codes))

    def forward(
        self, wav: torch.Tensor, levels: int | None = None
    ) -> tuple[torch.Tensor, QuantizerOutput]:
        """Reconstruct wav [B, 1, N] -> ([B, 1, frames(N) * hop], quantizer output).

        In training mode the quantizer updates its codebooks and drops levels at random.
        """
        quantized = self.quantizer(self.embed(wav), levels)
        return self.decoder(quantized.quantized), quantized

    # ----- files -------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write ``config.json`` (kind + constructor arguments) and ``model.pt`` to ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"kind": KIND, **self.config}
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        torch.save(state, directory / WEIGHTS_FILE)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SoundStream:
        """A fresh (untrained) codec from a ``config.json`` dict (``kind`` is checked)."""
        config = dict(config)
        kind = config.pop("kind", KIND)
        if kind != KIND:
            raise ValueError(f"config of kind {kind!r} is not a SoundStream config")
        return cls(**config)

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> SoundStream:
        """Load a codec written by :meth:`save`, in eval mode on ``device``."""
        directory = Path(directory)
        hint = "train one with `make train-tokenizer TOKENIZER=soundstream`"
        config = read_saved_config(directory, KIND, "SoundStream codec", hint)
        weights_path = directory / WEIGHTS_FILE
        if not weights_path.is_file():
            raise FileNotFoundError(
                f"{weights_path} is missing: {directory} is not a saved SoundStream codec ({hint})"
            )
        model = cls.from_config(config)
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        load_matching_state(model, state, f"{weights_path}")
        return model.to(device).eval()


def load_matching_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state)``, raising a ``ValueError`` that names every mismatch.

    Missing or unexpected parameter names and shape differences are listed with the
    fix: the weights in ``source`` belong to another architecture than the config says.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{name}: weights {tuple(state[name].shape)} vs model {tuple(own[name].shape)}"
        for name in sorted(set(own) & set(state))
        if tuple(state[name].shape) != tuple(own[name].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (first: {'; '.join(shapes[:3])})")
        if missing:
            parts.append(f"{len(missing)} missing entries (first: {', '.join(missing[:3])})")
        if unexpected:
            parts.append(
                f"{len(unexpected)} unexpected entries (first: {', '.join(unexpected[:3])})"
            )
        raise ValueError(
            f"the weights in {source} do not fit the {type(model).__name__} architecture of its "
            f"config: {'; '.join(parts)}. Save the config with the weights it was trained with."
        )
    model.load_state_dict(state)
