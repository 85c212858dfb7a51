"""SoundStream codec: the contract's shapes and dtypes, any level count, save/load, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from musiclm.tokenizers.bundle import load_component
from musiclm.tokenizers.contract import TOKEN_DTYPE, TokenSpec
from musiclm.tokenizers.soundstream import SoundStream

TINY = {"channels": 4, "dim": 16}


VARIANTS = {
    "waveform": {},
    "waveform+mel": {"mel_bands": 16},
    "waveform+mel, stft decoder": {"mel_bands": 16, "decoder": "stft", "decoder_width": 32},
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def codec(request) -> SoundStream:
    """The paper's waveform encoder and SEANet decoder, the same with a 16-band log-mel
    branch, and that with the STFT decoder."""
    torch.manual_seed(0)
    return SoundStream(**TINY, **VARIANTS[request.param]).eval()


def test_stft_decoder_overlap_add_inverts_windowed_frames():
    """Frames of ``n_fft = 4 hop`` samples centred on each code frame, windowed, come back
    as the exact signal: the decoder only has to learn the spectrum of each frame."""
    from musiclm.tokenizers.stft_decoder import STFTDecoder

    decoder = STFTDecoder(dim=8, hop=480, width=16)
    hop, n_fft, frames = 480, decoder.n_fft, 20
    wav = torch.randn(2, frames * hop)
    start = (n_fft - hop) // 2
    padded = torch.nn.functional.pad(wav, (start, n_fft))
    windows = padded.unfold(1, n_fft, hop)[:, :frames].transpose(1, 2) * decoder.window[:, None]
    torch.testing.assert_close(decoder.overlap_add(windows), wav, atol=1e-5, rtol=0)
    assert decoder(torch.randn(2, 8, frames)).shape == (2, 1, frames * hop)
    with pytest.raises(ValueError, match="decoder must be 'seanet' or 'stft'"):
        SoundStream(**TINY, decoder="vocos")


@pytest.mark.parametrize("num_samples", [480, 12_345, 24_000])
def test_codes_have_contract_shape_and_decode_to_input_length(codec, num_samples):
    spec = TokenSpec()
    wav = torch.randn(2, 1, num_samples) * 0.1
    with torch.inference_mode():
        codes = codec.encode(wav)
        out = codec.decode(codes)
    frames = -(-num_samples // spec.acoustic_hop)
    assert codes.shape == (2, spec.acoustic_levels, frames)
    assert codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) < spec.acoustic_codebook_size
    # storing as the contract's int16 is lossless
    assert np.array_equal(codes.numpy().astype(TOKEN_DTYPE).astype(np.int64), codes.numpy())
    assert out.shape == (2, 1, frames * spec.acoustic_hop)
    assert out[..., :num_samples].shape == wav.shape


def test_every_level_count_decodes_and_prefixes_agree(codec):
    wav = torch.randn(1, 1, 4800) * 0.1
    with torch.inference_mode():
        full = codec.encode(wav)
        for levels in range(1, codec.num_levels + 1):
            assert torch.equal(codec.encode(wav, levels=levels), full[:, :levels])
            assert codec.decode(full[:, :levels]).shape == (1, 1, 4800)


def test_causal_output_does_not_depend_on_the_future(codec):
    wav = torch.randn(1, 1, 9600) * 0.1
    changed = wav.clone()
    changed[..., 4800:] = torch.randn(1, 1, 4800)
    with torch.inference_mode():
        a, b = codec.encode(wav), codec.encode(changed)
    assert torch.equal(a[..., :10], b[..., :10])
    assert not torch.equal(a[..., 10:], b[..., 10:])


def test_bad_input_gives_clear_errors(codec):
    with pytest.raises(ValueError, match=r"mono audio \[batch, 1, samples\]"):
        codec.encode(torch.randn(2, 4800))
    with pytest.raises(ValueError, match=r"levels must be in 1\.\.12"):
        codec.encode(torch.randn(1, 1, 4800), levels=13)
    with pytest.raises(ValueError, match=r"1\.\.12 levels"):
        codec.decode(torch.zeros(1, 13, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"product of the strides \[2, 4, 5, 6\] is 240"):
        SoundStream(strides=(2, 4, 5, 6), **TINY)


def test_save_load_roundtrip_and_bundle_kind(codec, tmp_path):
    codec.save(tmp_path / "codec")
    config = json.loads((tmp_path / "codec" / "config.json").read_text())
    assert config["kind"] == "soundstream" and config["hop"] == 480
    assert config["mel_bands"] == codec.config["mel_bands"]
    loaded = load_component(tmp_path / "codec")
    assert isinstance(loaded, SoundStream) and not loaded.training
    wav = torch.randn(1, 1, 4800) * 0.1
    with torch.inference_mode():
        assert torch.equal(loaded.encode(wav), codec.encode(wav))
        torch.testing.assert_close(
            loaded.decode(codec.encode(wav)), codec.decode(codec.encode(wav))
        )


def test_weights_of_another_architecture_are_refused(codec, tmp_path):
    SoundStream(channels=8, dim=16).save(tmp_path / "wide")
    codec.save(tmp_path / "narrow")
    # narrow config + wide weights: a clear error naming the mismatch
    (tmp_path / "narrow" / "model.pt").write_bytes((tmp_path / "wide" / "model.pt").read_bytes())
    with pytest.raises(
        ValueError, match=r"do not fit the SoundStream architecture.*shape mismatch"
    ):
        SoundStream.load(tmp_path / "narrow")
    with pytest.raises(FileNotFoundError, match="not a saved SoundStream codec"):
        SoundStream.load(tmp_path / "nowhere")


def test_a_codec_directory_is_refused_by_the_other_tokenizers(codec, tmp_path):
    from musiclm.tokenizers.encodec_backend import EncodecCodec
    from musiclm.tokenizers.mulan import MuLanTokenizer
    from musiclm.tokenizers.semantic import SemanticTokenizer

    codec.save(tmp_path / "codec")
    for loader, kind in [
        (SemanticTokenizer, "semantic"),
        (MuLanTokenizer, "mulan"),
        (EncodecCodec, "encodec"),
    ]:
        with pytest.raises(ValueError, match=f"of kind 'soundstream', not '{kind}'.*codec"):
            loader.load(tmp_path / "codec")


def test_codec_cli_round_trips_a_file_at_chosen_levels(codec, demo_music, tmp_path):
    import soundfile as sf
    from musiclm.tokenizers.audio import load_audio
    from musiclm.tokenizers.codec_cli import main

    source = sorted((demo_music / "heldout").rglob("*.ogg"))[0]
    codec.save(tmp_path / "codec")
    codes_path, out = tmp_path / "codes.npy", tmp_path / "out.wav"
    common = ["--codec", str(tmp_path / "codec"), "--window-seconds", "5"]
    main(["encode", *common, "--input", str(source), "--output", str(codes_path), "--levels", "4"])
    codes = np.load(codes_path)
    wav = load_audio(source, 24_000)
    assert codes.dtype == TOKEN_DTYPE and codes.shape == (4, -(-wav.numel() // 480))
    # 5 s windows with context give the codes and audio of the whole file at once
    with torch.inference_mode():
        whole = codec.encode(wav[None, None], levels=4)
        whole_audio = codec.decode(whole[:, :2])[0, 0, : wav.numel()]
    assert np.array_equal(codes, whole[0].numpy().astype(TOKEN_DTYPE))
    main(["decode", *common, "--input", str(codes_path), "--output", str(out), "--levels", "2"])
    audio, rate = sf.read(out, dtype="float32")
    assert rate == 24_000 and audio.shape == (wav.numel(),)
    np.testing.assert_allclose(audio, whole_audio.numpy(), atol=1e-5)
    with pytest.raises(SystemExit, match=r"--levels must be in 1\.\.4"):
        main(["decode", *common, "--input", str(codes_path), "--output", str(out), "--levels", "6"])
