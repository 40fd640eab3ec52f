"""Checks that need CUDA (`make test-gpu`; skipped without a GPU): the GPU plan of the compact model is
exact, compiles whole with CUDA graphs, and pruning runs on the device."""

import pytest
import torch

import grain  # noqa: F401
from grain.models.masks import EncoderShape, attach_mask_hooks
from grain.models.slicing import compact_from_masked
from grain.pruning.controller import PruningController
from tests.helpers.models import hard_masks, tiny_model, token_batch

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def masked_and_compact(dtype=torch.float32, family="bert"):
    model = tiny_model(family).to(CUDA)
    masks = {k: m.to(CUDA) for k, m in hard_masks(EncoderShape.of(model)).items()}
    compact, _ = compact_from_masked(model, masks)
    handles = attach_mask_hooks(model, lambda layer, kind: masks[kind][layer])
    batch = token_batch() if family == "bert" else token_batch(pad_id=model.config.pad_token_id, token_types=None)
    inputs = {k: v.to(CUDA) for k, v in batch.items()}
    return model, handles, compact.to(CUDA, dtype).eval(), inputs


# ModernBERT: rotary heads of kept pairs and sliding-window masks on the padded (GPU) plan
@pytest.mark.parametrize("family", ["bert", "modernbert"])
def test_gpu_plan_is_exact_in_fp32(family):
    model, _, compact, inputs = masked_and_compact(family=family)
    assert next(compact.parameters()).is_cuda
    with torch.no_grad():
        torch.testing.assert_close(compact(**inputs).logits, model(**inputs).logits, atol=1e-5, rtol=0)


def test_gpu_plan_in_bf16_within_the_stated_tolerance():
    model, _, compact, inputs = masked_and_compact(torch.bfloat16)
    with torch.no_grad():
        expected = model(**inputs, output_hidden_states=True).hidden_states[-1]
        got = compact(**inputs, output_hidden_states=True).hidden_states[-1].float()
    difference = (got - expected).abs()
    assert difference.max() <= 0.1 and difference.mean() <= 0.02


@pytest.mark.parametrize("family", ["bert", "modernbert"])
def test_compact_forward_captures_whole_in_cuda_graphs(family):
    _, _, compact, inputs = masked_and_compact(torch.bfloat16, family)
    compiled = torch.compile(compact, mode="reduce-overhead", fullgraph=True)
    with torch.no_grad():
        eager = compact(**inputs).logits
        for _ in range(3):  # record, then replay
            got = compiled(**inputs).logits
    torch.testing.assert_close(got.float(), eager.float(), atol=2e-2, rtol=0)


@pytest.mark.parametrize("units", ["intra", "head"])
def test_pruning_step_runs_on_the_device(units):
    model = tiny_model().to(CUDA)
    controller = PruningController(EncoderShape.of(model), 0.5, units=units, start=0.0, end=0.0).to(CUDA)
    controller.set_total_steps(1)
    controller.attach(model)
    mask_vars = controller.begin_step()
    inputs = {k: v.to(CUDA) for k, v in token_batch().items()}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(**inputs).logits.float().pow(2).mean()
    grads = torch.autograd.grad(loss, list(mask_vars.values()))
    controller.update_scores(dict(zip(mask_vars, grads)))
    assert controller.end_step()
    assert abs(controller.sparsity() - 0.5) < 0.05
    assert all(m.is_cuda for m in controller.masks().values())
