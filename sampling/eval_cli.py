"""``musiclm-eval``: judge generated music against reference music; write a report.

::

    musiclm-eval --generated runs/samples --reference data/demo/heldout \\
        --bundle runs/bundle --noise-baseline --out runs/eval

- ``--generated``/``--reference``: folders (searched recursively) or audio files. The
  prompt of a generated file is read from its sidecar ``<stem>.json`` (key ``text``, as
  ``musiclm-sample`` writes it, or ``caption``); tags of reference files from their
  sidecar ``tags``.
- FAD embedder: the bundle's MuLan audio tower by default, or ``--embedder DIR``, any
  ``transformers`` audio model saved in a local folder.
- With ``--bundle``, the codec's mel distance and SI-SNR on the reference audio at 1, 4
  and all RVQ levels.
- With captioned references (sidecar ``caption``), the MCC ceiling: the cycle consistency
  of the reference music with its own captions, and (with a codec) of its codec round trip.
- ``--noise-baseline`` adds white noise (each generated clip's length and loudness) as a
  second set: an anchor that generated music should beat.
- ``--curves``: held-out learning curves of the stages (JSON of
  ``python -m musiclm.training.stage_curve``), tabulated and plotted against their
  training-split unigram baselines.
- Writes ``report.md``, ``report.png`` and ``metrics.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from musiclm.sampling import metrics
from musiclm.sampling.report import write_report
from musiclm.tokenizers.audio import AudioError, load_audio
from musiclm.tokenizers.bundle import BundleError, load_bundle, load_component
from musiclm.tokenizers.codec import Codec
from musiclm.tokenizers.source_records import AUDIO_EXTENSIONS, is_audio_name


class EvalError(ValueError):
    """A user input the evaluation cannot work with; the message names it and the fix."""


def find_audio(inputs: list[str]) -> list[Path]:
    """Audio files named by ``inputs`` (files, or folders searched recursively), sorted."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if is_audio_name(p.name))
        elif path.is_file():
            found.append(path)
        else:
            raise EvalError(f"{path} does not exist; pass audio files or folders of them")
    if not found:
        raise EvalError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) in {inputs}")
    return found


def sidecar(path: Path) -> dict[str, Any]:
    """The ``<stem>.json`` next to an audio file, or ``{}``."""
    side = path.with_suffix(".json")
    return json.loads(side.read_text()) if side.is_file() else {}


def load_clips(paths: list[Path], sample_rate: int, max_seconds: float) -> list[torch.Tensor]:
    """Mono float clips ``[N]`` at ``sample_rate``, each cut to its first ``max_seconds``."""
    try:
        return [load_audio(p, sample_rate, 0.0, max_seconds) for p in paths]
    except AudioError as err:
        raise EvalError(f"cannot read {err}") from err


def reference_tags(paths: list[Path]) -> list[str]:
    """The union of the ``tags`` of the reference files' sidecars, sorted."""
    tags: set[str] = set()
    for path in paths:
        value = sidecar(path).get("tags", [])
        tags.update([value] if isinstance(value, str) else value)
    return sorted(t for t in tags if t)


def evaluate(
    generated: list[Path],
    reference: list[Path],
    mulan: Any,
    sample_rate: int,
    codec: Codec | None,
    embedder: metrics.AudioEmbedder,
    tags: list[str],
    noise_baseline: bool = False,
    max_seconds: float = 30.0,
    window_seconds: float = 10.0,
    temperature: float = 0.1,
) -> dict[str, Any]:
    """Every figure for ``generated`` vs ``reference`` audio files (see :mod:`.report`)."""
    gen = load_clips(generated, sample_rate, max_seconds)
    ref = load_clips(reference, sample_rate, max_seconds)
    sets = {"generated": gen}
    if noise_baseline:
        sets["noise"] = metrics.noise_like(gen)
    fad = {
        name: metrics.frechet_audio_distance(
            clips, ref, embedder, window_seconds=window_seconds, hop_seconds=1.0
        )
        for name, clips in sets.items()
    }
    results: dict[str, Any] = {"fad": fad, "kld": None, "mcc": None, "codec": None}
    if tags:
        p_ref = metrics.tag_distributions(mulan, ref, tags, temperature)
        p_gen = metrics.tag_distributions(mulan, gen, tags, temperature)
        results["kld"] = metrics.kl_divergence(p_ref, p_gen)
    prompts = [sidecar(p).get("text") or sidecar(p).get("caption") for p in generated]
    if all(prompts):
        cycle = metrics.cycle_consistency(mulan, prompts, gen)
        results["mcc"] = {
            "own": cycle.own,
            "others": cycle.others,
            "prompts": prompts,
            "matrix": cycle.matrix.tolist(),
        }
    captions = [sidecar(p).get("caption") for p in reference]
    if all(captions) and len(set(captions)) > 1:
        results["mcc_reference"] = reference_cycle(mulan, codec, captions, ref, sample_rate)
    if codec is not None:
        q = codec.num_levels
        levels = sorted({1, min(4, q), q})
        results["codec"] = metrics.codec_round_trip(codec, ref, sample_rate, levels)
    results["setup"] = {
        "generated": f"{len(gen)} files",
        "reference": f"{len(ref)} files",
        "embedder": embedder.name,
        "window seconds": window_seconds,
        "max seconds per file": max_seconds,
        "tags": len(tags),
        "tag temperature": temperature,
    }
    return results


