"""MuLan tokenizer: windowed averaging, RVQ tokens, codebook fitting, text towers, save/load."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
from musiclm.tokenizers.bundle import load_component
from musiclm.tokenizers.contract import TOKEN_DTYPE, TokenSpec
from musiclm.tokenizers.mulan import TINY_TEXT as TINY_TEXT_CONFIG
from musiclm.tokenizers.mulan import MuLanTokenizer, fit_codebooks
from musiclm.tokenizers.mulan_text import MINILM, TextTower, TextTowerConfig, resolve_checkpoint

SR = 24_000
CAPTIONS = ["a calm piano melody", "fast drums and bass guitar", "a church organ chorale"]


@pytest.fixture(scope="module")
def mulan() -> MuLanTokenizer:
    torch.manual_seed(0)
    return MuLanTokenizer.tiny(CAPTIONS).eval()


def _clips(batch: int, seconds: float, seed: int = 0) -> torch.Tensor:
    """Noise with a different spectral tilt per clip and a slow loudness change over time."""
    gen = torch.Generator().manual_seed(seed)
    n = int(seconds * SR)
    noise = torch.randn(batch, n, generator=gen)
    tilt = torch.linspace(0.05, 0.95, batch)[:, None]
    coloured = torch.cumsum(noise * (1 - tilt), dim=1) * 0.01 + noise * tilt
    envelope = 0.5 + 0.4 * torch.sin(torch.linspace(0, 6.28, n))[None]
    return (coloured - coloured.mean(1, keepdim=True)) * envelope * 0.1


def test_windowed_average_of_30s_equals_mean_of_21_windows(mulan: MuLanTokenizer) -> None:
    wav = _clips(2, 30.0)
    assert mulan.num_windows(wav.shape[1]) == 21
    batched = mulan.audio_embedding(wav)
    with torch.inference_mode():
        windows = [mulan.audio_tower(wav[:, s * SR : s * SR + 10 * SR]) for s in range(21)]
    looped = torch.stack(windows, dim=1).mean(dim=1)
    assert batched.shape == (2, 128)
    torch.testing.assert_close(batched, looped, atol=1e-5, rtol=1e-4)
    # the windows differ (loudness changes over time), so this is a real average
    assert (windows[0] - windows[10]).abs().max() > 1e-4


def test_clip_shorter_than_a_window_is_used_whole(mulan: MuLanTokenizer) -> None:
    wav = _clips(2, 4.0)
    with torch.inference_mode():
        whole = mulan.audio_tower(wav)
    torch.testing.assert_close(mulan.audio_embedding(wav), whole)
    with pytest.raises(ValueError, match="shorter than one spectrogram frame"):
        mulan.audio_embedding(wav[:, :100])


def test_tokens_are_int16_castable_deterministic_and_refine_with_levels(
    mulan: MuLanTokenizer,
) -> None:
    spec = mulan.spec
    emb = torch.nn.functional.normalize(torch.randn(512, spec.mulan_dim), dim=1).numpy()
    books = fit_codebooks(emb, spec.mulan_levels, 32)
    assert books.shape == (spec.mulan_levels, 32, spec.mulan_dim)
    mulan.set_codebooks(books)
    wav = _clips(3, 12.0, seed=1)
    tokens = mulan.audio_tokens(wav)
    assert tokens.shape == (3, spec.mulan_levels)
    assert tokens.dtype == torch.int64
    assert tokens.min() >= 0 and tokens.max() < spec.mulan_codebook_size
    stored = tokens.numpy().astype(TOKEN_DTYPE)
    assert (stored == tokens.numpy()).all()
    assert torch.equal(mulan.audio_tokens(wav), tokens)
    assert torch.equal(mulan.text_tokens(CAPTIONS), mulan.text_tokens(CAPTIONS))
    # more levels, smaller error (on the fitted data)
    codes = mulan.quantize(torch.from_numpy(emb))
    errors = [
        (mulan.dequantize(codes[:, :q]) - torch.from_numpy(emb)).pow(2).sum(1).mean().item()
        for q in (1, 4, spec.mulan_levels)
    ]
    assert errors[0] > errors[1] > errors[2]
    assert torch.equal(mulan.dequantize(torch.from_numpy(stored)), mulan.dequantize(tokens))


def test_codebook_shrinks_with_warning_never_silently() -> None:
    emb = np.random.default_rng(0).standard_normal((100, 128)).astype(np.float32)
    with pytest.warns(UserWarning, match="only 100 embeddings for 1024 codes.*shrinks to 25"):
        books = fit_codebooks(emb, 3, 1024)
    assert books.shape == (3, 25, 128)
    with pytest.warns(UserWarning, match="shrinks to 1 codes"):
        assert fit_codebooks(emb[:2], 2, 16).shape == (2, 1, 128)


def test_full_codebook_without_warning(recwarn: pytest.WarningsRecorder) -> None:
    emb = np.random.default_rng(0).standard_normal((256, 16)).astype(np.float32)
    assert fit_codebooks(emb, 2, 64).shape == (2, 64, 16)
    assert not [w for w in recwarn if "MuLan RVQ" in str(w.message)]


def test_tokens_need_codebooks_and_prompts_must_not_be_empty() -> None:
    model = MuLanTokenizer.tiny(CAPTIONS).eval()
    with pytest.raises(RuntimeError, match="no RVQ codebooks"):
        model.text_tokens(["a calm piano melody"])
    with pytest.raises(ValueError, match=r"prompt 1 .* is empty"):
        model.text_embedding(["piano", "   "])
    with pytest.raises(ValueError, match=r"must be \[12, K, 128\]"):
        model.set_codebooks(np.zeros((4, 8, 128), np.float32))


def test_save_load_round_trip_with_and_without_codebooks(mulan: MuLanTokenizer, tmp_path) -> None:
    wav = _clips(2, 11.0, seed=2)
    bare = MuLanTokenizer.tiny(CAPTIONS).eval()
    bare.save(tmp_path / "bare")
    loaded = load_component(tmp_path / "bare")
    assert isinstance(loaded, MuLanTokenizer) and not loaded.training
    assert loaded.codebooks is None
    torch.testing.assert_close(loaded.audio_embedding(wav), bare.audio_embedding(wav))
    torch.testing.assert_close(loaded.text_embedding(CAPTIONS), bare.text_embedding(CAPTIONS))

    emb = torch.nn.functional.normalize(torch.randn(256, 128), dim=1).numpy()
    bare.set_codebooks(fit_codebooks(emb, 12, 16))
    bare.save(tmp_path / "fitted")
    fitted = MuLanTokenizer.load(tmp_path / "fitted")
    assert torch.equal(fitted.audio_tokens(wav), bare.audio_tokens(wav))
    assert torch.equal(fitted.text_tokens(CAPTIONS), bare.text_tokens(CAPTIONS))


def test_spec_sizes_drive_the_model() -> None:
    spec = TokenSpec(mulan_dim=64, mulan_levels=4, mulan_window_seconds=4.0)
    model = MuLanTokenizer.tiny(CAPTIONS, spec=spec).eval()
    wav = _clips(1, 10.0)
    assert model.num_windows(wav.shape[1]) == 7
    assert model.audio_embedding(wav).shape == (1, 64)
    model.set_codebooks(np.random.default_rng(0).standard_normal((4, 8, 64)))
    assert model.text_tokens(["calm piano"]).shape == (1, 4)


def test_minilm_text_tower_loads_offline_from_its_package(monkeypatch, tmp_path) -> None:
    def no_network(*args, **kwargs):
        raise AssertionError("the text tower tried to open a network connection")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    directory = resolve_checkpoint(MINILM)
    assert (directory / "model.safetensors").is_file()
    tower = TextTower(TextTowerConfig(kind="pretrained", path=MINILM)).eval()
    assert tower.encoder.config.hidden_size == 384
    with torch.inference_mode():
        calm, gentle, metal = tower.encoder_pooled(
            ["a calm piano piece", "a gentle, quiet piano melody", "loud heavy metal band"]
        )
    cos = torch.nn.functional.cosine_similarity
    # the pretrained encoder (before our untrained head) already knows the words
    assert cos(calm, gentle, dim=0) > cos(calm, metal, dim=0) + 0.2
    with torch.inference_mode():
        emb = tower(["a calm piano piece", "loud heavy metal band"])
    assert emb.shape == (2, 128)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))
    tower.save(tmp_path / "text")
    with torch.inference_mode():
        again = TextTower.load(tmp_path / "text").eval()(
            ["a calm piano piece", "loud heavy metal band"]
        )
    torch.testing.assert_close(again, emb)


def test_missing_text_checkpoint_is_a_plain_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        TextTower(TextTowerConfig(kind="pretrained", path=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="is not installed"):
        resolve_checkpoint("package:no_such_package_here")
    with pytest.raises(ValueError, match="needs `path`"):
        TextTowerConfig(kind="pretrained")


def test_locked_text_encoder_gives_the_same_embeddings_and_trains_only_the_head() -> None:
    tower = TextTower(TINY_TEXT_CONFIG)
    tower.train_tokenizer(CAPTIONS)
    tower.eval()
    with torch.no_grad():
        before = tower(CAPTIONS)
    tower.freeze_encoder()
    tower.train()
    assert not tower.encoder.training and tower.proj.training
    emb = tower(CAPTIONS[::-1] + CAPTIONS)
    torch.testing.assert_close(emb[3:], before)
    torch.testing.assert_close(emb[:3], before.flip(0))
    emb.sum().backward()
    assert tower.proj.weight.grad is not None
    assert all(p.grad is None for p in tower.encoder.parameters())
