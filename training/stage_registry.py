"""The MusicLM stages, declared once: their token streams, conditioning, targets, crop and
paper sampling settings.

A **stream** is one token field of a shard sample (``<field>.npy``, see
:mod:`musiclm.tokenizers.contract`): its levels and codebook size come from the
:class:`~musiclm.tokenizers.contract.TokenSpec`, and it either holds one token per level
for the whole clip (``frames_per_semantic`` 0: MuLan) or a time axis at a whole number of
frames per semantic frame (semantic 1, acoustic 2). A **segment** is a range of a
stream's levels that a stage reads as conditioning or predicts as target. A **stage** is
its conditioning segments (a prefix, in order), one target segment, its paper training
crop and its paper sampling temperature.

Everything else reads this table: :class:`~musiclm.training.layout.TokenLayout` derives a
stage's vocabulary and sequences from its segments; the data and Lightning modules, the
training CLI's entries, the sampler (stage order = generation order), its CLI flags,
``stage_eval`` and the demo driver iterate over :data:`STAGES`.

Adding a stage is one :class:`Stage` in :data:`STAGES` (plus its configs folder and its
demo budget). Adding a conditioning stream (e.g. melody tokens) is one :class:`Stream` in
:data:`STREAMS` and a :class:`Segment` in the stages that read it, plus its shard field
in the token contract (and, to sample, where the sampler gets its tokens at inference,
as it gets the MuLan text tokens). ``tests/training/test_stage_registry.py`` declares
both and changes nothing else.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

from musiclm.tokenizers.contract import TokenSpec

SpecInt = Callable[[TokenSpec], int]


@dataclasses.dataclass(frozen=True)
class Stream:
    """One token field of a shard sample.

    ``levels``/``codebook_size``: sizes from the spec. ``frames_per_semantic``: frames per
    semantic frame (``0``: no time axis, one token per level for the clip). ``level_axis``:
    the array has a level axis (``[levels, T]``) rather than one level (``[T]``).
    ``droppable``: condition dropout replaces it by null tokens (classifier-free guidance).
    ``level_prefix``: target level names in logs, 1-based (``q1``..); one level is named
    after the stream.
    """

    name: str
    levels: SpecInt
    codebook_size: SpecInt
    frames_per_semantic: SpecInt
    level_axis: bool
    droppable: bool = False
    level_prefix: str = ""

    def per_clip(self, spec: TokenSpec) -> bool:
        """Whether the stream has no time axis (one token per level for the clip)."""
        return self.frames_per_semantic(spec) == 0


# Vocabulary blocks are laid out in this order (then by level): keep it, so stored
# checkpoints keep their token ids; a new stream goes at the end.
STREAMS: dict[str, Stream] = {
    s.name: s
    for s in (
        Stream(
            "mulan",
            levels=lambda spec: spec.mulan_levels,
            codebook_size=lambda spec: spec.mulan_codebook_size,
            frames_per_semantic=lambda spec: 0,
            level_axis=True,
            droppable=True,
        ),
        Stream(
            "semantic",
            levels=lambda spec: 1,
            codebook_size=lambda spec: spec.semantic_vocab,
            frames_per_semantic=lambda spec: 1,
            level_axis=False,
        ),
        Stream(
            "acoustic",
            levels=lambda spec: spec.acoustic_levels,
            codebook_size=lambda spec: spec.acoustic_codebook_size,
            frames_per_semantic=lambda spec: spec.acoustic_per_semantic,
            level_axis=True,
            level_prefix="q",
        ),
    )
}


@dataclasses.dataclass(frozen=True)
class Segment:
    """Levels ``[first, stop)`` of a stream (all of them by default), under ``name``: the
    keyword the layout's ``prefix``/``prompt`` take it by, and the sampler's name for the
    stream it generates."""

    name: str
    stream: str
    first: SpecInt = lambda spec: 0
    stop: SpecInt | None = None

    @property
    def source(self) -> Stream:
        return STREAMS[self.stream]

    def level_range(self, spec: TokenSpec) -> tuple[int, int]:
        """``(first, stop)`` RVQ levels of the stream (0-based) that the segment holds."""
        stop = self.source.levels(spec) if self.stop is None else self.stop(spec)
        return self.first(spec), stop

    def num_levels(self, spec: TokenSpec) -> int:
        first, stop = self.level_range(spec)
        return stop - first

    def shape(self, spec: TokenSpec) -> tuple[int | None, ...]:
        """Shape of the segment's codes after the batch axis (None: the time axis)."""
        n = self.num_levels(spec)
        if self.source.per_clip(spec):
            return (n,)
        return (n, None) if self.source.level_axis else (None,)

    def describe(self, spec: TokenSpec) -> str:
        """``"coarse [B, 4, T]"``: the segment's name and shape, for error messages."""
        dims = ", ".join("T" if d is None else str(d) for d in self.shape(spec))
        return f"{self.name} [B, {dims}]"


