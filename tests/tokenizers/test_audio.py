"""The audio reader: every format libsndfile reads, any rate and channel count, clear rejections."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF
from musiclm.tokenizers.audio import AudioError, DecodeStats, audio_info, iter_blocks, load_audio

TARGET = 24_000


def _tone(seconds: float, rate: int, channels: int = 1, freq: float = 440.0) -> np.ndarray:
    """[n, channels] float32 sine, each channel a different phase."""
    t = np.arange(int(seconds * rate)) / rate
    return np.stack(
        [0.3 * np.sin(2 * np.pi * freq * t + c) for c in range(channels)], axis=1
    ).astype(np.float32)


def _dominant_frequency(wav: torch.Tensor, rate: int) -> float:
    spectrum = torch.fft.rfft(wav).abs()
    return float(spectrum.argmax()) * rate / wav.numel()


@pytest.mark.parametrize(
    ("ext", "fmt", "subtype", "rate"),
    [
        ("wav", "WAV", "PCM_16", 44_100),
        ("flac", "FLAC", "PCM_24", 48_000),
        ("ogg", "OGG", "VORBIS", 44_100),
        ("opus", "OGG", "OPUS", 48_000),
        ("mp3", "MP3", "MPEG_LAYER_III", 44_100),
    ],
)
def test_every_format_decodes_to_mono_at_target_rate(tmp_path, ext, fmt, subtype, rate):
    path = tmp_path / f"clip.{ext}"
    sf.write(path, _tone(2.0, rate, channels=2), rate, format=fmt, subtype=subtype)
    wav = load_audio(path, TARGET)
    assert wav.dtype == torch.float32 and wav.ndim == 1
    # Lossy codecs add encoder delay/padding; the duration stays within 60 ms.
    assert abs(wav.numel() / TARGET - 2.0) < 0.06
    assert abs(_dominant_frequency(wav, TARGET) - 440.0) < 5.0


@pytest.mark.parametrize("rate", [8_000, 44_100, 48_000, 96_000])
def test_any_rate_resamples_to_the_exact_length(tmp_path, rate):
    path = tmp_path / "clip.wav"
    sf.write(path, _tone(3.0, rate), rate, subtype="FLOAT")
    wav = load_audio(path, TARGET)
    assert wav.numel() == 3 * TARGET
    assert abs(_dominant_frequency(wav, TARGET) - 440.0) < 2.0


def test_stereo_and_six_channels_are_averaged(tmp_path):
    rate = 44_100
    data = _tone(1.0, rate, channels=6)
    path = tmp_path / "surround.wav"
    sf.write(path, data, rate, subtype="FLOAT")
    wav = load_audio(path, rate)
    assert torch.allclose(wav, torch.from_numpy(data.mean(axis=1)), atol=1e-6)


def test_blocks_join_seamlessly(tmp_path):
    """Decoding in small blocks equals resampling the whole file at once."""
    rate = 44_100
    data = _tone(5.0, rate, channels=2) + 0.05 * np.random.default_rng(0).standard_normal(
        (5 * rate, 2)
    ).astype(np.float32)
    path = tmp_path / "noisy.wav"
    sf.write(path, data, rate, subtype="FLOAT")
    whole = AF.resample(torch.from_numpy(data.mean(axis=1)), rate, TARGET)
    blocks = list(iter_blocks(path, TARGET, block_seconds=0.7))
    assert len(blocks) > 5
    joined = torch.cat(blocks)
    assert joined.numel() == whole.numel()
    assert torch.allclose(joined, whole, atol=1e-4)


def test_segment_reads_only_the_asked_seconds(tmp_path):
    rate = 48_000
    data = np.concatenate([_tone(2.0, rate, freq=300.0), _tone(2.0, rate, freq=1000.0)])
    path = tmp_path / "two_tones.flac"
    sf.write(path, data, rate)
    second = load_audio(path, TARGET, start=2.0, end=4.0)
    assert second.numel() == 2 * TARGET
    assert abs(_dominant_frequency(second, TARGET) - 1000.0) < 2.0


def test_silence_is_valid(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros((TARGET, 1), np.float32), TARGET)
    assert load_audio(path, TARGET).abs().max() == 0


def _write_and_cut(path: Path, fmt: str) -> None:
    sf.write(path, _tone(3.0, 44_100, channels=2), 44_100, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("name", "make", "reason"),
    [
        ("empty.wav", lambda p: p.write_bytes(b""), "cannot decode"),
        ("noise.flac", lambda p: p.write_bytes(np.random.bytes(4096)), "cannot decode"),
        ("notes.txt", lambda p: p.write_text("not audio at all\n" * 50), "cannot decode"),
        (
            "no_frames.wav",
            lambda p: sf.write(p, np.zeros((0, 1), np.float32), 8_000),
            "no audio frames",
        ),
        (
            "nan.wav",
            lambda p: sf.write(
                p, np.array([[0.1], [np.nan], [0.2]] * 100, np.float32), 8_000, subtype="FLOAT"
            ),
            "NaN",
        ),
        ("cut.wav", lambda p: _write_and_cut(p, "WAV"), "truncated"),
        ("cut.ogg", lambda p: _write_and_cut(p, "OGG"), "truncated"),
        ("cut.flac", lambda p: _write_and_cut(p, "FLAC"), "cannot decode"),
    ],
)
def test_what_cannot_be_music_is_rejected_naming_the_file(tmp_path, name, make, reason):
    path = tmp_path / name
    make(path)
    with pytest.raises(AudioError) as err:
        load_audio(path, TARGET)
    assert str(path) in str(err.value)
    assert reason in str(err.value)


def test_missing_file_is_a_plain_error(tmp_path):
    with pytest.raises(AudioError, match=r"missing\.wav"):
        audio_info(tmp_path / "missing.wav")


@pytest.mark.slow
def test_twenty_minute_file_is_read_in_blocks_without_holding_it_twice(tmp_path):
    """Peak memory of reading 20 min of 44.1 kHz stereo stays below 1.5 x the 24 kHz output."""
    rate, minutes = 44_100, 20
    path = tmp_path / "long.wav"
    with sf.SoundFile(path, "w", rate, 2, subtype="PCM_16") as handle:
        block = _tone(60.0, rate, channels=2)
        for _ in range(minutes):
            handle.write(block)
    # VmHWM is reset after imports and warm-up (clear_refs 5), so only the read is measured.
    script = textwrap.dedent(
        f"""
        from musiclm.tokenizers.audio import load_audio
        def status(field):
            line = next(x for x in open("/proc/self/status") if x.startswith(field))
            return int(line.split()[1]) * 1024
        load_audio({str(path)!r}, {TARGET}, end=1.0)  # warm up the resampling kernels
        open("/proc/self/clear_refs", "w").write("5")
        before = status("VmRSS")
        wav = load_audio({str(path)!r}, {TARGET}, block_seconds=10.0)
        print(wav.numel(), wav.numel() * 4, status("VmHWM") - before)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.split()
    samples, output_bytes, grown = map(int, out)
    assert samples == minutes * 60 * TARGET
    # Holding the native file (423 MB as float32 stereo) or the output twice would exceed this.
    assert grown < 1.5 * output_bytes, (
        f"peak grew {grown / 1e6:.0f} MB for {output_bytes / 1e6:.0f} MB"
    )


