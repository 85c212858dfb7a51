"""Token generation for one stage: KV-cached sampling, guidance, and windows past the crop length.

:func:`generate` samples ``n`` target tokens after a prompt with a key/value cache (the
prompt is encoded once, then one token per step), restricted to each position's level
range of the :class:`~musiclm.training.layout.TokenLayout`. With a guidance scale ``g != 1``
the conditional and unconditional (null MuLan prefix) prompts run as one batch of ``2B``
rows and the logits are mixed as ``uncond + g * (cond - uncond)`` (classifier-free guidance).

:func:`extend` generates a stream of any length with a model trained on crops of
``window`` semantic frames: each window keeps the last ``prefix`` frames generated so far
as a target prefix and generates the rest (MusicLM: 30 s semantic windows with a 15 s
stride and a 15 s prefix), so minutes of audio come from a model that saw 30 s.

Randomness is per row (:class:`RowRandom`: row ``i`` draws from its own generator), so a
batch gives exactly what the rows would give one at a time, and a seed reproduces output.
Sampling is by the inverse CDF of one uniform per row and step. The uniforms of a call are
drawn up front and moved to the model's device once; filtering, guidance and drawing run
there, so a GPU is never synchronised per token (only the finished tokens come back). Each
step projects the last hidden state onto its level's id range only, not the whole vocabulary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from musiclm.training.layout import TokenLayout
from musiclm.training.stage_registry import STAGES
from musiclm.training.transformer import DecoderTransformer

# The paper's sampling temperatures (semantic / coarse / fine), from the stage registry.
PAPER_TEMPERATURES = {name: stage.paper_temperature for name, stage in STAGES.items()}


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """How one stage samples. ``temperature`` 0 = greedy; ``top_k``/``top_p`` None = off;
    ``guidance`` 1 = conditional logits only (no classifier-free guidance)."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    guidance: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


class RowRandom:
    """One random generator per batch row: ``seeds[i]`` drives row ``i`` only."""

    def __init__(self, seeds: Sequence[int]) -> None:
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def uniforms(self, n: int) -> torch.Tensor:
        """``[B, n]`` float64 uniforms in [0, 1), row ``i`` from generator ``i``."""
        return torch.stack(
            [torch.rand(n, generator=g, dtype=torch.float64) for g in self.generators]
        )


def filter_logits(logits: torch.Tensor, settings: SamplingSettings) -> torch.Tensor:
    """Apply temperature, top-k and top-p to ``logits [B, K]``; removed entries become -inf."""
    out = logits.float() / max(settings.temperature, 1e-8)
    if settings.top_k is not None and settings.top_k < out.shape[-1]:
        kth = out.topk(settings.top_k, dim=-1).values[:, -1:]
        out = out.masked_fill(out < kth, float("-inf"))
    if settings.top_p is not None and settings.top_p < 1:
        sorted_logits, order = out.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= settings.top_p  # keeps the first token always
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        out = torch.full_like(out, float("-inf")).scatter(-1, order, sorted_logits)
    return out


def sample_logits(
    logits: torch.Tensor, settings: SamplingSettings, uniforms: torch.Tensor
) -> torch.Tensor:
    """Draw one index per row of ``logits [B, K]`` with ``uniforms [B]`` -> LongTensor ``[B]``,
    on the device of ``logits`` (``uniforms`` float64 on the same device)."""
    if settings.temperature == 0:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits, settings).double().softmax(dim=-1)
    cdf = probs.cumsum(dim=-1)
    index = torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None], right=True)
    return index[:, 0].clamp(max=logits.shape[-1] - 1)


