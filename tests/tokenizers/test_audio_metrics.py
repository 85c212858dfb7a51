"""Mel distance, SI-SNR and the spectral loss: zero for identical audio, grow with distortion."""

from __future__ import annotations

import pytest
import torch
from musiclm.tokenizers.audio_metrics import (
    MultiScaleMel,
    mel_distance,
    si_snr,
    spectral_reconstruction_loss,
)


def _tone(seconds: float = 0.5, sample_rate: int = 24_000) -> torch.Tensor:
    t = torch.arange(int(seconds * sample_rate)) / sample_rate
    return (0.3 * torch.sin(2 * torch.pi * 440 * t) + 0.1 * torch.sin(2 * torch.pi * 1320 * t))[
        None
    ]


def test_mel_distance_and_si_snr_order_distortions():
    torch.manual_seed(0)
    ref = _tone().repeat(2, 1)
    light = ref + 0.01 * torch.randn_like(ref)
    heavy = ref + 0.1 * torch.randn_like(ref)
    assert mel_distance(ref, ref).abs().max() < 1e-6
    assert bool((mel_distance(light, ref) < mel_distance(heavy, ref)).all())
    assert mel_distance(light, ref).shape == (2,)
    # SI-SNR ignores gain but not noise; [B, 1, N] works as well as [B, N]
    torch.testing.assert_close(si_snr(3 * light, ref), si_snr(light, ref), atol=1e-3, rtol=0)
    assert bool((si_snr(light[:, None], ref[:, None]) > si_snr(heavy, ref) + 15).all())
    assert abs(float(si_snr(heavy, ref)[0]) - 20 * torch.log10(ref.std() / 0.1)) < 1.0


def test_length_mismatch_is_refused():
    with pytest.raises(ValueError, match="trim both to the same length"):
        mel_distance(torch.zeros(1, 100), torch.zeros(1, 120))


def test_spectral_loss_is_differentiable_and_zero_at_target():
    ref = _tone()
    mel = MultiScaleMel()
    assert float(spectral_reconstruction_loss(ref, ref, mel)) < 1e-3
    estimate = (0.5 * ref).requires_grad_()
    loss = spectral_reconstruction_loss(estimate, ref, mel)
    loss.backward()
    assert loss.item() > 1.0 and estimate.grad.abs().sum() > 0


def test_round_trip_scores_each_level_count_of_one_encoding():
    from musiclm.tokenizers.audio_metrics import round_trip
    from musiclm.tokenizers.soundstream import SoundStream

    torch.manual_seed(0)
    codec = SoundStream(channels=4, dim=16, num_levels=4).eval()
    wav = torch.cat([_tone(0.3), 0.5 * _tone(0.3)])[:, None, :7000]  # not whole frames
    with torch.inference_mode():
        scored = round_trip(codec, wav, [1, 4])
        codes = codec.encode(wav)
        assert torch.equal(scored.codes, codes) and codes.shape == (2, 4, 15)
        for q in (1, 4):
            audio = codec.decode(codes[:, :q])[..., :7000]
            assert scored.audio[q].shape == (2, 1, 7000)
            torch.testing.assert_close(scored.audio[q], audio)
            torch.testing.assert_close(scored.mel_distance[q], mel_distance(audio, wav))
            torch.testing.assert_close(scored.si_snr[q], si_snr(audio, wav))
    assert sorted(scored.audio) == [1, 4] and scored.mel_distance[1].shape == (2,)
