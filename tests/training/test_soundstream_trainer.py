"""SoundStream trainer: a short tiny run on demo music through the training CLI.

One run (module fixture) serves every test: reconstruction warm-up, then a few GAN
batches; it must log every loss and the codebook statistics, write validation media,
export the EMA codec with the codebooks fitted to the EMA encoder, leave checkpoints that load into the inference model with
``weights_only=True``, and leave a codec that codes held-out music better than the
same architecture untrained.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from musiclm.tokenizers.audio import load_audio
from musiclm.tokenizers.audio_metrics import mel_distance
from musiclm.tokenizers.rvq import code_statistics
from musiclm.tokenizers.soundstream import SoundStream
from musiclm.training.cli import main
from musiclm.training.soundstream_trainer import load_trained_codec

CONFIG = Path(__file__).resolve().parents[2] / "configs/tokenizers/soundstream/tiny.yaml"
WARMUP_BATCHES = 40
GAN_BATCHES = 4

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(demo_music, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("soundstream-run")
    torch.manual_seed(0)
    main(
        [
            "tokenizer-soundstream",
            "--config",
            str(CONFIG),
            "--data.root",
            str(demo_music / "train"),
            "--trainer.default_root_dir",
            str(root),
            "--model.warmup_steps",
            str(WARMUP_BATCHES),
            # optimizer steps: one per warm-up batch, two (generator + discriminators) after
            "--trainer.max_steps",
            str(WARMUP_BATCHES + 2 * GAN_BATCHES),
            "--trainer.val_check_interval",
            str(WARMUP_BATCHES + GAN_BATCHES),
            "--trainer.log_every_n_steps",
            "2",
        ]
    )
    return root


def _metrics(run: Path) -> list[dict[str, str]]:
    (path,) = run.rglob("metrics.csv")
    return list(csv.DictReader(path.open()))


def _last(rows: list[dict[str, str]], name: str) -> float:
    values = [float(r[name]) for r in rows if r.get(name)]
    assert values, f"{name} was never logged"
    return values[-1]


def test_every_loss_codebook_statistics_and_media_are_logged(run):
    rows = _metrics(run)
    for name in (
        "train/reconstruction",
        "train/commitment",
        "train/adversarial",
        "train/feature_matching",
        "train/discriminator",
        "train/generator",
        "codebook/usage_q1",
        "codebook/perplexity_q12",
        "val/mel_distance_q1",
        "val/mel_distance_q4",
        "val/mel_distance_q12",
        "val/si_snr_q12",
        "val/codebook_usage",
    ):
        _last(rows, name)
    assert 0 < _last(rows, "codebook/usage_mean") <= 1
    media = sorted(p.name for p in run.rglob("media/step-*/*"))
    assert "spectrogram.png" in media and "clip0-original.wav" in media and "clip0-q12.wav" in media


def test_checkpoint_loads_into_the_inference_model(run):
    exported = SoundStream.load(run / "model")
    (checkpoint,) = [p for p in run.rglob("*.ckpt") if p.name != "last.ckpt"][-1:]
    from_ckpt = load_trained_codec(checkpoint)  # torch.load(..., weights_only=True)
    wav = torch.randn(1, 1, 4800) * 0.1
    with torch.inference_mode():
        assert from_ckpt.encode(wav).shape == exported.encode(wav).shape == (1, 12, 10)
    assert from_ckpt.config == exported.config


def test_checkpoint_of_another_architecture_is_refused(run, tmp_path):
    (checkpoint,) = list(run.rglob("*.ckpt"))[-1:]
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state["hyper_parameters"]["codec"] = {**state["hyper_parameters"]["codec"], "channels": 8}
    torch.save(state, tmp_path / "wider.ckpt")
    with pytest.raises(ValueError, match=r"do not fit the SoundStream architecture.*shape"):
        load_trained_codec(tmp_path / "wider.ckpt")
    torch.save({"state_dict": {"model.weight": torch.zeros(2)}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="not a SoundStream trainer checkpoint"):
        load_trained_codec(tmp_path / "other.ckpt")


def test_training_codes_held_out_music_better_and_more_levels_help(run, demo_music):
    trained = SoundStream.load(run / "model")
    torch.manual_seed(0)
    untrained = SoundStream.from_config(trained.config).eval()
    files = sorted(
        p for p in (demo_music / "heldout").rglob("*") if p.suffix in {".wav", ".flac", ".ogg"}
    )
    clips = torch.stack([load_audio(p, 24_000)[48_000:96_000] for p in files])[:, None]
    scores, usage = {}, {}
    with torch.inference_mode():
        for name, codec in (("trained", trained), ("untrained", untrained)):
            codes = codec.encode(clips)
            usage[name], _ = code_statistics(codes, codec.codebook_size)
            scores[name] = {
                q: float(
                    mel_distance(codec.decode(codes[:, :q])[..., : clips.shape[-1]], clips).mean()
                )
                for q in (1, 4, 12)
            }
    print(scores, usage["trained"])
    assert scores["trained"][12] < 0.7 * scores["untrained"][12], scores
    assert scores["trained"][12] < scores["trained"][4] < scores["trained"][1], scores
    # k-means init + dead-code restarts: every level of the trained codec spreads the
    # held-out frames over many codes (a collapsed codebook uses a handful)
    frames = clips.shape[0] * codes.shape[-1]
    assert float(usage["trained"].min()) * 1024 > 0.2 * frames, usage["trained"]


def test_exported_codec_pairs_the_ema_encoder_with_its_own_codebooks(run, demo_music):
    """The EMA codec's RVQ is fitted to the EMA encoder's latents during training (not a
    copy of the live codebooks, fitted to another encoder), and it quantizes that
    encoder's latents of held-out music closely."""
    exported = SoundStream.load(run / "model")
    checkpoint = max(run.rglob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    live = load_trained_codec(checkpoint, ema=False)
    books = exported.quantizer.codebooks
    torch.testing.assert_close(books, load_trained_codec(checkpoint).quantizer.codebooks)
    assert (books - live.quantizer.codebooks).abs().amax() > 1e-3
    files = sorted(
        p for p in (demo_music / "heldout").rglob("*") if p.suffix in {".wav", ".flac", ".ogg"}
    )
    clips = torch.stack([load_audio(p, 24_000)[48_000:72_000] for p in files])[:, None]
    with torch.inference_mode():
        latent = exported.embed(clips)
        codes = exported.quantizer.encode(latent)
        error = (latent - exported.quantizer.decode(codes)).pow(2).sum() / latent.pow(2).sum()
    assert float(error) < 0.05
