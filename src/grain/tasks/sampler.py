"""The training loader's order, reproducible after a resume from any step (issue 16).

`EpochSeededRandomSampler` shuffles each epoch with seed + epoch; `ResumableDataLoader` counts the
batches it has handed out in the current epoch and gives Lightning that position as its state
(`state_dict`/`load_state_dict`, which Lightning's fit loop saves in every checkpoint under
`loops.fit_loop.state_dict.combined_loader` and loads before the first batch of a resumed run). A run
resumed mid-epoch therefore sees the same batches, in the same order, as the uninterrupted run."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler


class EpochSeededRandomSampler(Sampler[int]):
    """Shuffles with seed + epoch, so the order of every epoch is reproducible after a resume. Its state
    is the epoch and the number of samples already drawn in it: `skip(n)` makes the next iteration of
    the same epoch start after the first n samples of that epoch's permutation."""

    def __init__(self, num_samples: int, seed: int):
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0
        self._skip: tuple[int, int] | None = None  # (epoch, samples) to leave out at the next iteration

    def set_epoch(self, epoch: int) -> None:  # called by Lightning at each epoch start
        self.epoch = epoch

    def skip(self, epoch: int, samples: int) -> None:
        self._skip = (int(epoch), int(samples))

    def __iter__(self):
        skip, self._skip = self._skip, None
        start = skip[1] if skip is not None and skip[0] == self.epoch else 0
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist()[start:])

    def __len__(self) -> int:
        return self.num_samples


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position in the epoch is part of Lightning checkpoints.

    State: the sampler's epoch and the batches already handed out in it. After `load_state_dict`, the
    next iteration of that epoch starts at the following batch: an `EpochSeededRandomSampler` skips
    the samples drawn (nothing of them is loaded); any other sampler (e.g. Lightning's distributed
    wrapper around it) has its first batches drawn and dropped. Batches of an uninterrupted run are
    those of a plain DataLoader with the same arguments."""

    def __init__(self, *args, resume: dict[str, Any] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._batches = 0  # batches handed out in the current epoch
        self._resume: tuple[int, int] | None = None  # (epoch, batches) to skip at the next iteration
        if resume is not None:  # an argument, so that it survives Lightning re-creating the loader (DDP)
            self.load_state_dict(resume)

    def _epoch(self) -> int:
        return int(getattr(self.sampler, "epoch", 0))

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self._epoch(), "batches": int(self._batches), "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("batch_size", self.batch_size) != self.batch_size:
            raise ValueError(
                f"the checkpoint's training loader had batch_size={state.get('batch_size')}, this one "
                f"{self.batch_size}: resume with the checkpoint's batch size"
            )
        self._resume = (int(state["epoch"]), int(state["batches"]))

    def __iter__(self):
        # A generator: its body runs at the first batch, after Lightning has set the sampler's epoch.
        resume, self._resume = self._resume, None
        skip = resume[1] if resume is not None and resume[0] == self._epoch() else 0
        by_sampler = skip and isinstance(self.sampler, EpochSeededRandomSampler) and self.batch_size
        if by_sampler:
            self.sampler.skip(self._epoch(), skip * self.batch_size)
        iterator = super().__iter__()
        if skip and not by_sampler:
            for _ in range(skip):
                if next(iterator, None) is None:
                    break
        self._batches = skip
        for batch in iterator:
            self._batches += 1
            yield batch
