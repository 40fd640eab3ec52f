"""Device hygiene without a GPU: what runs on the GPU creates its tensors on the device it works on
and does not sync with the host in a step (tests/device_guard.py says how and why)."""

import pytest
import torch
from transformers import BertForSequenceClassification

import grain  # noqa: F401  (registers the compact classes)
from grain.bench.flops import count_flops
from grain.bench.measure import compare_models
from grain.distill.losses import soft_cross_entropy
from grain.models import compact as compact_module
from grain.models import kernels
from grain.models.masks import EncoderShape
from grain.models.slicing import compact_from_masked
from grain.stages.prune import build_student_module
from tests.device_guard import GRAIN_SRC, DeviceGuard, DeviceGuardError
from tests.test_bench import half_ffn_compact, tiny_dense
from tests.test_compact import batch, hard_masks, tiny
from tests.test_student import make_trainer, setup_parts

# Where a training step may read values back: reporting at log steps, and the one-off compaction.
REPORTING = ("PruningController.structure", "PruningController.sparsity", "StudentModule.compact_in_place")

# select_lowest as it was when it crashed on a GPU (commit 3494570): torch.tensor([budget]) is
# created on the CPU and meets the CUDA cumulative costs in searchsorted.
ORIGINAL_SELECT_LOWEST = '''
import torch

def select_lowest(scores, costs, budget):
    remove = torch.zeros_like(scores, dtype=torch.bool)
    if budget <= 0:
        return remove
    order = torch.argsort(scores, stable=True)
    cumulative = torch.cumsum(costs[order].double(), dim=0)
    count = int(torch.searchsorted(cumulative, torch.tensor([budget], dtype=cumulative.dtype)).item()) + 1
    remove[order[: min(count, len(order))]] = True
    return remove
'''


@pytest.fixture
def gpu_branches(monkeypatch):
    """Where grain's code branches on the device type, take the GPU branch on the CPU: the compact
    model's padded attention plan, and an attention mask never read on the host."""
    monkeypatch.setattr(compact_module, "use_padded_plan", lambda device: True)
    monkeypatch.setattr(kernels, "_may_read_on_host", lambda tensor: False)


def grain_code(source: str, package: str = "pruning") -> dict:
    """Run `source` as if it were a file of grain's `package` (the guard checks only grain code)."""
    namespace: dict = {}
    exec(compile(source, str(GRAIN_SRC / package / "_guard_probe.py"), "exec"), namespace)
    return namespace


# --- the guard itself ---------------------------------------------------------------------------

def test_guard_flags_the_original_ranking_bug():
    select_lowest = grain_code(ORIGINAL_SELECT_LOWEST)["select_lowest"]
    scores, costs = torch.tensor([3.0, 1.0, 2.0]), torch.tensor([10.0, 10.0, 10.0])
    with pytest.raises(DeviceGuardError, match=r"grain/pruning/_guard_probe.py:\d+ in select_lowest: torch.tensor without device="):
        with DeviceGuard():
            select_lowest(scores, costs, 15.0)


@pytest.mark.parametrize("statement", [
    "t.sum().item()", "bool(t.any())", "int(t[0])", "float(t[0])", "t.tolist()", "t.cpu()",
    "t.nonzero()", "t[t > 0]", "torch.equal(t, t)", "if t.all(): pass",
])
def test_guard_sees_host_syncs(statement):
    """Tensor methods and Python conversions reach the function mode (torch 2.x), so syncs are visible."""
    probe = grain_code(f"import torch\ndef probe(t):\n    {statement}\n")["probe"]
    t = torch.ones(3)
    with DeviceGuard():  # syncs are allowed unless forbidden
        probe(t)
    with pytest.raises(DeviceGuardError, match="host sync"), DeviceGuard(forbid_syncs=True):
        probe(t)
    with DeviceGuard(forbid_syncs=True, allow_syncs_in=("probe",)):
        probe(t)


