"""Device hygiene without a GPU: what runs on the GPU creates its tensors on the device it works on
and does not sync with the host in a step. Two checks (their modules say how and why):
`DeviceGuard` (tests/helpers/device_guard.py), a rule on grain's own calls, over whole Lightning runs;
`fake_accelerator` (tests/helpers/fake_device.py), a second device whose tensors fail when mixed with CPU
ones, as CUDA does, for the controller, the masked model and the compact model."""

import pytest
import torch

import grain  # noqa: F401  (registers the compact classes)
import grain.pruning.controller as controller_module
from grain.distill.losses import soft_cross_entropy
from grain.measure.compare import compare_models
from grain.measure.flops import count_flops
from grain.models.masks import EncoderShape
from grain.models.slicing import compact_from_masked
from grain.stages.prune import build_student_module
from tests.helpers.device_guard import GRAIN_SRC, DeviceGuard, DeviceGuardError
from tests.helpers.fake_device import ACCELERATOR, AcceleratorTensor, fake_accelerator, to_accelerator
from tests.helpers.models import BENCH_VOCAB, half_ffn_compact, hard_masks, masked_outputs, tiny_model, token_batch
from tests.helpers.pruning import controller_for, sparsity_bound
from tests.helpers.training import make_trainer, setup_parts

# Where a training step may read values back: reporting at log steps, the one-off compaction, and
# the compact model's attention mask, read on the host only in eager CPU runs (its device path runs
# on the stand-in accelerator below).
ALLOWED_SYNCS = (
    "PruningController.structure", "PruningController.sparsity", "StudentModule.compact_in_place", "KeyMask.of",
)

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


def grain_code(source: str, package: str = "pruning") -> dict:
    """Run `source` as if it were a file of grain's `package` (the guard checks only grain code)."""
    namespace: dict = {}
    exec(compile(source, str(GRAIN_SRC / package / "_guard_probe.py"), "exec"), namespace)
    return namespace


# --- the guard itself ---------------------------------------------------------------------------

def test_guard_flags_the_original_ranking_bug():
    select_lowest = grain_code(ORIGINAL_SELECT_LOWEST)["select_lowest"]
    scores, costs = torch.tensor([3.0, 1.0, 2.0]), torch.tensor([10.0, 10.0, 10.0])
    where = r"grain/pruning/_guard_probe.py:\d+ in select_lowest"
    with pytest.raises(DeviceGuardError, match=where + ": torch.tensor without device="):
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
    source = "import torch\ndef probe():\n    try:\n        torch.ones(2)\n    except Exception:\n        pass\n"
    probe = grain_code(source)["probe"]
    with pytest.raises(DeviceGuardError, match="torch.ones without device="):
        with DeviceGuard():
            probe()


# --- the stand-in accelerator itself ---------------------------------------------------------------

def test_accelerator_fails_on_mixed_devices_and_counts_syncs():
    with fake_accelerator() as accelerator:
        x = torch.arange(4.0, device=ACCELERATOR)
        assert isinstance(x, AcceleratorTensor) and x.device == ACCELERATOR
        y = x * torch.tensor(2.0) + x.new_ones(4)  # a CPU scalar mixes, as on CUDA
        with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
            x + torch.ones(4)
        assert dict(accelerator.syncs) == {}
        torch.testing.assert_close(y.to("cpu"), torch.tensor([1.0, 3.0, 5.0, 7.0]))
        assert bool(x.any())
        sites = list(accelerator.syncs)
    assert [site.split(" at ")[0] for site in sites] == ["copy to host", "item/bool/int/float"]
    assert all(site.startswith(f"{site.split(' at ')[0]} at {__file__}:") for site in sites)


# --- (a) training with pruning ------------------------------------------------------------------

