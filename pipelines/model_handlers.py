"""Beam RunInference model handlers for the three tokenizers.

Each handler loads one saved tokenizer component (``codec/``, ``semantic/`` or ``mulan/``
of a bundle, or a component directory while fitting) once per worker process and runs
it on batches of :class:`~musiclm.pipelines.clips.Clip`. A batch is split by clip length
(whole clips share one length; a tail clip is shorter) and each group is one batched
model call under ``torch.inference_mode()``. A call that raises (or gives NaN or infinite
outputs) is retried clip by clip, so one bad clip fails alone, whatever else shares its
batch: it comes back with ``clip.error`` set, its batch mates with their tokens. Outputs
are added to the clip's ``tokens``:

==========================  ===========================================================
handler                     adds to ``clip.tokens``
==========================  ===========================================================
:class:`SemanticHandler`    ``semantic`` int16 [T_s]
:class:`AcousticHandler`    ``acoustic`` int16 [Q, T_a]
:class:`MulanHandler`       ``mulan`` int16 [L], ``mulan_emb`` float32 [D]
:class:`FeaturesHandler`    ``features`` float32 [T, F] (semantic model features, for k-means)
:class:`EmbeddingHandler`   ``mulan_emb`` float32 [D] (for fitting the MuLan RVQ)
==========================  ===========================================================

Remote component directories (``gs://...``) are copied to a local temp dir on load.
"""

from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler
from musiclm.pipelines.clips import Clip
from musiclm.pipelines.runner import exception_text
from musiclm.tokenizers.bundle import load_component
from musiclm.tokenizers.codec import Codec
from musiclm.tokenizers.contract import TOKEN_DTYPE

METRICS_NAMESPACE = "musiclm"


def local_directory(directory: str) -> str:
    """``directory`` itself when local, else a local temp copy of its files (via FileSystems)."""
    if "://" not in directory or directory.startswith("file://"):
        return directory.removeprefix("file://")
    root = directory.rstrip("/") + "/"
    target = tempfile.mkdtemp(prefix="musiclm-component-")
    for meta in FileSystems.match([root + "**"])[0].metadata_list:
        local = os.path.join(target, meta.path[len(root) :])
        os.makedirs(os.path.dirname(local), exist_ok=True)
        with FileSystems.open(meta.path) as src, open(local, "wb") as dst:
            dst.write(src.read())
    return target


class ClipHandler(ModelHandler[Clip, Clip, Any]):
    """Base handler: load one component, run :meth:`apply` on batches of equal-length clips.

    ``batch_size`` fixes Beam's batches (min = max, so no slow ramp-up); ``threads`` sets
    torch's intra-op threads in the worker (``None``: torch's default).
    """

    step = "model"
    base: type | None = None  # a component of another class is refused (load_component)

    def __init__(self, directory: str, batch_size: int = 8, threads: int | None = None) -> None:
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
        self.directory = str(directory)
        self.threads = threads

    def load_model(self) -> Any:
        if self.threads:
            torch.set_num_threads(self.threads)
        return load_component(local_directory(self.directory), base=self.base)

    def run_inference(
        self,
        batch: Sequence[Clip],
        model: Any,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[Clip]:
        groups: dict[int, list[int]] = defaultdict(list)
        for i, clip in enumerate(batch):
            groups[clip.wav.shape[0]].append(i)
        out: list[Clip] = list(batch)
        for members in groups.values():
            done = self._isolating(model, [batch[i] for i in members])
            for i, clip in zip(members, done, strict=True):
                out[i] = clip
        Metrics.counter(METRICS_NAMESPACE, f"{self.step}_clips").inc(len(batch))
        return out

    def _isolating(self, model: Any, clips: list[Clip]) -> list[Clip]:
        """``clips`` (equal lengths) tokenized in one call; if it fails, one call per clip."""
        try:
            return self._call(model, clips)
        except Exception as err:
            if len(clips) == 1:
                Metrics.counter(METRICS_NAMESPACE, f"{self.step}_failed_clips").inc()
                return [clips[0].failed(exception_text(clips[0].path, err))]
        Metrics.counter(METRICS_NAMESPACE, f"{self.step}_retried_batches").inc()
        return [done for clip in clips for done in self._isolating(model, [clip])]

    def _call(self, model: Any, clips: list[Clip]) -> list[Clip]:
        """One batched model call [B, N] -> the clips with their new tokens."""
        Metrics.counter(METRICS_NAMESPACE, f"{self.step}_calls").inc()
        wav = torch.from_numpy(np.stack([clip.wav for clip in clips]))
        with torch.inference_mode():
            results = self.apply(model, wav)
        for name, value in results.items():
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise ValueError(
                    f"the {self.step} model gave NaN or infinite {name} (the audio overflows it)"
                )
        return [
            clip.with_tokens(**{k: v[j] for k, v in results.items()})
            for j, clip in enumerate(clips)
        ]

    def apply(self, model: Any, wav: torch.Tensor) -> dict[str, np.ndarray]:
        """``wav`` float32 [B, N] -> named outputs with a leading batch axis."""
        raise NotImplementedError

    def get_num_bytes(self, batch: Sequence[Clip]) -> int:
        return sum(clip.wav.nbytes for clip in batch)

    def get_metrics_namespace(self) -> str:
        return f"{METRICS_NAMESPACE}.{self.step}"


def _tokens(ids: torch.Tensor) -> np.ndarray:
    return ids.cpu().numpy().astype(TOKEN_DTYPE)


class SemanticHandler(ClipHandler):
    """Semantic ids: ``SemanticTokenizer.encode`` [B, N] -> [B, T_s]."""

    step = "semantic"

    def apply(self, model: Any, wav: torch.Tensor) -> dict[str, np.ndarray]:
        return {"semantic": _tokens(model.encode(wav))}


class AcousticHandler(ClipHandler):
    """Acoustic codes: ``codec.encode`` [B, 1, N] -> [B, Q, T_a]."""

    step = "acoustic"
    base = Codec

    def apply(self, model: Codec, wav: torch.Tensor) -> dict[str, np.ndarray]:
        return {"acoustic": _tokens(model.encode(wav[:, None]))}


class MulanHandler(ClipHandler):
    """MuLan audio embedding (windowed mean) [B, D] and its RVQ tokens [B, L]."""

    step = "mulan"

    def apply(self, model: Any, wav: torch.Tensor) -> dict[str, np.ndarray]:
        emb = model.audio_embedding(wav)
        return {"mulan": _tokens(model.quantize(emb)), "mulan_emb": emb.float().cpu().numpy()}


class FeaturesHandler(ClipHandler):
    """Semantic model features [B, T, F] (the rows k-means clusters)."""

    step = "features"

    def apply(self, model: Any, wav: torch.Tensor) -> dict[str, np.ndarray]:
        return {"features": model.features(wav).float().cpu().numpy()}


class EmbeddingHandler(ClipHandler):
    """MuLan audio embeddings [B, D] (before any codebooks exist)."""

    step = "mulan_emb"

    def apply(self, model: Any, wav: torch.Tensor) -> dict[str, np.ndarray]:
        return {"mulan_emb": model.audio_embedding(wav).float().cpu().numpy()}
