"""Evaluation metrics for generated music: FAD, tag KL divergence, MuLan cycle consistency.

All audio is mono float at the embedder's or the bundle's sample rate; clips are 1-D
tensors ``[N]`` of any length. Embedders turn equal-length windows into one vector each:

- :class:`MuLanEmbedder` -- the MuLan audio tower of a tokenizer bundle (the default);
- :class:`TransformersEmbedder` -- any ``transformers`` audio model saved in a local
  directory (wav2vec 2.0, HuBERT, MERT, AST, CLAP, ...), mean-pooled over time.

Figures (MusicLM's section 5 metrics, computed with our own models):

- :func:`frechet_audio_distance` -- Frechet distance between Gaussians fitted to the
  window embeddings of two sets (FAD; lower = closer distributions).
- :func:`tag_distributions` + :func:`kl_divergence` -- MuLan zero-shot tagging: a softmax
  over the cosine of each clip's audio embedding with every tag's text embedding; KL of
  the reference's tag distribution to the generated one's.
- :func:`cycle_consistency` -- cosine of each prompt's MuLan text embedding with the
  MuLan audio embedding of the audio generated for it (MCC), also against other prompts.
- :func:`codec_round_trip` -- the codec's mel distance / SI-SNR at several RVQ levels.
- :func:`join_discontinuity` -- spectral change at generation window joins vs within.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torchaudio
import torchaudio.functional as AF
from musiclm.tokenizers.audio_metrics import round_trip
from musiclm.tokenizers.codec import Codec


class AudioEmbedder(Protocol):
    """Anything that maps a batch of equal-length windows ``[W, n]`` to embeddings ``[W, D]``."""

    sample_rate: int
    name: str

    def __call__(self, windows: torch.Tensor) -> np.ndarray: ...


class MuLanEmbedder:
    """The MuLan audio tower: ``windows [W, n]`` at the bundle rate -> ``[W, mulan_dim]``."""

    def __init__(self, mulan: object, sample_rate: int, batch_size: int = 16) -> None:
        self.mulan = mulan
        self.sample_rate = sample_rate
        self.batch_size = batch_size
        self.name = "mulan"

    @torch.inference_mode()
    def __call__(self, windows: torch.Tensor) -> np.ndarray:
        parts = [
            self.mulan.audio_embedding(windows[i : i + self.batch_size]).float()
            for i in range(0, windows.shape[0], self.batch_size)
        ]
        return torch.cat(parts).cpu().numpy().astype(np.float64)


class TransformersEmbedder:
    """A ``transformers`` audio model from a local directory, mean-pooled over time.

    The directory holds what ``save_pretrained`` writes for the model and its feature
    extractor. Models with ``get_audio_features`` (CLAP) use it; others average their
    ``last_hidden_state`` over frames. Windows are resampled to the extractor's rate.
    Never reaches the network (``local_files_only``).
    """

    def __init__(
        self, directory: str | Path, input_rate: int, device: str = "cpu", batch_size: int = 8
    ) -> None:
        from transformers import AutoFeatureExtractor, AutoModel

        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(
                f"{directory} is not a saved transformers model (no config.json); pass a folder "
                "written by save_pretrained, or use the default MuLan embedder"
            )
        self.extractor = AutoFeatureExtractor.from_pretrained(directory, local_files_only=True)
        self.model = AutoModel.from_pretrained(directory, local_files_only=True).to(device).eval()
        self.device = device
        self.input_rate = input_rate
        self.sample_rate = input_rate
        self.model_rate = int(getattr(self.extractor, "sampling_rate", input_rate))
        self.batch_size = batch_size
        self.name = directory.name

    @torch.inference_mode()
    def __call__(self, windows: torch.Tensor) -> np.ndarray:
        if self.model_rate != self.input_rate:
            windows = AF.resample(windows, self.input_rate, self.model_rate)
        parts = []
        for i in range(0, windows.shape[0], self.batch_size):
            batch = [w.numpy() for w in windows[i : i + self.batch_size]]
            inputs = self.extractor(batch, sampling_rate=self.model_rate, return_tensors="pt")
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            if hasattr(self.model, "get_audio_features"):
                out = self.model.get_audio_features(**inputs)
                emb = out if isinstance(out, torch.Tensor) else out.pooler_output
            else:
                hidden = self.model(**inputs).last_hidden_state
                emb = hidden.mean(dim=1)
            parts.append(emb.float().cpu())
        return torch.cat(parts).numpy().astype(np.float64)


def split_windows(clips: Sequence[torch.Tensor], window: int, hop: int) -> torch.Tensor:
    """Cut every clip ``[N_i]`` into windows of ``window`` samples every ``hop`` -> ``[W, window]``.

    A clip shorter than ``window`` raises ``ValueError`` (callers pick ``window`` no longer
    than the shortest clip, see :func:`window_length`).
    """
    out = []
    for clip in clips:
        if clip.numel() < window:
            raise ValueError(f"clip of {clip.numel()} samples is shorter than a window ({window})")
        out.append(clip.unfold(0, window, hop))
    return torch.cat(out)


def window_length(sample_rate: int, seconds: float, *sets: Sequence[torch.Tensor]) -> int:
    """Window of ``seconds``, shortened to the shortest clip of all ``sets``, in samples."""
    shortest = min(clip.numel() for clips in sets for clip in clips)
    return min(round(seconds * sample_rate), shortest)


def embed_windows(
    clips: Sequence[torch.Tensor], embedder: AudioEmbedder, window: int, hop: int
) -> np.ndarray:
    """Embeddings ``[W, D]`` of all windows of ``clips`` (one batched embedder call)."""
    return embedder(split_windows(clips, window, hop))


def gaussian(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and covariance ``[D, D]`` (float64) of embeddings ``[W, D]``."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need at least 2 embeddings [W, D] for a covariance, got {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to embeddings ``a [W1, D]`` and ``b [W2, D]``.

    ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2)``, computed with
    symmetric eigendecompositions, so it is exact for singular covariances (fewer windows
    than dimensions) and never complex.
    """
    mu_a, cov_a = gaussian(a)
    mu_b, cov_b = gaussian(b)
    vals, vecs = np.linalg.eigh(cov_a)
    root_a = (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_root = np.sqrt(np.clip(cross, 0.0, None)).sum()
    diff = mu_a - mu_b
    value = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_root
    return float(max(value, 0.0))


def frechet_audio_distance(
    clips_a: Sequence[torch.Tensor],
    clips_b: Sequence[torch.Tensor],
    embedder: AudioEmbedder,
    window_seconds: float = 10.0,
    hop_seconds: float = 1.0,
) -> float:
    """FAD between two sets of clips, over window embeddings of both sets.

    Windows are ``window_seconds`` long (shortened to the shortest clip of both sets, so
    both sets are embedded alike) every ``hop_seconds``.
    """
    window = window_length(embedder.sample_rate, window_seconds, clips_a, clips_b)
    hop = max(1, round(hop_seconds * embedder.sample_rate))
    return frechet_distance(
        embed_windows(clips_a, embedder, window, hop), embed_windows(clips_b, embedder, window, hop)
    )


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


@torch.inference_mode()
def audio_embeddings(mulan: object, clips: Sequence[torch.Tensor]) -> torch.Tensor:
    """Unit MuLan audio embeddings ``[B, D]`` of clips of any lengths.

    Clips of equal length go through ``mulan.audio_embedding`` in one batch each.
    """
    out: list[torch.Tensor | None] = [None] * len(clips)
    by_length: dict[int, list[int]] = {}
    for i, clip in enumerate(clips):
        by_length.setdefault(clip.numel(), []).append(i)
    for indices in by_length.values():
        emb = _unit(mulan.audio_embedding(torch.stack([clips[i] for i in indices])))
        for row, i in enumerate(indices):
            out[i] = emb[row]
    return torch.stack(out)


@torch.inference_mode()
def text_embeddings(mulan: object, texts: Sequence[str]) -> torch.Tensor:
    """Unit MuLan text embeddings ``[B, D]``."""
    return _unit(mulan.text_embedding(list(texts)))


def tag_distributions(
    mulan: object,
    clips: Sequence[torch.Tensor],
    tags: Sequence[str],
    temperature: float = 0.1,
) -> np.ndarray:
    """MuLan zero-shot tagging: ``[B, K]`` softmax over tags of cosine(audio, tag text) / T."""
    if not tags:
        raise ValueError("the tag vocabulary is empty; pass tags (e.g. --tags rock,piano,...)")
    sims = audio_embeddings(mulan, clips) @ text_embeddings(mulan, tags).T
    return torch.softmax(sims / temperature, dim=-1).double().numpy()


def kl_divergence(p: np.ndarray, q: np.ndarray, eps: float = 1e-8) -> float:
    """Mean over rows of KL(p_i || q_i) in nats for distributions ``p, q [B, K]``.

    Unpaired sets (different row counts) compare their mean distributions instead.
    """
    p, q = np.atleast_2d(p), np.atleast_2d(q)
    if p.shape[0] != q.shape[0]:
        p, q = p.mean(axis=0, keepdims=True), q.mean(axis=0, keepdims=True)
    p, q = p + eps, q + eps
    p, q = p / p.sum(-1, keepdims=True), q / q.sum(-1, keepdims=True)
    return float((p * np.log(p / q)).sum(-1).mean())


@dataclass
class CycleConsistency:
    """MuLan cycle consistency of B prompts and the B clips generated for them."""

    matrix: np.ndarray  # [B, B] cosine(text_i, audio_j)

    @property
    def own(self) -> float:
        """MCC: mean cosine of each prompt with its own audio (the diagonal)."""
        return float(np.diag(self.matrix).mean())

    @property
    def others(self) -> float:
        """Mean cosine of each prompt with the audio of the other prompts (off-diagonal)."""
        b = self.matrix.shape[0]
        if b < 2:
            return float("nan")
        return float((self.matrix.sum() - np.trace(self.matrix)) / (b * (b - 1)))


def cycle_consistency(
    mulan: object, prompts: Sequence[str], clips: Sequence[torch.Tensor]
) -> CycleConsistency:
    """Cosines of every prompt's text embedding with every clip's audio embedding."""
    if len(prompts) != len(clips):
        raise ValueError(f"{len(prompts)} prompts but {len(clips)} clips; pair them one to one")
    sims = text_embeddings(mulan, prompts) @ audio_embeddings(mulan, clips).T
    return CycleConsistency(sims.double().numpy())


@torch.inference_mode()
def codec_round_trip(
    codec: Codec,
    clips: Sequence[torch.Tensor],
    sample_rate: int,
    levels: Sequence[int],
    seconds: float = 10.0,
) -> dict[str, list[float]]:
    """Mel distance and SI-SNR of ``clips`` decoded from their first ``q`` RVQ levels, per ``q``.

    Every clip is cut to the same length (``seconds``, or the shortest clip) and the batch
    is encoded once; the codes' first ``q`` levels are decoded for each ``q`` in ``levels``.
    The codec's :func:`~musiclm.tokenizers.audio_metrics.round_trip` scores them; this
    returns the means over clips.
    """
    n = window_length(sample_rate, seconds, clips)
    batch = torch.stack([clip[:n] for clip in clips])[:, None].float()
    scored = round_trip(codec, batch, levels)
    return {
        "levels": list(levels),
        "mel_distance": [float(scored.mel_distance[q].mean()) for q in levels],
        "si_snr": [float(scored.si_snr[q].mean()) for q in levels],
    }


@torch.inference_mode()
def resynthesize(
    codec: Codec, clips: Sequence[torch.Tensor], sample_rate: int, seconds: float = 10.0
) -> torch.Tensor:
    """``clips`` cut to one length ``n`` (``seconds``, or the shortest clip) and passed
    through the codec at all RVQ levels: ``[B, n]`` (one batched encode and decode)."""
    n = window_length(sample_rate, seconds, clips)
    batch = torch.stack([clip[:n] for clip in clips])[:, None].float()
    q = codec.num_levels
    return round_trip(codec, batch, [q]).audio[q].cpu()[:, 0]


def join_discontinuity(
    audio: torch.Tensor, sample_rate: int, joins: Sequence[float], hop_seconds: float = 0.01
) -> dict[str, float]:
    """Spectral change at window joins vs within windows, for one clip ``audio [N]``.

    Spectral flux = mean absolute difference of consecutive log-mel frames (hop
    ``hop_seconds``). Returns the mean flux at the frames nearest to ``joins`` (seconds),
    the mean and 95th percentile of the flux elsewhere (two frames around each join
    excluded), and their ratio ``join / within``: a seam shows as ratio >> 1.
    """
    hop = max(1, round(hop_seconds * sample_rate))
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate, n_fft=4 * hop, hop_length=hop, n_mels=64, center=True
    )
    with torch.inference_mode():
        logmel = torch.log(mel(audio.float()) + 1e-5)  # [M, F]
    flux = (logmel[:, 1:] - logmel[:, :-1]).abs().mean(dim=0)  # flux[i]: frame i -> i + 1
    at = [min(flux.numel() - 1, max(0, round(t / hop_seconds) - 1)) for t in joins]
    mask = torch.ones_like(flux, dtype=torch.bool)
    for i in at:
        mask[max(0, i - 2) : i + 3] = False
    within = flux[mask]
    join = float(flux[at].mean()) if at else float("nan")
    mean_within = float(within.mean())
    return {
        "join": join,
        "within": mean_within,
        "within_p95": float(within.quantile(0.95)),
        "ratio": join / mean_within,
        "joins": len(at),
    }


def noise_like(clips: Sequence[torch.Tensor], seed: int = 0) -> list[torch.Tensor]:
    """White noise clips with each clip's length and RMS: the FAD 'anything but music' anchor."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for clip in clips:
        rms = clip.float().pow(2).mean().sqrt().clamp_min(1e-3)
        out.append(torch.randn(clip.numel(), generator=gen) * rms)
    return out