@pytest.mark.parametrize("pruner, precision", [
    (["pruner.score=grad", "pruner.units=intra", "pruner.compact_after_end=true"], "32-true"),
    (["pruner.score=grad"], "bf16-mixed"),  # mask gradients through MaskedProduct
    (["pruner.score=grad", "pruner.units=head"], "32-true"),
    (["pruner.score=magnitude"], "32-true"),
    (["pruner.score=random"], "32-true"),
], ids=["grad-intra-compact", "grad-bf16", "grad-head", "magnitude", "random"])
def test_training_steps_with_pruning_are_device_clean(tmp_path, pruner, precision):
    """Lightning student steps that score, prune (4 steps, pruning at steps 0..2) and, in the first
    case, compact: no device-less tensor, and no host sync but in reporting."""
    overrides = ["pruner.start=0.0", "pruner.end=0.5", "trainer.log_every_n_steps=50", *pruner]
    cfg, datamodule, teacher = setup_parts(tmp_path, overrides)
    module = build_student_module(cfg, teacher, 2)
    with DeviceGuard(forbid_syncs=True, allow_syncs_in=ALLOWED_SYNCS):
        make_trainer(tmp_path, max_steps=4, precision=precision).fit(module, datamodule=datamodule)
    controller = module.controller
    assert controller.current_step == 4
    assert sparsity_bound(0.6, controller.shape, controller.units) <= controller.sparsity() <= 0.6


def run_pruning_steps(model, controller, steps: int, input_ids) -> None:
    """What the student's training step asks of the controller: mask gradients, scores, pruning."""
    for _ in range(steps):
        masks = controller.begin_step()
        if masks is not None:
            loss = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits.logsumexp(-1).sum()
            grads = torch.autograd.grad(loss, list(masks.values()))
            controller.update_scores(dict(zip(masks, grads)))
        controller.end_step()


@pytest.mark.parametrize("settings", [
    {"score": "grad"}, {"score": "grad", "units": "head"}, {"score": "magnitude"}, {"score": "random"},
], ids=["grad-intra", "grad-head", "magnitude", "random"])
def test_pruning_steps_on_an_accelerator_neither_mix_devices_nor_sync(tiny_bert, settings):
    controller = controller_for(tiny_bert, target_sparsity=0.5, beta=0.9, end=0.5, **settings)
    with fake_accelerator() as accelerator:
        to_accelerator(tiny_bert)
        to_accelerator(controller)
        input_ids = torch.randint(1, 100, (2, 8), device=ACCELERATOR)
        run_pruning_steps(tiny_bert, controller, 8, input_ids)
        assert accelerator.syncs_in("src/grain") == {}
        assert controller.mask_ffn.device == ACCELERATOR
        assert sparsity_bound(0.5, controller.shape, controller.units) <= controller.sparsity() <= 0.5


def test_original_ranking_crashes_on_an_accelerator(tiny_bert, monkeypatch):
    """The stand-in accelerator reproduces the GPU crash of the original select_lowest."""
    monkeypatch.setattr(controller_module, "select_lowest", grain_code(ORIGINAL_SELECT_LOWEST)["select_lowest"])
    controller = controller_for(tiny_bert, score="random")
    with fake_accelerator(), pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
        to_accelerator(controller).prune_to(0.5)


# --- (b) compaction and the compact model's forward ---------------------------------------------

def test_compaction_creates_tensors_on_the_models_device():
    model = tiny_model()
    masks = hard_masks(EncoderShape.of(model))
    with DeviceGuard():
        compact, _ = compact_from_masked(model, masks)
    with torch.no_grad(), DeviceGuard():
        compact.eval()(**token_batch())


def test_compact_model_on_an_accelerator_forwards_without_syncs():
    """The compact model's forward on the accelerator (its plan: padded heads, attention mask kept on
    the device) mixes no devices and never syncs, so torch.compile and CUDA graphs can capture it, and
    equals the masked model. (Compacted on the CPU: the compaction's own check runs the HF model, whose
    mask helpers the stand-in device cannot run; the DeviceGuard tests above cover compaction's code.)"""
    model = tiny_model()
    masks = hard_masks(EncoderShape.of(model))
    inputs = token_batch()
    expected = masked_outputs(model, masks, inputs).logits
    compact, _ = compact_from_masked(model, masks)
    with fake_accelerator() as accelerator:
        to_accelerator(compact)
        assert all(p.device == ACCELERATOR for p in compact.parameters())
        accelerator.syncs.clear()
        on_device = {k: v.to(ACCELERATOR) for k, v in inputs.items()}
        with torch.no_grad():
            compact.eval()(**on_device)
            logits = compact(**on_device).logits  # again: reuses the fused weights kept from the first
        assert dict(accelerator.syncs) == {}
        logits = logits.to("cpu")
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


# --- (c) benchmark ------------------------------------------------------------------------------

def test_benchmark_creates_tensors_on_the_models_device():
    dense = tiny_model(layers=2, vocab=BENCH_VOCAB)  # a vocabulary above the benchmark's token ids
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
