"""The fused InA branch (ina.core.fast) against the reference: `inhibit` plus plain matmuls, under autograd."""

import contextlib

import pytest
import torch
from peft import get_peft_model

from ina import InAConfig, inhibit
from ina.core import fast
from ina.core.functional import ACTIVATIONS, ina_delta
from ina.testing import tiny_model

SHAPES = [(6, 16), (2, 5, 16), (2, 3, 4, 16)]  # 2-D, 3-D, 4-D inputs, in = 16


def reference(x, result, lora_A, lora_B, scaling, rho, activation, slope=0.01, mask=None, p=0.0):
    """The reference path, written with `inhibit` and plain matmuls; `mask` is the dropout mask to apply."""
    xd = x * mask / (1 - p) if mask is not None else x
    h = xd @ lora_A.T
    return result + (inhibit(h, rho, activation, slope) @ lora_B.T) * scaling


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def make(shape, r=4, d_out=12, dtype=torch.float32):
    x = torch.randn(*shape, dtype=dtype)
    result = torch.randn(*shape[:-1], d_out, dtype=dtype)
    lora_A = torch.randn(r, shape[-1], dtype=dtype) / shape[-1] ** 0.5
    lora_B = torch.randn(d_out, r, dtype=dtype)
    return x, result, lora_A, lora_B


def run(fn, tensors, **kwargs):
    """Output and gradients of (x, result, A, B) for a fixed random upstream gradient."""
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves, **kwargs)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    (out * upstream.to(out.device, out.dtype)).sum().backward()
    return [out.detach(), *[t.grad for t in leaves]]


def fused(x, result, lora_A, lora_B, scaling, rho, activation, slope=0.01, p=0.0, seed=None):
    return fast.ina_branch(x, result, lora_A, lora_B, scaling, rho, activation, slope, dropout=p, seed=seed)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("rho", [0.0, 0.3, 0.9])
def test_forward_and_backward_match_reference_fp32(shape, activation, rho):
    tensors = make(shape)
    expected = run(reference, tensors, scaling=2.0, rho=rho, activation=activation)
    got = run(fused, tensors, scaling=2.0, rho=rho, activation=activation)
    for name, g, e in zip(["output", "x", "result", "A", "B"], got, expected, strict=True):
        assert g.shape == e.shape, name
        assert rel_err(g, e) < 1e-5, (name, rel_err(g, e))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("rho", [0.0, 0.3, 0.9])
def test_fast_equals_functional_ina_delta(activation, rho):
    """The fused branch is `result + functional.ina_delta`, outputs and gradients, on random float64 inputs."""
    torch.manual_seed(3)
    tensors = make((3, 5, 32), r=6, d_out=24, dtype=torch.float64)

    def equation(x, result, lora_A, lora_B, scaling, rho, activation, slope=0.01):
        return result + ina_delta(x, lora_A, lora_B, scaling, rho, activation, slope)

    expected = run(equation, tensors, scaling=1.5, rho=rho, activation=activation, slope=0.2)
    got = run(fused, tensors, scaling=1.5, rho=rho, activation=activation, slope=0.2)
    for name, g, e in zip(["output", "x", "result", "A", "B"], got, expected, strict=True):
        assert g.dtype == e.dtype == torch.float64, name
        assert rel_err(g, e) < 1e-12, (name, rel_err(g, e))


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_forward_and_backward_match_reference_bf16(activation):
    tensors = make((3, 7, 64), r=8, d_out=32, dtype=torch.bfloat16)
    expected = run(reference, [t.float() for t in tensors], scaling=2.0, rho=0.3, activation=activation)
    got = run(fused, tensors, scaling=2.0, rho=0.3, activation=activation)
    for name, g, e in zip(["output", "x", "result", "A", "B"], got, expected, strict=True):
        assert g.dtype == torch.bfloat16, name
        assert rel_err(g, e) < 1e-2, (name, rel_err(g, e))