@dataclasses.dataclass(frozen=True)
class Stage:
    """One MusicLM stage: ``conditioning`` segments (the prefix, in order) -> ``target``.

    ``paper_crop_seconds``: training crop (and generation window) of the paper, the crop
    of a checkpoint that does not record its own; ``paper_temperature``: the paper's
    sampling temperature.
    """

    name: str
    conditioning: tuple[Segment, ...]
    target: Segment
    paper_crop_seconds: float
    paper_temperature: float
    description: str

    @property
    def guided(self) -> bool:
        """Whether part of the conditioning is droppable (condition dropout, guidance)."""
        return any(s.source.droppable for s in self.conditioning)


MULAN = Segment("mulan", "mulan")
SEMANTIC = Segment("semantic", "semantic")
COARSE = Segment("coarse", "acoustic", stop=lambda spec: spec.coarse_levels)
FINE = Segment("fine", "acoustic", first=lambda spec: spec.coarse_levels)

# Generation order: a stage's conditioning is what earlier stages (or MuLan) produce.
STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("semantic", (MULAN,), SEMANTIC, 30.0, 1.0, "MuLan tokens -> semantic ids"),
        Stage(
            "coarse",
            (MULAN, SEMANTIC),
            COARSE,
            10.0,
            0.95,
            "MuLan tokens + semantic ids -> RVQ levels 1..coarse_levels",
        ),
        Stage("fine", (COARSE,), FINE, 3.0, 0.4, "coarse RVQ levels -> the other RVQ levels"),
    )
}


def get_stage(name: str) -> Stage:
    """The stage called ``name``; ``ValueError`` naming the known stages otherwise."""
    if name not in STAGES:
        raise ValueError(f"stage must be one of {tuple(STAGES)}, got {name!r}")
    return STAGES[name]


@functools.cache
def stage_class(base: type, stage: str, suffix: str) -> type:
    """A subclass of ``base`` for the registry's stage ``stage``, named ``<Stage><suffix>``
    (``stage_class(StageModule, "coarse", "Stage")`` is ``CoarseStage``), with ``stage`` set
    and the stage's description as its docstring; one class per (base, stage)."""
    declaration = get_stage(stage)
    name = f"{stage.capitalize()}{suffix}"
    namespace = {"stage": stage, "__doc__": f"{declaration.description}.", "__qualname__": name}
    return type(name, (base,), namespace | {"__module__": base.__module__})


def crop_seconds(stage: str, config: Mapping[str, Any] | None = None) -> float:
    """A stage run's training crop: ``data.crop_seconds`` of its LightningCLI ``config``
    (plain or ``init_args`` form) when set, else the stage's paper crop."""
    data = (config or {}).get("data") or {}
    value = data.get("crop_seconds", (data.get("init_args") or {}).get("crop_seconds"))
    return get_stage(stage).paper_crop_seconds if value is None else float(value)
