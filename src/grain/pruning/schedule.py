"""Cubic sparsity schedule: the kept fraction decays from 1 at `start` to 1 - target at `end`.

The pruning batches are those of airaria/GRAIN (PruneDistiller.maybe_should_prune with
utils.schedule_threshold). The official code counts batches from 1 (`global_step` is incremented
before the backward) and prunes batch g after its gradients, before the optimizer step, when
`g % frequency == 0` and `S <= g < E`, with `S = int(start * total)` and `E = int(end * total)`
(truncated), at the sparsity `target * (1 - (1 - (g - S) / (E - S)) ** 3)` (0 for g <= S).
grain prunes after the optimizer step of its 0-based step s; both change the forward of the next
batch, so official batch g is grain step s = g - 1, and the scores folded in are the same.

One departure: the official code never prunes at g = E, so it stops short of the target (by
`(frequency / (E - S)) ** 3` of it, or never prunes at all when S == E, a one-shot schedule);
grain adds one pruning step at g = E (s = E - 1, the last step at most, the first at least) to
the target, and freezes the masks after it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CubicSchedule:
    target: float          # final sparsity (fraction of the prunable-unit parameters removed)
    start_batch: int       # S: official batch (1-based) where the cubic starts, at sparsity 0
    end_batch: int         # E: official batch (1-based) where it reaches the target
    frequency: int = 1     # prune official batches g with g % frequency == 0, S < g < E
    total_steps: int = 0   # training steps of the run (0: unknown)

    @classmethod
    def from_fractions(cls, target: float, total_steps: int, start: float, end: float, frequency: int = 1):
        """Fractions of the run's steps, truncated as the official `int(start * total_global_steps)`."""
        total_steps = int(total_steps)
        start_batch = int(start * total_steps)
        end_batch = max(start_batch, int(end * total_steps))
        return cls(float(target), start_batch, end_batch, max(1, int(frequency)), total_steps)

    @property
    def end_step(self) -> int:
        """Last 0-based pruning step (official batch E), within the run; masks frozen after it."""
        return max(0, min(self.end_batch - 1, self.total_steps - 1))

    def sparsity_at(self, step: int) -> float:
        """Sparsity to reach at 0-based `step` (official batch step + 1)."""
        batch = step + 1
        if step >= self.end_step or batch >= self.end_batch:
            return self.target
        if batch <= self.start_batch:
            return 0.0
        progress = (batch - self.start_batch) / (self.end_batch - self.start_batch)
        kept = (1.0 - self.target) + self.target * (1.0 - progress) ** 3
        return 1.0 - kept

    def prunes_at(self, step: int) -> bool:
        """Whether 0-based `step` prunes: the official batches with sparsity above 0, then the end."""
        batch = step + 1
        if step == self.end_step:
            return True
        return self.start_batch < batch < self.end_batch and batch % self.frequency == 0 and step < self.end_step
