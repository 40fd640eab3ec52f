"""Mask hooks give exactly the outputs of a model whose masked rows/columns are zero, and mask
gradients summed in float32 under half-precision autocast."""

import copy

import torch

from grain.models.masks import EncoderShape, attach_mask_hooks, encoder_layers
from tests.helpers.models import token_batch


def random_masks(shape: EncoderShape, seed=0, keep=0.6):
    g = torch.Generator().manual_seed(seed)
    return {
        "qk": (torch.rand(shape.num_layers, shape.hidden_size, generator=g) < keep).float(),
        "vo": (torch.rand(shape.num_layers, shape.hidden_size, generator=g) < keep).float(),
        "ffn": (torch.rand(shape.num_layers, shape.intermediate_size, generator=g) < keep).float(),
    }


def zero_masked_weights(model, masks):
    """Reference: physically zero the rows/columns that the masks remove."""
    with torch.no_grad():
        for i, layer in enumerate(encoder_layers(model)):
            qk, vo, ffn = masks["qk"][i].bool(), masks["vo"][i].bool(), masks["ffn"][i].bool()
            attention = layer.attention
            for linear in (attention.self.query, attention.self.key):
                linear.weight[~qk] = 0
                linear.bias[~qk] = 0
            attention.self.value.weight[~vo] = 0
            attention.self.value.bias[~vo] = 0
            attention.output.dense.weight[:, ~vo] = 0
            layer.intermediate.dense.weight[~ffn] = 0
            layer.intermediate.dense.bias[~ffn] = 0
            layer.output.dense.weight[:, ~ffn] = 0


def test_masked_model_equals_zeroed_model(tiny_bert, tiny_batch):
    shape = EncoderShape.of(tiny_bert)
    masks = random_masks(shape)
    masks["vo"][1] = 0  # a whole MHA sub-layer gone
    masks["ffn"][0] = 0  # a whole FFN sub-layer gone
    zeroed = copy.deepcopy(tiny_bert)
    zero_masked_weights(zeroed, masks)
    attach_mask_hooks(tiny_bert, lambda layer, kind: masks[kind][layer])
    with torch.no_grad():
        masked_logits = tiny_bert(**tiny_batch).logits
        zeroed_logits = zeroed(**tiny_batch).logits
    torch.testing.assert_close(masked_logits, zeroed_logits, atol=1e-6, rtol=0)


def test_all_ones_masks_change_nothing(tiny_bert, tiny_batch):
    with torch.no_grad():
        before = tiny_bert(**tiny_batch).logits
    shape = EncoderShape.of(tiny_bert)
    ones = {k: torch.ones_like(v) for k, v in random_masks(shape).items()}
    handles = attach_mask_hooks(tiny_bert, lambda layer, kind: ones[kind][layer])
    with torch.no_grad():
        after = tiny_bert(**tiny_batch).logits
    for handle in handles:
        handle.remove()
    assert torch.equal(before, after)


def test_mask_gradients_are_summed_in_float32_under_bf16_autocast(tiny_bert):
    """Under bf16 autocast dL/dm still sums its tokens' terms in float32: it matches a float64 sum of
    the same bf16 activations and gradients to ~1e-7 of the largest gradient (a bf16 sum: ~1e-3)."""
    shape = EncoderShape.of(tiny_bert)
    masks = {kind: torch.ones(shape.num_layers, n, requires_grad=True) for kind, n in shape.units_per_layer.items()}
    attach_mask_hooks(tiny_bert, lambda layer, kind: masks[kind][layer])
    seen = {}

    def capture(module, args):  # runs after the mask hook: sees x * m, equal to x at m = 1
        seen["x"] = args[0].detach()
        args[0].register_hook(lambda grad: seen.setdefault("grad", grad))

    encoder_layers(tiny_bert)[0].output.dense.register_forward_pre_hook(capture)
    input_ids = token_batch((8, 32), seed=0, lengths=None)["input_ids"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = tiny_bert(input_ids=input_ids).logits.float().logsumexp(-1).sum()
    (ffn_grad,) = torch.autograd.grad(loss, [masks["ffn"]])
    assert seen["x"].dtype == seen["grad"].dtype == torch.bfloat16
    units = shape.intermediate_size
    reference = (seen["grad"].double() * seen["x"].double()).reshape(-1, units).sum(0)
    error = (ffn_grad[0].double() - reference).abs().max() / reference.abs().max()
    assert error < 1e-5, f"relative error {error:.2e} of the mask gradient"
