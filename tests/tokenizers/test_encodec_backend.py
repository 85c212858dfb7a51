"""EnCodec backend: a tiny random EncodecModel saved to a temp dir, behind the codec interface."""

from __future__ import annotations

import pytest
import torch
from musiclm.tokenizers.bundle import load_component
from musiclm.tokenizers.contract import TokenSpec
from musiclm.tokenizers.encodec_backend import EncodecCodec, check_codec_spec
from transformers import EncodecConfig, EncodecModel

TINY = {
    "num_filters": 4,
    "hidden_size": 16,
    "codebook_size": 1024,
    "num_lstm_layers": 1,
    "upsampling_ratios": [8, 5, 4, 2],  # hop 320 at 24 kHz: 75 frames a second
    "target_bandwidths": [1.5, 3.0, 6.0, 12.0],
}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("encodec")
    EncodecModel(EncodecConfig(**TINY)).save_pretrained(directory)
    return directory


def test_encode_decode_shapes_and_agreement_with_transformers(pretrained):
    codec = EncodecCodec.from_pretrained(pretrained, num_levels=12)
    assert (codec.sample_rate, codec.hop, codec.num_levels, codec.codebook_size) == (
        24_000,
        320,
        12,
        1024,
    )
    wav = torch.randn(2, 1, 5000) * 0.1
    with torch.inference_mode():
        codes = codec.encode(wav)
        assert codes.shape == (2, 12, 16) and codes.dtype == torch.int64  # ceil(5000 / 320)
        for levels in (1, 4, 12):
            assert torch.equal(codec.encode(wav, levels=levels), codes[:, :levels])
            assert codec.decode(codes[:, :levels]).shape == (2, 1, 16 * 320)
        # the first 8 levels are EnCodec's own 6 kbps codes, and decode like EnCodec's
        padded = torch.nn.functional.pad(wav, (0, 16 * 320 - 5000))
        own = codec.model.encode(padded, bandwidth=6.0)
        assert torch.equal(own.audio_codes[0], codes[:, :8])
        reference = codec.model.decode(own.audio_codes, own.audio_scales)[0]
        torch.testing.assert_close(codec.decode(codes[:, :8]), reference)


def test_save_load_through_the_bundle_registry(pretrained, tmp_path):
    codec = EncodecCodec.from_pretrained(pretrained, num_levels=4)
    codec.save(tmp_path / "codec")
    loaded = load_component(tmp_path / "codec")
    assert isinstance(loaded, EncodecCodec) and loaded.num_levels == 4
    wav = torch.randn(1, 1, 3200) * 0.1
    with torch.inference_mode():
        assert torch.equal(loaded.encode(wav), codec.encode(wav))


def test_spec_must_match_the_codec_hop(pretrained):
    codec = EncodecCodec.from_pretrained(pretrained, num_levels=12)
    with pytest.raises(ValueError, match="codec hop=320 but spec acoustic_hop=480"):
        check_codec_spec(codec, TokenSpec())
    spec = TokenSpec(acoustic_hop=320)  # 75 Hz acoustic = 3 frames per 25 Hz semantic frame
    check_codec_spec(codec, spec)
    assert spec.acoustic_per_semantic == 3


def test_unusable_models_and_paths_give_clear_errors(tmp_path):
    stereo = tmp_path / "stereo"
    EncodecModel(EncodecConfig(**TINY, audio_channels=2)).save_pretrained(stereo)
    with pytest.raises(ValueError, match="2 audio channels"):
        EncodecCodec.from_pretrained(stereo)
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        EncodecCodec.from_pretrained(tmp_path / "missing")
