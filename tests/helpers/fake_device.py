"""A second device on a CPU-only machine: tensors that live on an accelerator while their data
stays on the CPU, so that device mixing fails in a CPU test as it does on a GPU.

`DeviceGuard` (tests/helpers/device_guard.py) checks a rule, that grain's factories name their device. This
checks the device semantics themselves, on code small enough to run whole on stand-in tensors:
inside `fake_accelerator()`, `to_accelerator(module)`, `tensor.to(ACCELERATOR)` and factories given
`device=ACCELERATOR` hand out `AcceleratorTensor`s, wrappers that report the accelerator as their
device and hold a CPU tensor. An operation that mixes one with a CPU tensor of one or more
dimensions fails as CUDA does ("Expected all tensors to be on the same device"); as on CUDA, CPU
scalars (0-dim) mix, `copy_` and `x[index] = value` copy across devices, and advanced indexing takes
CPU index tensors. Host syncs are counted (`FakeAccelerator.syncs`): reading a value (`item`,
`bool`, `int`, ...), copying to the CPU, and operations whose output size depends on the values
(`nonzero`, `unique`, boolean-mask indexing).

Why the meta device stands for the accelerator: a wrapper claiming `cuda` fails on this build as
soon as a Tensor method sets a CUDA device guard (`~t`, in-place ops), since no CUDA runtime is
linked; the meta device has a guard in every build, is not the CPU, and its tensors here always
carry CPU data, so nothing runs as a real meta tensor. Code that branches on `device.type ==
"cuda"` (and `torch.cuda.*` calls) is out of reach; code that branches on "not the CPU" takes the
accelerator branch. Autograd runs through the wrappers: the backward's ops are dispatched alike.
"""

from __future__ import annotations

import contextlib
import sys
from collections import Counter
from pathlib import Path

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves, tree_map

ACCELERATOR = torch.device("meta")
CPU = torch.device("cpu")
_TORCH_DIR = str(Path(torch.__file__).resolve().parent)
aten = torch.ops.aten

# aten ops that read device values on the host, or whose output size depends on them.
SYNC_OPS = {
    aten._local_scalar_dense.default: "item/bool/int/float",
    aten.nonzero.default: "nonzero",
    aten.masked_select.default: "masked_select",
    aten._unique2.default: "unique",
    aten.unique_dim.default: "unique",
    aten.equal.default: "equal",
}
# Advanced indexing takes CPU index tensors on CUDA too (they are copied over).
INDEXING = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default, aten._index_put_impl_.default}


class AcceleratorTensor(torch.Tensor):
    """A tensor on `ACCELERATOR` whose data is `inner`, a CPU tensor of the same shape and dtype."""

    inner: torch.Tensor

    @staticmethod
    def __new__(cls, inner: torch.Tensor):
        return torch.Tensor._make_wrapper_subclass(
            cls, inner.shape, strides=inner.stride(), storage_offset=inner.storage_offset(),
            dtype=inner.dtype, device=ACCELERATOR, requires_grad=False,
        )

    def __init__(self, inner: torch.Tensor):
        self.inner = inner.detach()

    def __repr__(self) -> str:
        return f"AcceleratorTensor({self.inner!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return (_ACTIVE or _OUTSIDE).run_op(func, args, kwargs or {})


