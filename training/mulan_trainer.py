"""Contrastive training of MuLan's two towers (``python -m musiclm.training.cli tokenizer-mulan``).

Each training batch holds random 10 s audio crops and the text of their clips (caption,
tags). Both towers embed their side; the loss is the symmetric InfoNCE of CLIP/MuLan
with a learned temperature, and under DDP every rank scores its rows against the
embeddings of *all* ranks (``all_gather`` with gradients), so the negatives grow with
the world size.

Each validation logs text->audio and audio->text recall@k on the held-out split: a query
counts as a hit when one of its top-k candidates has the same caption (clips of one piece
often share a caption, so "the same clip" would cap recall below 1). musiclm-pytorch's
issue 68 is a MuLan run that sat at chance for days with a flat loss; recall shows it.

:meth:`MuLanModule.export_component` writes the towers (no codebooks: those are fitted
afterwards on the whole dataset by the fit pipeline) in ``MuLanTokenizer.save`` format.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from musiclm.tokenizers.contract import TokenSpec
from musiclm.tokenizers.mulan import MuLanTokenizer
from musiclm.tokenizers.mulan_audio import AudioTowerConfig
from musiclm.tokenizers.mulan_text import TextTowerConfig
from musiclm.training.mulan_eval import chance_recall, retrieval_recall, text_groups
from torch import nn

TOKENIZER_KEY = "mulan_text_tokenizer"


def contrastive_loss(
    audio: torch.Tensor,
    text: torch.Tensor,
    all_audio: torch.Tensor,
    all_text: torch.Tensor,
    offset: int,
    scale: torch.Tensor,
    valid: torch.Tensor | None = None,
    all_valid: torch.Tensor | None = None,
    groups: torch.Tensor | None = None,
    all_groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE of local rows against gathered columns.

    ``audio``/``text`` ``[B, D]`` are this rank's unit embeddings, ``all_audio``/``all_text``
    ``[W*B, D]`` every rank's (this rank's rows start at ``offset``); ``scale`` is the
    inverse temperature. Row ``i`` is positive with column ``offset + i``. Optional
    ``valid [B]`` / ``all_valid [W*B]`` masks drop pairs without text from rows and columns;
    optional ``groups [B]`` / ``all_groups [W*B]`` (e.g. source ids) drop the other columns
    of a row's own group, which are neither its positive nor true negatives (two crops of
    one piece with one caption).
    """
    labels = torch.arange(audio.shape[0], device=audio.device) + offset
    logits_a = scale * audio @ all_text.t()
    logits_t = scale * text @ all_audio.t()
    blocked = torch.zeros_like(logits_a, dtype=torch.bool)
    if all_valid is not None:
        blocked |= ~all_valid.bool()[None, :]
    if groups is not None and all_groups is not None:
        blocked |= groups[:, None] == all_groups[None, :]
        blocked[torch.arange(len(labels), device=labels.device), labels] = False
    logits_a = logits_a.masked_fill(blocked, float("-inf"))
    logits_t = logits_t.masked_fill(blocked, float("-inf"))
    if valid is not None:
        keep = valid.bool()
        logits_a, logits_t, labels = logits_a[keep], logits_t[keep], labels[keep]
    return (F.cross_entropy(logits_a, labels) + F.cross_entropy(logits_t, labels)) / 2


