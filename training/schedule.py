"""Learning-rate schedules that finish within the run's budget: steps or wall-clock time.

A run may stop at ``trainer.max_steps`` or at ``trainer.max_time`` (the demo's budgets),
whichever comes first. A schedule planned for ``max_steps`` alone never leaves warm-up or
its high learning rate when the time runs out first, so the schedule here runs on
*progress*: the larger of the share of ``max_steps`` done and the share of ``max_time``
spent (Lightning's ``Timer``, which also stops the run and is restored on resume). Warm-up
is a share of that progress too (``warmup_steps / max_steps``), so a time-budgeted run
warms up over the same share of the steps it really reaches, and its learning rate reaches
``floor`` at its last step.
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Timer


def warmup_cosine(progress: float, warmup: float, floor: float) -> float:
    """LR multiplier at ``progress`` in [0, 1]: linear from 0 to 1 over the first ``warmup``
    share, then cosine down to ``floor`` at ``progress == 1``."""
    progress = min(1.0, max(0.0, progress))
    if progress < warmup:
        return progress / warmup
    decay = (progress - warmup) / max(1e-12, 1.0 - warmup)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * decay))


def budget_timer(trainer: pl.Trainer) -> Timer | None:
    """The trainer's ``Timer`` callback when it has a duration (``max_time``), else None."""
    for callback in trainer.callbacks:
        if isinstance(callback, Timer) and callback.time_remaining() is not None:
            return callback
    return None


def budget_progress(
    step: int, max_steps: int, elapsed: float | None, duration: float | None
) -> float:
    """Progress of optimizer step ``step`` (0-based) through a run of ``max_steps`` steps or
    ``duration`` seconds; ``elapsed`` seconds were spent on the ``step`` steps before it.

    Counting step ``step`` as done when it starts (``(step + 1) / max_steps``, and for time
    ``elapsed`` plus one mean step duration) puts the last step of either budget at 1.
    """
    progress = (step + 1) / max(1, max_steps)
    if duration and elapsed is not None and step > 0:
        progress = max(progress, elapsed * (step + 1) / (step * duration))
    return min(1.0, progress)


class BudgetSchedule:
    """``LambdaLR`` multiplier over the budget of ``trainer`` (see the module docstring).

    ``warmup_steps`` and ``max_steps`` (``trainer.estimated_stepping_batches``) fix the
    warm-up share; ``floor`` is the final multiplier (``min_lr_ratio``).
    """

    def __init__(self, trainer: pl.Trainer, warmup_steps: int, floor: float) -> None:
        self.trainer = trainer
        steps = trainer.estimated_stepping_batches
        if not math.isfinite(steps):
            raise ValueError(
                "the learning-rate schedule needs a step budget: set --trainer.max_steps "
                "(with --trainer.max_time as well, the run and its schedule end at whichever "
                "comes first)"
            )
        self.max_steps = max(1, int(steps))
        self.warmup = min(1.0, max(0, warmup_steps) / self.max_steps)
        self.floor = floor

    def progress(self, step: int) -> float:
        """Budget progress of optimizer step ``step`` (see :func:`budget_progress`)."""
        timer = budget_timer(self.trainer)
        if timer is None:
            return budget_progress(step, self.max_steps, None, None)
        elapsed = timer.time_elapsed()
        return budget_progress(step, self.max_steps, elapsed, elapsed + timer.time_remaining())

    def __call__(self, step: int) -> float:
        return warmup_cosine(self.progress(step), self.warmup, self.floor)
