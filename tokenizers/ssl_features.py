"""Self-supervised audio features at exactly 25 Hz from public checkpoints on disk (transformers).

One interface for every semantic feature model (this module's backends and the in-project
model of :mod:`musiclm.tokenizers.semantic_model`)::

    model.sample_rate            input rate the model expects (Hz)
    model.frame_rate             25 (frames per second of the output)
    model.layer, model.dim       which layer's embeddings, and their width
    model.features(wav[B, N])    -> FloatTensor[B, N // (sample_rate // frame_rate), dim]

Backends, all loaded from a local directory written by ``save_pretrained`` (never a hub
download): w2v-BERT 2.0 (``Wav2Vec2BertModel`` + its ``SeamlessM4TFeatureExtractor``, the
closest public model to the paper's w2v-BERT), HuBERT (``HubertModel``; MERT-style music
checkpoints load as HuBERT) and wav2vec 2.0 (``Wav2Vec2Model``). Their own frame rate (50
Hz for 16 kHz HuBERT/w2v-BERT, 75 Hz for 24 kHz MERT) is average-pooled by an integer
factor to 25 Hz. Encoder layers above ``layer`` are dropped at load, so they cost nothing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FRAME_RATE = 25
DEFAULT_LAYER = 7

# config.json "model_type" -> transformers model class name
ARCHITECTURES = {
    "wav2vec2-bert": "Wav2Vec2BertModel",
    "hubert": "HubertModel",
    "wav2vec2": "Wav2Vec2Model",
}


class FeatureModelError(ValueError):
    """A checkpoint directory that cannot serve as a semantic feature model."""


def frames_at(num_samples: int, sample_rate: int, frame_rate: int = FRAME_RATE) -> int:
    """Output frames for ``num_samples`` input samples: whole frames only."""
    return num_samples // (sample_rate // frame_rate)


def pool_to_rate(x: torch.Tensor, native_rate: float, frames: int) -> torch.Tensor:
    """Average-pool [B, T, D] at ``native_rate`` Hz to 25 Hz and fit it to ``frames`` frames.

    The native rate must be an integer multiple of 25 Hz. Missing trailing frames (a model
    whose receptive field does not fit the last partial window) repeat the last frame.
    """
    factor = native_rate / FRAME_RATE
    if abs(factor - round(factor)) > 1e-6 or round(factor) < 1:
        raise FeatureModelError(
            f"the model's frame rate {native_rate:g} Hz is not a whole multiple of "
            f"{FRAME_RATE} Hz; semantic tokens need {FRAME_RATE} Hz frames"
        )
    factor = round(factor)
    if factor > 1:
        usable = (x.shape[1] // factor) * factor
        x = x[:, :usable].reshape(x.shape[0], usable // factor, factor, x.shape[2]).mean(2)
    if x.shape[1] < frames:
        if x.shape[1] == 0:
            raise FeatureModelError("the input is shorter than one frame of the feature model")
        x = torch.cat([x, x[:, -1:].expand(-1, frames - x.shape[1], -1)], dim=1)
    return x[:, :frames]


class TransformersFeatures(nn.Module):
    """Layer-``layer`` embeddings of a transformers SSL checkpoint, pooled to 25 Hz.

    ``features(wav[B, N] at sample_rate) -> [B, N // (sample_rate // 25), dim]``.
    The checkpoint's own feature extractor (``preprocessor_config.json``) prepares the
    input: log-mel filterbanks for w2v-BERT 2.0, per-utterance normalization for HuBERT
    and wav2vec 2.0 when the checkpoint asks for it.
    """

    def __init__(self, model: nn.Module, extractor: Any, layer: int, sample_rate: int) -> None:
        super().__init__()
        layers = model.encoder.layers
        if not 1 <= layer <= len(layers):
            raise FeatureModelError(
                f"layer {layer} does not exist: the checkpoint has encoder layers 1..{len(layers)}"
            )
        model.encoder.layers = layers[:layer]
        model.config.num_hidden_layers = layer
        self.model = model.eval()
        self.extractor = extractor
        self.layer = layer
        self.sample_rate = sample_rate
        self.frame_rate = FRAME_RATE
        self.dim = model.config.hidden_size
        self.native_rate = sample_rate / self._hop()
        self._captured: torch.Tensor | None = None
        model.encoder.layers[-1].register_forward_hook(self._capture)

    def _hop(self) -> int:
        """Input samples per native output frame."""
        config = self.model.config
        if config.model_type == "wav2vec2-bert":
            # 10 ms filterbank frames stacked by the extractor's stride
            return self.sample_rate // 100 * self.extractor.stride
        return math.prod(config.conv_stride)

    def _capture(self, _module: nn.Module, _inputs: Any, output: Any) -> None:
        self._captured = output[0] if isinstance(output, tuple) else output

    @torch.inference_mode()
    def features(self, wav: torch.Tensor) -> torch.Tensor:
        """[B, N] float audio at ``sample_rate`` -> [B, N // (sample_rate // 25), dim]."""
        if wav.ndim != 2:
            raise ValueError(f"expected audio [B, N], got shape {tuple(wav.shape)}")
        frames = frames_at(wav.shape[1], self.sample_rate)
        # One extra 25 Hz frame of silence so the last whole frame has its full receptive field.
        padded = F.pad(wav.float(), (0, self.sample_rate // FRAME_RATE))
        batch = [row for row in padded.cpu().numpy().astype(np.float32)]
        inputs = self.extractor(
            batch, sampling_rate=self.sample_rate, return_tensors="pt", padding=True
        )
        device = next(self.model.parameters()).device
        inputs = {name: value.to(device) for name, value in inputs.items()}
        self.model(**inputs)
        hidden, self._captured = self._captured, None
        return pool_to_rate(hidden.float(), self.native_rate, frames)

    def save(self, directory: str | Path) -> None:
        """Write the (layer-truncated) checkpoint and its feature extractor to ``directory``."""
        self.model.save_pretrained(directory)
        self.extractor.save_pretrained(directory)


def load_transformers_features(
    directory: str | Path,
    layer: int = DEFAULT_LAYER,
    architecture: str | None = None,
    device: str = "cpu",
) -> TransformersFeatures:
    """Load a w2v-BERT 2.0 / HuBERT / MERT / wav2vec 2.0 checkpoint from a local directory.

    ``directory`` holds what ``save_pretrained`` writes (config.json, weights) and the
    feature extractor's ``preprocessor_config.json``. ``architecture`` overrides the
    config's ``model_type`` (e.g. ``"hubert"`` for a MERT checkpoint); it must be one of
    :data:`ARCHITECTURES`. Nothing is downloaded.
    """
    import transformers

    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FeatureModelError(
            f"{directory} has no config.json: point it at a directory written by "
            "save_pretrained (e.g. a downloaded w2v-BERT 2.0, HuBERT or MERT checkpoint)"
        )
    model_type = architecture or json.loads(config_path.read_text()).get("model_type", "")
    if model_type not in ARCHITECTURES:
        raise FeatureModelError(
            f"{directory}: model_type {model_type!r} is not a supported SSL backend; "
            f"supported: {sorted(ARCHITECTURES)} (pass architecture='hubert' for MERT-style "
            "checkpoints)"
        )
    if not (directory / "preprocessor_config.json").is_file():
        raise FeatureModelError(
            f"{directory} has no preprocessor_config.json: save the checkpoint's feature "
            "extractor there too (AutoFeatureExtractor.from_pretrained(...).save_pretrained(dir))"
        )
    model_class = getattr(transformers, ARCHITECTURES[model_type])
    model = model_class.from_pretrained(directory, local_files_only=True)
    extractor = transformers.AutoFeatureExtractor.from_pretrained(directory, local_files_only=True)
    module = TransformersFeatures(model, extractor, layer, int(extractor.sampling_rate))
    return module.to(device)
