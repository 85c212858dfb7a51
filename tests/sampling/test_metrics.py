"""FAD, tag KL and the transformers embedder, on tiny models saved to a temp dir (no network)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from musiclm.sampling import metrics

SR = 16_000


def test_frechet_distance_matches_closed_form_and_is_zero_for_identical_sets():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 8))
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # Shifted copy: same covariance, so FAD = |shift|^2 exactly.
    shift = np.arange(8) * 0.5
    assert metrics.frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-6)
    # Scaled copy: mu_b = s mu_a, cov_b = s^2 cov_a -> FAD = (1 - s)^2 (|mu_a|^2 + tr(cov_a)).
    s = 3.0
    mu = a.mean(0)
    expected = (1 - s) ** 2 * (mu @ mu + np.trace(np.cov(a, rowvar=False)))
    assert metrics.frechet_distance(a, a * s) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_with_fewer_embeddings_than_dimensions_is_finite():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 64)), rng.normal(size=(7, 64)) + 1.0
    value = metrics.frechet_distance(a, b)
    assert np.isfinite(value) and value > 0


def test_frechet_distance_refuses_a_single_embedding():
    with pytest.raises(ValueError, match="at least 2"):
        metrics.frechet_distance(np.zeros((1, 4)), np.zeros((3, 4)))


def test_kl_divergence():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    assert metrics.kl_divergence(p, p) == pytest.approx(0.0, abs=1e-9)
    q = p[::-1]
    assert metrics.kl_divergence(p, q) > 0.5
    # Unpaired sets compare mean distributions.
    assert metrics.kl_divergence(p, p.mean(0, keepdims=True)) == pytest.approx(0.0, abs=1e-9)


def test_split_windows_and_window_length():
    clips = [torch.arange(10.0), torch.arange(7.0)]
    assert metrics.window_length(1, 4.0, clips) == 4
    assert metrics.window_length(1, 20.0, clips) == 7
    windows = metrics.split_windows(clips, 4, 3)
    assert windows.shape == (3 + 2, 4)
    assert torch.equal(windows[1], torch.arange(3.0, 7.0))


def test_noise_like_matches_length_and_loudness():
    clip = 0.3 * torch.sin(torch.linspace(0, 500, 24_000))
    (noise,) = metrics.noise_like([clip])
    assert noise.shape == clip.shape
    rms = float(clip.pow(2).mean().sqrt())
    assert float(noise.pow(2).mean().sqrt()) == pytest.approx(rms, rel=0.05)


@pytest.fixture(scope="module")
def tiny_wav2vec(tmp_path_factory):
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32, 32),
        conv_stride=(5, 4),
        conv_kernel=(10, 4),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    directory = tmp_path_factory.mktemp("wav2vec")
    Wav2Vec2Model(config).save_pretrained(directory)
    Wav2Vec2FeatureExtractor(sampling_rate=SR).save_pretrained(directory)
    return directory


def _tones(freqs, seconds=1.0, sr=24_000):
    t = torch.arange(int(seconds * sr)) / sr
    return [0.5 * torch.sin(2 * torch.pi * f * t) for f in freqs]


def test_transformers_embedder_fad(tiny_wav2vec):
    embedder = metrics.TransformersEmbedder(tiny_wav2vec, input_rate=24_000)
    tones = _tones([220, 330, 440, 550])
    gen = torch.Generator().manual_seed(0)
    noise = [torch.randn(t.numel(), generator=gen) * 0.35 for t in tones]
    same = metrics.frechet_audio_distance(tones, tones, embedder, 0.5, 0.25)
    assert same == pytest.approx(0.0, abs=1e-6)
    other_tones = _tones([247, 370, 494, 587])
    near = metrics.frechet_audio_distance(tones, other_tones, embedder, 0.5, 0.25)
    far = metrics.frechet_audio_distance(tones, noise, embedder, 0.5, 0.25)
    assert 0 < near < far


def test_transformers_embedder_refuses_a_folder_without_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        metrics.TransformersEmbedder(tmp_path, input_rate=24_000)


@pytest.fixture(scope="module")
def tiny_mulan_dir(tmp_path_factory):
    from musiclm.tokenizers.mulan import MuLanTokenizer

    torch.manual_seed(0)
    captions = ["a slow organ chorale", "fast piano jazz", "rock guitar with drums"]
    directory = tmp_path_factory.mktemp("mulan")
    MuLanTokenizer.tiny(captions).save(directory)
    return directory


def _write_set(folder, clips, texts, key):
    import json

    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    for i, (clip, text) in enumerate(zip(clips, texts, strict=True)):
        sf.write(folder / f"{i}.wav", clip.numpy(), 24_000)
        (folder / f"{i}.json").write_text(json.dumps({key: text}))


def test_cycle_consistency_and_tagging_with_tiny_mulan(tiny_mulan_dir):
    from musiclm.tokenizers.bundle import load_component

    mulan = load_component(tiny_mulan_dir)
    clips = _tones([220, 440, 880], seconds=1.0)
    prompts = ["a slow organ chorale", "fast piano jazz", "rock guitar with drums"]
    cycle = metrics.cycle_consistency(mulan, prompts, clips)
    assert cycle.matrix.shape == (3, 3)
    assert np.all(np.abs(cycle.matrix) <= 1 + 1e-6)
    assert cycle.own == pytest.approx(np.diag(cycle.matrix).mean())
    off = cycle.matrix[~np.eye(3, dtype=bool)]
    assert cycle.others == pytest.approx(off.mean())
    dist = metrics.tag_distributions(mulan, clips, ["organ", "piano", "guitar"])
    assert dist.shape == (3, 3)
    np.testing.assert_allclose(dist.sum(1), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="pair them"):
        metrics.cycle_consistency(mulan, prompts[:2], clips)


def test_eval_cli_writes_report(tiny_mulan_dir, tmp_path, capsys):
    import json

    from musiclm.sampling import eval_cli

    prompts = ["a slow organ chorale", "fast piano jazz", "rock guitar with drums"]
    _write_set(tmp_path / "gen", _tones([220, 440, 880], seconds=1.5), prompts, "text")
    ref_tags = [["organ", "slow"], ["piano"], ["guitar", "rock"]]
    _write_set(tmp_path / "ref", _tones([262, 523, 659], seconds=1.5), ref_tags, "tags")
    out = tmp_path / "eval"
    eval_cli.main(
        [
            "--generated", str(tmp_path / "gen"),
            "--reference", str(tmp_path / "ref"),
            "--mulan", str(tiny_mulan_dir),
            "--noise-baseline",
            "--window-seconds", "1.0",
            "--out", str(out),
        ]
    )  # fmt: skip
    results = json.loads((out / "metrics.json").read_text())
    assert set(results["fad"]) == {"generated", "noise"}
    assert all(np.isfinite(v) and v >= 0 for v in results["fad"].values())
    assert results["kld"] is not None and results["kld"] >= 0
    assert results["mcc"]["prompts"] == prompts
    assert len(results["mcc"]["matrix"]) == 3
    report = (out / "report.md").read_text()
    assert "Frechet Audio Distance" in report and "MCC" in report
    assert (out / "report.png").stat().st_size > 1000
    assert "report.md" in capsys.readouterr().out


def test_eval_cli_tabulates_and_plots_learning_curves(tiny_mulan_dir, tmp_path):
    import json

    from musiclm.sampling import eval_cli

    prompts = ["a slow organ chorale", "fast piano jazz"]
    _write_set(tmp_path / "gen", _tones([220, 440], seconds=1.5), prompts, "text")
    curve = {"stage": "coarse", "train_unigram_cross_entropy": 6.8, "heldout_unigram_entropy": 5.9,
             "points": [{"step": 50, "loss": 6.9, "loss_shuffled_mulan": 6.95},
                        {"step": 100, "loss": 6.4, "loss_shuffled_mulan": 6.5}]}  # fmt: skip
    (tmp_path / "curve.json").write_text(json.dumps(curve))
    args = ["--generated", str(tmp_path / "gen"), "--reference", str(tmp_path / "gen"),
            "--mulan", str(tiny_mulan_dir), "--window-seconds", "1.0"]  # fmt: skip
    eval_cli.main(
        [*args, "--out", str(tmp_path / "eval"), "--curves", str(tmp_path / "curve.json")]
    )
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "Learning curves" in report
    assert "| coarse | 100 | 6.4000 | 6.5000 | n/a | n/a | 6.8000 |" in report
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["curves"]["coarse"] == curve
    with pytest.raises(SystemExit, match="stage_curve"):
        eval_cli.main([*args, "--out", str(tmp_path / "e2"), "--curves", str(tmp_path / "no.json")])


def test_eval_cli_names_a_missing_folder(tiny_mulan_dir, tmp_path):
    from musiclm.sampling import eval_cli

    missing = tmp_path / "nothing"
    with pytest.raises(SystemExit, match="does not exist"):
        eval_cli.main(
            ["--generated", str(missing), "--reference", str(missing),
             "--mulan", str(tiny_mulan_dir), "--out", str(tmp_path / "o")]
        )  # fmt: skip


def test_eval_with_a_bundle_reports_codec_quality(bundle_dir, tmp_path):
    import json

    from musiclm.sampling import eval_cli

    prompts = ["a slow organ chorale", "fast piano jazz"]
    _write_set(tmp_path / "gen", _tones([220, 440], seconds=1.2), prompts, "text")
    _write_set(tmp_path / "ref", _tones([262, 523], seconds=1.2), prompts, "caption")
    eval_cli.main(
        ["--generated", str(tmp_path / "gen"), "--reference", str(tmp_path / "ref"),
         "--bundle", str(bundle_dir), "--window-seconds", "1.0", "--out", str(tmp_path / "e")]
    )  # fmt: skip
    results = json.loads((tmp_path / "e" / "metrics.json").read_text())
    codec = results["codec"]
    assert codec["levels"] == [1, 4]
    assert all(np.isfinite(codec["mel_distance"])) and all(np.isfinite(codec["si_snr"]))
    report = (tmp_path / "e" / "report.md").read_text()
    assert "Codec round trip" in report and "MCC ceiling" in report
    # the ceiling: captioned references with their own captions, raw and through the codec
    ceiling = results["mcc_reference"]
    assert set(ceiling) == {"reference", "codec round trip"}
    assert all(-1 <= v <= 1 for row in ceiling.values() for v in row.values())


def test_resynthesis_keeps_the_cut_length_and_differs_from_the_input(bundle_dir):
    from musiclm.tokenizers.bundle import load_bundle

    codec = load_bundle(bundle_dir).codec
    clips = _tones([220, 330], seconds=1.3) + _tones([440], seconds=0.7)
    out = metrics.resynthesize(codec, clips, 24_000, seconds=1.0)
    assert out.shape == (3, int(0.7 * 24_000))  # cut to the shortest clip
    assert not torch.allclose(out, torch.stack([c[: out.shape[1]] for c in clips]))
