"""The token layout of the three stages: one vocabulary, prefixes, flattening, parsing.

This is the only module that knows how tokens of different kinds share one sequence.
The stage trainers use it to turn crops into training sequences, and the sampler uses it
to build prompts and to turn generated tokens back into semantic ids / RVQ codes. Every
size comes from a :class:`~musiclm.tokenizers.contract.TokenSpec`.

Vocabulary of a stage (ids in this order; segments a stage does not use are empty)::

    0 PAD   1 START   2 SEP
    null_0 .. null_{L-1}                     condition dropout: replaces the MuLan prefix
    mulan level l, code c:   mulan_offset + l * mulan_codebook_size + c        (l < L)
    semantic id s:           semantic_offset + s
    acoustic level q, code c: acoustic_offset + q * acoustic_codebook_size + c (q 0-based)

Sequences (``L`` MuLan levels, ``T_s`` semantic frames, ``T_a = 2 T_s`` acoustic frames,
``Qc`` coarse and ``Qf`` fine levels; RVQ levels flattened time-major, t0q1 t0q2 ... t1q1)::

    semantic: START  mulan[L]  SEP  semantic[T_s]
    coarse:   START  mulan[L]  SEP  semantic[T_s]  SEP  acoustic[:Qc] flat [T_a * Qc]
    fine:     START  acoustic[:Qc] flat [T_a * Qc]  SEP  acoustic[Qc:] flat [T_a * Qf]

The part up to and including the last SEP is the prefix (conditioning, no loss); the rest
are targets. Each target position has a *level* (0-based within the stage: ``0`` for the
semantic stage, ``q - 1`` for coarse RVQ level ``q``, ``q - 1 - Qc`` for fine level ``q``) and
its token lies in that level's id range (:meth:`TokenLayout.target_range`), so the loss
and the sampler score only that range. Batches are right-padded with PAD (level -1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from musiclm.tokenizers.contract import TokenSpec

STAGES = ("semantic", "coarse", "fine")
PAD, START, SEP = 0, 1, 2
NUM_SPECIALS = 3
IGNORE_LEVEL = -1


@dataclasses.dataclass(frozen=True)
class TokenLayout:
    """Vocabulary and sequence layout of one ``stage`` for the token streams of ``spec``."""

    spec: TokenSpec
    stage: str

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")

    # ----- vocabulary ---------------------------------------------------------------------
    @property
    def uses_mulan(self) -> bool:
        """Whether the stage is conditioned on MuLan tokens (semantic and coarse)."""
        return self.stage != "fine"

    @property
    def acoustic_levels_used(self) -> int:
        """RVQ levels present in the stage's vocabulary (0, Qc or Q)."""
        return {"semantic": 0, "coarse": self.spec.coarse_levels}.get(
            self.stage, self.spec.acoustic_levels
        )

    @property
    def null_offset(self) -> int:
        return NUM_SPECIALS

    @property
    def mulan_offset(self) -> int:
        return self.null_offset + (self.spec.mulan_levels if self.uses_mulan else 0)

    @property
    def semantic_offset(self) -> int:
        mulan = self.spec.mulan_levels * self.spec.mulan_codebook_size if self.uses_mulan else 0
        return self.mulan_offset + mulan

    @property
    def acoustic_offset(self) -> int:
        return self.semantic_offset + (self.spec.semantic_vocab if self.uses_mulan else 0)

    @property
    def vocab_size(self) -> int:
        return self.acoustic_offset + self.acoustic_levels_used * self.spec.acoustic_codebook_size

    # ----- target levels ------------------------------------------------------------------
    @property
    def first_target_level(self) -> int:
        """RVQ level (0-based) of target level 0 for the acoustic stages; 0 for semantic."""
        return self.spec.coarse_levels if self.stage == "fine" else 0

    @property
    def num_target_levels(self) -> int:
        """Target levels per frame: 1 (semantic), Qc (coarse) or Qf (fine)."""
        return {"semantic": 1, "coarse": self.spec.coarse_levels}.get(
            self.stage, self.spec.fine_levels
        )

    @property
    def level_names(self) -> list[str]:
        """Names for logs: ``["semantic"]`` or RVQ levels 1-based (``q1``..``q4``, ``q5``..)."""
        if self.stage == "semantic":
            return ["semantic"]
        return [f"q{self.first_target_level + i + 1}" for i in range(self.num_target_levels)]

    def target_range(self, level: int) -> tuple[int, int]:
        """Vocabulary ids ``[start, stop)`` of target level ``level`` (0-based in the stage)."""
        if not 0 <= level < self.num_target_levels:
            raise ValueError(f"level must be in [0, {self.num_target_levels}), got {level}")
        if self.stage == "semantic":
            return self.semantic_offset, self.semantic_offset + self.spec.semantic_vocab
        size = self.spec.acoustic_codebook_size
        start = self.acoustic_offset + (self.first_target_level + level) * size
        return start, start + size

    def target_level(self, index: int | torch.Tensor) -> int | torch.Tensor:
        """Level of the ``index``-th target token (0-based from the first target)."""
        return index % self.num_target_levels

    def target_frames_to_tokens(self, semantic_frames: int) -> int:
        """Target tokens for a crop of ``semantic_frames`` semantic frames."""
        if self.stage == "semantic":
            return semantic_frames
        return semantic_frames * self.spec.acoustic_per_semantic * self.num_target_levels

    def prefix_length(self, semantic_frames: int) -> int:
        """Prefix tokens (START .. last SEP) for a crop of ``semantic_frames`` frames."""
        if self.stage == "semantic":
            return self.spec.mulan_levels + 2
        if self.stage == "coarse":
            return self.spec.mulan_levels + semantic_frames + 3
        acoustic = semantic_frames * self.spec.acoustic_per_semantic
        return acoustic * self.spec.coarse_levels + 2

    def sequence_length(self, semantic_frames: int) -> int:
        """Whole sequence length (prefix + targets) for ``semantic_frames`` frames."""
        return self.prefix_length(semantic_frames) + self.target_frames_to_tokens(semantic_frames)

    @property
    def conditioning_positions(self) -> slice:
        """Positions of the MuLan tokens in every sequence (empty for the fine stage)."""
        return slice(1, 1 + self.spec.mulan_levels) if self.uses_mulan else slice(1, 1)

    # ----- token ids from streams ---------------------------------------------------------
    def mulan_tokens(self, mulan: torch.Tensor) -> torch.Tensor:
        """MuLan codes ``[B, L]`` -> vocabulary ids ``[B, L]``."""
        self._need(self.uses_mulan, "mulan")
        levels = torch.arange(self.spec.mulan_levels, device=mulan.device)
        return mulan.long() + self.mulan_offset + levels * self.spec.mulan_codebook_size

    def null_tokens(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The null conditioning ``[B, L]`` used in place of MuLan tokens (guidance)."""
        self._need(self.uses_mulan, "null conditioning")
        ids = torch.arange(self.spec.mulan_levels, device=device) + self.null_offset
        return ids.expand(batch, -1).clone()

    def semantic_tokens(self, semantic: torch.Tensor) -> torch.Tensor:
        """Semantic ids ``[B, T_s]`` -> vocabulary ids ``[B, T_s]``."""
        self._need(self.uses_mulan, "semantic")
        return semantic.long() + self.semantic_offset

    def acoustic_tokens(self, codes: torch.Tensor, first_level: int) -> torch.Tensor:
        """RVQ codes ``[B, n, T_a]`` of levels ``first_level ..`` -> time-major ids ``[B, T_a * n]``."""
        n = codes.shape[1]
        if first_level + n > self.acoustic_levels_used:
            raise ValueError(
                f"the {self.stage} stage has acoustic levels 0..{self.acoustic_levels_used - 1}, "
                f"got levels {first_level}..{first_level + n - 1}"
            )
        levels = torch.arange(first_level, first_level + n, device=codes.device)
        ids = (
            codes.long()
            + self.acoustic_offset
            + levels[None, :, None] * (self.spec.acoustic_codebook_size)
        )
        return ids.transpose(1, 2).reshape(codes.shape[0], -1)

    # ----- sequences ----------------------------------------------------------------------
    def prefix(
        self,
        mulan: torch.Tensor | None = None,
        semantic: torch.Tensor | None = None,
        coarse: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Conditioning prefix ``[B, P]`` ending in SEP.

        semantic stage: ``mulan [B, L]``; coarse: ``mulan [B, L]`` and ``semantic [B, T_s]``;
        fine: ``coarse [B, Qc, T_a]`` (RVQ codes of levels 1..Qc). ``mulan`` may be None for
        the semantic/coarse stages to use the null conditioning (unconditional rows).
        """
        if self.stage == "fine":
            self._need(coarse is not None, "coarse codes [B, Qc, T_a]")
            self._check_levels(coarse, self.spec.coarse_levels, "coarse")
            body = [self.acoustic_tokens(coarse, 0)]
            batch, device = coarse.shape[0], coarse.device
        else:
            reference = mulan if mulan is not None else semantic
            self._need(reference is not None, "mulan [B, L] (or semantic for null conditioning)")
            batch, device = reference.shape[0], reference.device
            cond = self.null_tokens(batch, device) if mulan is None else self.mulan_tokens(mulan)
            body = [cond]
            if self.stage == "coarse":
                self._need(semantic is not None, "semantic [B, T_s]")
                body += [self._fill(batch, SEP, device), self.semantic_tokens(semantic)]
        start = self._fill(batch, START, device)
        return torch.cat([start, *body, self._fill(batch, SEP, device)], dim=1)

    def targets(self, semantic: torch.Tensor | None = None, acoustic: torch.Tensor | None = None):
        """Target tokens ``[B, N]``: ``semantic [B, T_s]`` (semantic stage) or the stage's
        RVQ levels of ``acoustic [B, Q' >= last level, T_a]`` flattened time-major."""
        if self.stage == "semantic":
            self._need(semantic is not None, "semantic [B, T_s]")
            return self.semantic_tokens(semantic)
        self._need(acoustic is not None, "acoustic [B, Q, T_a]")
        first, n = self.first_target_level, self.num_target_levels
        self._check_levels(acoustic, first + n, "acoustic")
        return self.acoustic_tokens(acoustic[:, first : first + n], first)

    def build(
        self,
        mulan: torch.Tensor | None = None,
        semantic: torch.Tensor | None = None,
        acoustic: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A training sequence from aligned streams of a crop.

        Args: ``mulan [B, L]``, ``semantic [B, T_s]``, ``acoustic [B, Q, T_a]`` as the stage
        needs them (see the module docstring). Returns ``tokens [B, P + N]`` (long) and
        ``levels [B, P + N]`` (long: target level of each position, -1 in the prefix).
        """
        coarse = acoustic[:, : self.spec.coarse_levels] if self.stage == "fine" else None
        prefix = self.prefix(mulan=mulan, semantic=semantic, coarse=coarse)
        targets = self.targets(semantic=semantic, acoustic=acoustic)
        return self.join(prefix, targets)

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
        mulan: torch.Tensor | None = None,
        semantic: torch.Tensor | None = None,
        coarse: torch.Tensor | None = None,
        target_prefix: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """A generation prompt ``[B, P + n]``: the prefix, then optional already known targets.

        ``target_prefix`` is in stream form (semantic ids ``[B, n]`` for the semantic stage,
        RVQ codes ``[B, num_target_levels, n_frames]`` of the stage's target levels for
        coarse/fine), e.g. the tail of the previous window when extending audio. Generation
        continues at target index ``n`` (its level is :meth:`target_level`).
        """
        tokens = self.prefix(mulan=mulan, semantic=semantic, coarse=coarse)
        if target_prefix is None:
            return tokens
        if self.stage == "semantic":
            known = self.semantic_tokens(target_prefix)
        else:
            self._check_levels(target_prefix, self.num_target_levels, "target_prefix", exact=True)
            known = self.acoustic_tokens(target_prefix, self.first_target_level)
        return torch.cat([tokens, known], 1)

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
        if self.stage == "semantic":
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
        return {
            "stage": self.stage,
            "spec": self.spec.to_dict(),
            "vocab_size": self.vocab_size,
            "offsets": {
                "pad": PAD,
                "start": START,
                "sep": SEP,
                "null": self.null_offset,
                "mulan": self.mulan_offset,
                "semantic": self.semantic_offset,
                "acoustic": self.acoustic_offset,
            },
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

    def _check_levels(self, codes: torch.Tensor, levels: int, name: str, exact=False) -> None:
        if codes.ndim != 3 or codes.shape[1] < levels or (exact and codes.shape[1] != levels):
            need = f"exactly {levels}" if exact else f">= {levels}"
            raise ValueError(f"{name} must be [B, {need} levels, T_a], got {tuple(codes.shape)}")

    @staticmethod
    def _fill(batch: int, value: int, device: torch.device | str) -> torch.Tensor:
        return torch.full((batch, 1), value, dtype=torch.long, device=device)
