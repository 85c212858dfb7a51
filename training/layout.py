"""The token layout of a stage: one vocabulary, prefixes, flattening, parsing.

This is the only module that knows how tokens of different kinds share one sequence.
The stage trainers use it to turn crops into training sequences, and the sampler uses it
to build prompts and to turn generated tokens back into semantic ids / RVQ codes. Every
size comes from a :class:`~musiclm.tokenizers.contract.TokenSpec`, and everything about a
stage from its declaration in :mod:`musiclm.training.stage_registry` (its conditioning
segments and its target segment): nothing here depends on a stage's name.

Vocabulary of a stage (ids in this order; a stream the stage does not use is empty)::

    0 PAD   1 START   2 SEP
    null ids: one per level of the droppable conditioning segment (MuLan: L of them)
    then, per stream in registry order (mulan, semantic, acoustic), levels 0 .. the
    highest level any of the stage's segments uses, ``codebook_size`` ids each:
    mulan level l, code c:    offset("mulan") + l * mulan_codebook_size + c
    semantic id s:            offset("semantic") + s
    acoustic level q, code c: offset("acoustic") + q * acoustic_codebook_size + c (q 0-based)

Sequences: ``START``, the conditioning segments separated by ``SEP``, ``SEP``, the target
segment. A stream with a level axis and a time axis is flattened time-major (t0q1 t0q2
... t1q1). With ``L`` MuLan levels, ``T_s`` semantic frames, ``T_a = 2 T_s`` acoustic
frames, ``Qc`` coarse and ``Qf`` fine levels, the paper's stages are::

    semantic: START  mulan[L]  SEP  semantic[T_s]
    coarse:   START  mulan[L]  SEP  semantic[T_s]  SEP  acoustic[:Qc] flat [T_a * Qc]
    fine:     START  acoustic[:Qc] flat [T_a * Qc]  SEP  acoustic[Qc:] flat [T_a * Qf]

The part up to and including the last SEP is the prefix (conditioning, no loss); the rest
are targets. Each target position has a *level* (0-based within the target segment: ``0``
for the semantic stage, ``q - 1`` for coarse RVQ level ``q``, ``q - 1 - Qc`` for fine level
``q``) and its token lies in that level's id range (:meth:`TokenLayout.target_range`), so
the loss and the sampler score only that range. Batches are right-padded with PAD (level
-1).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from musiclm.tokenizers.contract import TokenSpec
from musiclm.training.stage_registry import STREAMS, Segment, Stage, get_stage

PAD, START, SEP = 0, 1, 2
NUM_SPECIALS = 3
IGNORE_LEVEL = -1


@dataclasses.dataclass(frozen=True)
class TokenLayout:
    """Vocabulary and sequence layout of one ``stage`` for the token streams of ``spec``."""

    spec: TokenSpec
    stage: str

    def __post_init__(self) -> None:
        get_stage(self.stage)

    @property
    def declaration(self) -> Stage:
        """The stage's entry in the registry (its segments)."""
        return get_stage(self.stage)

    @property
    def target(self) -> Segment:
        return self.declaration.target

    # ----- vocabulary ---------------------------------------------------------------------
    @property
    def uses_mulan(self) -> bool:
        """Whether the stage has droppable conditioning (the MuLan tokens), which condition
        dropout and guidance replace by null tokens."""
        return self.droppable is not None

    @functools.cached_property
    def droppable(self) -> Segment | None:
        """The conditioning segment that null tokens replace (MuLan), or None (fine)."""
        found = [s for s in self.declaration.conditioning if s.source.droppable]
        if len(found) > 1 or (found and not found[0].source.per_clip(self.spec)):
            raise ValueError(
                f"the {self.stage} stage declares {len(found)} droppable segments; the layout "
                "supports one, without a time axis"
            )
        return found[0] if found else None

    @functools.cached_property
    def _blocks(self) -> dict[str, int]:
        """``{"null": first null id, <stream>: first id of the stream's level 0, "end":
        vocabulary size}``."""
        stage, spec = self.declaration, self.spec
        blocks = {"null": NUM_SPECIALS}
        offset = NUM_SPECIALS + (self.droppable.num_levels(spec) if self.droppable else 0)
        segments = (*stage.conditioning, stage.target)
        for name, stream in STREAMS.items():
            blocks[name] = offset
            used = [s.level_range(spec)[1] for s in segments if s.stream == name]
            offset += max(used, default=0) * stream.codebook_size(spec)
        return blocks | {"end": offset}

    def offset(self, stream: str) -> int:
        """First id of level 0 of ``stream`` (a name in the registry's ``STREAMS``)."""
        return self._blocks[stream]

    @property
    def null_offset(self) -> int:
        return self._blocks["null"]

    @property
    def vocab_size(self) -> int:
        return self._blocks["end"]

    # ----- target levels ------------------------------------------------------------------
    @property
    def first_target_level(self) -> int:
        """Level (0-based in its stream) of target level 0: 0, or ``Qc`` for the fine stage."""
        return self.target.level_range(self.spec)[0]

    @property
    def num_target_levels(self) -> int:
        """Target levels per frame: 1 (semantic), Qc (coarse) or Qf (fine)."""
        return self.target.num_levels(self.spec)

    @property
    def target_frames_per_semantic(self) -> int:
        """Target frames per semantic frame: 1 (semantic) or the acoustic ratio (2)."""
        return self.target.source.frames_per_semantic(self.spec)

    @property
    def level_names(self) -> list[str]:
        """Names for logs: ``["semantic"]`` or levels 1-based (``q1``..``q4``, ``q5``..)."""
        source = self.target.source
        if source.levels(self.spec) == 1:
            return [source.name]
        first = self.first_target_level
        return [f"{source.level_prefix}{first + i + 1}" for i in range(self.num_target_levels)]

    def target_range(self, level: int) -> tuple[int, int]:
        """Vocabulary ids ``[start, stop)`` of target level ``level`` (0-based in the stage)."""
        if not 0 <= level < self.num_target_levels:
            raise ValueError(f"level must be in [0, {self.num_target_levels}), got {level}")
        size = self.target.source.codebook_size(self.spec)
        start = self.offset(self.target.stream) + (self.first_target_level + level) * size
        return start, start + size

    def target_level(self, index: int | torch.Tensor) -> int | torch.Tensor:
        """Level of the ``index``-th target token (0-based from the first target)."""
        return index % self.num_target_levels

    # ----- lengths ------------------------------------------------------------------------
    def segment_length(self, segment: Segment, semantic_frames: int) -> int:
        """Tokens of ``segment`` in a crop of ``semantic_frames`` semantic frames."""
        per_semantic = segment.source.frames_per_semantic(self.spec)
        frames = 1 if per_semantic == 0 else semantic_frames * per_semantic
        return frames * segment.num_levels(self.spec)

    def target_frames_to_tokens(self, semantic_frames: int) -> int:
        """Target tokens for a crop of ``semantic_frames`` semantic frames."""
        return self.segment_length(self.target, semantic_frames)

    def prefix_length(self, semantic_frames: int) -> int:
        """Prefix tokens (START .. last SEP) for a crop of ``semantic_frames`` frames."""
        conditioning = self.declaration.conditioning
        return (
            1
            + len(conditioning)
            + sum(self.segment_length(s, semantic_frames) for s in conditioning)
        )

    def sequence_length(self, semantic_frames: int) -> int:
        """Whole sequence length (prefix + targets) for ``semantic_frames`` frames."""
        return self.prefix_length(semantic_frames) + self.target_frames_to_tokens(semantic_frames)

    def semantic_frames_of(self, sequence_length: int) -> int:
        """The semantic frames of a whole (unpadded) sequence of ``sequence_length`` tokens."""
        fixed = self.sequence_length(0)
        per_frame = self.sequence_length(1) - fixed
        frames, rest = divmod(sequence_length - fixed, per_frame)
        if rest or frames < 0:
            raise ValueError(
                f"{sequence_length} tokens are not a whole {self.stage} stage sequence"
            )
        return frames

    def segment_positions(self, name: str, semantic_frames: int) -> slice:
        """Positions of the conditioning segment ``name`` in a sequence of a crop of
        ``semantic_frames`` frames."""
        start = 1
        for segment in self.declaration.conditioning:
            stop = start + self.segment_length(segment, semantic_frames)
            if segment.name == name:
                return slice(start, stop)
            start = stop + 1  # the SEP after it
        raise ValueError(f"the {self.stage} stage has no {name} conditioning")

    @property
    def conditioning_positions(self) -> slice:
        """Positions of the droppable conditioning (the MuLan tokens) in every sequence
        (empty for the fine stage); without a time axis, the same for every crop."""
        if self.droppable is None:
            return slice(1, 1)
        return self.segment_positions(self.droppable.name, 0)

    # ----- token ids from streams ---------------------------------------------------------
    def segment_tokens(self, segment: Segment, values: torch.Tensor) -> torch.Tensor:
        """Codes of ``segment`` -> vocabulary ids ``[B, n]``, flattened time-major.

        ``values``: ``[B, levels]`` (no time axis, e.g. MuLan ``[B, L]``), ``[B, T]`` (one
        level, e.g. semantic ids) or ``[B, levels, T]`` (e.g. RVQ codes of the segment's
        levels).
        """
        source, spec = segment.source, self.spec
        first, _ = segment.level_range(spec)
        n = segment.num_levels(spec)
        size = source.codebook_size(spec)
        levels = torch.arange(first, first + n, device=values.device) * size
        base = self.offset(segment.stream)
        self._check_shape(segment, values)
        if source.per_clip(spec):
            return values.long() + base + levels
        if not source.level_axis:
            return values.long() + base
        ids = values.long() + base + levels[None, :, None]
        return ids.transpose(1, 2).reshape(values.shape[0], -1)

    def null_tokens(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The null conditioning ``[B, n]`` that replaces the droppable segment (guidance)."""
        self._need(self.droppable is not None, "null conditioning")
        ids = torch.arange(self.droppable.num_levels(self.spec), device=device) + self.null_offset
        return ids.expand(batch, -1).clone()

    def select(self, segment: Segment, streams: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The segment's part of whole streams (``{"acoustic": [B, Q, T_a], ...}``, as the
        shards hold them): its levels of a stream with a level axis and a time axis."""
        self._need(streams.get(segment.stream) is not None, f"{segment.stream} tokens")
        values = streams[segment.stream]
        source = segment.source
        if source.level_axis and not source.per_clip(self.spec):
            first, stop = segment.level_range(self.spec)
            self._check_levels(values, stop, segment.stream)
            return values[:, first:stop]
        return values

    # ----- sequences ----------------------------------------------------------------------
    def prefix(self, null: bool = False, **segments: torch.Tensor | None) -> torch.Tensor:
        """Conditioning prefix ``[B, P]`` ending in SEP.

        Keywords are the stage's conditioning segments by name, in stream form: semantic
        stage ``mulan [B, L]``; coarse ``mulan [B, L]`` and ``semantic [B, T_s]``; fine
        ``coarse [B, Qc, T_a]`` (RVQ codes of levels 1..Qc). A droppable segment (MuLan)
        that is None, or every droppable segment when ``null``, becomes the null
        conditioning (unconditional rows). The batch size comes from any tensor given, so
        ``prefix(semantic=ids)`` is the null prefix of the semantic stage as well.
        """
        given = [v for v in segments.values() if v is not None]
        names = " / ".join(s.name for s in self.declaration.conditioning)
        self._need(bool(given), f"its conditioning ({names})")
        batch, device = given[0].shape[0], given[0].device
        body: list[torch.Tensor] = []
        for segment in self.declaration.conditioning:
            if body:
                body.append(self._fill(batch, SEP, device))
            value = segments.get(segment.name)
            if segment is self.droppable and (null or value is None):
                body.append(self.null_tokens(batch, device))
                continue
            self._need(value is not None, segment.describe(self.spec))
            body.append(self.segment_tokens(segment, value))
        start = self._fill(batch, START, device)
        return torch.cat([start, *body, self._fill(batch, SEP, device)], dim=1)

    def targets(self, **streams: torch.Tensor | None) -> torch.Tensor:
        """Target tokens ``[B, N]`` from whole streams: ``semantic [B, T_s]`` (semantic
        stage) or the stage's RVQ levels of ``acoustic [B, Q' >= last level, T_a]``,
        flattened time-major."""
        return self.segment_tokens(self.target, self.select(self.target, streams))

    def build(self, **streams: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """A training sequence from aligned streams of a crop.

        Args: whole streams by shard field, ``mulan [B, L]``, ``semantic [B, T_s]``,
        ``acoustic [B, Q, T_a]``, as the stage needs them (see the module docstring).
        Returns ``tokens [B, P + N]`` (long) and ``levels [B, P + N]`` (long: target level
        of each position, -1 in the prefix).
        """
        conditioning = {s.name: self.select(s, streams) for s in self.declaration.conditioning}
        return self.join(self.prefix(**conditioning), self.targets(**streams))

    def join(
        self, prefix: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenate ``prefix [B, P]`` and ``targets [B, N]``; return tokens and levels."""
        levels = torch.full_like(prefix, IGNORE_LEVEL)
        target_levels = self.target_level(torch.arange(targets.shape[1], device=targets.device))
        target_levels = target_levels.expand(targets.shape[0], -1)
        return torch.cat([prefix, targets], 1), torch.cat([levels, target_levels], 1)

    def prompt(
        self,
        target_prefix: torch.Tensor | None = None,
        null: bool = False,
        **segments: torch.Tensor | None,
    ) -> torch.Tensor:
        """A generation prompt ``[B, P + n]``: the prefix, then optional already known targets.

        ``segments`` and ``null`` as for :meth:`prefix`. ``target_prefix`` is in stream form
        (semantic ids ``[B, n]`` for the semantic stage, RVQ codes ``[B, num_target_levels,
        n_frames]`` of the stage's target levels for coarse/fine), e.g. the tail of the
        previous window when extending audio. Generation continues at target index ``n``
        (its level is :meth:`target_level`).
        """
        tokens = self.prefix(null=null, **segments)
        if target_prefix is None:
            return tokens
        return torch.cat([tokens, self.segment_tokens(self.target, target_prefix)], 1)

    def drop_conditioning(self, tokens: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """Replace the MuLan prefix of rows where ``drop [B]`` (bool) is set by null tokens."""
        self._need(self.uses_mulan, "conditioning to drop")
        positions = self.conditioning_positions
        out = tokens.clone()
        nulls = self.null_tokens(tokens.shape[0], tokens.device)
        out[:, positions] = torch.where(drop[:, None], nulls, tokens[:, positions])
        return out

    # ----- parsing generated targets --------------------------------------------------------
    def parse_targets(self, tokens: torch.Tensor) -> torch.Tensor:
        """Generated target tokens ``[B, N]`` (starting at target index 0) -> stream ids.

        Semantic stage: ``[B, N]`` semantic ids. Coarse/fine: RVQ codes
        ``[B, num_target_levels, N // num_target_levels]`` of the stage's levels (``N`` must
        be a whole number of frames). Raises ``ValueError`` if a token is outside its
        level's range (e.g. a special token was sampled).
        """
        n = self.num_target_levels
        if tokens.shape[1] % n:
            raise ValueError(
                f"{tokens.shape[1]} {self.stage} target tokens are not whole frames of {n} levels"
            )
        starts = torch.tensor([self.target_range(i)[0] for i in range(n)], device=tokens.device)
        size = self.target_range(0)[1] - starts[0]
        frames = tokens.long().reshape(tokens.shape[0], -1, n) - starts
        if frames.numel() and (frames.min() < 0 or frames.max() >= size):
            raise ValueError(
                f"{self.stage} target tokens outside their level's id range; restrict sampling "
                "to TokenLayout.target_range(level)"
            )
        if not self.target.source.level_axis:
            return frames[..., 0]
        return frames.transpose(1, 2)

    # ----- batching -------------------------------------------------------------------------
    @staticmethod
    def collate(
        sequences: Sequence[tuple[torch.Tensor, torch.Tensor]],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad ``(tokens [T_i], levels [T_i])`` pairs to ``[B, max T_i]`` with PAD / -1."""
        length = max(t.shape[0] for t, _ in sequences)
        tokens = torch.full((len(sequences), length), PAD, dtype=torch.long)
        levels = torch.full((len(sequences), length), IGNORE_LEVEL, dtype=torch.long)
        for row, (t, lv) in enumerate(sequences):
            tokens[row, : t.shape[0]] = t
            levels[row, : lv.shape[0]] = lv
        return tokens, levels

    # ----- serialization --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain description (stored in stage checkpoints next to the weights)."""
        offsets = {"pad": PAD, "start": START, "sep": SEP, "null": self.null_offset}
        return {
            "stage": self.stage,
            "spec": self.spec.to_dict(),
            "vocab_size": self.vocab_size,
            "offsets": offsets | {name: self.offset(name) for name in STREAMS},
            "levels": self.level_names,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TokenLayout:
        layout = cls(TokenSpec.from_dict(values["spec"]), values["stage"])
        if layout.vocab_size != values.get("vocab_size", layout.vocab_size):
            raise ValueError(
                f"stored layout has vocab_size {values['vocab_size']} but this version of the "
                f"layout gives {layout.vocab_size}: the checkpoint is from an incompatible version"
            )
        return layout

    # ----- helpers ------------------------------------------------------------------------
    def _need(self, ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(f"the {self.stage} stage needs {what}")

    def _check_shape(self, segment: Segment, values: torch.Tensor) -> None:
        shape, inner = segment.shape(self.spec), tuple(values.shape[1:])
        if len(inner) != len(shape) or any(
            d is not None and d != n for d, n in zip(shape, inner, strict=True)
        ):
            raise ValueError(f"{segment.describe(self.spec)} expected, got {tuple(values.shape)}")

    def _check_levels(self, codes: torch.Tensor, levels: int, name: str) -> None:
        if codes.ndim != 3 or codes.shape[1] < levels:
            raise ValueError(f"{name} must be [B, >= {levels} levels, T], got {tuple(codes.shape)}")

    @staticmethod
    def _fill(batch: int, value: int, device: torch.device | str) -> torch.Tensor:
        return torch.full((batch, 1), value, dtype=torch.long, device=device)
