"""Fixtures of the pipeline tests: tiny untrained tokenizers, a bundle fitted by the fit
pipeline on the demo music, and a directory of awkward and broken inputs."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from musiclm.pipelines import fit_cli
from musiclm.tokenizers.contract import TokenSpec
from musiclm.tokenizers.dataset_layouts import read_sources
from musiclm.tokenizers.mulan import MuLanTokenizer
from musiclm.tokenizers.semantic import SemanticTokenizer
from musiclm.tokenizers.soundstream import SoundStream

# Small vocabularies so k-means and the RVQ fit on a few minutes of music.
TINY_SPEC = TokenSpec(
    acoustic_levels=4,
    acoustic_codebook_size=64,
    coarse_levels=2,
    semantic_vocab=16,
    mulan_levels=3,
    mulan_codebook_size=8,
    mulan_dim=16,
)
FAST_BEAM = ["--direct_running_mode=in_memory"]
# One torch thread per model call: the in-memory runner tokenizes in the test process,
# and on a shared CI machine one thread is several times faster than contended ones.
THREADS = 1
_TORCH_THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """The pipelines set torch's thread count in-process; give other tests theirs back."""
    yield
    torch.set_num_threads(_TORCH_THREADS)


# name -> (what it is, expected outcome). Outcome "ok" = tokenized, else the failure text.
BAD_INPUTS = {
    "corrupt.wav": "random bytes",
    "truncated.wav": "a wav cut in half",
    "empty.wav": "zero bytes",
    "nan.wav": "float wav with NaN samples",
    "lyrics.flac": "a text document with an audio extension",
}
AWKWARD_INPUTS = (
    "silence.wav",
    "rate8k.wav",
    "rate96k.flac",
    "six_channel.wav",
    "twenty_minutes.flac",
    "flac_inside.wav",
    "Für Elise – ñandú 音楽.wav",
    "no_caption.wav",
)


@pytest.fixture(scope="session")
def tiny_components(tmp_path_factory: pytest.TempPathFactory, demo_music: Path) -> dict[str, str]:
    """Saved tiny untrained codec, semantic model (no centroids) and MuLan (no codebooks)."""
    root = tmp_path_factory.mktemp("components")
    captions = [r.caption for r in read_sources(demo_music) if r.caption] or ["a piece of music"]
    codec = SoundStream(
        sample_rate=TINY_SPEC.sample_rate,
        hop=TINY_SPEC.acoustic_hop,
        strides=(2, 4, 6, 10),
        channels=2,
        dim=8,
        num_levels=TINY_SPEC.acoustic_levels,
        codebook_size=TINY_SPEC.acoustic_codebook_size,
    )
    codec.save(root / "codec")
    SemanticTokenizer.tiny(TINY_SPEC).save(root / "semantic")
    MuLanTokenizer.tiny(captions, TINY_SPEC).save(root / "mulan")
    return {name: str(root / name) for name in ("codec", "semantic", "mulan")}


@pytest.fixture(scope="session")
def tiny_bundle(
    tmp_path_factory: pytest.TempPathFactory, demo_music: Path, tiny_components
) -> Path:
    """A bundle written by the fit pipeline (``musiclm-fit --size tiny``) on the demo music."""
    out = tmp_path_factory.mktemp("bundle") / "bundle"
    args = ["--dataset", str(demo_music), "--out", str(out), "--size", "tiny"]
    for name, directory in tiny_components.items():
        args += [f"--{name}", directory]
    fit_cli.main([*args, "--threads", str(THREADS), *FAST_BEAM])
    return out


def _write(path: Path, data: np.ndarray, rate: int, **kwargs) -> None:
    sf.write(path, data, rate, **kwargs)


