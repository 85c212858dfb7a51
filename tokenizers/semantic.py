"""The semantic tokenizer: 25 Hz SSL features -> nearest of K k-means centroids (MusicLM's
semantic tokens).

::

    tok = SemanticTokenizer.load("runs/bundle/semantic")
    tok.features(wav [B, N] at spec.sample_rate)   -> float [B, N // spec.samples_per_semantic, D]
    tok.encode(wav [B, N] at spec.sample_rate)     -> long  [B, N // spec.samples_per_semantic]

Audio comes in at the token contract's rate (24 kHz) and is resampled to the feature
model's own rate inside. The feature model is either the in-project model
(:class:`~musiclm.tokenizers.semantic_model.SemanticFeatureModel`, backend ``"in-project"``)
or a transformers checkpoint (:mod:`musiclm.tokenizers.ssl_features`, backend
``"transformers"``). Centroids ([K, D] float32, K <= spec.semantic_vocab) are fitted by the
fit pipeline with :func:`musiclm.tokenizers.kmeans.fit_kmeans` and installed with
:meth:`SemanticTokenizer.set_centroids`; a tokenizer without them can give features but
not ids.

Saved layout (``save(directory)``)::

    config.json     {"kind": "semantic", "backend": ..., "spec": {...}, "model": {...}}
    model.pt        in-project model weights (state dict), or
    checkpoint/     the transformers checkpoint + feature extractor (layers above ``layer`` dropped)
    centroids.npy   float32 [K, D], once fitted
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchaudio.functional as AF
from musiclm.tokenizers.contract import TokenSpec
from musiclm.tokenizers.kmeans import assign
from musiclm.tokenizers.saved_config import CONFIG_FILE, read_saved_config
from musiclm.tokenizers.semantic_model import SemanticFeatureModel, SemanticModelConfig
from musiclm.tokenizers.ssl_features import (
    DEFAULT_LAYER,
    TransformersFeatures,
    load_transformers_features,
)
from torch import nn

KIND = "semantic"
CENTROIDS_FILE = "centroids.npy"
WEIGHTS_FILE = "model.pt"
CHECKPOINT_DIR = "checkpoint"
TINY_MODEL = SemanticModelConfig(
    n_mels=32, n_fft=512, dim=32, num_layers=2, num_heads=2, ffn_dim=64, conv_kernel=7, layer=2
)


class SemanticTokenizer(nn.Module):
    """A feature model at 25 Hz plus k-means centroids; ids are nearest-centroid indices."""

    def __init__(
        self,
        feature_model: SemanticFeatureModel | TransformersFeatures,
        spec: TokenSpec | None = None,
        centroids: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec or TokenSpec()
        if feature_model.frame_rate != self.spec.semantic_rate:
            raise ValueError(
                f"the feature model gives {feature_model.frame_rate} Hz frames but the token "
                f"spec's semantic_rate is {self.spec.semantic_rate} Hz"
            )
        self.feature_model = feature_model.eval()
        self.centroids: np.ndarray | None = None
        if centroids is not None:
            self.set_centroids(centroids)

    @classmethod
    def tiny(cls, spec: TokenSpec | None = None, seed: int = 0) -> SemanticTokenizer:
        """An untrained in-project tokenizer of a few thousand weights (for tests and smoke runs)."""
        spec = spec or TokenSpec()
        torch.manual_seed(seed)
        config = SemanticModelConfig(**{**TINY_MODEL.to_dict(), "sample_rate": spec.sample_rate})
        return cls(SemanticFeatureModel(config).eval(), spec)

    @classmethod
    def from_checkpoint(
        cls,
        directory: str | Path,
        spec: TokenSpec | None = None,
        layer: int = DEFAULT_LAYER,
        architecture: str | None = None,
    ) -> SemanticTokenizer:
        """A tokenizer on a local w2v-BERT 2.0 / HuBERT / MERT / wav2vec 2.0 checkpoint."""
        return cls(load_transformers_features(directory, layer, architecture), spec)

    @property
    def backend(self) -> str:
        return (
            "transformers"
            if isinstance(self.feature_model, TransformersFeatures)
            else ("in-project")
        )

    @property
    def dim(self) -> int:
        """Width D of the features (and of the centroids)."""
        return self.feature_model.dim

    @property
    def vocab_size(self) -> int:
        """Number of ids this tokenizer emits (the number of centroids)."""
        if self.centroids is None:
            raise self._no_centroids()
        return len(self.centroids)

    def set_centroids(self, centroids: np.ndarray) -> None:
        """Install k-means centroids float [K, D] with K <= spec.semantic_vocab."""
        centroids = np.ascontiguousarray(np.asarray(centroids), dtype=np.float32)
        if centroids.ndim != 2 or centroids.shape[1] != self.dim:
            raise ValueError(
                f"centroids must be [K, {self.dim}] for this feature model, got {centroids.shape}"
            )
        if not 1 <= len(centroids) <= self.spec.semantic_vocab:
            raise ValueError(
                f"{len(centroids)} centroids do not fit spec.semantic_vocab "
                f"{self.spec.semantic_vocab}"
            )
        self.centroids = centroids

    @torch.inference_mode()
    def features(self, wav: torch.Tensor) -> torch.Tensor:
        """[B, N] audio at spec.sample_rate -> float [B, N // spec.samples_per_semantic, D]."""
        if wav.ndim != 2:
            raise ValueError(f"expected audio [B, N], got shape {tuple(wav.shape)}")
        frames = self.spec.semantic_frames(wav.shape[1])
        device = next(self.feature_model.parameters()).device
        if frames < 1:  # shorter than one semantic frame: no frames, like any partial frame
            return torch.zeros(wav.shape[0], 0, self.dim, device=device)
        model_rate = self.feature_model.sample_rate
        wav = wav.to(device=device, dtype=torch.float32)
        if model_rate != self.spec.sample_rate:
            wav = AF.resample(wav, self.spec.sample_rate, model_rate)
        feats = self.feature_model.features(wav)
        if feats.shape[1] < frames:  # resampling rounded the length down by a sample
            feats = torch.cat([feats, feats[:, -1:].expand(-1, frames - feats.shape[1], -1)], 1)
        return feats[:, :frames].float()

    @torch.inference_mode()
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """[B, N] audio at spec.sample_rate -> ids long [B, N // spec.samples_per_semantic]."""
        if self.centroids is None:
            raise self._no_centroids()
        feats = self.features(wav)
        ids = assign(feats.reshape(-1, feats.shape[-1]).cpu().numpy(), self.centroids)
        return torch.from_numpy(ids).view(feats.shape[0], feats.shape[1]).to(wav.device)

    def _no_centroids(self) -> ValueError:
        return ValueError(
            "this semantic tokenizer has no k-means centroids yet, so it cannot give ids; "
            "fit them with `make tokenizers` (musiclm.pipelines.fit_cli) or set_centroids()"
        )

    def save(self, directory: str | Path) -> None:
        """Write config.json, the feature model and (if fitted) centroids.npy to ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "kind": KIND,
            "backend": self.backend,
            "spec": self.spec.to_dict(),
        }
        if isinstance(self.feature_model, TransformersFeatures):
            self.feature_model.save(directory / CHECKPOINT_DIR)
            config["model"] = {
                "architecture": self.feature_model.model.config.model_type,
                "layer": self.feature_model.layer,
            }
        else:
            model = self.feature_model.truncated()
            torch.save(model.state_dict(), directory / WEIGHTS_FILE)
            config["model"] = model.config.to_dict()
        if self.centroids is not None:
            np.save(directory / CENTROIDS_FILE, self.centroids, allow_pickle=False)
        elif (directory / CENTROIDS_FILE).exists():
            (directory / CENTROIDS_FILE).unlink()
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> SemanticTokenizer:
        """Load what :meth:`save` wrote; works with or without centroids.npy."""
        directory = Path(directory)
        config = read_saved_config(directory, KIND, "semantic tokenizer")
        spec = TokenSpec.from_dict(config["spec"])
        if config["backend"] == "transformers":
            feature_model = load_transformers_features(
                directory / CHECKPOINT_DIR,
                layer=config["model"]["layer"],
                architecture=config["model"]["architecture"],
                device=device,
            )
        else:
            feature_model = SemanticFeatureModel(SemanticModelConfig(**config["model"]))
            state = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
            feature_model.load_state_dict(state)
            feature_model = feature_model.to(device)
        centroids = None
        if (directory / CENTROIDS_FILE).is_file():
            centroids = np.load(directory / CENTROIDS_FILE, allow_pickle=False)
        return cls(feature_model, spec, centroids).eval()