def test_bf16_is_as_accurate_as_the_reference_path():
    """Against float64, the fused bf16 branch is no further off than the reference in bf16 (mean of 5 draws)."""
    fused_err, ref_err = torch.zeros(5), torch.zeros(5)
    for seed in range(5):
        torch.manual_seed(seed)
        t64 = [t.double() for t in make((4, 16, 64), r=8, d_out=64)]
        exact = run(reference, t64, scaling=2.0, rho=0.3, activation="leaky_relu")
        t16 = [t.bfloat16() for t in t64]
        got = run(fused, t16, scaling=2.0, rho=0.3, activation="leaky_relu")
        ref = run(reference, t16, scaling=2.0, rho=0.3, activation="leaky_relu")
        fused_err += torch.tensor([rel_err(g, e) for g, e in zip(got, exact, strict=True)]) / 5
        ref_err += torch.tensor([rel_err(r, e) for r, e in zip(ref, exact, strict=True)]) / 5
    assert bool((fused_err <= 1.1 * ref_err).all()), (fused_err, ref_err)


def test_gradient_of_tied_maxima_is_split_like_amax():
    x, result, lora_A, lora_B = make((2, 5, 16))
    x = x.abs()
    lora_A = lora_A.abs() * 0.1
    lora_A[0] = lora_A[1] = 1.0  # rows 0 and 1 give the same, largest activation for every token
    lora_B[:, 1] = lora_B[:, 0]  # and feed B the same way, so only the max's tie rule tells them apart
    h = x @ lora_A.T
    assert bool((h[..., 0] == h[..., 1]).all()) and bool((h.argmax(-1) <= 1).all())
    tensors = (x, result, lora_A, lora_B)
    expected = run(reference, tensors, scaling=1.0, rho=0.5, activation="leaky_relu")
    got = run(fused, tensors, scaling=1.0, rho=0.5, activation="leaky_relu")
    for name, g, e in zip(["output", "x", "result", "A", "B"], got, expected, strict=True):
        assert rel_err(g, e) < 1e-5, (name, rel_err(g, e))
    # split evenly between the tied maxima, the two rows of A get the same gradient (argmax-only would not)
    torch.testing.assert_close(got[3][0], got[3][1])


@contextlib.contextmanager
def mask_policy(policy):
    previous = fast.get_dropout_mask_policy()
    fast.set_dropout_mask_policy(policy)
    try:
        yield
    finally:
        fast.set_dropout_mask_policy(previous)


@pytest.mark.parametrize("policy", ["regenerate", "save"])
@pytest.mark.parametrize("shape", SHAPES)
def test_dropout_mask_is_reproduced_forward_and_backward(shape, policy):
    tensors = make(shape)
    p, seed = 0.25, 1234
    flat = (tensors[0].numel() // shape[-1], shape[-1])
    mask = fast.dropout_mask(seed, flat, p, "cpu").view(shape)
    assert mask.dtype == torch.bool and 0.1 < 1 - mask.float().mean().item() < 0.4  # about p are dropped
    expected = run(reference, tensors, scaling=2.0, rho=0.3, activation="leaky_relu", mask=mask, p=p)
    with mask_policy(policy):
        got = run(fused, tensors, scaling=2.0, rho=0.3, activation="leaky_relu", p=p, seed=seed)
    for name, g, e in zip(["output", "x", "result", "A", "B"], got, expected, strict=True):
        assert rel_err(g, e) < 1e-5, (name, rel_err(g, e))
    # without the mask, the outputs differ: dropout really was applied
    undropped = run(reference, tensors, scaling=2.0, rho=0.3, activation="leaky_relu")
    assert rel_err(got[0], undropped[0]) > 1e-3


def test_dropout_seed_comes_from_torch_manual_seed():
    tensors = make((4, 16))
    torch.manual_seed(7)
    first = fused(*tensors, scaling=1.0, rho=0.3, activation="leaky_relu", p=0.5)
    torch.manual_seed(7)
    again = fused(*tensors, scaling=1.0, rho=0.3, activation="leaky_relu", p=0.5)
    other = fused(*tensors, scaling=1.0, rho=0.3, activation="leaky_relu", p=0.5)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.equal(first, other)


@pytest.mark.parametrize(("p", "policy"), [(0.0, "auto"), (0.1, "regenerate"), (0.1, "save")])
def test_saves_no_copy_of_x(p, policy):
    """Kept for backward: x itself, A, B, (*, r)-sized tensors, and with the "save" policy a boolean mask."""
    x, result, lora_A, lora_B = (t.requires_grad_() for t in make((2, 8, 64), r=4, d_out=48))
    saved = []
    with (
        torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t),
        mask_policy(policy),
    ):
        fused(x, result, lora_A, lora_B, scaling=1.0, rho=0.3, activation="leaky_relu", p=p)
    known = {
        x.untyped_storage().data_ptr(),
        lora_A.untyped_storage().data_ptr(),
        lora_B.untyped_storage().data_ptr(),
    }
    big = [t for t in saved if t.untyped_storage().data_ptr() not in known and t.numel() > 2 * 8 * 4]
    if policy == "save":
        assert [(t.dtype, t.numel()) for t in big] == [(torch.bool, x.numel())]
    else:
        assert big == []
    assert (
        sum(t.numel() for t in saved if t.numel() == 2 * 8 * 4) == 3 * 2 * 8 * 4
    )  # s·g, s·f'(z), tie weights


