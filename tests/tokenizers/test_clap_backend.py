"""CLAP as a MuLan stand-in, on a tiny randomly initialized ClapModel saved to a temp dir."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from musiclm.tokenizers.bundle import load_component
from musiclm.tokenizers.clap_backend import ClapMuLan
from musiclm.tokenizers.contract import TokenSpec
from musiclm.tokenizers.mulan import fit_codebooks

CAPTIONS = ["a slow organ chorale", "fast piano jazz with drums", "rock guitar and bass"]
DIM = 16


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    """A tiny CLAP (1-layer text tower, 2-stage HTSAT) and a byte-level BPE trained on the
    captions, saved the way a user's local copy of a LAION CLAP checkpoint is."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import (
        ClapConfig,
        ClapFeatureExtractor,
        ClapModel,
        ClapProcessor,
        RobertaTokenizerFast,
    )

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(CAPTIONS * 4, trainer)
    bpe.post_processor = processors.RobertaProcessing(
        ("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>"))
    )
    text_tokenizer = RobertaTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>", mask_token="<mask>",
    )  # fmt: skip
    torch.manual_seed(0)
    config = ClapConfig(
        text_config=dict(
            vocab_size=text_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
            num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
            pad_token_id=text_tokenizer.pad_token_id,
        ),
        audio_config=dict(
            depths=[1, 1], num_attention_heads=[2, 2], hidden_size=32,
            patch_embeds_hidden_size=16, enable_fusion=False,
        ),
        projection_dim=DIM,
    )  # fmt: skip
    directory = tmp_path_factory.mktemp("clap")
    ClapModel(config).save_pretrained(directory)
    processor = ClapProcessor(feature_extractor=ClapFeatureExtractor(), tokenizer=text_tokenizer)
    processor.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def clap(clap_dir):
    return ClapMuLan.from_pretrained(clap_dir)


def _music(seconds: float, batch: int = 2, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * 24_000)) / 24_000
    freqs = 110 * 2 ** torch.randint(0, 24, (batch, 1), generator=gen).float().div(12)
    return 0.3 * torch.sin(2 * math.pi * freqs * t) + 0.01 * torch.randn(
        batch, len(t), generator=gen
    )


def test_spec_width_comes_from_the_model_and_a_wrong_one_is_refused(clap_dir, clap):
    assert clap.spec.mulan_dim == DIM
    with pytest.raises(ValueError, match=f"mulan_dim={DIM}"):
        ClapMuLan.from_pretrained(clap_dir, spec=TokenSpec())  # 128 dims
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        ClapMuLan.from_pretrained(clap_dir / "missing")


def test_audio_embedding_is_the_mean_of_the_window_embeddings(clap):
    wav = _music(12.0)  # 3 windows of 10 s at 1 s stride
    assert clap.num_windows(wav.shape[1]) == 3
    emb = clap.audio_embedding(wav)
    assert emb.shape == (2, DIM)
    windows = [clap.audio_embedding(wav[:, s * 24_000 : (s + 10) * 24_000]) for s in range(3)]
    # (resampling a window alone lacks the filter context at its edges: ~3e-5 apart)
    torch.testing.assert_close(emb, torch.stack(windows).mean(0), atol=1e-4, rtol=1e-3)
    short = clap.audio_embedding(wav[:, : 3 * 24_000])  # shorter than a window: used whole
    torch.testing.assert_close(short.norm(dim=1), torch.ones(2), atol=1e-4, rtol=0)


def test_text_tokens_and_save_load_round_trip(clap, tmp_path):
    text = clap.text_embedding(CAPTIONS)
    torch.testing.assert_close(text.norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="non-empty"):
        clap.text_embedding(["  "])
    with pytest.raises(RuntimeError, match="no RVQ codebooks"):
        clap.text_tokens(CAPTIONS)
    audio = torch.cat([clap.audio_embedding(_music(10.0, 4, seed=s)) for s in range(4)])
    with pytest.warns(UserWarning, match="codebook shrinks"):  # 16 clips, 8 codes x 4 points
        books = fit_codebooks(audio.numpy(), clap.spec.mulan_levels, 8)
    clap.set_codebooks(books)
    tokens = clap.text_tokens(CAPTIONS)
    assert tokens.shape == (3, clap.spec.mulan_levels) and tokens.max() < 4
    clap.save(tmp_path / "mulan")
    again = load_component(tmp_path / "mulan")  # through the bundle's kind registry
    assert isinstance(again, ClapMuLan)
    assert torch.equal(again.text_tokens(CAPTIONS), tokens)
    np.testing.assert_allclose(again.codebooks.numpy(), clap.codebooks.numpy())