def reference_cycle(
    mulan: Any,
    codec: Codec | None,
    captions: list[str],
    clips: list[torch.Tensor],
    sample_rate: int,
    seconds: float = 10.0,
) -> dict[str, dict[str, float]]:
    """MuLan cycle consistency of the captioned reference music with its own captions: the
    ceiling a generator's MCC can reach, ``{"reference": {"own", "others"}}``; with a
    codec also ``"codec round trip"``, the same clips decoded from their codes (what the
    codec keeps of what MuLan hears). Both use the first ``seconds`` of every clip."""
    n = metrics.window_length(sample_rate, seconds, clips)
    sets = {"reference": [clip[:n] for clip in clips]}
    if codec is not None:
        sets["codec round trip"] = list(metrics.resynthesize(codec, clips, sample_rate, seconds))
    out = {}
    for name, audio in sets.items():
        cycle = metrics.cycle_consistency(mulan, captions, audio)
        out[name] = {"own": cycle.own, "others": cycle.others}
    return out


def read_curves(paths: list[str]) -> dict[str, dict[str, Any]]:
    """``{stage: curve}`` from ``stage_curve`` JSON files (see :mod:`.report`)."""
    curves = {}
    for item in paths:
        path = Path(item)
        if not path.is_file():
            raise EvalError(
                f"learning curve {path} does not exist; write it with "
                "`python -m musiclm.training.stage_curve RUN --heldout ... --train ... --out FILE`"
            )
        curve = json.loads(path.read_text())
        if "stage" not in curve or "points" not in curve:
            raise EvalError(f"{path} is not a stage_curve JSON (no 'stage' and 'points')")
        curves[curve["stage"]] = curve
    return curves


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="musiclm-eval", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--generated", nargs="+", required=True, help="generated audio files/dirs")
    parser.add_argument("--reference", nargs="+", required=True, help="reference audio files/dirs")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bundle", help="tokenizer bundle (its MuLan and codec are used)")
    source.add_argument("--mulan", help="a saved MuLan component folder (instead of a bundle)")
    parser.add_argument("--embedder", help="local transformers audio model folder for FAD")
    parser.add_argument("--tags", help="comma-separated tag vocabulary (default: reference tags)")
    parser.add_argument("--noise-baseline", action="store_true", help="add a white-noise set")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="seconds read per file")
    parser.add_argument("--window-seconds", type=float, default=10.0, help="FAD window length")
    parser.add_argument("--temperature", type=float, default=0.1, help="zero-shot tag softmax T")
    parser.add_argument("--curves", nargs="*", default=[], help="stage_curve JSON files")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", required=True, help="folder for report.md/png, metrics.json")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        if args.bundle:
            bundle = load_bundle(args.bundle, device=args.device)
            mulan, codec, sample_rate = bundle.mulan, bundle.codec, bundle.spec.sample_rate
        else:
            mulan, codec = load_component(args.mulan, device=args.device), None
            sample_rate = mulan.spec.sample_rate
        embedder: metrics.AudioEmbedder = (
            metrics.TransformersEmbedder(args.embedder, sample_rate, device=args.device)
            if args.embedder
            else metrics.MuLanEmbedder(mulan, sample_rate)
        )
        generated, reference = find_audio(args.generated), find_audio(args.reference)
        tags = args.tags.split(",") if args.tags else reference_tags(reference)
        results = evaluate(
            generated,
            reference,
            mulan,
            sample_rate,
            codec,
            embedder,
            [t.strip() for t in tags if t.strip()],
            noise_baseline=args.noise_baseline,
            max_seconds=args.max_seconds,
            window_seconds=args.window_seconds,
            temperature=args.temperature,
        )
        curves = read_curves(args.curves)
    except (EvalError, BundleError, FileNotFoundError) as err:
        sys.exit(f"musiclm-eval: {err}")
    if curves:
        results["curves"] = curves
    paths = write_report(results, args.out)
    print(json.dumps({k: v for k, v in results.items() if k != "setup"}, default=float))
    for name, path in paths.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
