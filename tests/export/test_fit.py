"""The closed-form fit: exact for linear branches, optimal among rank-k maps, the same streamed or at once."""

from __future__ import annotations

import pytest
import torch

from ina.core.functional import ina_delta
from ina.export.fit import Moments, fit_low_rank, rank_for


def _inputs(n: int = 3000, dim: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(dim, dim, generator=generator) * torch.linspace(0.1, 3.0, dim)
    return torch.randn(n, dim, generator=generator, dtype=torch.float64) @ mixing.to(torch.float64)


def _branch(seed: int = 1, r: int = 4, dim: int = 16, out: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    A = torch.randn(r, dim, generator=generator, dtype=torch.float64)
    B = torch.randn(out, r, generator=generator, dtype=torch.float64)
    return A, B


def _moments(x: torch.Tensor, delta: torch.Tensor) -> Moments:
    moments = Moments.zeros(x.shape[1], delta.shape[1])
    moments.add(x, delta)
    return moments


@pytest.mark.parametrize("activation", ["leaky_relu", "identity"])
def test_the_fit_is_exact_when_the_branch_is_linear(activation: str) -> None:
    x, (A, B) = _inputs(), _branch()
    delta = ina_delta(x, A, B, scaling=2.0, inhibition=0.0, activation=activation)  # ρ = 0: LoRA
    fit = fit_low_rank(_moments(x, delta), rank=4)
    recovered = fit.A.T @ fit.B.T  # (in, out): Δ ≈ x·M
    assert torch.allclose(recovered, 2.0 * A.T @ B.T, rtol=1e-8, atol=1e-8)
    assert fit.calibration_error() < 1e-12
    assert fit.explained() == pytest.approx(1.0)
    assert rank_for(fit.singular_values, 0.999999) == 4


def test_a_gated_branch_is_not_linear() -> None:
    x, (A, B) = _inputs(), _branch()
    delta = ina_delta(x, A, B, scaling=2.0, inhibition=0.5, activation="leaky_relu")
    fit = fit_low_rank(_moments(x, delta), rank=4)
    assert 1e-3 < fit.calibration_error() < 1.0


def test_rank_k_truncation_is_the_best_rank_k_map_on_the_data() -> None:
    """Against the full least-squares map cut in the plain (not the input-covariance) metric: never worse."""
    x, (A, B) = _inputs(seed=3), _branch(seed=4, r=6)
    delta = ina_delta(x, A, B, scaling=1.0, inhibition=0.3, activation="gelu")
    moments = _moments(x, delta)
    for rank in (1, 2, 3):
        fit = fit_low_rank(moments, rank)
        ours = (delta - x @ fit.A.T @ fit.B.T).square().sum() / delta.square().sum()
        assert float(ours) == pytest.approx(fit.calibration_error(), rel=1e-6, abs=1e-12)
        full = torch.linalg.lstsq(x, delta).solution  # (in, out)
        U, S, Vh = torch.linalg.svd(full, full_matrices=False)
        naive = (U[:, :rank] * S[:rank]) @ Vh[:rank]
        theirs = (delta - x @ naive).square().sum() / delta.square().sum()
        assert float(ours) <= float(theirs) + 1e-12
    exact_full = (delta - x @ torch.linalg.lstsq(x, delta).solution).square().sum() / delta.square().sum()
    assert fit_low_rank(moments, 6).calibration_error() == pytest.approx(float(exact_full), rel=1e-6)


def test_streamed_moments_equal_moments_at_once() -> None:
    x, (A, B) = _inputs(n=999), _branch()
    delta = ina_delta(x, A, B, 1.0, 0.3)
    streamed = Moments.zeros(16, 12)
    for chunk in range(0, 999, 100):
        streamed.add(x[chunk : chunk + 100].float(), delta[chunk : chunk + 100].float())
    whole = _moments(x.float(), delta.float())
    assert streamed.count == whole.count == 999
    assert torch.allclose(streamed.gram, whole.gram, rtol=1e-10)
    assert torch.allclose(streamed.cross, whole.cross, rtol=1e-10)
    assert streamed.target_sq == pytest.approx(whole.target_sq, rel=1e-10)


def test_unvisited_input_directions_get_no_weight() -> None:
    x = _inputs(dim=16)
    x[:, 10:] = 0  # the calibration text never uses 6 of the 16 input directions
    A, B = _branch()
    fit = fit_low_rank(_moments(x, ina_delta(x, A, B, 1.0, 0.0)), rank=4)
    assert fit.input_rank == 10
    assert float(fit.A[:, 10:].abs().max()) < 1e-12
    assert fit.calibration_error() < 1e-12


def test_rank_for_reaches_the_share() -> None:
    sigma = torch.tensor([3.0, 2.0, 1.0, 0.0])
    assert rank_for(sigma, 0.5) == 1  # 9 / 14
    assert rank_for(sigma, 0.9) == 2  # 13 / 14
    assert rank_for(sigma, 1.0) == 3
    assert rank_for(torch.zeros(3), 0.99) == 1


def test_fitting_in_the_span_of_b_is_the_same_fit() -> None:
    x, (A, B) = _inputs(seed=5), _branch(seed=6)
    delta = ina_delta(x, A, B, scaling=1.5, inhibition=0.3)
    moments = _moments(x, delta)
    basis = torch.linalg.qr(B)[0]  # Δ = s·B·g lies in the span of B's columns
    for rank in (2, 4):
        plain, fast = fit_low_rank(moments, rank), fit_low_rank(moments, rank, output_basis=basis)
        assert torch.allclose(plain.A.T @ plain.B.T, fast.A.T @ fast.B.T, rtol=1e-7, atol=1e-9)
        assert fast.calibration_error() == pytest.approx(plain.calibration_error(), rel=1e-8)
