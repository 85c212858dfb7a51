"""MuLan tokens: the two towers, windowed audio averaging and the faiss-fitted RVQ.

MusicLM conditions on MuLan: at training time on the *audio* embedding of a clip, at
inference on the *text* embedding of the prompt. Both become ``spec.mulan_levels`` tokens
through the same residual vector quantizer (``[L, K, D]`` codebooks fitted by k-means on
residuals of audio embeddings, :func:`fit_codebooks`).

Shapes (``D = spec.mulan_dim``, ``L = spec.mulan_levels``)::

    audio_embedding(wav [B, N] at spec.sample_rate) -> float [B, D]
    text_embedding(prompts: list[str] of length B)  -> float [B, D]   (unit norm)
    quantize(emb [B, D])                            -> int64 [B, L]   (ids < K <= 2**15)
    dequantize(tokens [B, L'])                      -> float [B, D]   (any L' <= L)
    text_tokens(prompts)                            -> int64 [B, L]

Callers cast tokens to int16 when storing (contract ``TOKEN_DTYPE``).
"""

from __future__ import annotations

import abc
import json
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from musiclm.tokenizers.contract import TokenSpec
from musiclm.tokenizers.kmeans import assign, fit_kmeans
from musiclm.tokenizers.mulan_audio import AudioTower, AudioTowerConfig
from musiclm.tokenizers.mulan_text import TextTower, TextTowerConfig
from musiclm.tokenizers.rvq import rvq_decode, rvq_encode
from musiclm.tokenizers.saved_config import CONFIG_FILE, read_saved_config
from torch import nn

KIND = "mulan"
CODEBOOKS_FILE = "codebooks.npy"

TINY_AUDIO = AudioTowerConfig(n_mels=32, stem_width=8, widths=[8, 16], blocks=[1, 1])
TINY_TEXT = TextTowerConfig(kind="small", vocab_size=200, width=32, layers=1, heads=2, ff=64)