def test_reference_path_keeps_a_copy_with_dropout():
    """The measurement above can fail: the reference path (PEFT's nn.Dropout then A) saves a full copy."""
    x = torch.randn(2, 8, 64, requires_grad=True)
    lora_A = torch.nn.Linear(64, 4, bias=False)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        lora_A(torch.nn.functional.dropout(x, 0.1, training=True))
    assert any(
        t.shape == x.shape and t.untyped_storage().data_ptr() != x.untyped_storage().data_ptr() for t in saved
    )


def test_rejects_bad_arguments_by_name():
    tensors = make((4, 16))
    with pytest.raises(ValueError, match="`activation`"):
        fused(*tensors, scaling=1.0, rho=0.3, activation="relu")
    with pytest.raises(ValueError, match="`dropout`"):
        fused(*tensors, scaling=1.0, rho=0.3, activation="gelu", p=1.0)


def _peft_model(dropout: float = 0.0):
    model = get_peft_model(
        tiny_model("llama"),
        InAConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear", inhibition=0.3),
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # a non-zero adapter, so the branch matters
    return model


def _logits_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    logits = model(ids).logits
    logits.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return logits.detach(), grads


def _fused_calls(model, ids):
    calls = []
    original = fast.InABranch.forward

    def counting(ctx, *args):
        calls.append(1)
        return original(ctx, *args)

    fast.InABranch.forward = staticmethod(counting)
    try:
        model(ids)
    finally:
        fast.InABranch.forward = staticmethod(original)
    return len(calls)


def test_peft_model_fast_path_gives_reference_logits_and_grads():
    model = _peft_model(dropout=0.1).eval()  # dropout configured but inactive in eval mode
    ids = torch.randint(4, 500, (2, 9))
    with fast.enabled(False):
        assert _fused_calls(model, ids) == 0
        ref_logits, ref_grads = _logits_and_grads(model, ids)
    with fast.enabled(True):
        assert _fused_calls(model, ids) == 2 * 7  # every adapted linear layer of the 2-layer model
        logits, grads = _logits_and_grads(model, ids)
    assert rel_err(logits, ref_logits) < 1e-5
    with torch.no_grad():  # inference runs the fused computation without an autograd node
        assert rel_err(model(ids).logits, ref_logits) < 1e-5
        with fast.enabled(False):
            assert rel_err(model(ids).logits, ref_logits) < 1e-6
    assert grads.keys() == ref_grads.keys() and len(grads) == 2 * 2 * 7
    for name, grad in grads.items():
        assert rel_err(grad, ref_grads[name]) < 1e-5, name


def test_peft_model_trains_with_fast_path_and_dropout():
    model = _peft_model(dropout=0.1).train()
    ids = torch.randint(4, 500, (2, 9))
    assert _fused_calls(model, ids) == 2 * 7
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_narrower_result_dtype_is_widened_like_the_reference():
    """fp32 adapters on a bf16 base (PEFT's default): `result + delta` promotes to fp32."""
    x, result, lora_A, lora_B = make((2, 5, 16))
    result = result.bfloat16()
    expected = run(reference, (x, result, lora_A, lora_B), scaling=2.0, rho=0.3, activation="gelu")
    got = run(fused, (x, result, lora_A, lora_B), scaling=2.0, rho=0.3, activation="gelu")
    assert got[0].dtype == expected[0].dtype == torch.float32 and got[2].dtype == torch.bfloat16
    for name, g, e in zip(["output", "x", "result", "A", "B"], got, expected, strict=True):
        assert rel_err(g, e) < 1e-5, (name, rel_err(g, e))
    assert not fast.supports(x.bfloat16(), result.float(), lora_A.bfloat16(), lora_B.bfloat16())


def test_peft_model_fast_path_under_cpu_autocast():
    """bf16 autocast: the fused branch runs in bf16 too, about as close to fp32 as the reference."""
    model = _peft_model().eval()
    ids = torch.randint(4, 500, (2, 9))
    exact_logits, exact_grads = _logits_and_grads(model, ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with fast.enabled(False):
            ref_logits, ref_grads = _logits_and_grads(model, ids)
        with fast.enabled(True):
            assert _fused_calls(model, ids) == 2 * 7
            logits, grads = _logits_and_grads(model, ids)
    assert logits.dtype == ref_logits.dtype
    assert rel_err(logits, exact_logits) <= rel_err(ref_logits, exact_logits) + 1e-2
    assert all(grad.dtype == torch.float32 for grad in grads.values())
    # all gradients at once (single bf16 gradients of this tiny random model are 2-15 % off fp32 on either
    # path, by chance of rounding); a bug would be off by O(1)
    names = sorted(exact_grads)
    exact, fused_all, ref_all = (
        torch.cat([g[n].flatten() for n in names]) for g in (exact_grads, grads, ref_grads)
    )
    assert rel_err(fused_all, exact) <= 1.5 * rel_err(ref_all, exact) + 1e-2


def test_forward_hooks_on_adapter_modules_get_the_reference_path():
    """Hooks (e.g. `ina viz inhibition` capturing h from lora_A) must still fire: the layer falls back."""
    model = _peft_model().eval()
    ids = torch.randint(4, 500, (1, 5))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    captured = []
    handle = layer.lora_A["default"].register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        assert _fused_calls(model, ids) == 2 * 7 - 1
    finally:
        handle.remove()
    assert len(captured) == 1 and captured[0].shape == (1, 5, 4)
    assert _fused_calls(model, ids) == 2 * 7


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p", [0.0, 0.1])
def test_cuda_matches_reference(dtype, p):
    tensors = [t.cuda() for t in make((2, 33, 256), r=8, d_out=128, dtype=dtype)]
    seed = 99
    mask = fast.dropout_mask(seed, (66, 256), p, "cuda").view(2, 33, 256) if p else None
    as_float = [t.float() for t in tensors]
    expected = run(reference, as_float, scaling=2.0, rho=0.3, activation="leaky_relu", mask=mask, p=p)
    with mask_policy("auto"):  # regenerate on CUDA
        got = run(fused, tensors, scaling=2.0, rho=0.3, activation="leaky_relu", p=p, seed=seed)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    for name, g, e in zip(["output", "x", "result", "A", "B"], got, expected, strict=True):
        assert rel_err(g, e) < tolerance, (name, rel_err(g, e))


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_recomputes_the_same_dropout_masks(reentrant):
    """Recomputation draws the same seeds (checkpointing restores the RNG state), so gradients are unchanged."""
    ids = torch.randint(4, 500, (2, 9))

    def grads(checkpoint: bool):
        torch.manual_seed(0)
        model = _peft_model(dropout=0.2).train()
        if checkpoint:
            model.base_model.model.activation_checkpointing_enable({"use_reentrant": reentrant})
            model.base_model.model.enable_input_require_grads()
        if not (checkpoint and reentrant):  # reentrant checkpointing runs the forward pass without grad
            assert _fused_calls(model, ids) == 2 * 7
        torch.manual_seed(1)
        model(ids, labels=ids).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    plain, checkpointed = grads(False), grads(True)
    for name, grad in plain.items():
        assert rel_err(checkpointed[name], grad) < 1e-6, name
