"""How well MuLan pairs text with music: retrieval recall, chance level, shared leading codes.

* :func:`retrieval_recall` / :func:`chance_recall`: recall@k of a similarity ranking and of
  a random one. A query is a hit when a top-k candidate is in its group (same caption:
  clips of one piece often share a caption, so "the same clip" would cap recall below 1).
* :func:`shared_prefix`: how many leading RVQ codes two token rows share.
* :func:`evaluate_folder`: all of the above for a folder of captioned clips (e.g. the
  demo's ``heldout/``) through the inference API (windowed audio embeddings, text
  embeddings, text and audio tokens), as the sampler uses it.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from musiclm.tokenizers.audio import load_audio
from musiclm.tokenizers.source_records import read_folder


def retrieval_recall(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    query_groups: torch.Tensor,
    candidate_groups: torch.Tensor,
    ks: Sequence[int] = (1, 5),
) -> dict[int, float]:
    """Recall@k: share of queries ``[Q, D]`` with a same-group candidate among the top k of
    ``candidates [C, D]`` by dot product. Groups are int ids ``[Q]`` / ``[C]``."""
    sims = queries.float() @ candidates.float().t()
    order = sims.argsort(dim=1, descending=True)
    hits = candidate_groups[order] == query_groups[:, None]  # [Q, C] in rank order
    return {k: hits[:, :k].any(dim=1).float().mean().item() for k in ks}


def chance_recall(
    query_groups: torch.Tensor, candidate_groups: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[int, float]:
    """Expected recall@k of a random ranking (no positive among k draws: hypergeometric)."""
    total = len(candidate_groups)
    positives = (candidate_groups[None, :] == query_groups[:, None]).sum(1).tolist()
    out = {}
    for k in ks:
        misses = [
            math.comb(total - p, min(k, total)) / math.comb(total, min(k, total)) for p in positives
        ]
        out[k] = 1.0 - sum(misses) / len(misses)
    return out


def text_groups(texts: Sequence[str], device: torch.device | str | None = None) -> torch.Tensor:
    """Stable int64 ids of texts (equal text, equal id; gatherable across ranks)."""
    return torch.tensor([zlib.crc32(t.encode()) for t in texts], dtype=torch.long, device=device)


def shared_prefix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Leading codes shared by every pair of rows: tokens ``[Q, L]``, ``[C, L]`` -> ``[Q, C]``."""
    equal = a[:, None, :] == b[None, :, :]
    return equal.long().cumprod(dim=-1).sum(dim=-1)


def evaluate_folder(
    mulan: Any, root: str | Path, seconds: float = 30.0, ks: Sequence[int] = (1, 5)
) -> dict[str, Any]:
    """Text->audio retrieval (and, with codebooks, shared leading codes) on captioned clips.

    Every audio file under ``root`` with a caption is a candidate (its first ``seconds``,
    all cut to the shortest so the batch is one ``audio_embedding`` call); each distinct
    caption is a query. Returns ``{"clips", "queries", "recall@k", "chance_recall@k",
    "shared_codes_matching", "shared_codes_other"}`` (the last two only when ``mulan``
    has codebooks: mean leading codes a prompt's text tokens share with the audio tokens
    of its own clips vs of the other clips).
    """
    records = [r for r in read_folder(root) if r.caption.strip()]
    if len(records) < 2:
        raise ValueError(f"{root} holds {len(records)} captioned clips; need at least 2")
    rate = mulan.spec.sample_rate
    clips = [load_audio(r.path, rate, r.start or 0.0, (r.start or 0.0) + seconds) for r in records]
    length = min(len(c) for c in clips)
    wav = torch.stack([c[:length] for c in clips])
    captions = [r.caption for r in records]
    queries = list(dict.fromkeys(captions))
    audio = mulan.audio_embedding(wav)
    text = mulan.text_embedding(queries)
    audio_groups, query_groups = text_groups(captions), text_groups(queries)
    out: dict[str, Any] = {"clips": len(records), "queries": len(queries), "seconds": length / rate}
    for k, value in retrieval_recall(text, audio, query_groups, audio_groups, ks).items():
        out[f"recall@{k}"] = value
    for k, value in chance_recall(query_groups, audio_groups, ks).items():
        out[f"chance_recall@{k}"] = value
    if getattr(mulan, "codebooks", None) is not None:
        shared = shared_prefix(mulan.quantize(text), mulan.quantize(audio)).float()
        matching = query_groups[:, None] == audio_groups[None, :]
        out["shared_codes_matching"] = shared[matching].mean().item()
        out["shared_codes_other"] = shared[~matching].mean().item()
    return out


def window_embeddings(mulan: Any, root: str | Path, seconds: float = 30.0) -> torch.Tensor:
    """Audio tower embeddings of every window (``spec`` window and stride) of the first
    ``seconds`` of each clip under ``root``: ``[W, D]``, one tower call per clip."""
    rate, window, stride = mulan.spec.sample_rate, mulan.window_samples, mulan.stride_samples
    out = []
    for record in read_folder(root):
        start = record.start or 0.0
        clip = load_audio(record.path, rate, start, start + seconds)
        if len(clip) < window:
            continue
        with torch.inference_mode():
            out.append(mulan.audio_tower(clip.unfold(0, window, stride)))
    if not out:
        raise ValueError(f"{root} has no clip of at least one MuLan window")
    return torch.cat(out)


def main(argv: list[str] | None = None) -> None:
    """``python -m musiclm.training.mulan_eval --model DIR --heldout DIR [--fit-on DIR]``."""
    import argparse
    import json
    import warnings

    import yaml
    from musiclm.tokenizers.mulan import MuLanTokenizer, fit_codebooks
    from musiclm.tokenizers.mulan_audio import AudioTowerConfig
    from musiclm.tokenizers.mulan_text import TextTowerConfig

    parser = argparse.ArgumentParser(description="MuLan held-out retrieval and token agreement")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", help="a saved MuLan directory (trainer export or bundle/mulan)")
    model.add_argument("--untrained", help="a MuLan trainer YAML: evaluate its untrained model")
    parser.add_argument("--heldout", required=True, help="folder of captioned held-out clips")
    parser.add_argument("--fit-on", help="folder whose window embeddings fit RVQ codebooks")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    if args.model:
        mulan = MuLanTokenizer.load(args.model)
    else:
        config = yaml.safe_load(Path(args.untrained).read_text())["model"]
        text = TextTowerConfig(**config["text"])
        captions = None
        if text.kind == "small":  # its tokenizer is trained on captions, as the trainer does
            captions = [r.caption for r in read_folder(args.fit_on or args.heldout)]
        mulan = MuLanTokenizer.build(AudioTowerConfig(**config["audio"]), text, None, captions)
        mulan.eval()
    if args.fit_on:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            books = fit_codebooks(
                window_embeddings(mulan, args.fit_on, args.seconds).numpy(),
                mulan.spec.mulan_levels,
                mulan.spec.mulan_codebook_size,
            )
        for warning in caught:
            print(f"warning: {warning.message}")
        mulan.set_codebooks(books)
    print(json.dumps(evaluate_folder(mulan, args.heldout, args.seconds), indent=2))


if __name__ == "__main__":
    main()
