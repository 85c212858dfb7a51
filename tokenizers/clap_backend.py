"""CLAP as a MuLan stand-in: a ``transformers`` ``ClapModel`` behind MuLan's interface.

For a user who has CLAP weights on disk (e.g. a local ``save_pretrained`` copy of
``laion/clap-htsat-unfused``) and wants MuLan tokens without training MuLan. Nothing is
downloaded: :meth:`ClapMuLan.from_pretrained` reads a local directory only.

Shapes (``D = projection_dim`` of the CLAP model, 512 for the LAION checkpoints; the
bundle's spec must say ``mulan_dim = D``, which :meth:`ClapMuLan.from_pretrained` sets)::

    audio_embedding(wav [B, N] at spec.sample_rate) -> float [B, D]
    text_embedding(prompts: list[str] of length B)  -> float [B, D]   (unit norm)
    quantize / dequantize / text_tokens / audio_tokens as MuLan's

Audio is resampled to CLAP's own rate (48 kHz), cut into the spec's windows (10 s every
1 s, as MuLan; a clip shorter than a window is one window that CLAP's feature extractor
repeat-pads) and the unit-norm window embeddings are averaged. All windows of a batch go
through the model in one call.

Saved layout (``save``/``load``, the bundle's ``mulan/`` component)::

    mulan/config.json     {"kind": "clap", "spec": {...}}
    mulan/model/          the ClapModel's and ClapProcessor's save_pretrained files
    mulan/codebooks.npy   float32 [L, K, D], once fitted
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torchaudio
from musiclm.tokenizers.contract import TokenSpec
from musiclm.tokenizers.mulan import MuLanTokens
from musiclm.tokenizers.saved_config import CONFIG_FILE

KIND = "clap"
MODEL_DIR = "model"


class ClapMuLan(MuLanTokens):
    """A CLAP model and its processor, embedding audio over the spec's windows."""

    kind = KIND

    def __init__(self, model: Any, processor: Any, spec: TokenSpec | None = None) -> None:
        dim = model.config.projection_dim
        super().__init__(spec or TokenSpec(mulan_dim=dim))
        if self.spec.mulan_dim != dim:
            raise ValueError(
                f"the CLAP model embeds in {dim} dims but spec.mulan_dim is "
                f"{self.spec.mulan_dim}; use a token spec with mulan_dim={dim}"
            )
        self.model = model.eval()
        self.processor = processor
        # an unfused model takes one mel view per clip; a fused one, four
        fusion = bool(model.config.audio_config.enable_fusion)
        self.truncation = "fusion" if fusion else "rand_trunc"

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, spec: TokenSpec | None = None, device: str = "cpu"
    ) -> ClapMuLan:
        """Load ``ClapModel`` + ``ClapProcessor`` from a local ``save_pretrained`` directory.

        ``spec`` defaults to the paper's with ``mulan_dim`` = the model's projection size.
        """
        from transformers import ClapModel, ClapProcessor

        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(
                f"{directory} has no config.json: pass a local ClapModel save_pretrained "
                "directory (nothing is downloaded)"
            )
        model = ClapModel.from_pretrained(directory, local_files_only=True)
        processor = ClapProcessor.from_pretrained(directory, local_files_only=True)
        return cls(model, processor, spec).to(device)

    @property
    def codebook_device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def clap_rate(self) -> int:
        return int(self.processor.feature_extractor.sampling_rate)

    @torch.inference_mode()
    def audio_embedding(self, wav: torch.Tensor) -> torch.Tensor:
        """Mean CLAP embedding over windows: ``wav [B, N]`` at ``spec.sample_rate`` -> ``[B, D]``."""
        audio = torchaudio.functional.resample(
            wav.float().cpu(), self.spec.sample_rate, self.clap_rate
        )
        ratio = self.clap_rate / self.spec.sample_rate
        count = self.num_windows(wav.shape[1])
        if count == 1:
            windows = audio
        else:
            size, step = round(self.window_samples * ratio), round(self.stride_samples * ratio)
            windows = audio.unfold(1, size, step)[:, :count].reshape(-1, size)
        features = self.processor.feature_extractor(
            list(windows.numpy()),
            sampling_rate=self.clap_rate,
            truncation=self.truncation,
            return_tensors="pt",
        ).to(self.codebook_device)
        emb = self.model.get_audio_features(**features).pooler_output
        return emb.reshape(wav.shape[0], count, -1).mean(dim=1)

    @torch.inference_mode()
    def text_embedding(self, prompts: list[str]) -> torch.Tensor:
        """Prompts (list of B non-empty strings) -> unit-norm embeddings ``[B, D]``."""
        if not prompts or any(not p.strip() for p in prompts):
            raise ValueError("every prompt must be a non-empty string")
        tokens = self.processor.tokenizer(
            list(prompts), padding=True, truncation=True, return_tensors="pt"
        ).to(self.codebook_device)
        return self.model.get_text_features(**tokens).pooler_output

    def save(self, directory: str | Path) -> None:
        """Write ``config.json`` (kind "clap"), ``model/`` and, when fitted, ``codebooks.npy``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"kind": KIND, "spec": self.spec.to_dict()}
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
        self.model.save_pretrained(directory / MODEL_DIR)
        self.processor.save_pretrained(directory / MODEL_DIR)
        self.save_codebooks(directory)

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> ClapMuLan:
        """Load a saved CLAP component (with or without codebooks) in eval mode."""
        directory = Path(directory)
        spec = TokenSpec.from_dict(cls.read_config(directory)["spec"])
        model = cls.from_pretrained(directory / MODEL_DIR, spec, str(device))
        model.load_codebooks(directory)
        return model.eval()
