"""The evaluation report: Markdown with every figure, a PNG plot, and the raw numbers as JSON.

Input is the dictionary :mod:`musiclm.sampling.eval_cli` builds::

    {"fad": {"generated": float, "noise": float, ...},     # set name -> FAD vs the reference
     "kld": float | None,                                   # KL(reference tags || generated tags)
     "mcc": {"own": float, "others": float, "prompts": [...], "matrix": [[...]]} | None,
     "codec": {"levels": [1, 4, 12], "mel_distance": [...], "si_snr": [...]} | None,
     "mcc_reference": {"reference" | "codec round trip": {"own", "others"}} | absent,
     "curves": {stage: {"points": [{"step", "loss", "loss_shuffled_mulan", ...}],
                        "train_unigram_cross_entropy": float, ...}} | absent,
     "setup": {...}}                                        # what was compared, with what
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def markdown(results: dict[str, Any], plot_name: str) -> str:
    """The report text for ``results`` (see the module docstring), linking ``plot_name``."""
    lines = ["# MusicLM evaluation", ""]
    setup = results.get("setup", {})
    if setup:
        lines += ["| setting | value |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in setup.items()]
        lines.append("")
    fad = results.get("fad") or {}
    if fad:
        lines += [
            f"## Frechet Audio Distance (embedder: {setup.get('embedder', '?')}; lower is closer)",
            "",
            "| set vs reference | FAD |",
            "| --- | --- |",
        ]
        lines += [f"| {name} | {_fmt(v)} |" for name, v in fad.items()]
        lines.append("")
    if results.get("kld") is not None:
        lines += [
            "## Tag KL divergence (MuLan zero-shot tagging)",
            "",
            f"KL(reference || generated) = {_fmt(results['kld'])} nats",
            "",
        ]
    mcc = results.get("mcc")
    if mcc:
        lines += [
            "## MuLan cycle consistency",
            "",
            f"- MCC, each prompt with its own audio: **{_fmt(mcc['own'])}**",
            f"- each prompt with the other prompts' audio: {_fmt(mcc['others'])}",
            "",
            "| prompt | own | mean of others |",
            "| --- | --- | --- |",
        ]
        matrix = mcc["matrix"]
        for i, prompt in enumerate(mcc["prompts"]):
            row = matrix[i]
            rest = [row[j] for j in range(len(row)) if j != i]
            others = sum(rest) / len(rest) if rest else None
            lines.append(f"| {prompt} | {_fmt(row[i])} | {_fmt(others)} |")
        lines.append("")
    ceiling = results.get("mcc_reference")
    if ceiling:
        lines += [
            "## MuLan cycle consistency of the captioned reference music (the MCC ceiling)",
            "",
            "| audio | own caption | other captions |",
            "| --- | --- | --- |",
        ]
        lines += [f"| {k} | {_fmt(v['own'])} | {_fmt(v['others'])} |" for k, v in ceiling.items()]
        lines.append("")
    codec = results.get("codec")
    if codec:
        lines += [
            "## Codec round trip on the reference audio",
            "",
            "| RVQ levels | mel distance | SI-SNR (dB) |",
            "| --- | --- | --- |",
        ]
        for q, mel, snr in zip(
            codec["levels"], codec["mel_distance"], codec["si_snr"], strict=True
        ):
            lines.append(f"| {q} | {_fmt(mel)} | {_fmt(snr)} |")
        lines.append("")
    curves = results.get("curves")
    if curves:
        lines += [
            "## Learning curves: held-out loss per saved step (nats per target token)",
            "",
            "| stage | step | loss | shuffled MuLan | shuffled semantic | null | "
            "training-split unigram |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for stage, curve in curves.items():
            base = curve.get("train_unigram_cross_entropy")
            for point in curve["points"]:
                cells = [point.get(k) for k in ("loss", "loss_shuffled_mulan",
                                                "loss_shuffled_semantic", "loss_null")]  # fmt: skip
                row = " | ".join(_fmt(c) for c in cells)
                lines.append(f"| {stage} | {point['step']} | {row} | {_fmt(base)} |")
        lines.append("")
    lines += [f"![figures]({plot_name})", ""]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: str | Path) -> None:
    """A PNG with one panel per figure group: FAD bars, MCC matrix, codec quality per level,
    and the stages' held-out learning curves."""
    panels = [k for k in ("fad", "mcc", "codec", "curves") if results.get(k)]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5 * max(1, len(panels)), 4))
    axes = [axes] if not hasattr(axes, "__len__") else list(axes)
    for ax, key in zip(axes, panels, strict=False):
        if key == "fad":
            names = list(results["fad"])
            ax.bar(names, [results["fad"][n] for n in names], color="tab:blue")
            ax.set_title("FAD vs reference (lower is closer)")
        elif key == "mcc":
            image = ax.imshow(results["mcc"]["matrix"], cmap="viridis")
            ticks = range(len(results["mcc"]["matrix"]))
            ax.set_xticks(ticks)
            ax.set_yticks(ticks)
            ax.set_title("MuLan cosine: prompt (row) x audio (col)")
            ax.set_xlabel("generated audio")
            ax.set_ylabel("prompt")
            fig.colorbar(image, ax=ax)
        elif key == "curves":
            _plot_curves(ax, results["curves"])
        else:
            codec = results["codec"]
            ax.plot(codec["levels"], codec["mel_distance"], "o-", label="mel distance")
            ax.set_xlabel("RVQ levels")
            ax.set_title("codec round trip")
            twin = ax.twinx()
            twin.plot(codec["levels"], codec["si_snr"], "s--", color="tab:red", label="SI-SNR")
            twin.set_ylabel("SI-SNR (dB)")
            ax.legend(loc="upper center")
    if not panels:
        axes[0].text(0.5, 0.5, "no figures", ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_curves(ax: Any, curves: dict[str, dict[str, Any]]) -> None:
    """Held-out loss minus the training-split unigram cross entropy, per stage, vs step."""
    for stage, curve in curves.items():
        base = curve.get("train_unigram_cross_entropy") or 0.0
        steps = [p["step"] for p in curve["points"]]
        line = ax.plot(steps, [p["loss"] - base for p in curve["points"]], "o-", label=stage)[0]
        shuffled = [p.get("loss_shuffled_mulan") for p in curve["points"]]
        if all(v is not None for v in shuffled):
            ax.plot(steps, [v - base for v in shuffled], ":", color=line.get_color(),
                    label=f"{stage}, shuffled MuLan")  # fmt: skip
    ax.axhline(0.0, color="gray", lw=1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("held-out loss - unigram (nats)")
    ax.set_title("learning curves (below 0: beats the unigram)")
    ax.legend(fontsize=7)


def write_report(results: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.md``, ``report.png`` and ``metrics.json`` into ``out_dir``; return paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": out_dir / "report.md",
        "plot": out_dir / "report.png",
        "json": out_dir / "metrics.json",
    }
    plot(results, paths["plot"])
    paths["markdown"].write_text(markdown(results, paths["plot"].name))
    paths["json"].write_text(json.dumps(results, indent=2, default=float))
    return paths
