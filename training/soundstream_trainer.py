"""GAN training of the SoundStream codec (``python -m musiclm.training.cli tokenizer-soundstream``).

Each training batch holds random audio crops ``batch["wav"]`` ([B, N] or [B, 1, N] at
the codec's sample rate; :class:`~musiclm.training.audio_data.AudioCropDataModule`). One step:

1. generator: reconstruct the crops; loss = ``reconstruction_weight`` x the multi-scale
   spectral loss + the RVQ commitment loss, and after ``warmup_steps`` batches also
   ``adversarial_weight`` x the hinge generator loss + ``feature_matching_weight`` x the
   feature-matching loss against both discriminators; clip, step, update the EMA codec
   (parameters: EMA of the live ones; RVQ codebooks: fitted to the EMA encoder's latents
   by the EMA quantizer's own k-means updates, so the EMA encoder and its codebooks
   belong together);
2. discriminators (after warm-up only): hinge loss on real crops vs reconstructions.

Separate Adam optimizers; manual optimization (so ``trainer.max_steps`` counts optimizer
steps: one per batch during warm-up, two afterwards; ``trainer.gradient_clip_val`` must
stay unset, the module clips with ``gradient_clip``). Every loss is logged under its own
name (``train/reconstruction``, ``train/commitment``, ``train/adversarial``,
``train/feature_matching``, ``train/discriminator``, ``train/generator``) together with
per-level codebook usage and perplexity (``codebook/usage_q1`` ...). Validation measures
the EMA codec on held-out crops at several level counts (``val/mel_distance_q{n}``,
``val/si_snr_q{n}``) and writes reconstructed audio and a spectrogram image of the first
batch under ``<log_dir>/media/step-<n>/`` (and to TensorBoard when that is the logger).

:meth:`SoundStreamModule.export_component` saves the EMA codec in ``SoundStream.save``
format (the bundle's ``codec/`` component); :func:`load_trained_codec` reads a trainer
checkpoint (``weights_only=True``) into the inference model.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import soundfile as sf
import torch
from musiclm.tokenizers.audio_metrics import (
    MultiScaleMel,
    round_trip,
    spectral_reconstruction_loss,
)
from musiclm.tokenizers.rvq import code_statistics
from musiclm.tokenizers.soundstream import SoundStream, load_matching_state
from musiclm.training.discriminators import (
    Discriminators,
    discriminator_hinge_loss,
    feature_matching_loss,
    generator_hinge_loss,
)

EMA_PREFIX = "codec_ema."


class SoundStreamModule(pl.LightningModule):
    """SoundStream codec + discriminators, trained adversarially with manual optimization.

    Args:
        codec: :class:`SoundStream` constructor arguments (strides, channels, dim, levels...).
        discriminator: :class:`Discriminators` constructor arguments.
        generator_lr, discriminator_lr, betas: the two Adam optimizers.
        warmup_steps: batches with the reconstruction loss only (no discriminators).
        reconstruction_weight, adversarial_weight, feature_matching_weight: loss weights
            (the commitment weight is part of ``codec``).
        gradient_clip: max global gradient norm of each optimizer step.
        ema_decay: decay of the EMA codec used for validation and export (ramped up from
            0 over the first steps: ``min(ema_decay, (1 + t) / (10 + t))``).
        val_levels: RVQ level counts measured at validation.
        media_items: clips of the first validation batch written as audio + spectrogram.
    """

    def __init__(
        self,
        codec: dict[str, Any] | None = None,
        discriminator: dict[str, Any] | None = None,
        generator_lr: float = 3e-4,
        discriminator_lr: float = 3e-4,
        betas: Sequence[float] = (0.5, 0.9),
        warmup_steps: int = 1000,
        reconstruction_weight: float = 1.0,
        adversarial_weight: float = 1.0,
        feature_matching_weight: float = 10.0,
        gradient_clip: float = 1.0,
        ema_decay: float = 0.999,
        val_levels: Sequence[int] = (1, 4, 12),
        media_items: int = 2,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.codec = SoundStream(**(codec or {}))
        self.codec_ema = copy.deepcopy(self.codec).requires_grad_(False)
        self.discriminators = Discriminators(**(discriminator or {}))
        self.mel = MultiScaleMel(self.codec.sample_rate)
        self.val_levels = sorted({min(q, self.codec.num_levels) for q in val_levels})
        self.register_buffer("batches_done", torch.zeros((), dtype=torch.long))

    # ----- batches -----------------------------------------------------------------------
    def _audio(self, batch: dict[str, Any]) -> torch.Tensor:
        """``batch["wav"]`` as float [B, 1, N]."""
        wav = batch["wav"] if isinstance(batch, dict) else batch
        if wav.ndim == 2:
            wav = wav[:, None]
        if wav.ndim != 3 or wav.shape[1] != 1:
            raise ValueError(f"expected audio crops [B, N] or [B, 1, N], got {tuple(wav.shape)}")
        return wav.float()

    # ----- training ----------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        wav = self._audio(batch)
        opt_g, opt_d = self.optimizers()
        adversarial = int(self.batches_done) >= self.hparams.warmup_steps
        hp = self.hparams

        recon, quantized = self.codec(wav)
        recon = recon[..., : wav.shape[-1]]
        with torch.autocast(self.device.type, enabled=False):
            reconstruction = spectral_reconstruction_loss(recon.float(), wav, self.mel)
        generator = hp.reconstruction_weight * reconstruction + quantized.commitment_loss
        logs = {
            "train/reconstruction": reconstruction.detach(),
            "train/commitment": quantized.commitment_loss.detach(),
        }
        if adversarial:
            real = self.discriminators(wav)
            fake = self.discriminators(recon)
            adv = generator_hinge_loss(fake)
            feat = feature_matching_loss(real, fake)
            generator = generator + hp.adversarial_weight * adv + hp.feature_matching_weight * feat
            logs["train/adversarial"] = adv.detach()
            logs["train/feature_matching"] = feat.detach()
        logs["train/generator"] = generator.detach()

        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(generator)
        self.clip_gradients(
            opt_g, gradient_clip_val=hp.gradient_clip, gradient_clip_algorithm="norm"
        )
        opt_g.step()
        self._update_ema(wav)

        if adversarial:
            # ``real`` is reused: the generator step changed no discriminator weight.
            disc = discriminator_hinge_loss(real, self.discriminators(recon.detach()))
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(disc)
            self.clip_gradients(
                opt_d, gradient_clip_val=hp.gradient_clip, gradient_clip_algorithm="norm"
            )
            opt_d.step()
            logs["train/discriminator"] = disc.detach()

        self.batches_done += 1
        for level, (use, ppl) in enumerate(
            zip(quantized.usage, quantized.perplexity, strict=True), start=1
        ):
            logs[f"codebook/usage_q{level}"] = use
            logs[f"codebook/perplexity_q{level}"] = ppl
        logs["codebook/usage_mean"] = quantized.usage.mean()
        self.log_dict(logs, batch_size=wav.shape[0])
        self.log("train/loss", generator.detach(), prog_bar=True, batch_size=wav.shape[0])

    @torch.no_grad()
    def _update_ema(self, wav: torch.Tensor) -> None:
        """EMA of the codec's parameters, and RVQ codebooks that belong to the EMA encoder.

        The EMA codec's quantizer runs its own EMA k-means step (k-means init, dead-code
        restarts) on the EMA encoder's latents of this batch ``wav`` [B, 1, N], so the
        exported encoder and codebooks fit each other; copying the live codebooks paired
        the EMA encoder with codebooks fitted to another encoder. Other buffers are copied.
        """
        steps = int(self.batches_done)
        decay = min(self.hparams.ema_decay, (1 + steps) / (10 + steps))
        live = dict(self.codec.named_parameters())
        for name, param in self.codec_ema.named_parameters():
            param.lerp_(live[name].detach(), 1 - decay)
        live_buffers = dict(self.codec.named_buffers())
        for name, buffer in self.codec_ema.named_buffers():
            if not name.startswith("quantizer."):
                buffer.copy_(live_buffers[name])
        quantizer = self.codec_ema.quantizer.train()
        quantizer(self.codec_ema.embed(wav))

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        betas = tuple(self.hparams.betas)
        return [
            torch.optim.Adam(self.codec.parameters(), lr=self.hparams.generator_lr, betas=betas),
            torch.optim.Adam(
                self.discriminators.parameters(), lr=self.hparams.discriminator_lr, betas=betas
            ),
        ]

    # ----- validation --------------------------------------------------------------------
    @torch.no_grad()
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        wav = self._audio(batch)
        codec = self.codec_ema
        scored = round_trip(codec, wav, self.val_levels)
        size = wav.shape[0]
        for levels in self.val_levels:
            mel = scored.mel_distance[levels].mean()
            self.log(f"val/mel_distance_q{levels}", mel, batch_size=size, sync_dist=True)
            snr = scored.si_snr[levels].mean()
            self.log(f"val/si_snr_q{levels}", snr, batch_size=size, sync_dist=True)
        self.log("val/mel_distance", mel, prog_bar=True, batch_size=size, sync_dist=True)
        usage, perplexity = code_statistics(scored.codes, codec.codebook_size)
        self.log("val/codebook_usage", usage.mean(), batch_size=size, sync_dist=True)
        self.log("val/codebook_perplexity", perplexity.mean(), batch_size=size, sync_dist=True)
        if batch_idx == 0 and self.trainer.is_global_zero and self.hparams.media_items > 0:
            self._write_media(wav[: self.hparams.media_items], scored.audio)

    def _media_dir(self) -> Path:
        root = self.trainer.log_dir or self.trainer.default_root_dir
        return Path(root) / "media" / f"step-{self.global_step:07d}"

    def _write_media(self, wav: torch.Tensor, recons: dict[int, torch.Tensor]) -> None:
        """Write original/reconstructed wavs and a log-mel image of each; TensorBoard too."""
        out = self._media_dir()
        out.mkdir(parents=True, exist_ok=True)
        rate = self.codec_ema.sample_rate
        rows = {"original": wav, **{f"q{q}": r for q, r in recons.items()}}
        for item in range(wav.shape[0]):
            for name, audio in rows.items():
                sf.write(out / f"clip{item}-{name}.wav", audio[item, 0].float().cpu().numpy(), rate)
        image = spectrogram_image(rows, self.mel, out / "spectrogram.png")
        experiment = getattr(self.logger, "experiment", None)
        if hasattr(experiment, "add_audio") and hasattr(experiment, "add_image"):
            for name, audio in rows.items():
                experiment.add_audio(f"val/{name}", audio[0].float().cpu(), self.global_step, rate)
            experiment.add_image("val/spectrogram", image, self.global_step, dataformats="HWC")

    # ----- export ------------------------------------------------------------------------
    def export_component(self, directory: str | Path) -> None:
        """Save the EMA codec (``SoundStream.save`` format) as the bundle's codec component:
        the EMA encoder and decoder with the RVQ codebooks fitted to the EMA encoder.

        On a 600-step run of ``small.yaml`` (``benchmarks/results/codec_export.json``) it
        scored held-out mel distance 0.354 / 0.347 / 0.348 at 1 / 4 / 12 levels, against
        0.403 / 0.398 / 0.399 for the live codec after its adversarial batches."""
        self.codec_ema.save(directory)


def spectrogram_image(rows: dict[str, torch.Tensor], mel: MultiScaleMel, path: Path) -> np.ndarray:
    """Plot the log-mel of item 0 of each ``rows`` entry ([B, 1, N]) to ``path``; return RGB."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    index = mel.scales.index(1024) if 1024 in mel.scales else len(mel.scales) - 1
    fig, axes = plt.subplots(len(rows), 1, figsize=(8, 2 * len(rows)), squeeze=False)
    for ax, (name, audio) in zip(axes[:, 0], rows.items(), strict=True):
        spec = mel.transforms[index](audio[:1, 0].float()).clamp_min(1e-5).log10()[0]
        ax.imshow(spec.cpu().numpy(), origin="lower", aspect="auto", cmap="magma")
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


def load_trained_codec(
    checkpoint: str | Path, ema: bool = True, device: str | torch.device = "cpu"
) -> SoundStream:
    """The codec of a SoundStream trainer checkpoint (``torch.load(weights_only=True)``).

    ``ema`` picks the EMA weights (what :meth:`SoundStreamModule.export_component`
    exports) over the live ones. Raises ``ValueError`` naming the file when it is not a
    SoundStream trainer checkpoint or its weights do not fit its codec config.
    """
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    hparams = state.get("hyper_parameters", {}) if isinstance(state, dict) else {}
    weights = state.get("state_dict", {}) if isinstance(state, dict) else {}
    prefix = EMA_PREFIX if ema else "codec."
    codec_weights = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
    if "codec" not in hparams or not codec_weights:
        raise ValueError(
            f"{checkpoint} is not a SoundStream trainer checkpoint (no codec config or no "
            f"'{prefix}*' weights); pass a checkpoint written by `musiclm.training.cli "
            "tokenizer-soundstream`"
        )
    model = SoundStream(**(hparams["codec"] or {}))
    load_matching_state(model, codec_weights, str(checkpoint))
    return model.to(device).eval()
