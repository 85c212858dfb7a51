"""Trainer of the in-project semantic model: HuBERT-style masked prediction of discrete targets.

Batches are ``{"wav": FloatTensor[B, N], ...}`` random crops at ``spec.sample_rate``
(:class:`musiclm.training.audio_data.AudioCropDataModule`). Each step:

1. targets: every 25 Hz frame gets the id of its nearest target centroid. First iteration
   (``teacher=None``): centroids of log-mel frames (averaged to 25 Hz); second iteration
   (``teacher=DIR``, a semantic component exported by a first run): centroids of the
   teacher's layer features. The ``num_targets`` centroids are fitted with faiss k-means
   (:func:`musiclm.tokenizers.kmeans.fit_kmeans`) on a reservoir of frames from
   ``target_batches`` training batches when training starts, and stored in checkpoints.
2. spans of front-end frames are masked (:func:`mask_spans`), the Conformer runs, and a
   linear head predicts the targets of the masked frames (cross-entropy on masked frames).

Logged: ``train/loss``, ``train/masked_accuracy``, and on held-out crops ``val/loss`` and
``val/masked_accuracy`` (a fixed mask per batch index, so numbers are comparable across
runs). After fitting, ``export_component(dir)`` writes the feature model as a semantic
tokenizer directory without centroids (the fit pipeline adds them).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from musiclm.tokenizers.contract import TokenSpec
from musiclm.tokenizers.kmeans import FeatureReservoir, fit_kmeans
from musiclm.tokenizers.rvq import nearest_code
from musiclm.tokenizers.semantic import SemanticTokenizer
from musiclm.tokenizers.semantic_model import (
    SemanticFeatureModel,
    SemanticModelConfig,
    mask_spans,
    mel_target_features,
)
from torch import nn


class SemanticModule(pl.LightningModule):
    """Masked-prediction training of a :class:`SemanticFeatureModel` (see the module docstring)."""

    def __init__(
        self,
        model: SemanticModelConfig | None = None,
        spec: dict[str, Any] | None = None,
        num_targets: int = 100,
        teacher: str | None = None,
        target_batches: int = 20,
        target_rows: int = 100_000,
        mask_prob: float = 0.08,
        mask_span: int = 5,
        lr: float = 5e-4,
        weight_decay: float = 0.01,
        warmup_steps: int = 100,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.spec = TokenSpec.from_dict(spec or {})
        config = model or SemanticModelConfig()
        if config.sample_rate != self.spec.sample_rate:
            raise ValueError(
                f"the semantic model runs at {config.sample_rate} Hz but the token spec at "
                f"{self.spec.sample_rate} Hz; set model.sample_rate to {self.spec.sample_rate}"
            )
        self.model = SemanticFeatureModel(config)
        self.head = nn.Linear(config.dim, num_targets)
        # The teacher is frozen and not part of this module's weights or checkpoints.
        self._teacher = [SemanticTokenizer.load(teacher)] if teacher else []
        target_dim = self._teacher[0].dim if teacher else config.n_mels
        self.register_buffer("target_centroids", torch.zeros(num_targets, target_dim))
        self.register_buffer("targets_fitted", torch.tensor(False))

    # ----- targets -----------------------------------------------------------------------
    @staticmethod
    def _audio(batch: Any) -> torch.Tensor:
        """``batch["wav"]`` (AudioCropDataModule's crops) as float [B, N]."""
        wav = batch["wav"] if isinstance(batch, dict) else batch
        if wav.ndim == 3 and wav.shape[1] == 1:
            wav = wav[:, 0]
        if wav.ndim != 2:
            raise ValueError(f"expected audio crops [B, N] or [B, 1, N], got {tuple(wav.shape)}")
        return wav.float()

    @torch.no_grad()
    def target_features(self, wav: torch.Tensor) -> torch.Tensor:
        """[B, N] audio -> the features the targets cluster, [B, T, target_dim]."""
        frames = self.model.frames(wav.shape[1])
        if self._teacher:
            teacher = self._teacher[0]
            teacher.feature_model.to(wav.device)
            return teacher.features(wav)
        return mel_target_features(self.model.log_mel(wav), frames)

    @torch.no_grad()
    def targets(self, wav: torch.Tensor) -> torch.Tensor:
        """[B, N] audio -> target ids long [B, T] (nearest target centroid per frame)."""
        with torch.autocast(wav.device.type, enabled=False):  # exact distances under AMP
            feats = self.target_features(wav.float())
            ids = nearest_code(feats.reshape(-1, feats.shape[-1]), self.target_centroids)
        return ids.reshape(feats.shape[:-1])

    def fit_targets(self, batches: Any) -> None:
        """Fit the target centroids on a reservoir of target-feature rows of ``batches``."""
        hp = self.hparams
        reservoir = FeatureReservoir(hp.target_rows, self.target_centroids.shape[1], hp.seed)
        for i, batch in enumerate(batches):
            if i >= hp.target_batches:
                break
            feats = self.target_features(self._audio(batch).to(self.device))
            reservoir.add(feats.reshape(-1, feats.shape[-1]).cpu().numpy())
        if not len(reservoir):
            raise ValueError("the training data yielded no audio to fit the targets on")
        centroids = fit_kmeans(reservoir.sample(), hp.num_targets, seed=hp.seed)
        self.target_centroids.copy_(torch.from_numpy(centroids))
        self.targets_fitted.fill_(True)

    def on_train_start(self) -> None:
        if bool(self.targets_fitted):  # resumed from a checkpoint: keep its targets
            return
        self.fit_targets(self.trainer.train_dataloader)
        if self.trainer.world_size > 1:  # every rank uses rank 0's targets
            shared = self.trainer.strategy.broadcast(self.target_centroids.cpu(), src=0)
            self.target_centroids.copy_(shared.to(self.device))

    # ----- masked prediction -------------------------------------------------------------
    def masked_prediction(
        self, wav: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, N] audio -> (cross-entropy, accuracy) on the masked frames."""
        targets = self.targets(wav)
        frames = targets.shape[1]
        log_mel = self.model.log_mel(wav)
        x = self.model.front(log_mel, frames)
        mask = mask_spans(
            wav.shape[0],
            frames,
            self.hparams.mask_prob,
            self.hparams.mask_span,
            generator=generator,
            device=wav.device,
        )
        hidden = self.model.encode_frames(x, mask)
        logits = self.head(hidden[mask])
        wanted = targets[mask]
        loss = F.cross_entropy(logits.float(), wanted)
        accuracy = (logits.argmax(-1) == wanted).float().mean()
        return loss, accuracy

    @torch.no_grad()
    def heldout_accuracy(self, wav: torch.Tensor, seed: int = 0) -> float:
        """Masked-prediction accuracy on ``wav`` [B, N] with a fixed mask (eval mode)."""
        was_training = self.training
        self.eval()
        generator = torch.Generator().manual_seed(seed)
        _, accuracy = self.masked_prediction(wav.to(self.device).float(), generator)
        self.train(was_training)
        return float(accuracy)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        wav = self._audio(batch)
        loss, accuracy = self.masked_prediction(wav)
        size = wav.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/masked_accuracy", accuracy, prog_bar=True, batch_size=size)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if not bool(self.targets_fitted):  # the sanity check runs before targets exist
            return
        wav = self._audio(batch)
        generator = torch.Generator().manual_seed(self.hparams.seed + batch_idx)
        loss, accuracy = self.masked_prediction(wav, generator)
        size = wav.shape[0]
        self.log("val/loss", loss, batch_size=size, sync_dist=True)
        self.log("val/masked_accuracy", accuracy, prog_bar=True, batch_size=size, sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        params = [*self.model.parameters(), *self.head.parameters()]
        optimizer = torch.optim.AdamW(
            params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        warmup = max(1, self.hparams.warmup_steps)
        total = self.trainer.max_steps if self.trainer and self.trainer.max_steps > 0 else 0

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if total <= warmup:
                return 1.0
            progress = min(1.0, (step - warmup) / (total - warmup))
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # ----- export ------------------------------------------------------------------------
    def tokenizer(self, centroids: np.ndarray | None = None) -> SemanticTokenizer:
        """The trained feature model as a :class:`SemanticTokenizer` (eval mode, CPU copy)."""
        model = self.model.truncated().cpu()
        return SemanticTokenizer(model, self.spec, centroids)

    def export_component(self, directory: str | Path) -> None:
        """Write the feature model as a semantic tokenizer directory (no centroids yet)."""
        self.tokenizer().save(directory)
