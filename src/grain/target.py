"""The run's target, resolved once: a sparsity or a speedup.

`Target.of(cfg)` reads `sparsity` and `speedup` from a composed config and is what the run dir, the
W&B run name, the model card, the pruning controller and summary.json use. A speedup target
(`speedup=4`) replaces the sparsity, whose default then plays no part (`'~sparsity'` may drop it).

Sparsity, as the target and as `student.sparsity` in summary.json: the fraction of the prunable
units' parameters removed (QK unit: a Q and a K row with their biases; VO unit: a V row, its bias and a
W_O column; FFN unit: a W_1 row, its bias and a W_2 column), the measure airaria/GRAIN's budget
counts. The pruner reaches it within one unit below the target. The paper's tables count all
encoder linear weights (W_O and W_2 output biases too); summary.json reports that measure as
`student.encoder_linear_sparsity`.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from grain.errors import GrainError

KINDS = ("sparsity", "speedup")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Target:
    """kind: "sparsity" (a fraction in [0, 1) of the prunable-unit parameters removed) or "speedup"
    (dense latency / predicted compact latency, above 1); value: that number."""

    kind: str
    value: float

    @classmethod
    def of(cls, cfg: DictConfig) -> "Target":
        """The target of a composed config: `speedup` when it is set, else `sparsity`. Raises GrainError
        naming the setting and the fix for a value that is not a target."""
        speedup = OmegaConf.select(cfg, "speedup", default=None)
        if speedup is not None:
            if not _is_number(speedup) or not float(speedup) > 1.0:
                raise GrainError(f"speedup={speedup!r} is not a number above 1; e.g. speedup=8 (8x faster than dense)")
            return cls("speedup", float(speedup))
        sparsity = OmegaConf.select(cfg, "sparsity", default=None)
        if sparsity is None:
            raise GrainError("no target: give sparsity=<fraction> (e.g. sparsity=0.9) or speedup=<x> (e.g. speedup=4)")
        if not _is_number(sparsity):
            raise GrainError(f"sparsity={sparsity!r} is not a number; give a fraction in [0, 1), e.g. sparsity=0.9")
        if not 0.0 <= float(sparsity) < 1.0:
            raise GrainError(
                f"sparsity={sparsity} is outside [0, 1); it is the fraction of the prunable units' parameters "
                f"removed, e.g. sparsity=0.9 keeps 10%"
            )
        return cls("sparsity", float(sparsity))

    @property
    def sparsity(self) -> float | None:
        return self.value if self.kind == "sparsity" else None

    @property
    def speedup(self) -> float | None:
        return self.value if self.kind == "speedup" else None

    @property
    def label(self) -> str:
        """`s<sparsity>` or `x<speedup>` (`s0.9`, `x4`): the run dir's part, the W&B name's and tag."""
        number = f"{self.value:g}"
        return f"s{number}" if self.kind == "sparsity" else f"x{number}"

    def __str__(self) -> str:
        return f"sparsity {self.value:g}" if self.kind == "sparsity" else f"speedup {self.value:g}x"


def target_label(*, _root_: DictConfig) -> str:
    """The `grain_target` resolver (`${grain_target:}` in the configs): the label of the config's target,
    or `invalid-target` where it has none (validation then refuses the run in one line)."""
    try:
        return Target.of(_root_).label
    except GrainError:
        return "invalid-target"


OmegaConf.register_new_resolver("grain_target", target_label, replace=True)