class FakeAccelerator(TorchFunctionMode):
    """The mode behind `fake_accelerator()`: places tensors on the stand-in device, runs ops on the
    inner CPU tensors, checks their devices and counts host syncs in `syncs`."""

    def __init__(self):
        super().__init__()
        self.syncs: Counter = Counter()  # "what at file:line" -> count

    def _count_sync(self, what: str) -> None:
        self.syncs[f"{what} at {_caller_outside_torch()}"] += 1

    def syncs_in(self, path_part: str) -> dict[str, int]:
        """The syncs made from files whose path contains `path_part` (e.g. "src/grain")."""
        return {site: n for site, n in self.syncs.items() if path_part in site}

    # --- torch functions: placement on the accelerator ----------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.to and not isinstance(args[0], AcceleratorTensor):
            return self._upload(func, args, kwargs)
        if args and isinstance(args[0], AcceleratorTensor) and _in_place(func):
            return self._in_place(func, args, kwargs)
        if _on_accelerator(kwargs.get("device")) and not (args and isinstance(args[0], torch.Tensor)):
            kwargs["device"] = CPU  # a factory: built on the CPU, handed out as a wrapper
            return _wrap(func(*args, **kwargs))
        return func(*args, **kwargs)

    def _upload(self, func, args, kwargs):
        """`cpu_tensor.to(ACCELERATOR or an AcceleratorTensor, ...)`: a wrapper around a copy."""
        tensor = args[0]
        target = args[1] if len(args) > 1 else kwargs.get("other")
        device, dtype, _, _ = torch._C._nn._parse_to(*args[1:], **kwargs)
        if isinstance(target, AcceleratorTensor) or _on_accelerator(device):
            return AcceleratorTensor(tensor.to(dtype=dtype or tensor.dtype, copy=True))
        return func(*args, **kwargs)

    def _in_place(self, func, args, kwargs):
        """An in-place method, run on the inner CPU tensors (some in-place bindings set a device
        guard before dispatching, which the wrappers cannot serve)."""
        if func not in (torch.Tensor.copy_, torch.Tensor.__setitem__):  # these upload CPU sources
            _check_one_device(func, (args, kwargs))
        if func is torch.Tensor.__setitem__ and _has_bool_index(args[1]):
            self._count_sync("boolean-mask index")
        inner_args, inner_kwargs = _unwrap((args, kwargs))
        func(*inner_args, **inner_kwargs)
        return None if func is torch.Tensor.__setitem__ else args[0]

    # --- aten ops on accelerator tensors ----------------------------------------------------------------
    def run_op(self, func, args, kwargs):
        if func is aten.copy_.default and not isinstance(args[0], AcceleratorTensor):
            self._count_sync("copy to host")  # cpu_tensor.copy_(accelerator_tensor): legal, and a sync
            return args[0].copy_(args[1].inner)
        if func in INDEXING:
            _check_one_device(func, (args[0], args[2:], kwargs))
        else:
            _check_one_device(func, (args, kwargs))
        if func in SYNC_OPS:
            self._count_sync(SYNC_OPS[func])
        if func is aten.index.Tensor and any(i is not None and i.dtype == torch.bool for i in args[1]):
            self._count_sync("boolean-mask index")
        if func is aten._to_copy.default and not _on_accelerator(kwargs.get("device", ACCELERATOR)):
            self._count_sync("copy to host")
            return func(args[0].inner, **kwargs)
        if _on_accelerator(kwargs.get("device")):
            kwargs = {**kwargs, "device": CPU}
        by_inner = {id(x.inner): x for x in tree_leaves((args, kwargs)) if isinstance(x, AcceleratorTensor)}
        out = func(*_unwrap(args), **_unwrap(kwargs))
        # An op that returns one of its inputs (in place, `out=`) returns that input's wrapper.
        return tree_map(lambda x: by_inner[id(x)] if id(x) in by_inner else _wrap(x), out)


def _caller_outside_torch() -> str:
    """file:line of the innermost frame outside torch and this file (who asked for the sync)."""
    frame = sys._getframe(1)
    while frame is not None and (frame.f_code.co_filename.startswith(_TORCH_DIR) or frame.f_code.co_filename == __file__):
        frame = frame.f_back
    return "?" if frame is None else f"{frame.f_code.co_filename}:{frame.f_lineno}"


def _on_accelerator(device) -> bool:
    return device is not None and torch.device(device).type == ACCELERATOR.type


def _in_place(func) -> bool:
    """In-place tensor methods (`add_`, `x[i] = v`), not autograd's flag setters."""
    name = getattr(func, "__name__", "")
    if name in ("requires_grad_", "share_memory_"):
        return False
    return name == "__setitem__" or (name.endswith("_") and not name.startswith("_"))


def _has_bool_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def _wrap(x):
    return AcceleratorTensor(x) if isinstance(x, torch.Tensor) and not isinstance(x, AcceleratorTensor) else x


def _unwrap(tree):
    return tree_map(lambda x: x.inner if isinstance(x, AcceleratorTensor) else x, tree)


def _check_one_device(func, tree) -> None:
    """Fail as CUDA does when accelerator tensors meet CPU tensors that are not scalars."""
    tensors = [x for x in tree_leaves(tree) if isinstance(x, torch.Tensor)]
    on_accelerator = any(isinstance(x, AcceleratorTensor) for x in tensors)
    on_cpu = [x for x in tensors if not isinstance(x, AcceleratorTensor) and x.dim() > 0]
    if on_accelerator and on_cpu:
        raise RuntimeError(
            f"Expected all tensors to be on the same device, but found at least two devices, "
            f"{ACCELERATOR} (the stand-in accelerator) and cpu! ({func}, CPU tensor of shape {tuple(on_cpu[0].shape)})"
        )


def to_accelerator(module: nn.Module) -> nn.Module:
    """`module.to(ACCELERATOR)` inside `fake_accelerator()` (outside it, `.to("meta")` would drop the
    data and make real meta tensors)."""
    if _ACTIVE is None:
        raise RuntimeError("to_accelerator() needs an active fake_accelerator()")
    return module.to(ACCELERATOR)


_ACTIVE: FakeAccelerator | None = None
_OUTSIDE = FakeAccelerator()  # serves wrappers used after the context ended (reading results)


@contextlib.contextmanager
def fake_accelerator():
    """Context manager yielding the active `FakeAccelerator` (its `syncs` counter).

    While active, `module.to(...)` replaces parameters instead of setting their `.data` (which a
    wrapper tensor cannot be): torch's own switch for that, restored on exit.
    """
    global _ACTIVE
    mode = FakeAccelerator()
    previous, _ACTIVE = _ACTIVE, mode
    overwrite = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    try:
        with mode:
            yield mode
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(overwrite)
        _ACTIVE = previous
