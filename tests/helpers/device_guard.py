"""A CPU-only check for code that would break or stall on a GPU: tensors created without a device,
and host syncs in code that must not sync.

On a CPU every tensor is on the same device, so a test that runs there cannot see a tensor created
on the CPU meeting one on the GPU (the crash of `select_lowest`, whose `torch.tensor([budget])` met
CUDA scores in `searchsorted`), nor the host syncs (`.item()`, `bool(t)`, boolean indexing) that
stall a GPU step. `DeviceGuard` makes both visible on the CPU. While it is active, every torch call
made directly from grain's device-side code (pruning, models, modules, distill, bench; not data/,
whose batches are built on the host by design and moved by Lightning) is checked:

- a tensor factory (`torch.tensor`, `zeros`, `arange`, `rand`, ...) must name its device. Without
  one the tensor lands on the CPU (or the default device) whatever the model's device. `*_like`
  and `Tensor.new_*` inherit their device and pass; so does `device="cpu"`, which says the CPU is
  meant (host-side planning, a seeded CPU generator), and is then moved on purpose. A module's
  `__init__` is exempt: its parameters and buffers move with the module (`.to`), as PyTorch's own
  layers build theirs.
- with `forbid_syncs=True`, a call that reads device memory on the host (`item`, `tolist`, `cpu`,
  `bool`/`int`/`float` of a tensor, `nonzero`, boolean-mask indexing, `equal`, ...) fails, except
  under a function named in `allow_syncs_in` (reporting, a checkpoint load).

A violation raises `DeviceGuardError` naming the grain file and line, and is kept in `violations`,
so a violation that some `except` swallowed still fails the block when it exits.

Why a rule checked by a `TorchFunctionMode`, next to the device simulation of
tests/helpers/fake_device.py: `FakeTensorMode` has no data, and a training step ranks units by value; a
stand-in device (fake_device.py) reproduces the mismatch itself, but only where the code under test
runs whole on it: Lightning moves batches and models to its own root device, and code that branches
on `device.type == "cuda"` calls a CUDA runtime this build lacks. A function mode sees every
Python-level torch call, with its arguments and its caller, while the real CPU computation runs
untouched; so it runs on the whole Lightning step, compaction and benchmark. It flags the cause
wherever it is, also a CPU tensor that would meet a CUDA tensor only on a path the test does not
take. It relies on Tensor methods (`item`, `__bool__`, `__int__`, `__getitem__`, ...) reaching
function modes, as they do in torch 2.x (tests/test_device_guard.py checks that it sees them).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

import grain

GRAIN_SRC = Path(grain.__file__).resolve().parent
DEVICE_SIDE_PACKAGES = ("pruning", "models", "modules", "distill", "bench")
_TORCH_DIR = Path(torch.__file__).resolve().parent
# torch's Python-level dispatch: `handle_torch_function` and the Tensor-method / torch-function
# wrappers that call it stand between a caller and the mode; any other torch frame is a caller.
_DISPATCH_FILES = frozenset(str(_TORCH_DIR / name) for name in ("overrides.py", "_tensor.py", "functional.py"))

FACTORIES = frozenset({
    torch.tensor, torch.as_tensor, torch.scalar_tensor, torch.zeros, torch.ones, torch.full, torch.empty,
    torch.arange, torch.range, torch.linspace, torch.logspace, torch.eye, torch.rand, torch.randn,
    torch.randint, torch.randperm, torch.empty_strided,
})
SYNCS = frozenset({
    torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu, torch.Tensor.__bool__,
    torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__, torch.Tensor.nonzero, torch.nonzero,
    torch.Tensor.masked_select, torch.masked_select, torch.Tensor.unique, torch.unique, torch.Tensor.equal,
    torch.equal, torch.Tensor.allclose, torch.allclose,
})
INDEXING = frozenset({torch.Tensor.__getitem__, torch.Tensor.__setitem__})


class DeviceGuardError(AssertionError):
    """A grain call that would mix devices or sync with the host on a GPU."""


@dataclass(frozen=True)
class Problem:
    kind: str     # "factory" or "sync"
    text: str


@dataclass(frozen=True)
class Violation:
    where: str    # "grain/pruning/ranking.py:42 in select_lowest"
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def _has_bool_index(index) -> bool:
    """A boolean-mask index: its result size depends on the values (a nonzero, so a sync on a GPU)."""
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


class DeviceGuard(TorchFunctionMode):
    """Context manager: fail on device-less tensor factories (and, if asked, host syncs) in grain's
    device-side code. See the module docstring.

    forbid_syncs: whether host syncs count as violations.
    allow_syncs_in: qualified function names (`PruningController.structure`) under which a sync is
    allowed: anywhere below them on the call stack.
    packages: grain sub-packages whose calls are checked.
    """

    def __init__(self, forbid_syncs: bool = False, allow_syncs_in=(), packages=DEVICE_SIDE_PACKAGES):
        super().__init__()
        self.forbid_syncs = forbid_syncs
        self.allow_syncs_in = frozenset(allow_syncs_in)
        self.scope = tuple(str(GRAIN_SRC / package) for package in packages)
        self.violations: list[Violation] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        problem = self._problem(func, args, kwargs)
        if problem is not None:
            self._check(problem, sys._getframe(1))
        return func(*args, **kwargs)

    def __exit__(self, exc_type, exc, tb):
        result = super().__exit__(exc_type, exc, tb)
        if exc_type is None and self.violations:  # raised inside and swallowed by some `except`
            raise DeviceGuardError("; ".join(map(str, self.violations)))
        return result

    def _check(self, problem: Problem, frame) -> None:
        caller = _caller(frame)
        if caller is None or not caller.f_code.co_filename.startswith(self.scope):
            return
        if self._excused(problem, caller):
            return
        violation = Violation(_describe(caller), problem.text)
        self.violations.append(violation)
        raise DeviceGuardError(str(violation))

    def _excused(self, problem: Problem, caller) -> bool:
        if problem.kind == "factory":
            return _constructs_module(caller)
        return self._sync_allowed(caller)

    # --- what the call does ---------------------------------------------------------------------
    def _problem(self, func, args, kwargs) -> Problem | None:
        if func in FACTORIES:
            if kwargs.get("device") is not None:
                return None
            if func is torch.as_tensor and args and isinstance(args[0], torch.Tensor):
                return None  # keeps the tensor's device
            name = getattr(func, "__name__", str(func))
            return Problem("factory", f"torch.{name} without device= (lands on the CPU whatever device the model is on)")
        if not self.forbid_syncs:
            return None
        if func in SYNCS:
            return Problem("sync", f"host sync: Tensor.{func.__name__} reads a device value on the host")
        if func in INDEXING and len(args) > 1 and _has_bool_index(args[1]):
            return Problem("sync", f"host sync: boolean-mask {func.__name__} (data-dependent size)")
        return None

    def _sync_allowed(self, frame) -> bool:
        """Whether a function of `allow_syncs_in` is on the stack at or above `frame`."""
        while frame is not None:
            if frame.f_code.co_qualname in self.allow_syncs_in:
                return True
            frame = frame.f_back
        return False


def _caller(frame):
    """The frame that made the torch call whose mode handler `frame` called: past torch's Python
    dispatch plumbing (`handle_torch_function` and the wrapper calling it), if any."""
    while frame is not None and frame.f_code.co_filename in _DISPATCH_FILES:
        frame = frame.f_back
    return frame


def _constructs_module(frame) -> bool:
    """Whether `frame` is the `__init__` of an nn.Module (whose parameters and buffers move with it)."""
    return frame.f_code.co_name == "__init__" and isinstance(frame.f_locals.get("self"), torch.nn.Module)


def _describe(frame) -> str:
    path = Path(frame.f_code.co_filename).resolve()
    return f"{path.relative_to(GRAIN_SRC.parent)}:{frame.f_lineno} in {frame.f_code.co_qualname}"
