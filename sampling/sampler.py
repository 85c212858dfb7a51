"""Text -> music: MuLan text tokens -> semantic -> coarse -> fine -> codec decoder -> 24 kHz audio.

:class:`Sampler` holds a tokenizer bundle and the three stage models, all made with the
same bundle (checked by fingerprint), and generates a batch of prompts at once:

1. ``bundle.mulan.text_tokens(prompts)`` -> MuLan tokens ``[B, L]``;
2. the semantic stage generates ``T_s = seconds * semantic_rate`` ids, in windows of its
   training crop (30 s for the paper) with a prefix of already generated frames (15 s);
3. the coarse stage generates RVQ levels ``1..Qc`` for those ids, window by window;
4. the fine stage generates levels ``Qc+1..Q`` from the coarse levels, window by window;
5. ``bundle.codec.decode(codes [B, Q, T_a])`` -> audio ``[B, T_a * hop]``.

``candidates > 1`` generates that many rows per prompt and keeps, per prompt, the one whose
MuLan audio embedding is closest (cosine) to the prompt's text embedding. A prompt audio
(``prompt_audio``) is tokenized with the bundle and continued: its streams are the known
start of every stage's stream, and the output holds the prompt (re-synthesized) plus the
continuation. Row ``r`` of the batch (prompt-major, candidates inner) uses seed ``seed + r``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from musiclm.sampling import metrics
from musiclm.sampling.generate import (
    RowRandom,
    SamplingSettings,
    Windows,
    extend,
    tokens_to_generate,
)
from musiclm.tokenizers.bundle import TokenizerBundle, load_bundle
from musiclm.training.checkpoints import newest_checkpoint
from musiclm.training.layout import TokenLayout
from musiclm.training.stage_model import StageCheckpointError, StageModel, load_stage
from musiclm.training.stage_registry import STAGES
from tqdm.auto import tqdm


class SamplerError(ValueError):
    """A request the sampler cannot fulfil; the message names the input and the fix."""


def load_stage_model(path: str | Path, stage: str, device: str = "cpu") -> StageModel:
    """Load the ``stage`` checkpoint at ``path``; its window is its training crop."""
    if not Path(path).is_file():
        raise SamplerError(
            f"the {stage} stage checkpoint {path} does not exist; train it with "
            f"`make train-stage STAGE={stage}` or pass the right --{stage}-ckpt"
        )
    try:
        loaded = load_stage(path, device)
    except StageCheckpointError as err:
        raise SamplerError(str(err)) from err
    if loaded.layout.stage != stage:
        raise SamplerError(f"{path} is a {loaded.layout.stage} stage checkpoint, not {stage}")
    return loaded


def find_checkpoint(runs: str | Path, stage: str) -> Path:
    """The newest ``last*.ckpt`` (else newest ``*.ckpt``) under ``runs/<stage>/``."""
    root = Path(runs) / stage
    found = newest_checkpoint(root)
    if found is None:
        raise SamplerError(
            f"no {stage} stage checkpoint under {root}; train it with "
            f"`make train-stage STAGE={stage} RUNS={runs}` or pass --{stage}-ckpt"
        )
    return found


def default_settings() -> dict[str, SamplingSettings]:
    """The paper's temperatures (1.0 / 0.95 / 0.4), no top-k/top-p, no guidance."""
    return {name: SamplingSettings(temperature=s.paper_temperature) for name, s in STAGES.items()}


def no_tokens(layout: TokenLayout, rows: int) -> torch.Tensor:
    """An empty target stream of ``layout``'s stage: ``[rows, 0]`` or ``[rows, levels, 0]``."""
    levels = [layout.num_target_levels] if layout.target.source.level_axis else []
    return torch.zeros(rows, *levels, 0, dtype=torch.long)


@dataclasses.dataclass
class Generation:
    """Output of :meth:`Sampler.generate` for ``B`` prompts (best candidate each).

    ``audio [B, N]`` float at the bundle rate; ``semantic [B, T_s]``; ``acoustic [B, Q, T_a]``;
    ``mulan [B, L]``; ``scores [B, candidates]`` MuLan text-audio cosines of every
    candidate (None when ``candidates == 1``); ``chosen [B]`` the kept candidate;
    ``prompt_seconds``: seconds at the start that re-synthesize the prompt audio.
    """

    audio: torch.Tensor
    semantic: torch.Tensor
    acoustic: torch.Tensor
    mulan: torch.Tensor
    scores: torch.Tensor | None
    chosen: torch.Tensor
    prompt_seconds: float
    sample_rate: int


