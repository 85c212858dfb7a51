"""EnCodec as the acoustic codec: a ``transformers`` ``EncodecModel`` behind the codec interface.

:class:`EncodecCodec` implements :class:`~musiclm.tokenizers.codec.Codec` (so windowed coding
of long audio, ``frame_rate`` and ``device`` come from there).

For a user who has EnCodec weights on disk (e.g. a local copy of ``facebook/encodec_24khz``
made with ``save_pretrained``) and wants acoustic tokens without training a codec. Nothing
is ever downloaded: :meth:`EncodecCodec.from_pretrained` reads a local directory only.

Shapes (``hop = prod(upsampling_ratios)``)::

    encode(wav [B, 1, N], levels=None) -> int64 codes [B, levels or num_levels, ceil(N / hop)]
    decode(codes [B, Q', T])           -> float wav [B, 1, T * hop]        (any Q' <= num_levels)

Rates: EnCodec 24 kHz has hop 320 (75 frames a second), not SoundStream's 480 (50 Hz).
A tokenizer bundle with EnCodec therefore needs a token spec with ``acoustic_hop=320``
(so ``acoustic_rate`` 75); with the paper's ``semantic_rate`` 25 that is 3 acoustic
frames per semantic frame, which the spec derives from the rates. ``num_levels`` (the
spec's ``acoustic_levels``, default 12) may be any count up to the model's quantizers
(32 for the 24 kHz model; 8 levels = its 6 kbps setting). :func:`check_codec_spec`
says what to change when a codec and a spec disagree.

Saved layout (``save``/``load``, the bundle's ``codec/`` component)::

    codec/config.json   {"kind": "encodec", "num_levels": ...}
    codec/model/        the EncodecModel's own save_pretrained files
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from musiclm.tokenizers.codec import Codec
from musiclm.tokenizers.contract import TokenSpec
from musiclm.tokenizers.saved_config import CONFIG_FILE, read_saved_config
from torch import nn

KIND = "encodec"
MODEL_DIR = "model"


class EncodecCodec(Codec):
    """A mono, unnormalized EnCodec model (the 24 kHz kind) with ``num_levels`` RVQ levels."""

    kind = KIND

    def __init__(self, model: Any, num_levels: int | None = None) -> None:
        super().__init__()
        config = model.config
        problems = []
        if config.audio_channels != 1:
            problems.append(f"it has {config.audio_channels} audio channels (mono needed)")
        if config.normalize:
            problems.append("it normalizes its input (per-chunk scales are not tokens)")
        if config.chunk_length_s is not None:
            problems.append("it encodes in overlapping chunks")
        if problems:
            raise ValueError(
                "this EnCodec model cannot serve as the acoustic codec: "
                + "; ".join(problems)
                + ". Use a mono 24 kHz EnCodec model (like facebook/encodec_24khz)."
            )
        self.model = model.eval()
        self.sample_rate = int(config.sampling_rate)
        self.hop = int(math.prod(config.upsampling_ratios))
        self.codebook_size = int(config.codebook_size)
        available = int(model.quantizer.num_quantizers)
        self.num_levels = available if num_levels is None else int(num_levels)
        if not 1 <= self.num_levels <= available:
            raise ValueError(
                f"num_levels must be in 1..{available} for this EnCodec model, got {num_levels}"
            )
        self._bits_per_level = math.log2(self.codebook_size) * config.frame_rate

    # ----- codec -------------------------------------------------------------------------
    def _bandwidth(self, levels: int) -> float:
        """The kbps value for which EnCodec's quantizer uses exactly ``levels`` levels."""
        return (levels + 0.5) * self._bits_per_level / 1000

    def encode(self, wav: torch.Tensor, levels: int | None = None) -> torch.Tensor:
        """Codes of mono audio: wav [B, 1, N] -> int64 [B, levels or num_levels, ceil(N / hop)]."""
        levels = self.num_levels if levels is None else levels
        if not 1 <= levels <= self.num_levels:
            raise ValueError(f"levels must be in 1..{self.num_levels}, got {levels}")
        if wav.ndim != 3 or wav.shape[1] != 1:
            raise ValueError(
                f"expected mono audio [batch, 1, samples], got shape {tuple(wav.shape)}; "
                "add the channel axis with wav[:, None] (and mix stereo down to mono)"
            )
        frames = -(-wav.shape[-1] // self.hop)
        wav = nn.functional.pad(wav, (0, frames * self.hop - wav.shape[-1]))
        embeddings = self.model.encoder(wav.to(self.model.dtype))
        codes = self.model.quantizer.encode(embeddings, self._bandwidth(levels))  # [Q, B, T]
        return codes.transpose(0, 1)[..., :frames].long()

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Audio from codes [B, Q', T] (1 <= Q' <= num_levels) -> wav [B, 1, T * hop]."""
        if codes.ndim != 3 or not 1 <= codes.shape[1] <= self.num_levels:
            raise ValueError(
                f"codes must be [batch, levels, frames] with 1..{self.num_levels} levels, "
                f"got shape {tuple(codes.shape)}"
            )
        embeddings = self.model.quantizer.decode(codes.transpose(0, 1))
        wav = self.model.decoder(embeddings)
        return wav[..., : codes.shape[-1] * self.hop].float()

    # ----- files -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, directory: str | Path, num_levels: int | None = None, device: str = "cpu"
    ) -> EncodecCodec:
        """Wrap a local ``EncodecModel.save_pretrained`` directory (never downloads)."""
        from transformers import EncodecModel

        directory = Path(directory)
        if not (directory / CONFIG_FILE).is_file():
            raise FileNotFoundError(
                f"{directory} has no config.json: point at a directory written by "
                "EncodecModel.save_pretrained (a local copy of e.g. facebook/encodec_24khz)"
            )
        model = EncodecModel.from_pretrained(str(directory), local_files_only=True)
        return cls(model.to(device), num_levels)

    def save(self, directory: str | Path) -> None:
        """Write ``config.json`` (kind, num_levels) and the model under ``model/``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(directory / MODEL_DIR))
        config = {"kind": KIND, "num_levels": self.num_levels}
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2))

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> EncodecCodec:
        """Load a codec written by :meth:`save`, in eval mode on ``device``."""
        hint = "to wrap a save_pretrained directory use EncodecCodec.from_pretrained"
        config = read_saved_config(directory, KIND, "EnCodec codec", hint)
        directory = Path(directory)
        return cls.from_pretrained(directory / MODEL_DIR, config["num_levels"], device).eval()


def check_codec_spec(codec: Codec, spec: TokenSpec) -> None:
    """Raise ``ValueError`` naming each mismatch between a codec's rates and sizes and a token spec."""
    problems = spec.codec_mismatches(codec)
    if problems:
        raise ValueError(
            "the acoustic codec does not match the token spec: "
            + "; ".join(problems)
            + ". Make the bundle's spec from the codec (e.g. EnCodec 24 kHz: acoustic_hop=320, "
            "acoustic_rate 75 = 3 x semantic_rate 25), or use a codec built for the spec."
        )