# ----- truncation judged by what is missing -------------------------------------------
CATALOGUE_RATE = 44_100


def _music(seconds: float, rate: int = CATALOGUE_RATE) -> np.ndarray:
    """[n, 2] float32 decaying partials: enough content for lossy encoders to keep."""
    t = np.arange(int(seconds * rate)) / rate
    wave = sum(np.sin(2 * np.pi * f * t) * np.exp(-(t % 0.5) * 3) for f in (220.0, 330.0, 550.0))
    return np.stack([0.1 * wave, 0.08 * wave], axis=1).astype(np.float32)


def _ogg_crc(data: bytes) -> int:
    """Ogg's page checksum: CRC-32, polynomial 0x04C11DB7, not reflected, initial 0."""
    table = []
    for byte in range(256):
        value = byte << 24
        for _ in range(8):
            value = (value << 1) ^ 0x04C11DB7 if value & 0x80000000 else value << 1
        table.append(value & 0xFFFFFFFF)
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ table[(crc >> 24) ^ byte]
    return crc


def _lengthen_last_granule(path: Path, extra_frames: int) -> None:
    """Move the final Ogg page's granule position ``extra_frames`` past the last sample."""
    data = bytearray(path.read_bytes())
    start = data.rfind(b"OggS")
    segments = data[start + 26]
    end = start + 27 + segments + sum(data[start + 27 : start + 27 + segments])
    page = data[start:end]
    granule = int.from_bytes(page[6:14], "little") + extra_frames
    page[6:14] = granule.to_bytes(8, "little")
    page[22:26] = bytes(4)
    page[22:26] = _ogg_crc(bytes(page)).to_bytes(4, "little")
    data[start:end] = page
    path.write_bytes(bytes(data))