class MuLanTokens(nn.Module, abc.ABC):
    """What every MuLan-like model shares: the spec's windows and the RVQ codebooks.

    Subclasses provide ``audio_embedding(wav [B, N]) -> [B, D]``,
    ``text_embedding(prompts) -> [B, D]`` and ``codebook_device``. ``codebooks`` (float32
    ``[L, K, D]``) may be ``None`` until :func:`fit_codebooks` has run: embeddings work
    without them, tokens do not.
    """

    kind: ClassVar[str]  # the "kind" of its saved config.json

    def __init__(self, spec: TokenSpec | None = None) -> None:
        super().__init__()
        self.spec = spec or TokenSpec()
        self.register_buffer("codebooks", None, persistent=False)

    @property
    @abc.abstractmethod
    def codebook_device(self) -> torch.device:
        """Where the codebooks (and the model) live."""

    @abc.abstractmethod
    def audio_embedding(self, wav: torch.Tensor) -> torch.Tensor:
        """Mean embedding over the spec's windows: ``wav [B, N]`` -> ``[B, D]``."""

    @abc.abstractmethod
    def text_embedding(self, prompts: list[str]) -> torch.Tensor:
        """Prompts (B non-empty strings) -> unit-norm embeddings ``[B, D]``."""

    # ----- windows -----------------------------------------------------------------------
    @property
    def window_samples(self) -> int:
        return round(self.spec.mulan_window_seconds * self.spec.sample_rate)

    @property
    def stride_samples(self) -> int:
        return round(self.spec.mulan_stride_seconds * self.spec.sample_rate)

    def num_windows(self, num_samples: int) -> int:
        """Windows averaged for a clip of ``num_samples``: 1 if shorter than one window."""
        if num_samples <= self.window_samples:
            return 1
        return 1 + (num_samples - self.window_samples) // self.stride_samples

    # ----- tokens ------------------------------------------------------------------------
    def set_codebooks(self, codebooks: torch.Tensor | np.ndarray) -> None:
        """Install RVQ codebooks ``[spec.mulan_levels, K, spec.mulan_dim]`` (K <= codebook size)."""
        books = torch.as_tensor(np.asarray(codebooks, dtype=np.float32))
        levels, size, dim = (
            self.spec.mulan_levels,
            self.spec.mulan_codebook_size,
            self.spec.mulan_dim,
        )
        if books.ndim != 3 or books.shape[0] != levels or books.shape[2] != dim:
            raise ValueError(
                f"MuLan codebooks must be [{levels}, K, {dim}], got {tuple(books.shape)}"
            )
        if not 1 <= books.shape[1] <= size:
            raise ValueError(f"MuLan codebooks have {books.shape[1]} codes; at most {size}")
        self.codebooks = books.to(self.codebook_device)

    def _require_codebooks(self) -> torch.Tensor:
        if self.codebooks is None:
            raise RuntimeError(
                "this MuLan has no RVQ codebooks yet: fit them with "
                "musiclm.tokenizers.mulan.fit_codebooks on audio embeddings and call "
                "set_codebooks (`make tokenizers` does both)"
            )
        return self.codebooks

    @torch.inference_mode()
    def quantize(self, emb: torch.Tensor) -> torch.Tensor:
        """Embeddings ``[B, D]`` -> RVQ tokens int64 ``[B, L]``."""
        books = self._require_codebooks()
        return rvq_encode(emb.to(books.device).float(), books)

    @torch.inference_mode()
    def dequantize(self, tokens: torch.Tensor) -> torch.Tensor:
        """RVQ tokens ``[B, L']`` (any ``L' <= L``, any int dtype) -> embeddings ``[B, D]``."""
        books = self._require_codebooks()
        return rvq_decode(tokens.to(books.device).long(), books)

    def text_tokens(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> tokens int64 ``[B, L]`` through the audio-fitted codebooks."""
        return self.quantize(self.text_embedding(prompts))

    def audio_tokens(self, wav: torch.Tensor) -> torch.Tensor:
        """Audio ``[B, N]`` -> tokens int64 ``[B, L]`` of its windowed mean embedding."""
        return self.quantize(self.audio_embedding(wav))

    # ----- persistence -------------------------------------------------------------------
    def save_codebooks(self, directory: Path) -> None:
        """``codebooks.npy`` (float32 ``[L, K, D]``) when fitted; a stale one is removed."""
        path = directory / CODEBOOKS_FILE
        if self.codebooks is not None:
            np.save(path, self.codebooks.cpu().numpy(), allow_pickle=False)
        elif path.exists():
            path.unlink()

    @classmethod
    def read_config(cls, directory: Path) -> dict[str, Any]:
        """``directory/config.json``, refused unless it is of this class's ``kind``."""
        return read_saved_config(directory, cls.kind, f"{cls.kind} model")

    def load_codebooks(self, directory: Path) -> None:
        """Install ``directory/codebooks.npy`` if there is one."""
        path = directory / CODEBOOKS_FILE
        if path.is_file():
            self.set_codebooks(np.load(path, allow_pickle=False))


class MuLanTokenizer(MuLanTokens):
    """Audio and text towers sharing one ``spec.mulan_dim`` space, plus RVQ codebooks."""

    kind = KIND

    def __init__(
        self,
        audio: AudioTower,
        text: TextTower,
        spec: TokenSpec | None = None,
        codebooks: torch.Tensor | np.ndarray | None = None,
    ) -> None:
        super().__init__(spec)
        for name, tower_dim in (("audio", audio.config.dim), ("text", text.config.dim)):
            if tower_dim != self.spec.mulan_dim:
                raise ValueError(
                    f"the {name} tower projects to {tower_dim} dims but spec.mulan_dim is "
                    f"{self.spec.mulan_dim}; set the tower's `dim` to {self.spec.mulan_dim}"
                )
        if audio.config.sample_rate != self.spec.sample_rate:
            raise ValueError(
                f"audio tower runs at {audio.config.sample_rate} Hz but the spec at "
                f"{self.spec.sample_rate} Hz; set the tower's sample_rate to match"
            )
        window, stride = self.window_samples, self.stride_samples
        for name, samples in (("window", window), ("stride", stride)):
            if samples % audio.config.hop:
                raise ValueError(
                    f"MuLan {name} of {samples} samples is not a multiple of the audio tower's "
                    f"hop ({audio.config.hop}); pick a hop that divides both"
                )
        self.audio_tower = audio
        self.text_tower = text
        if codebooks is not None:
            self.set_codebooks(codebooks)

    # ----- construction ------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        audio: AudioTowerConfig,
        text: TextTowerConfig,
        spec: TokenSpec | None = None,
        captions: Iterable[str] | None = None,
    ) -> MuLanTokenizer:
        """Untrained towers from configs; ``captions`` train a small text tower's tokenizer."""
        model = cls(AudioTower(audio), TextTower(text), spec)
        if captions is not None:
            model.text_tower.train_tokenizer(captions)
        return model

    @classmethod
    def tiny(cls, captions: Iterable[str], spec: TokenSpec | None = None) -> MuLanTokenizer:
        """A tiny untrained MuLan (seconds to build and run) for tests and smoke runs.

        ``captions`` train the small text tower's WordPiece tokenizer.
        """
        spec = spec or TokenSpec()
        audio = AudioTowerConfig(
            **{**TINY_AUDIO.to_dict(), "sample_rate": spec.sample_rate, "dim": spec.mulan_dim}
        )
        text = TextTowerConfig(**{**TINY_TEXT.to_dict(), "dim": spec.mulan_dim})
        return cls.build(audio, text, spec, captions)

    # ----- embeddings --------------------------------------------------------------------
    @torch.inference_mode()
    def audio_embedding(self, wav: torch.Tensor) -> torch.Tensor:
        """Mean audio embedding over windows: ``wav [B, N]`` at ``spec.sample_rate`` -> ``[B, D]``.

        Windows of ``spec.mulan_window_seconds`` start every ``spec.mulan_stride_seconds``
        (0, 1, 2, ... s for the paper); a tail shorter than one stride after the last whole
        window is not covered. The result is the plain mean of the windows' unit-norm
        embeddings (norm <= 1, not renormalized). A clip shorter than one window is **used
        whole** (one window of its own length, no padding: the ResNet pools globally, and
        zero padding would mix silence into the embedding).

        All windows of the batch go through the tower in one call: the clip's log-mel
        frames are computed once and unfolded into windows (a window's frames are exactly
        a slice of the clip's frames, since window and stride are multiples of the hop).
        Memory grows with ``B x windows``: pass clips (the tokenize pipeline cuts them, 30 s
        = 21 windows), not whole albums.
        """
        frames = self.audio_tower.log_mel(wav.to(self.codebook_device))
        if wav.shape[1] <= self.window_samples:
            return self.audio_tower.embed_log_mel(frames)
        hop = self.audio_tower.config.hop
        per_window = 1 + (self.window_samples - self.audio_tower.config.n_fft) // hop
        windows = frames.unfold(2, per_window, self.stride_samples // hop)  # [B, M, W, Fw]
        batch, mels, count, _ = windows.shape
        flat = windows.permute(0, 2, 1, 3).reshape(batch * count, mels, per_window)
        return self.audio_tower.embed_log_mel(flat).reshape(batch, count, -1).mean(dim=1)

    @torch.inference_mode()
    def text_embedding(self, prompts: list[str]) -> torch.Tensor:
        """Prompts (list of B non-empty strings) -> unit-norm embeddings ``[B, D]``."""
        return self.text_tower(prompts)

    @property
    def codebook_device(self) -> torch.device:
        return self.audio_tower.proj.weight.device

    # ----- persistence -------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write ``config.json`` (kind "mulan"), ``audio.pt``, ``text/`` and, when fitted,
        ``codebooks.npy`` (float32 ``[L, K, D]``) to ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "kind": KIND,
            "spec": self.spec.to_dict(),
            "audio": self.audio_tower.config.to_dict(),
        }
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
        torch.save(self.audio_tower.state_dict(), directory / "audio.pt")
        self.text_tower.save(directory / "text")
        self.save_codebooks(directory)

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> MuLanTokenizer:
        """Load a saved MuLan (with or without codebooks) in eval mode on ``device``."""
        directory = Path(directory)
        config = cls.read_config(directory)
        audio = AudioTower(AudioTowerConfig(**config["audio"]))
        weights = torch.load(directory / "audio.pt", map_location="cpu", weights_only=True)
        audio.load_state_dict(weights)
        text = TextTower.load(directory / "text")
        model = cls(audio, text, TokenSpec.from_dict(config["spec"])).to(device)
        model.load_codebooks(directory)
        return model.eval()