class Sampler:
    """A tokenizer bundle plus a model of every stage of the registry (semantic, coarse,
    fine), run in the registry's order: each stage is conditioned on the MuLan text
    tokens and on the streams of the stages before it, by segment name."""

    def __init__(
        self,
        bundle: TokenizerBundle,
        stages: Mapping[str, StageModel],
        prefix_fraction: float = 0.5,
    ) -> None:
        missing = [s for s in STAGES if s not in stages]
        if missing:
            raise SamplerError(f"the sampler needs the {', '.join(missing)} stage model(s)")
        for name in STAGES:
            stage = stages[name]
            if stage.layout.stage != name:
                raise SamplerError(
                    f"{stage.path} is a {stage.layout.stage} stage checkpoint, given as {name}"
                )
            bundle.check_fingerprint(
                stage.bundle_fingerprint, f"the {name} stage checkpoint {stage.path}"
            )
            if stage.layout.spec != bundle.spec:
                raise SamplerError(
                    f"the {name} stage checkpoint {stage.path} was trained for another token "
                    "spec than the bundle's; use the bundle it was trained with"
                )
        if not 0 <= prefix_fraction < 1:
            raise SamplerError(f"prefix_fraction must be in [0, 1), got {prefix_fraction}")
        self.bundle = bundle
        self.spec = bundle.spec
        self.stages = {name: stages[name] for name in STAGES}  # generation order
        self.windows = {
            name: Windows(st.crop_frames, int(st.crop_frames * prefix_fraction))
            for name, st in self.stages.items()
        }

    @classmethod
    def from_paths(
        cls,
        bundle: str | Path,
        checkpoints: Mapping[str, str | Path],
        device: str = "cpu",
        prefix_fraction: float = 0.5,
    ) -> Sampler:
        """Load the bundle directory and the stage checkpoints (``{stage: path}``)."""
        loaded = load_bundle(bundle, device=device)
        stages = {name: load_stage_model(path, name, device) for name, path in checkpoints.items()}
        return cls(loaded, stages, prefix_fraction)

    @property
    def device(self) -> torch.device:
        return next(iter(self.stages.values())).model.embedding.weight.device

    # ----- requests ------------------------------------------------------------------------
    def frames_for(self, seconds: float) -> int:
        """Semantic frames of ``seconds`` of audio (raises for a duration out of reach)."""
        frames = round(seconds * self.spec.semantic_rate)
        if frames < 1:
            raise SamplerError(
                f"--seconds {seconds} is shorter than one semantic frame "
                f"({1 / self.spec.semantic_rate:.3f} s); ask for more audio"
            )
        return frames

    def prompt_streams(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize prompt audio ``[N]`` (bundle rate) -> semantic ``[1, T_s]``, codes ``[1, Q, T_a]``."""
        frames = self.spec.semantic_frames(wav.numel())
        if frames < 1:
            raise SamplerError(
                f"the prompt audio is {wav.numel() / self.spec.sample_rate:.3f} s, shorter than "
                "one semantic frame; pass a longer audio prompt"
            )
        wav = wav[: frames * self.spec.samples_per_semantic].float()[None]
        with torch.inference_mode():
            semantic = self.bundle.semantic.encode(wav)[:, :frames]
            codes = self.bundle.codec.encode(wav[:, None].to(self.bundle.codec.device))
        return semantic.long().cpu(), codes[
            :, :, : frames * self.spec.acoustic_per_semantic
        ].long().cpu()

    def joins(self, seconds: float, prompt_seconds: float = 0.0) -> dict[str, list[float]]:
        """Seconds at which each stage starts a new window for a request (window joins)."""
        known = round(prompt_seconds * self.spec.semantic_rate)
        total = known + self.frames_for(seconds)
        rate = self.spec.semantic_rate
        return {
            name: [new / rate for _, new, _ in windows.spans(known, total)[1:]]
            for name, windows in self.windows.items()
        }

    # ----- generation ----------------------------------------------------------------------
    @torch.inference_mode()
    def generate(
        self,
        prompts: list[str],
        seconds: float,
        settings: Mapping[str, SamplingSettings] | None = None,
        seed: int = 0,
        candidates: int = 1,
        prompt_audio: torch.Tensor | None = None,
        progress: bool = True,
    ) -> Generation:
        """Music for every prompt: ``seconds`` of new audio (after ``prompt_audio [N]`` if given).

        All prompts and candidates are generated as one batch (see the module docstring).
        """
        if not prompts or any(not p.strip() for p in prompts):
            raise SamplerError(
                "the text prompt is empty; describe the music, e.g. --text 'calm piano'"
            )
        if candidates < 1:
            raise SamplerError(f"candidates must be >= 1, got {candidates}")
        settings = {**default_settings(), **(settings or {})}
        spec = self.spec
        new_frames = self.frames_for(seconds)
        rows = len(prompts) * candidates
        random = RowRandom([seed + r for r in range(rows)])
        mulan = self.bundle.mulan.text_tokens(prompts).long().cpu()
        mulan_rows = mulan.repeat_interleave(candidates, dim=0)

        # every stream so far by segment name: what the next stages are conditioned on
        outputs: dict[str, torch.Tensor] = {"mulan": mulan_rows}
        whole: dict[str, torch.Tensor] = {}
        if prompt_audio is not None:
            semantic0, codes0 = self.prompt_streams(prompt_audio)
            whole = {"semantic": semantic0, "acoustic": codes0}
        known_frames = whole["semantic"].shape[1] if whole else 0
        total = known_frames + new_frames
        for name, stage in self.stages.items():
            layout = stage.layout
            if whole:
                start = layout.select(layout.target, whole)
                known = start.expand(rows, *start.shape[1:])
            else:
                known = no_tokens(layout, rows)
            conditioning = self._conditioning(layout, outputs)
            outputs[layout.target.name] = self._run(
                name, known, total, conditioning, settings, random, progress
            )
        targets = [st.layout.target for st in self.stages.values()]
        semantic = next(outputs[t.name] for t in targets if t.stream == "semantic")
        acoustic = torch.cat(
            [
                outputs[t.name]
                for t in sorted(targets, key=lambda t: t.level_range(spec))
                if t.stream == "acoustic"
            ],
            dim=1,
        )
        audio = self.decode(acoustic)
        scores, chosen = None, torch.zeros(len(prompts), dtype=torch.long)
        if candidates > 1:
            scores = self.text_audio_scores(prompts, audio).reshape(len(prompts), candidates)
            chosen = scores.argmax(dim=1)
        keep = torch.arange(len(prompts)) * candidates + chosen
        return Generation(
            audio=audio[keep],
            semantic=semantic[keep],
            acoustic=acoustic[keep],
            mulan=mulan,
            scores=scores,
            chosen=chosen,
            prompt_seconds=known_frames / spec.semantic_rate,
            sample_rate=spec.sample_rate,
        )

    def _conditioning(
        self, layout: TokenLayout, outputs: Mapping[str, torch.Tensor]
    ) -> Callable[[int, int, bool], dict[str, Any]]:
        """``conditioning(start, end, null)`` for :func:`extend`: the stage's conditioning
        segments (from ``outputs``, by name) over semantic frames ``start..end``."""

        def window(start: int, end: int, null: bool) -> dict[str, Any]:
            values: dict[str, Any] = {"null": null}
            for segment in layout.declaration.conditioning:
                ratio = segment.source.frames_per_semantic(self.spec)
                value = outputs[segment.name]
                values[segment.name] = (
                    value if ratio == 0 else value[..., start * ratio : end * ratio]
                )
            return values

        return window

    def _run(
        self,
        name: str,
        known: torch.Tensor,
        total: int,
        conditioning: Callable[[int, int, bool], dict[str, Any]],
        settings: Mapping[str, SamplingSettings],
        random: RowRandom,
        progress: bool,
    ) -> torch.Tensor:
        stage, windows = self.stages[name], self.windows[name]
        known_frames = known.shape[-1] // stage.layout.target_frames_per_semantic
        steps = tokens_to_generate(stage.layout, windows, known_frames, total)
        with tqdm(total=steps, desc=f"{name} stage", unit="tok", disable=not progress) as bar:
            return extend(
                stage.model,
                stage.layout,
                known,
                total,
                windows,
                conditioning,
                settings[name],
                random,
                on_token=bar.update,
            ).cpu()

    def decode(self, acoustic: torch.Tensor) -> torch.Tensor:
        """RVQ codes ``[B, Q, T_a]`` -> audio ``[B, T_a * hop]`` through the bundle's codec."""
        codec = self.bundle.codec
        with torch.inference_mode():
            return codec.decode(acoustic.to(codec.device))[:, 0].float().cpu()

    def text_audio_scores(self, prompts: list[str], audio: torch.Tensor) -> torch.Tensor:
        """Cosine of each row's audio ``[R, N]`` with its prompt (rows prompt-major) -> ``[R]``:
        the MuLan cycle consistency of :mod:`musiclm.sampling.metrics`, per row."""
        mulan = self.bundle.mulan
        text = metrics.text_embeddings(mulan, prompts).cpu()
        sound = metrics.audio_embeddings(mulan, list(audio)).cpu()
        return (text.repeat_interleave(audio.shape[0] // len(prompts), dim=0) * sound).sum(dim=-1)
