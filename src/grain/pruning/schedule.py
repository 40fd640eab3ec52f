"""Cubic sparsity schedule: the kept fraction decays from 1 at `start` to 1 - target at `end`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CubicSchedule:
    target: float        # final sparsity (fraction of encoder linear weights removed)
    start_step: int      # first pruning step
    end_step: int        # last pruning step; masks frozen after it
    frequency: int = 1   # prune every `frequency` steps inside [start_step, end_step]

    @classmethod
    def from_fractions(cls, target: float, total_steps: int, start: float, end: float, frequency: int = 1):
        start_step = int(round(start * total_steps))
        end_step = max(start_step, int(round(end * total_steps)))
        # A run shorter than the schedule still ends at the target (on its last step at the latest).
        last_step = max(total_steps - 1, 0)
        return cls(target, min(start_step, last_step), min(end_step, last_step), max(1, int(frequency)))

    def sparsity_at(self, step: int) -> float:
        if step < self.start_step:
            return 0.0
        if step >= self.end_step:
            return self.target
        progress = (step - self.start_step) / (self.end_step - self.start_step)
        kept = (1.0 - self.target) + self.target * (1.0 - progress) ** 3
        return 1.0 - kept

    def prunes_at(self, step: int) -> bool:
        if step < self.start_step or step > self.end_step:
            return False
        return step == self.end_step or (step - self.start_step) % self.frequency == 0

    def is_frozen_after(self, step: int) -> bool:
        """True once `step` is past the last pruning step."""
        return step > self.end_step