class MuLanModule(pl.LightningModule):
    """Trains a :class:`MuLanTokenizer`'s towers with a symmetric contrastive loss.

    Batches are those of :class:`musiclm.training.audio_data.AudioCropDataModule` with
    ``return_text``: ``{"wav": FloatTensor[B, N], "caption": list[str], "key": list[str]}``
    (random crops, ``crop_seconds`` = ``spec.mulan_window_seconds``). Rows with an empty
    caption are left out of the loss (rows and columns); other crops of a row's own source
    are not counted as its negatives. A small text tower's WordPiece tokenizer is trained on the training
    captions at setup (and stored in checkpoints); a pretrained tower brings its own. Under
    DDP every rank uses rank 0's tokenizer: HF tokenizers' WordPiece trainer gives another
    vocabulary order in every process, and ranks that share embedding weights must share
    token ids.
    ``text_lr`` is the learning rate of a pretrained text encoder; 0 locks it (only the
    projection head trains, encoder outputs are cached per caption: the cheap CPU setting).
    """

    def __init__(
        self,
        audio: AudioTowerConfig | None = None,
        text: TextTowerConfig | None = None,
        spec: dict[str, Any] | None = None,
        lr: float = 1e-3,
        text_lr: float = 5e-5,
        weight_decay: float = 0.01,
        warmup_steps: int = 50,
        init_temperature: float = 0.07,
        max_scale: float = 100.0,
        recall_ks: tuple[int, ...] = (1, 5),
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.spec = TokenSpec.from_dict(spec or {})
        self.mulan = MuLanTokenizer.build(
            audio or AudioTowerConfig(), text or TextTowerConfig(), self.spec
        )
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self._val: list[tuple[torch.Tensor, ...]] = []

    # ----- setup -------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        tower = self.mulan.text_tower
        if tower.config.kind != "small" or tower.tokenizer is not None:
            return
        datamodule = self.trainer.datamodule if self.trainer is not None else None
        if datamodule is None or not hasattr(datamodule, "captions"):
            raise RuntimeError(
                "the small MuLan text tower trains its tokenizer on the training captions, "
                "but the data module has no captions(); use AudioCropDataModule"
            )
        captions = [c for c in datamodule.captions() if c.strip()]
        if not captions:
            raise ValueError(
                "the training set has no captions or tags: MuLan learns from text paired "
                "with audio; add sidecar captions (see musiclm.tokenizers.source_records)"
            )
        tower.train_tokenizer(captions)
        if self.trainer.world_size > 1:  # WordPiece training differs between processes
            tower.set_tokenizer_json(self.trainer.strategy.broadcast(tower.tokenizer_json()))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[TOKENIZER_KEY] = self.mulan.text_tower.tokenizer_json()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if checkpoint.get(TOKENIZER_KEY):
            self.mulan.text_tower.set_tokenizer_json(checkpoint[TOKENIZER_KEY])

    # ----- steps -------------------------------------------------------------------------
    @property
    def scale(self) -> torch.Tensor:
        """Inverse temperature, clamped to ``max_scale``."""
        return self.log_scale.clamp(max=math.log(self.hparams.max_scale)).exp()

    def _embed(
        self, batch: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
        """Batch -> (audio [B, D], text [B, D] (zeros where empty), valid [B], texts)."""
        wav = batch["wav"]
        if wav.ndim == 3:  # [B, 1, N]
            wav = wav.squeeze(1)
        audio = self.mulan.audio_tower(wav)
        captions = batch["caption"]
        valid = torch.tensor([bool(t.strip()) for t in captions], device=audio.device)
        texts = [t for t in captions if t.strip()]
        text = audio.new_zeros(audio.shape)
        if texts:
            text = text.index_put((valid.nonzero()[:, 0],), self.mulan.text_tower(texts))
        return audio, text, valid, texts

    def _gather(self, x: torch.Tensor, sync_grads: bool) -> torch.Tensor:
        """Rows of every rank, rank-major: ``[B, ...]`` -> ``[W*B, ...]`` (bools as bools)."""
        is_bool = x.dtype == torch.bool
        gathered = self.all_gather(x.long() if is_bool else x, sync_grads=sync_grads)
        gathered = gathered.flatten(0, 1) if gathered.ndim == x.ndim + 1 else gathered
        return gathered.bool() if is_bool else gathered

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        audio, text, valid, texts = self._embed(batch)
        all_audio = self._gather(audio, sync_grads=True)
        all_text = self._gather(text, sync_grads=True)
        all_valid = self._gather(valid, sync_grads=False)
        sources = text_groups(batch["key"], self.device)
        all_sources = self._gather(sources, sync_grads=False)
        offset = self.global_rank * audio.shape[0] if all_audio.shape[0] > audio.shape[0] else 0
        if not valid.any():  # keep DDP in step: a zero loss that touches every tower
            loss = 0.0 * (audio.sum() + self.log_scale)
        else:
            loss = contrastive_loss(
                audio,
                text,
                all_audio,
                all_text,
                offset,
                self.scale,
                valid,
                all_valid,
                sources,
                all_sources,
            )
        batch_size = max(1, len(texts))
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log("train/temperature", 1.0 / self.scale.detach(), batch_size=batch_size)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        audio, text, valid, _ = self._embed(batch)
        groups = text_groups(batch["caption"], self.device)
        self._val.append((audio, text, valid, groups))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        parts = (self._gather(torch.cat(p), False) for p in zip(*self._val, strict=True))
        audio, text, valid, groups = parts
        self._val.clear()
        audio, text, groups = audio[valid], text[valid], groups[valid]
        if len(groups) < 2:
            return
        ks = self.hparams.recall_ks
        loss = contrastive_loss(audio, text, audio, text, 0, self.scale, None, None, groups, groups)
        metrics = {"val/loss": loss}
        for name, (q, c) in {
            "text_to_audio": (text, audio),
            "audio_to_text": (audio, text),
        }.items():
            for k, value in retrieval_recall(q, c, groups, groups, ks).items():
                metrics[f"val/{name}_recall@{k}"] = value
        for k, value in chance_recall(groups, groups, ks).items():
            metrics[f"val/chance_recall@{k}"] = value
        self.log_dict(metrics, prog_bar=False, rank_zero_only=True)

    # ----- optimization ------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        tower = self.mulan.text_tower
        encoder = list(tower.encoder.parameters()) if tower.config.kind == "pretrained" else []
        if encoder and self.hparams.text_lr <= 0:
            tower.freeze_encoder()
        encoder_ids = {id(p) for p in encoder}
        rest = [p for p in self.parameters() if id(p) not in encoder_ids]
        groups = [{"params": rest, "lr": self.hparams.lr}]
        if encoder and not tower.frozen:
            groups.append({"params": encoder, "lr": self.hparams.text_lr})
        optimizer = torch.optim.AdamW(groups, weight_decay=self.hparams.weight_decay)
        warmup = max(1, self.hparams.warmup_steps)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / warmup)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ----- export ------------------------------------------------------------------------
    def export_component(self, directory: str | Path) -> None:
        """Save the trained towers as a ``MuLanTokenizer`` (kind "mulan", no codebooks)."""
        self.mulan.save(directory)
