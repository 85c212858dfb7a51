"""The SoundStream encoder's causal log-mel branch: frame alignment and causality."""

from __future__ import annotations

import pytest
import torch
import torchaudio
from musiclm.tokenizers.mel_frontend import CausalLogMel, LogMelBranch


def test_frame_t_is_the_window_ending_where_code_frame_t_ends():
    torch.manual_seed(0)
    wav = torch.randn(2, 1, 4800) * 0.1
    frames = CausalLogMel(24_000, 480, n_mels=16)(wav)
    assert frames.shape == (2, 16, 10)
    reference = torchaudio.transforms.MelSpectrogram(
        24_000, n_fft=2048, hop_length=480, n_mels=16, power=1.0, center=False
    )
    for t in (0, 3, 9):
        end = (t + 1) * 480
        window = torch.nn.functional.pad(
            wav[:, 0, max(0, end - 2048) : end], (max(0, 2048 - end), 0)
        )
        expected = reference(window).clamp_min(1e-5).log()[..., 0]
        torch.testing.assert_close(frames[..., t], expected, rtol=1e-4, atol=1e-4)


def test_branch_maps_audio_to_codec_frames_without_looking_ahead():
    branch = LogMelBranch(24_000, 480, n_mels=16, dim=8)
    wav = torch.randn(1, 1, 9600) * 0.1
    changed = wav.clone()
    changed[..., 4800:] = torch.randn(1, 1, 4800)
    with torch.no_grad():
        a, b = branch(wav), branch(changed)
    assert a.shape == (1, 8, 20)
    assert torch.equal(a[..., :10], b[..., :10])
    assert not torch.allclose(a[..., 10:], b[..., 10:])


def test_silence_stays_finite():
    frames = CausalLogMel(24_000, 480, n_mels=16)(torch.zeros(1, 1, 960))
    assert torch.isfinite(frames).all() and float(frames.max()) == pytest.approx(-11.5129, abs=1e-3)
