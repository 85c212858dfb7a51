"""FAD, tag KL and the transformers embedder, on tiny models saved to a temp dir (no network)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from musiclm.sampling import metrics

SR = 16_000


def test_frechet_distance_matches_closed_form_and_is_zero_for_identical_sets():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 8))
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # Shifted copy: same covariance, so FAD = |shift|^2 exactly.
    shift = np.arange(8) * 0.5
    assert metrics.frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-6)
    # Scaled copy: mu_b = s mu_a, cov_b = s^2 cov_a -> FAD = (1 - s)^2 (|mu_a|^2 + tr(cov_a)).
    s = 3.0
    mu = a.mean(0)
    expected = (1 - s) ** 2 * (mu @ mu + np.trace(np.cov(a, rowvar=False)))
    assert metrics.frechet_distance(a, a * s) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_with_fewer_embeddings_than_dimensions_is_finite():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 64)), rng.normal(size=(7, 64)) + 1.0
    value = metrics.frechet_distance(a, b)
    assert np.isfinite(value) and value > 0


def test_frechet_distance_refuses_a_single_embedding():
    with pytest.raises(ValueError, match="at least 2"):
        metrics.frechet_distance(np.zeros((1, 4)), np.zeros((3, 4)))


def test_kl_divergence():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    assert metrics.kl_divergence(p, p) == pytest.approx(0.0, abs=1e-9)
    q = p[::-1]
    assert metrics.kl_divergence(p, q) > 0.5
    # Unpaired sets compare mean distributions.
    assert metrics.kl_divergence(p, p.mean(0, keepdims=True)) == pytest.approx(0.0, abs=1e-9)


def test_split_windows_and_window_length():
    clips = [torch.arange(10.0), torch.arange(7.0)]
    assert metrics.window_length(1, 4.0, clips) == 4
    assert metrics.window_length(1, 20.0, clips) == 7
    windows = metrics.split_windows(clips, 4, 3)
    assert windows.shape == (3 + 2, 4)
    assert torch.equal(windows[1], torch.arange(3.0, 7.0))


def test_noise_like_matches_length_and_loudness():
    clip = 0.3 * torch.sin(torch.linspace(0, 500, 24_000))
    (noise,) = metrics.noise_like([clip])
    assert noise.shape == clip.shape
    rms = float(clip.pow(2).mean().sqrt())
    assert float(noise.pow(2).mean().sqrt()) == pytest.approx(rms, rel=0.05)


@pytest.fixture(scope="module")
def tiny_wav2vec(tmp_path_factory):
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32, 32),
        conv_stride=(5, 4),
        conv_kernel=(10, 4),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    directory = tmp_path_factory.mktemp("wav2vec")
    Wav2Vec2Model(config).save_pretrained(directory)
    Wav2Vec2FeatureExtractor(sampling_rate=SR).save_pretrained(directory)
    return directory


def _tones(freqs, seconds=1.0, sr=24_000):
    t = torch.arange(int(seconds * sr)) / sr
    return [0.5 * torch.sin(2 * torch.pi * f * t) for f in freqs]


@pytest.mark.slow
def test_transformers_embedder_fad(tiny_wav2vec):
    embedder = metrics.TransformersEmbedder(tiny_wav2vec, input_rate=24_000)
    tones = _tones([220, 330, 440, 550])
    gen = torch.Generator().manual_seed(0)
    noise = [torch.randn(t.numel(), generator=gen) * 0.35 for t in tones]
    same = metrics.frechet_audio_distance(tones, tones, embedder, 0.5, 0.25)
    assert same == pytest.approx(0.0, abs=1e-6)
    other_tones = _tones([247, 370, 494, 587])
    near = metrics.frechet_audio_distance(tones, other_tones, embedder, 0.5, 0.25)
    far = metrics.frechet_audio_distance(tones, noise, embedder, 0.5, 0.25)
    assert 0 < near < far


def test_transformers_embedder_refuses_a_folder_without_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        metrics.TransformersEmbedder(tmp_path, input_rate=24_000)
