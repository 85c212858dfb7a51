"""Cutting decoded audio into clips: streaming in blocks equals the documented rule."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from musiclm.pipelines.clips import ClipConfig, clip_bounds, iter_clips
from musiclm.tokenizers.audio import AudioError, load_audio
from musiclm.tokenizers.contract import TokenSpec
from musiclm.tokenizers.source_records import SourceRecord

SPEC = TokenSpec()


def test_rule_whole_clips_then_tail_of_whole_frames():
    config = ClipConfig(seconds=10.0, min_seconds=3.0)
    rate = SPEC.sample_rate
    # 25.5 s: two whole clips, a 5.5 s tail rounded down to whole semantic frames.
    assert clip_bounds(int(25.5 * rate), SPEC, config) == [
        (0, 10 * rate),
        (10 * rate, 10 * rate),
        (20 * rate, 5.5 * rate // 960 * 960),
    ]
    # A 2 s tail is shorter than min_seconds: dropped.
    assert clip_bounds(22 * rate, SPEC, config) == [(0, 10 * rate), (10 * rate, 10 * rate)]
    # A source shorter than one clip is one shorter clip; shorter than min_seconds: none.
    assert clip_bounds(7 * rate + 5, SPEC, config) == [(0, 7 * rate)]
    assert clip_bounds(2 * rate, SPEC, config) == []


def test_rule_with_overlapping_hop_covers_the_end_once():
    config = ClipConfig(seconds=10.0, hop_seconds=5.0, min_seconds=3.0)
    rate = SPEC.sample_rate
    bounds = clip_bounds(24 * rate, SPEC, config)
    assert bounds[:3] == [(0, 10 * rate), (5 * rate, 10 * rate), (10 * rate, 10 * rate)]
    # Next start 15 s: a 9 s tail clip reaching past the last whole clip (ends at 20 s).
    assert bounds[3:] == [(15 * rate, 9 * rate)]
    # When the audio after the last whole clip is under one frame, there is no tail.
    assert len(clip_bounds(20 * rate + 100, SPEC, config)) == 3


@pytest.mark.parametrize("native", [24_000, 44_100, 8_000])
def test_streaming_cut_equals_cutting_the_whole_decode(tmp_path, native):
    rng = np.random.default_rng(0)
    path = tmp_path / f"noise-{native}.wav"
    sf.write(path, rng.normal(0, 0.1, (int(23.3 * native), 2)).astype(np.float32), native)
    record = SourceRecord(key="noise", path=str(path), caption="noise")
    config = ClipConfig(seconds=4.0, hop_seconds=3.0, min_seconds=1.0, block_seconds=2.7)
    whole = load_audio(path, SPEC.sample_rate).numpy()
    clips = list(iter_clips(record, SPEC, config))
    bounds = clip_bounds(len(whole), SPEC, config)
    assert [(round(c.offset * SPEC.sample_rate), len(c.wav)) for c in clips] == bounds
    for clip, (start, length) in zip(clips, bounds, strict=True):
        np.testing.assert_allclose(clip.wav, whole[start : start + length], atol=1e-6)
        assert len(clip.wav) % SPEC.samples_per_semantic == 0
    assert [c.key for c in clips] == [f"noise-{i:05d}" for i in range(len(clips))]


def test_segment_offsets_are_seconds_in_the_file(tmp_path):
    path = tmp_path / "tone.wav"
    sf.write(path, np.zeros(30 * SPEC.sample_rate, np.float32), SPEC.sample_rate)
    record = SourceRecord(key="seg", path=str(path), start=5.0, end=17.0)
    clips = list(iter_clips(record, SPEC, ClipConfig(seconds=5.0, min_seconds=1.0)))
    assert [c.offset for c in clips] == [5.0, 10.0, 15.0]
    assert [c.seconds for c in clips] == [5.0, 5.0, 2.0]
    assert all(c.rms_db == -200.0 for c in clips)  # digital silence is kept, flagged


def test_too_short_and_missing_sources_name_the_file(tmp_path):
    path = tmp_path / "blip.wav"
    sf.write(path, np.ones(SPEC.sample_rate // 2, np.float32) * 0.1, SPEC.sample_rate)
    with pytest.raises(AudioError, match=r"blip\.wav.*shorter than the shortest clip"):
        list(iter_clips(SourceRecord(key="b", path=str(path)), SPEC, ClipConfig()))
    with pytest.raises(AudioError, match=r"gone\.wav: file not found"):
        list(iter_clips(SourceRecord(key="g", path=str(tmp_path / "gone.wav")), SPEC, ClipConfig()))