def _decode(path: Path, **kwargs) -> tuple[torch.Tensor, DecodeStats]:
    stats = DecodeStats()
    wav = torch.cat(list(iter_blocks(path, TARGET, block_seconds=7.0, stats=stats, **kwargs)))
    return wav, stats


def test_mp3_without_a_length_header_is_read_to_its_last_decoded_frame(tmp_path):
    """A CBR mp3 without a Xing header: its length is an estimate from size and bitrate."""
    wav_path, mp3 = tmp_path / "source.wav", tmp_path / "estimate.mp3"
    sf.write(wav_path, _music(20.0), CATALOGUE_RATE)
    cbr_without_xing = ("-b:a", "128k", "-write_xing", "0")
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-i", str(wav_path), *cbr_without_xing, str(mp3)],
        check=True,
    )
    wav, stats = _decode(mp3)
    assert stats.header_frames > stats.decoded_frames  # the estimate overshoots ...
    assert 0 < stats.missing_seconds < 0.2  # ... by a few mp3 frames, not damage
    assert wav.numel() == math.ceil(stats.decoded_frames * TARGET / CATALOGUE_RATE)
    assert load_audio(mp3, TARGET).numel() == wav.numel()


def test_vorbis_with_an_overlong_final_granule_is_read_to_its_last_sample(tmp_path):
    path = tmp_path / "granule.ogg"
    sf.write(path, _music(20.0), CATALOGUE_RATE, format="OGG", subtype="VORBIS")
    _lengthen_last_granule(path, CATALOGUE_RATE // 2)  # header: 0.5 s more than decodes
    wav, stats = _decode(path)
    assert stats.header_frames == sf.info(str(path)).frames == 20 * CATALOGUE_RATE + 22_050
    assert abs(stats.decoded_frames - 20 * CATALOGUE_RATE) < 2048  # Vorbis block padding
    assert wav.numel() == math.ceil(stats.decoded_frames * TARGET / CATALOGUE_RATE)
    _lengthen_last_granule(path, 2 * CATALOGUE_RATE)  # 2.5 s past the end: not a granule slip
    with pytest.raises(AudioError, match=r"truncated: .*\(2\.\d\d s missing"):
        _decode(path)


def _cut(path: Path, fraction: float) -> Path:
    cut = path.with_name(f"cut{round(fraction * 100)}-{path.name}")
    data = path.read_bytes()
    cut.write_bytes(data[: int(len(data) * fraction)])
    return cut


# 30 s files cut after 10%, 50% and 99% of their bytes. A 99% cut of a WAV or an mp3 with
# a Xing header misses 0.3 s: tokenized from what decodes. An Ogg stream cut anywhere has
# no (whole) end-of-stream page and a FLAC cut anywhere stops with a decode error: failures.
CUT_OUTCOMES = {
    ("WAV", 0.10): "missing",
    ("WAV", 0.50): "missing",
    ("WAV", 0.99): "ok",
    ("MP3", 0.10): "missing",
    ("MP3", 0.50): "missing",
    ("MP3", 0.99): "ok",
    ("OGG", 0.10): "end-of-stream",
    ("OGG", 0.50): "end-of-stream",
    ("OGG", 0.99): "end-of-stream page is cut short",
    ("FLAC", 0.10): "cannot decode",
    ("FLAC", 0.50): "cannot decode",
    ("FLAC", 0.99): "cannot decode",
}


@pytest.fixture(scope="module")
def whole_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("whole")
    music = _music(30.0)
    files = {}
    for fmt in ("WAV", "MP3", "OGG", "FLAC"):
        files[fmt] = root / f"piece.{fmt.lower()}"
        sf.write(files[fmt], music, CATALOGUE_RATE, format=fmt)
    return files


@pytest.mark.parametrize(("fmt", "fraction"), sorted(CUT_OUTCOMES))
def test_a_cut_file_fails_when_more_than_a_second_is_missing(whole_files, fmt, fraction):
    path = _cut(whole_files[fmt], fraction)
    outcome = CUT_OUTCOMES[fmt, fraction]
    if outcome == "ok":
        wav, stats = _decode(path)
        assert 0.2 < stats.missing_seconds < 0.4, stats
        assert wav.numel() == math.ceil(stats.decoded_frames * TARGET / CATALOGUE_RATE)
        with pytest.raises(AudioError, match=r"more than max_missing_seconds 0\.1"):
            _decode(path, max_missing_seconds=0.1)  # the tolerance is a setting
        return
    with pytest.raises(AudioError) as err:
        _decode(path)
    message = str(err.value)
    assert str(path) in message and outcome in message, message
    assert ("truncated" in message) == (outcome != "cannot decode"), message
