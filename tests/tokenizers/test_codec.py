"""The codec interface: SoundStream and EnCodec both implement it, and only codecs load as one."""

from __future__ import annotations

import pytest
import torch
from musiclm.tokenizers.bundle import BundleError, load_codec
from musiclm.tokenizers.codec import Codec
from musiclm.tokenizers.encodec_backend import EncodecCodec
from musiclm.tokenizers.mulan import MuLanTokenizer
from musiclm.tokenizers.soundstream import SoundStream
from transformers import EncodecConfig, EncodecModel

ENCODEC_TINY = {
    "num_filters": 4,
    "hidden_size": 16,
    "codebook_size": 1024,
    "num_lstm_layers": 1,
    "upsampling_ratios": [8, 5, 4, 2],
    "target_bandwidths": [1.5, 3.0, 6.0, 12.0],
}


def _soundstream(_tmp) -> Codec:
    return SoundStream(channels=4, dim=16).eval()


def _encodec(tmp) -> Codec:
    EncodecModel(EncodecConfig(**ENCODEC_TINY)).save_pretrained(tmp / "pretrained")
    return EncodecCodec.from_pretrained(tmp / "pretrained", num_levels=8)


# name -> (factory, (sample_rate, hop, levels, codebook size))
CODECS = {
    "soundstream": (_soundstream, (24_000, 480, 12, 1024)),
    "encodec": (_encodec, (24_000, 320, 8, 1024)),
}


@pytest.fixture(scope="module", params=list(CODECS))
def codec(request, tmp_path_factory) -> Codec:
    torch.manual_seed(0)
    return CODECS[request.param][0](tmp_path_factory.mktemp(request.param))


def test_both_codecs_implement_the_interface_with_their_rates(codec):
    rate, hop, levels, size = CODECS[type(codec).kind][1]
    assert isinstance(codec, Codec)
    assert (codec.sample_rate, codec.hop, codec.num_levels, codec.codebook_size) == (
        rate,
        hop,
        levels,
        size,
    )
    assert codec.frame_rate == rate / hop
    assert codec.device == torch.device("cpu")


def test_shapes_in_and_out(codec):
    wav = torch.randn(2, 1, 3 * codec.hop + 7) * 0.1
    with torch.inference_mode():
        codes = codec.encode(wav)
        assert codes.shape == (2, codec.num_levels, 4) and codes.dtype == torch.int64
        assert int(codes.min()) >= 0 and int(codes.max()) < codec.codebook_size
        assert torch.equal(codec.encode(wav, levels=2), codes[:, :2])
        for levels in (1, codec.num_levels):
            assert codec.decode(codes[:, :levels]).shape == (2, 1, 4 * codec.hop)


def test_windowed_coding_keeps_the_shapes_of_whole_coding(codec):
    wav = torch.randn(1, 1, int(2.3 * codec.sample_rate)) * 0.1
    frames = -(-wav.shape[-1] // codec.hop)
    codes = codec.encode_windowed(wav, levels=3, window_seconds=0.5)
    assert codes.shape == (1, 3, frames) and codes.dtype == torch.int64
    assert codec.decode_windowed(codes, window_seconds=0.5).shape == (1, 1, frames * codec.hop)


def test_windowed_equals_whole_for_the_causal_codec():
    """SoundStream's receptive field fits in the 1 s of context: 0.5 s windows of a 3.2 s
    input give the codes of the whole input, and the audio within float tolerance."""
    torch.manual_seed(0)
    codec = SoundStream(channels=4, dim=16).eval()
    wav = torch.randn(1, 1, int(3.2 * codec.sample_rate)) * 0.1
    with torch.inference_mode():
        whole = codec.encode(wav, levels=4)
        whole_audio = codec.decode(whole)
    windowed = codec.encode_windowed(wav, levels=4, window_seconds=0.5)
    assert torch.equal(windowed, whole)
    audio = codec.decode_windowed(windowed, window_seconds=0.5)
    torch.testing.assert_close(audio, whole_audio, atol=1e-5, rtol=0)


def test_save_and_load_codec_from_a_codec_directory_or_a_bundle_root(codec, tmp_path):
    codec.save(tmp_path / "codec")
    wav = torch.randn(1, 1, 4 * codec.hop) * 0.1
    for path in (tmp_path / "codec", tmp_path):  # the second as a bundle root holds codec/
        loaded = load_codec(path)
        assert type(loaded) is type(codec) and loaded.num_levels == codec.num_levels
        with torch.inference_mode():
            assert torch.equal(loaded.encode(wav), codec.encode(wav))


def test_a_saved_tokenizer_that_is_not_a_codec_is_refused_naming_its_directory(tmp_path):
    MuLanTokenizer.tiny(["a calm piano piece", "a loud drum solo"]).save(tmp_path / "mulan")
    with pytest.raises(BundleError, match=r"mulan holds a saved 'mulan' tokenizer, not a Codec"):
        load_codec(tmp_path / "mulan")
    with pytest.raises(FileNotFoundError, match=r"codec directory .*missing does not exist"):
        load_codec(tmp_path / "missing")
