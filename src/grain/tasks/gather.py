"""Evaluators whose collected rows can be put together from every process of a DDP run."""

from __future__ import annotations

import torch.distributed as dist


class GatheredRows:
    """Mixin for evaluators that collect per-row results in list attributes named in `gathered`.

    Under DDP each process validates a disjoint part of a split (`Task.val_dataloader`).
    `gather()` replaces each of those lists, in every process, by the concatenation of all processes'
    lists (rank order), so that `compute()` gives the metrics of the whole split. It uses
    `all_gather_object`, which works with the gloo (CPU) and NCCL (GPU) backends alike; the rows are
    CPU values, a few per example.

    `gather()` is collective: every process of the group must call it. It does nothing without an
    initialized group of more than one process, so a process evaluating a whole split alone (the
    compact stage on rank 0) never calls into the others.
    """

    gathered: tuple[str, ...] = ()

    def gather(self) -> None:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        parts: list[dict | None] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, {name: getattr(self, name) for name in self.gathered})
        for name in self.gathered:
            setattr(self, name, [row for part in parts for row in part[name]])
