"""Lightning modules of the three MusicLM stages (semantic, coarse, fine) and their loader.

Each module wraps a :class:`~musiclm.training.transformer.DecoderTransformer` over the
stage's :class:`~musiclm.training.layout.TokenLayout`. The vocabulary depends on the token
spec of the data, so the transformer is built in ``configure_model`` from the data module
(``dataset.json``) or, when loading a checkpoint, from the stored hyperparameters.

Training: next-token cross entropy on target positions only, each level scored over its
own id range (``layout.target_range``); condition dropout replaces the MuLan prefix by the
null tokens with probability ``cond_dropout`` (semantic and coarse) so the sampler can use
classifier-free guidance; AdamW with linear warm-up then cosine decay over the run's
budget (``max_steps`` or ``max_time``, whichever ends first:
:class:`~musiclm.training.schedule.BudgetSchedule`); bf16 autocast on GPU. Logged per level: ``train/loss_<level>``, ``train/acc_<level>``, and on validation
``val/loss`` with the clips' own conditioning, ``val/loss_shuffled_mulan`` (MuLan prefix
rolled across the batch), ``val/loss_null`` (null conditioning) and, for coarse,
``val/loss_shuffled_semantic``.

Checkpoints carry ``checkpoint["musiclm"] = {stage, layout, bundle_fingerprint,
transformer, config}`` (``config`` = the full LightningCLI config when run from the CLI).
:func:`musiclm.training.stage_model.load_stage` reads that back for the sampler with torch
alone (``weights_only=True``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from musiclm.tokenizers.contract import TokenSpec
from musiclm.training.layout import IGNORE_LEVEL, TokenLayout
from musiclm.training.schedule import BudgetSchedule
from musiclm.training.stage_model import StageCheckpointError
from musiclm.training.stage_registry import stage_class
from musiclm.training.transformer import DecoderTransformer, TransformerConfig
from torch import nn


def level_losses(
    model: DecoderTransformer, layout: TokenLayout, tokens: torch.Tensor, levels: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Summed cross entropy, correct predictions and counts per target level.

    ``tokens, levels [B, T]`` as built by the layout. Position ``i`` predicts token
    ``i + 1``; only positions whose next token is a target count, and each level's logits
    are computed over its own id range only. Returns ``{"loss": [n_levels] sums,
    "correct": [n_levels], "count": [n_levels]}`` (float tensors).
    """
    hidden = model.hidden(tokens[:, :-1])
    targets, target_levels = tokens[:, 1:], levels[:, 1:]
    sums, correct, counts = [], [], []
    for level in range(layout.num_target_levels):
        mask = target_levels == level
        start, stop = layout.target_range(level)
        logits = F.linear(hidden[mask], model.head.weight[start:stop]).float()
        wanted = targets[mask] - start
        sums.append(F.cross_entropy(logits, wanted, reduction="sum"))
        correct.append((logits.argmax(-1) == wanted).sum().float())
        counts.append(mask.sum().float())
    return {
        "loss": torch.stack(sums),
        "correct": torch.stack(correct),
        "count": torch.stack(counts),
    }


