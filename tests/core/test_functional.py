"""The equation against an independent float64 reference, per token, for any leading shape."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ina import ina_delta, inhibit
from ina.core.functional import ACTIVATIONS


def reference_token(x, w0, b, a, bm, scaling, rho, activation, slope=0.01):
    """One token, float64, written from the paper's equation with no shared code."""
    h = a @ x
    g = h - rho * h.max() if rho > 0 else h
    if rho > 0:
        if activation == "leaky_relu":
            g = np.where(g >= 0, g, slope * g)
        elif activation == "gelu":
            from scipy.special import erf

            g = 0.5 * g * (1 + erf(g / np.sqrt(2)))
    return w0 @ x + b + scaling * (bm @ g)


def test_worked_example_of_the_reference():
    h = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    expected = torch.tensor([0.1, -0.029, -0.004, 2.1], dtype=torch.float64)
    torch.testing.assert_close(inhibit(h, 0.3), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("rho", [0.0, 0.1, 0.3, 0.9])
def test_layer_equation_matches_float64_reference(rho, activation):
    rng = np.random.default_rng(0)
    tokens, d_in, d_out, r = 5, 7, 6, 4
    x, w0, b = rng.normal(size=(tokens, d_in)), rng.normal(size=(d_out, d_in)), rng.normal(size=d_out)
    a, bm = rng.normal(size=(r, d_in)), rng.normal(size=(d_out, r))
    scaling = 16 / r
    expected = np.stack([reference_token(t, w0, b, a, bm, scaling, rho, activation) for t in x])
    t = torch.from_numpy
    got = t(x) @ t(w0).T + t(b) + ina_delta(t(x), t(a), t(bm), scaling, rho, activation)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_rho_zero_is_identity_whatever_the_activation():
    h = torch.randn(3, 8)
    for activation in ACTIVATIONS:
        assert torch.equal(inhibit(h, 0.0, activation), h)


@pytest.mark.parametrize("shape", [(8,), (5, 8), (2, 5, 8), (2, 3, 4, 8)])
def test_max_is_over_the_rank_axis_only(shape):
    h = torch.randn(*shape, dtype=torch.float64)
    rows = h.reshape(-1, shape[-1])
    expected = torch.stack([F.leaky_relu(row - 0.3 * row.max(), 0.01) for row in rows]).reshape(shape)
    torch.testing.assert_close(inhibit(h, 0.3), expected)


def test_each_token_is_gated_on_its_own():
    h = torch.randn(2, 6, 8)
    out = inhibit(h, 0.5)
    h2 = h.clone()
    h2[1, 3] *= 10  # change one token of one sample
    out2 = inhibit(h2, 0.5)
    changed = (out2 != out).any(dim=-1)
    assert changed[1, 3] and changed.sum() == 1


def test_gradient_reaches_A_through_the_threshold():
    torch.manual_seed(0)
    x = torch.randn(4, 6, dtype=torch.float64)
    a = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    bm = torch.randn(5, 3, dtype=torch.float64)
    ina_delta(x, a, bm, 2.0, 0.3, "identity").sum().backward()
    # with f = identity the only non-linear path is the threshold; a detached max would give another gradient
    a_detached = a.detach().clone().requires_grad_(True)
    h = x @ a_detached.T
    ((h - 0.3 * h.amax(-1, keepdim=True).detach()) @ bm.T * 2.0).sum().backward()
    assert not torch.allclose(a.grad, a_detached.grad)
    assert torch.autograd.gradcheck(lambda a_: ina_delta(x, a_, bm, 2.0, 0.3), (a.detach().requires_grad_(),))


def test_unknown_activation_is_named():
    with pytest.raises(ValueError, match="`activation` must be one of"):
        inhibit(torch.randn(2, 3), 0.3, "relu6")
