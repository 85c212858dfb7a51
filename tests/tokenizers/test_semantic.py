"""Semantic tokenizer: 25 Hz int16-castable ids for any length, determinism, save/load, backends."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from musiclm.tokenizers.bundle import load_component
from musiclm.tokenizers.contract import TOKEN_DTYPE, TokenSpec
from musiclm.tokenizers.kmeans import fit_kmeans
from musiclm.tokenizers.semantic import SemanticTokenizer

SPEC = TokenSpec(semantic_vocab=32)


def music_like(batch: int, samples: int, seed: int = 0) -> torch.Tensor:
    """[batch, samples] at 24 kHz: random notes of a few harmonics with decays, plus noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / 24_000
    out = torch.zeros(batch, samples)
    for _ in range(6):
        f0 = 110 * 2 ** (torch.randint(0, 36, (batch, 1), generator=g) / 12)
        onset = torch.rand(batch, 1, generator=g) * t[-1]
        env = torch.where(t >= onset, torch.exp(-(t - onset) * 3), torch.zeros(()))
        for h in (1, 2, 3):
            out += env * torch.sin(2 * torch.pi * f0 * h * t) / h
    return 0.1 * out + 0.01 * torch.randn(batch, samples, generator=g)


@pytest.fixture(scope="module")
def fitted() -> SemanticTokenizer:
    tok = SemanticTokenizer.tiny(SPEC)
    feats = tok.features(music_like(4, 48_000))
    tok.set_centroids(fit_kmeans(feats.reshape(-1, tok.dim).numpy(), SPEC.semantic_vocab))
    return tok


@pytest.mark.parametrize("samples", [959, 960, 24_000, 24_000 + 959, 37_123])
def test_one_id_per_40ms_in_range_for_any_length(fitted, samples):
    ids = fitted.encode(music_like(2, samples, seed=samples))
    assert ids.dtype == torch.long and ids.shape == (2, samples // SPEC.samples_per_semantic)
    if ids.numel():
        assert int(ids.min()) >= 0 and int(ids.max()) < SPEC.semantic_vocab
        assert np.array_equal(ids.numpy().astype(TOKEN_DTYPE), ids.numpy())


def test_same_audio_same_ids_across_calls_and_reloads(fitted, tmp_path):
    wav = music_like(3, 30_000, seed=5)
    first = fitted.encode(wav)
    assert torch.equal(first, fitted.encode(wav))
    assert torch.equal(first[1:2], fitted.encode(wav[1:2]))  # batch composition does not matter
    fitted.save(tmp_path / "semantic")
    again = load_component(tmp_path / "semantic")
    assert isinstance(again, SemanticTokenizer) and again.spec == SPEC
    assert torch.equal(first, again.encode(wav))


def test_without_centroids_features_work_and_encode_explains(tmp_path):
    tok = SemanticTokenizer.tiny(SPEC)
    tok.save(tmp_path / "model")
    loaded = SemanticTokenizer.load(tmp_path / "model")
    assert not (tmp_path / "model" / "centroids.npy").exists()
    assert loaded.features(music_like(1, 9_600)).shape == (1, 10, tok.dim)
    with pytest.raises(ValueError, match="no k-means centroids yet"):
        loaded.encode(music_like(1, 9_600))
    # The fit pipeline's path: features -> centroids -> set_centroids -> save.
    feats = loaded.features(music_like(2, 24_000)).reshape(-1, tok.dim).numpy()
    loaded.set_centroids(fit_kmeans(feats, 8))
    loaded.save(tmp_path / "bundle-semantic")
    assert SemanticTokenizer.load(tmp_path / "bundle-semantic").vocab_size == 8


def test_rejects_centroids_that_do_not_fit(fitted):
    tok = SemanticTokenizer.tiny(SPEC)
    with pytest.raises(ValueError, match=r"centroids must be \[K, 32\]"):
        tok.set_centroids(np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match=r"do not fit spec\.semantic_vocab 32"):
        tok.set_centroids(np.zeros((33, tok.dim), np.float32))


def test_transformers_checkpoint_tokenizer_resamples_and_roundtrips(tmp_path):
    config = transformers.HubertConfig(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8, 8),
        conv_stride=(5, 64),
        conv_kernel=(10, 64),
        num_feat_extract_layers=2,
        num_conv_pos_embeddings=16,
    )
    transformers.HubertModel(config).save_pretrained(tmp_path / "hubert")
    transformers.Wav2Vec2FeatureExtractor().save_pretrained(tmp_path / "hubert")
    tok = SemanticTokenizer.from_checkpoint(tmp_path / "hubert", SPEC, layer=2)
    wav = music_like(2, 24_000 + 500)
    feats = tok.features(wav)
    assert feats.shape == (2, 25, 16)
    tok.set_centroids(fit_kmeans(feats.reshape(-1, 16).numpy(), 8))
    ids = tok.encode(wav)
    tok.save(tmp_path / "semantic")
    again = SemanticTokenizer.load(tmp_path / "semantic")
    assert again.backend == "transformers"
    assert torch.equal(ids, again.encode(wav))