@pytest.fixture(scope="session")
def awkward_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Broken inputs (must become failures) and awkward ones (must be tokenized)."""
    root = tmp_path_factory.mktemp("awkward")
    rng = np.random.default_rng(7)

    def music(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
        # A few decaying partials with noise: not silence, not a pure sine.
        t = np.arange(int(seconds * rate)) / rate
        notes = sum(np.sin(2 * np.pi * f * t) * np.exp(-(t % 0.5) * 4) for f in (220, 330, 495))
        wave = 0.2 * notes / 3 + rng.normal(0, 0.01, t.size)
        return np.repeat(wave[:, None], channels, axis=1).astype(np.float32).squeeze()

    (root / "corrupt.wav").write_bytes(rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    _write(root / "full.wav", music(6, 24_000), 24_000)
    data = (root / "full.wav").read_bytes()
    (root / "full.wav").unlink()
    (root / "truncated.wav").write_bytes(data[: len(data) // 2])
    (root / "empty.wav").write_bytes(b"")
    nan = music(6, 24_000)
    nan[30_000:30_100] = np.nan
    _write(root / "nan.wav", nan, 24_000, subtype="FLOAT")
    (root / "lyrics.flac").write_text("Here comes the sun, little darling\n" * 200)

    _write(root / "silence.wav", np.zeros(8 * 24_000, np.float32), 24_000)
    _write(root / "rate8k.wav", music(7, 8_000), 8_000)
    _write(root / "rate96k.flac", music(5, 96_000), 96_000)
    _write(root / "six_channel.wav", music(6, 48_000, channels=6), 48_000)
    _write(root / "twenty_minutes.flac", np.tile(music(10, 24_000), 120), 24_000)
    _write(root / "flac_inside.wav", music(5, 32_000), 32_000, format="FLAC")
    _write(root / "Für Elise – ñandú 音楽.wav", music(5, 44_100), 44_100)
    _write(root / "no_caption.wav", music(5, 24_000), 24_000)
    for name in [*BAD_INPUTS, *AWKWARD_INPUTS]:
        if name != "no_caption.wav":
            stem = name.rsplit(".", 1)[0]
            (root / f"{stem}.json").write_text(json.dumps({"caption": f"test input {stem}"}))
    return root


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory: pytest.TempPathFactory, demo_music: Path) -> Path:
    """Six pieces of the demo music (one per source when possible), with their sidecars."""
    root = tmp_path_factory.mktemp("small-demo")
    chosen: dict[str, Path] = {}
    for record in read_sources(Path(demo_music) / "train"):
        source = Path(record.path).parent.name
        chosen.setdefault(source, Path(record.path))
    for path in list(chosen.values())[:6]:
        for member in (path, path.with_suffix(".json")):
            if member.exists():
                shutil.copy(member, root / member.name)
    return root


@pytest.fixture(scope="session")
def mixed_dataset(tmp_path_factory: pytest.TempPathFactory, demo_music: Path, awkward_dir) -> Path:
    """The demo music and the awkward inputs in one folder dataset."""
    root = tmp_path_factory.mktemp("mixed")
    shutil.copytree(demo_music, root / "demo")
    shutil.copytree(awkward_dir, root / "awkward")
    return root


def catalogue_music(seconds: float, rate: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    base = rng.uniform(150, 400)
    wave = sum(np.sin(2 * np.pi * base * k * t) * np.exp(-(t % 0.4) * 4) / k for k in (1, 2, 3))
    return (0.2 * wave + rng.normal(0, 0.01, t.size)).astype(np.float32)


@pytest.fixture(scope="session")
def catalogue(tmp_path_factory) -> Path:
    """Clean files and what real collections hold besides (see tests/pipelines/test_catalogue.py):
    an mp3 without a Xing header, WAVs cut at 99% and 50%, a clip of 1e37 samples."""
    root = tmp_path_factory.mktemp("catalogue")
    for i in range(5):
        sf.write(root / f"good{i}.wav", catalogue_music(4.0, 24_000, i), 24_000)
    sf.write(root / "poisoned.wav", 1e37 * catalogue_music(4.0, 24_000, 9), 24_000, subtype="FLOAT")
    sf.write(root / "source.wav", catalogue_music(6.0, 22_050, 5), 22_050)
    cbr_without_xing = ("-b:a", "64k", "-write_xing", "0")
    source, mp3 = str(root / "source.wav"), str(root / "estimate.mp3")
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-i", source, *cbr_without_xing, mp3], check=True
    )
    (root / "source.wav").unlink()
    sf.write(root / "whole.wav", catalogue_music(12.0, 24_000, 7), 24_000)
    data = (root / "whole.wav").read_bytes()
    (root / "cut99.wav").write_bytes(data[: int(len(data) * 0.99)])
    (root / "cut50.wav").write_bytes(data[: len(data) // 2])
    (root / "whole.wav").unlink()
    return root