def test_guard_passes_device_aware_code_and_ignores_other_packages():
    probe = grain_code(
        "import torch\ndef probe(t):\n"
        "    return torch.zeros(2, device=t.device), t.new_ones(2), torch.full_like(t, 2.0), torch.arange(3, device='cpu')\n"
    )["probe"]
    with DeviceGuard(forbid_syncs=True):
        probe(torch.ones(3))
        torch.tensor([1.0])  # not grain code: this test's own tensors are not checked
    host_side = grain_code("import torch\ndef batch():\n    return torch.tensor([1, 2])\n", package="data")["batch"]
    with DeviceGuard(forbid_syncs=True):
        host_side()  # data/ builds batches on the host by design


def test_guard_fails_a_block_whose_violation_was_swallowed():
    probe = grain_code("import torch\ndef probe():\n    try:\n        torch.ones(2)\n    except Exception:\n        pass\n")["probe"]
    with pytest.raises(DeviceGuardError, match="torch.ones without device="):
        with DeviceGuard():
            probe()


# --- (a) training with pruning ------------------------------------------------------------------

@pytest.mark.parametrize("pruner", [
    ["pruner.score=grad", "pruner.units=intra", "pruner.compact_after_end=true"],
    ["pruner.score=grad", "pruner.units=head"],
    ["pruner.score=magnitude"],
    ["pruner.score=random"],
], ids=["grad-intra-compact", "grad-head", "magnitude", "random"])
def test_training_steps_with_pruning_are_device_clean(tmp_path, pruner, gpu_branches):
    """Student steps that score, prune (start 0, end 0.5 of 4 steps: pruning at steps 0 and 1 for
    grad, at 0..2 with `frequency`) and, for the first case, compact: every tensor on the model's
    device, no host sync but in reporting."""
    overrides = ["pruner.start=0.0", "pruner.end=0.5", "trainer.log_every_n_steps=50", *pruner]
    cfg, datamodule, teacher = setup_parts(tmp_path, overrides)
    module = build_student_module(cfg, teacher, 2)
    with DeviceGuard(forbid_syncs=True, allow_syncs_in=REPORTING):
        make_trainer(tmp_path, max_steps=4).fit(module, datamodule=datamodule)
    assert module.controller.current_step == 4
    assert module.controller.sparsity() >= 0.6


# --- (b) compaction and the compact model's forward ---------------------------------------------

def test_compaction_creates_tensors_on_the_models_device():
    model = tiny(BertForSequenceClassification)
    masks = hard_masks(EncoderShape.of(model))
    with DeviceGuard():
        compact, _ = compact_from_masked(model, masks)
    with torch.no_grad(), DeviceGuard():
        compact.eval()(**batch())


def test_compact_gpu_plan_forward_is_device_clean(gpu_branches):
    """The forward a GPU runs, on the CPU: no device-less tensors and no host syncs, so
    torch.compile and CUDA graphs can capture it."""
    model = tiny(BertForSequenceClassification)
    compact, _ = compact_from_masked(model, hard_masks(EncoderShape.of(model)))
    inputs = batch()
    with torch.no_grad(), DeviceGuard(forbid_syncs=True):
        compact.eval()(**inputs)
        compact(**inputs)  # the second forward reuses the fused weights kept from the first


# --- (c) benchmark ------------------------------------------------------------------------------

def test_benchmark_creates_tensors_on_the_models_device():
    dense = tiny_dense()  # a vocabulary above the benchmark's token ids
    compact = half_ffn_compact(dense)
    with DeviceGuard():
        assert count_flops(compact, 2, 16) > 0
        result = compare_models(dense, compact, 2, 16, min_run_time=0.01, rounds=1)
    assert result["speedup"] > 0


# --- the fixes the guard asked for ----------------------------------------------------------------

def test_kd_loss_over_valid_positions_without_boolean_indexing():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 3, generator=generator), torch.randn(2, 5, 3, generator=generator)
    valid = torch.tensor([[True, True, False, True, False], [False, True, True, False, False]])
    student[~valid] = float("inf")  # what padding holds must not leak into the mean
    with DeviceGuard(forbid_syncs=True):
        loss = soft_cross_entropy(student, teacher, 2.0, valid)
    per_position = -(teacher[valid].div(2).softmax(-1) * student[valid].div(2).log_softmax(-1)).sum(-1)
    torch.testing.assert_close(loss, per_position.mean())
    assert soft_cross_entropy(student, teacher, 2.0, torch.zeros_like(valid)) == 0
