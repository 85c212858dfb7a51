"""Transformers SSL backends: tiny random checkpoints saved to disk and loaded like a user's."""

from __future__ import annotations

import pytest
import torch
import transformers
from musiclm.tokenizers.ssl_features import (
    FeatureModelError,
    load_transformers_features,
    pool_to_rate,
)

TINY = dict(hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32)
CONV = dict(conv_dim=(8, 8), conv_stride=(5, 64), conv_kernel=(10, 64), num_feat_extract_layers=2)


def save_checkpoint(kind: str, directory) -> None:
    """Write a tiny random checkpoint + feature extractor of ``kind`` as save_pretrained does."""
    if kind == "wav2vec2-bert":
        config = transformers.Wav2Vec2BertConfig(**TINY, feature_projection_input_dim=160)
        model = transformers.Wav2Vec2BertModel(config)
        extractor = transformers.SeamlessM4TFeatureExtractor()
    else:
        config_class, model_class = {
            "hubert": (transformers.HubertConfig, transformers.HubertModel),
            "wav2vec2": (transformers.Wav2Vec2Config, transformers.Wav2Vec2Model),
        }[kind]
        model = model_class(config_class(**TINY, **CONV, num_conv_pos_embeddings=16))
        extractor = transformers.Wav2Vec2FeatureExtractor(do_normalize=True)
    model.save_pretrained(directory)
    extractor.save_pretrained(directory)


@pytest.mark.parametrize("kind", ["wav2vec2-bert", "hubert", "wav2vec2"])
def test_backend_gives_25hz_layer_features_for_any_length(kind, tmp_path):
    save_checkpoint(kind, tmp_path)
    model = load_transformers_features(tmp_path, layer=2)
    assert model.sample_rate == 16_000 and model.frame_rate == 25 and model.dim == 16
    assert len(model.model.encoder.layers) == 2  # layers above the chosen one are dropped
    torch.manual_seed(0)
    for n in (640, 16_000, 16_000 + 639, 23_456):
        wav = torch.randn(2, n) * 0.1
        feats = model.features(wav)
        assert feats.shape == (2, n // 640, 16)
        assert torch.isfinite(feats).all()
    wav = torch.randn(1, 8_000) * 0.1
    torch.testing.assert_close(model.features(wav), model.features(wav))


def test_layer_choice_matches_the_full_model(tmp_path):
    save_checkpoint("hubert", tmp_path)
    full = transformers.HubertModel.from_pretrained(tmp_path).eval()
    wav = torch.randn(1, 16_000) * 0.1
    model = load_transformers_features(tmp_path, layer=1)
    inputs = model.extractor(
        [torch.nn.functional.pad(wav, (0, 640))[0].numpy()],
        sampling_rate=16_000,
        return_tensors="pt",
    )
    with torch.inference_mode():
        hidden = full(**inputs, output_hidden_states=True).hidden_states[1]
    expected = pool_to_rate(hidden, 50.0, 25)
    torch.testing.assert_close(model.features(wav), expected, rtol=1e-4, atol=1e-4)


def test_saved_backend_reloads_identically(tmp_path):
    save_checkpoint("wav2vec2-bert", tmp_path / "src")
    model = load_transformers_features(tmp_path / "src", layer=2)
    model.save(tmp_path / "copy")
    again = load_transformers_features(tmp_path / "copy", layer=2)
    wav = torch.randn(1, 12_000) * 0.1
    torch.testing.assert_close(model.features(wav), again.features(wav))


def test_clear_errors_for_bad_checkpoints(tmp_path):
    with pytest.raises(FeatureModelError, match=r"no config\.json"):
        load_transformers_features(tmp_path)
    save_checkpoint("hubert", tmp_path)
    with pytest.raises(FeatureModelError, match="layer 7 does not exist"):
        load_transformers_features(tmp_path, layer=7)
    with pytest.raises(FeatureModelError, match="not a supported SSL backend"):
        load_transformers_features(tmp_path, architecture="whisper")
    (tmp_path / "preprocessor_config.json").unlink()
    with pytest.raises(FeatureModelError, match=r"no preprocessor_config\.json"):
        load_transformers_features(tmp_path, layer=2)


def test_pooling_refuses_rates_that_do_not_divide():
    with pytest.raises(FeatureModelError, match="not a whole multiple of 25 Hz"):
        pool_to_rate(torch.zeros(1, 10, 4), 60.0, 5)