def fit_codebooks(
    embeddings: np.ndarray,
    levels: int,
    codebook_size: int,
    *,
    min_points_per_code: int = 4,
    seed: int = 0,
) -> np.ndarray:
    """RVQ codebooks by k-means on residuals: embeddings ``[N, D]`` -> float32 ``[levels, K', D]``.

    Level 1 clusters the embeddings, level ``l`` the residuals left by levels ``1..l-1``
    (faiss k-means through :func:`musiclm.tokenizers.kmeans.fit_kmeans`).

    ``K' = codebook_size`` when ``N >= codebook_size * min_points_per_code``; otherwise the
    codebook shrinks to ``max(1, N // min_points_per_code)`` codes with a ``UserWarning``
    (e.g. the demo's few hundred clips), never silently. A code per point would make level 1
    memorize the clips and leave zero residuals to every later level.
    """
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"embeddings must be a non-empty [N, D] array, got shape {x.shape}")
    if levels < 1 or codebook_size < 1 or min_points_per_code < 1:
        raise ValueError("levels, codebook_size and min_points_per_code must be >= 1")
    size = codebook_size
    if len(x) < codebook_size * min_points_per_code:
        size = max(1, len(x) // min_points_per_code)
        warnings.warn(
            f"MuLan RVQ: only {len(x)} embeddings for {codebook_size} codes per level "
            f"(want >= {min_points_per_code} per code); the codebook shrinks to {size} codes. "
            "Fit on more clips for the full codebook.",
            UserWarning,
            stacklevel=2,
        )
    books, residual = [], x
    for level in range(levels):
        centroids = fit_kmeans(residual, size, seed=seed + level)
        books.append(centroids)
        residual = residual - centroids[assign(residual, centroids)]
    return np.stack(books).astype(np.float32)