def guided(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ``uncond + scale * (cond - uncond)`` (scale 1 = ``cond``)."""
    return uncond + scale * (cond - uncond)


@torch.inference_mode()
def generate(
    model: DecoderTransformer,
    layout: TokenLayout,
    prompt: torch.Tensor,
    n_tokens: int,
    settings: SamplingSettings,
    random: RowRandom,
    null_prompt: torch.Tensor | None = None,
    first_index: int = 0,
    use_cache: bool = True,
    on_token: Callable[[], Any] | None = None,
) -> torch.Tensor:
    """Sample ``n_tokens`` target tokens after ``prompt [B, P]`` -> vocabulary ids ``[B, n]``.

    ``first_index`` is the target index of the first new token (its level is
    ``layout.target_level(first_index)``). ``null_prompt [B, P]`` (the same prompt with the
    null MuLan prefix) enables guidance when ``settings.guidance != 1``. ``use_cache=False``
    re-runs the whole sequence every step (the slow reference the benchmark compares).
    ``on_token`` is called after each sampled token (progress bars).
    """
    batch = prompt.shape[0]
    if len(random) != batch:
        raise ValueError(f"{len(random)} random generators for {batch} rows")
    device = model.embedding.weight.device
    use_guidance = null_prompt is not None and settings.guidance != 1.0
    rows = torch.cat([prompt, null_prompt]) if use_guidance else prompt
    rows = rows.to(device)
    ranges = [layout.target_range(layout.target_level(first_index + i)) for i in range(n_tokens)]
    uniforms = random.uniforms(n_tokens).to(device)  # one transfer for the whole call
    cache = model.new_cache(rows.shape[0], rows.shape[1] + n_tokens) if use_cache else None
    hidden = model.hidden(rows, cache=cache)[:, -1]
    out = torch.empty(batch, n_tokens, dtype=torch.long, device=device)
    sequence = rows
    for i, (lo, hi) in enumerate(ranges):  # filtering and drawing stay on the model's device
        scores = F.linear(hidden, model.head.weight[lo:hi]).float()  # this level's ids only
        if use_guidance:
            scores = guided(scores[:batch], scores[batch:], settings.guidance)
        token = sample_logits(scores, settings, uniforms[:, i]) + lo
        out[:, i] = token
        if on_token is not None:
            on_token()
        if i + 1 == n_tokens:
            break
        step = (torch.cat([token, token]) if use_guidance else token)[:, None]
        if use_cache:
            hidden = model.hidden(step, cache=cache)[:, -1]
        else:  # recompute every position
            sequence = torch.cat([sequence, step], dim=1)
            hidden = model.hidden(sequence)[:, -1]
    return out.cpu()


@dataclasses.dataclass(frozen=True)
class Windows:
    """Window geometry in semantic frames: each window spans ``length`` frames, the first
    ``prefix`` of which (after the first window) repeat already generated frames."""

    length: int
    prefix: int

    def __post_init__(self) -> None:
        if not 0 <= self.prefix < self.length:
            raise ValueError(
                f"a window's prefix ({self.prefix} frames) must be shorter than the window "
                f"({self.length} frames)"
            )

    def spans(self, known: int, total: int) -> list[tuple[int, int, int]]:
        """``(start, first_new, end)`` semantic frames of each window extending ``known`` to ``total``."""
        spans, done = [], known
        while done < total:
            start = max(0, done - self.prefix)
            end = min(start + self.length, total)
            spans.append((start, done, end))
            done = end
        return spans


def frames_per_semantic(layout: TokenLayout) -> int:
    """Target frames of a stage per semantic frame: 1 (semantic) or the acoustic ratio (2)."""
    return layout.target_frames_per_semantic


def tokens_to_generate(layout: TokenLayout, windows: Windows, known: int, total: int) -> int:
    """Tokens :func:`extend` samples to grow ``known`` semantic frames to ``total``."""
    per_frame = frames_per_semantic(layout) * layout.num_target_levels
    return sum(end - new for _, new, end in windows.spans(known, total)) * per_frame


def extend(
    model: DecoderTransformer,
    layout: TokenLayout,
    known: torch.Tensor,
    total: int,
    windows: Windows,
    conditioning: Callable[[int, int, bool], dict[str, torch.Tensor | None]],
    settings: SamplingSettings,
    random: RowRandom,
    on_token: Callable[[], Any] | None = None,
) -> torch.Tensor:
    """Grow a stage's target stream to ``total`` semantic frames, window by window.

    ``known``: the stream so far -- semantic ids ``[B, n]`` or RVQ codes ``[B, levels, n]``
    of the stage's target levels (``n`` may be 0; acoustic ``n`` a multiple of the acoustic
    ratio). ``conditioning(start, end, null)`` returns the :meth:`TokenLayout.prompt`
    keywords for semantic frames ``start..end`` (``null``: with the null MuLan prefix).
    Returns the stream ``[B, (levels,) total * frames_per_semantic]``.
    """
    ratio = frames_per_semantic(layout)
    per_frame = ratio * layout.num_target_levels
    known_frames = known.shape[-1]
    if known_frames % ratio:
        raise ValueError(
            f"known {layout.stage} frames ({known_frames}) must be a multiple of {ratio}"
        )
    stream = known.long()
    guided_stage = layout.uses_mulan and settings.guidance != 1.0
    for start, new, end in windows.spans(known_frames // ratio, total):
        target_prefix = stream[..., start * ratio : new * ratio]
        target_prefix = target_prefix if target_prefix.shape[-1] else None
        prompt = layout.prompt(**conditioning(start, end, False), target_prefix=target_prefix)
        null = (
            layout.prompt(**conditioning(start, end, True), target_prefix=target_prefix)
            if guided_stage
            else None
        )
        tokens = generate(
            model,
            layout,
            prompt,
            (end - new) * per_frame,
            settings,
            random,
            null_prompt=null,
            first_index=(new - start) * per_frame,
            on_token=on_token,
        )
        stream = torch.cat([stream, layout.parse_targets(tokens)], dim=-1)
    return stream