class StageModule(pl.LightningModule):
    """One MusicLM stage (the classes of :func:`stage_module` fix ``stage``, a name in the
    stage registry).

    Args:
        dim, depth, heads, ff_dim, dropout: transformer sizes (paper: 1024, 24, 16, 4096, 0.1).
        position: ``"relative"`` (T5 bias, paper) or ``"rotary"``.
        num_buckets, max_distance: relative position buckets.
        lr, betas, weight_decay: AdamW (decay on matrices, not on embeddings/norms/biases).
        warmup_steps: linear warm-up over this share of ``max_steps`` (of the steps a
            ``max_time`` budget reaches); then cosine to ``min_lr_ratio * lr`` at the
            budget's last step.
        cond_dropout: probability of replacing a sequence's MuLan prefix by null tokens.
        autocast_bf16: run forward passes in bf16 autocast when on a CUDA device.
        activation_checkpointing: recompute each transformer block in backward (less memory).
        token_spec, bundle_fingerprint: filled in from the data (kept in checkpoints).
    """

    stage: ClassVar[str] = ""

    def __init__(
        self,
        dim: int = 1024,
        depth: int = 24,
        heads: int = 16,
        ff_dim: int = 4096,
        dropout: float = 0.1,
        position: str = "relative",
        num_buckets: int = 32,
        max_distance: int = 128,
        lr: float = 3e-4,
        betas: tuple[float, float] = (0.9, 0.98),
        weight_decay: float = 0.01,
        warmup_steps: int = 1000,
        min_lr_ratio: float = 0.1,
        cond_dropout: float = 0.1,
        autocast_bf16: bool = True,
        activation_checkpointing: bool = False,
        token_spec: dict[str, Any] | None = None,
        bundle_fingerprint: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model: DecoderTransformer | None = None
        self.layout: TokenLayout | None = None
        self.run_config: dict[str, Any] | None = None  # set by the CLI: the full config
        if token_spec is not None:
            self._build(TokenSpec.from_dict(token_spec), bundle_fingerprint)

    # ----- construction ------------------------------------------------------------------
    def transformer_config(self, vocab_size: int) -> TransformerConfig:
        hp = self.hparams
        return TransformerConfig(
            vocab_size=vocab_size,
            dim=hp.dim,
            depth=hp.depth,
            heads=hp.heads,
            ff_dim=hp.ff_dim,
            dropout=hp.dropout,
            position=hp.position,
            num_buckets=hp.num_buckets,
            max_distance=hp.max_distance,
            activation_checkpointing=hp.activation_checkpointing,
        )

    def _build(self, spec: TokenSpec, fingerprint: str | None) -> None:
        self.layout = TokenLayout(spec, self.stage)
        self.model = DecoderTransformer(self.transformer_config(self.layout.vocab_size))
        self.hparams["token_spec"] = spec.to_dict()
        self.hparams["bundle_fingerprint"] = fingerprint

    def configure_model(self) -> None:
        """Build the transformer for the data's token spec, or check a prebuilt one fits."""
        trainer = self._trainer  # None inside load_from_checkpoint
        data = getattr(trainer, "datamodule", None) if trainer is not None else None
        if data is None:
            if self.model is None:
                raise StageCheckpointError(
                    f"the {self.stage} stage needs its data module (for the token spec) or a "
                    "token_spec to be built"
                )
            return
        if getattr(data, "stage", self.stage) != self.stage:
            raise StageCheckpointError(
                f"a {self.stage} stage module was given {data.stage} stage data; use the "
                f"stage-{self.stage} entry and its configs"
            )
        if self.model is None:
            self._build(data.spec, data.fingerprint)
        else:
            self._check_data(data.spec.to_dict(), data.fingerprint, "the data module")

    def _check_data(self, spec: dict[str, Any], fingerprint: str | None, what: str) -> None:
        hp = self.hparams
        if hp.bundle_fingerprint != fingerprint or hp.token_spec != spec:
            raise StageCheckpointError(
                f"this {self.stage} stage was built for bundle {hp.bundle_fingerprint}, but "
                f"{what} has bundle {fingerprint}"
                + ("" if hp.token_spec == spec else " and another token spec")
                + ". Train on shards of the same bundle, or start a new run."
            )

    # ----- steps -------------------------------------------------------------------------
    def _autocast(self):
        enabled = self.hparams.autocast_bf16 and self.device.type == "cuda"
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled)

    def _losses(self, tokens: torch.Tensor, levels: torch.Tensor) -> dict[str, torch.Tensor]:
        with self._autocast():
            return level_losses(self.model, self.layout, tokens, levels)

    def _log_levels(self, prefix: str, stats: dict[str, torch.Tensor], batch: int) -> torch.Tensor:
        count = stats["count"].clamp(min=1)
        loss = stats["loss"].sum() / count.sum()
        on_step = prefix == "train"
        self.log(f"{prefix}/loss", loss, prog_bar=True, batch_size=batch, sync_dist=not on_step)
        for i, name in enumerate(self.layout.level_names):
            values = {
                f"{prefix}/loss_{name}": stats["loss"][i] / count[i],
                f"{prefix}/acc_{name}": stats["correct"][i] / count[i],
            }
            self.log_dict(values, batch_size=batch, sync_dist=not on_step)
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        tokens, levels = batch["tokens"], batch["levels"]
        if self.layout.uses_mulan and self.hparams.cond_dropout > 0:
            drop = torch.rand(tokens.shape[0], device=tokens.device) < self.hparams.cond_dropout
            tokens = self.layout.drop_conditioning(tokens, drop)
        loss = self._log_levels("train", self._losses(tokens, levels), tokens.shape[0])
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=tokens.shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        tokens, levels = batch["tokens"], batch["levels"]
        b = tokens.shape[0]
        self._log_levels("val", self._losses(tokens, levels), b)
        for name, variant in self.conditioning_variants(tokens, levels).items():
            stats = self._losses(variant, levels)
            loss = stats["loss"].sum() / stats["count"].sum().clamp(min=1)
            self.log(f"val/loss_{name}", loss, batch_size=b, sync_dist=True)

    def conditioning_variants(
        self, tokens: torch.Tensor, levels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Copies of ``tokens [B, T]`` with other conditioning: ``null`` (null tokens), and
        ``shuffled_<segment>`` for each conditioning segment (rolled by one row: MuLan, and
        semantic for the coarse stage). A segment whose positions depend on the crop length
        is shuffled only when all rows share a length. Stages without droppable
        conditioning (fine) have none."""
        layout = self.layout
        if not layout.uses_mulan:
            return {}
        b = tokens.shape[0]
        variants = {"null": layout.drop_conditioning(tokens, torch.ones_like(tokens[:, 0]) > 0)}
        if b < 2:
            return variants
        whole = bool((levels[:, -1] != IGNORE_LEVEL).all())
        frames = layout.semantic_frames_of(tokens.shape[1]) if whole else 0
        for segment in layout.declaration.conditioning:
            where = layout.segment_positions(segment.name, frames)
            if not whole and where != layout.segment_positions(segment.name, frames + 1):
                continue
            shuffled = tokens.clone()
            shuffled[:, where] = tokens[:, where].roll(1, dims=0)
            variants[f"shuffled_{segment.name}"] = shuffled
        return variants

    # ----- optimization ------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        decay, no_decay = [], []
        for module in self.model.modules():
            for name, param in module.named_parameters(recurse=False):
                is_matrix = param.ndim >= 2 and not isinstance(module, nn.Embedding)
                (decay if is_matrix and name == "weight" else no_decay).append(param)
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": hp.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=hp.lr,
            betas=tuple(hp.betas),
        )
        multiplier = BudgetSchedule(self.trainer, hp.warmup_steps, hp.min_lr_ratio)
        # a plain lambda: LambdaLR would put a callable object's __dict__ (the trainer) into
        # checkpoints
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: multiplier(step))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ----- checkpoints -------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["musiclm"] = {
            "stage": self.stage,
            "layout": self.layout.to_dict(),
            "bundle_fingerprint": self.hparams.bundle_fingerprint,
            "transformer": dataclasses.asdict(self.model.config),
            "config": self.run_config,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        info = checkpoint.get("musiclm", {})
        if info.get("stage", self.stage) != self.stage:
            raise StageCheckpointError(
                f"the checkpoint is of the {info['stage']} stage, not {self.stage}"
            )
        if self.model is not None and info:
            self._check_data(info["layout"]["spec"], info["bundle_fingerprint"], "the checkpoint")


def stage_module(stage: str) -> type[StageModule]:
    """The Lightning module class of the registry's stage ``stage`` (its CLI entry)."""
    return stage_class(StageModule, stage, "Stage")


# the paper's stages by name (kept importable; every other stage is reached by stage_module)
SemanticStage, CoarseStage, FineStage = (stage_module(s) for s in ("semantic", "coarse", "fine"))
