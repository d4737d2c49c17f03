"""The closed-form fit: the rank-k linear map that best reproduces a branch's outputs from its inputs.

For one adapted layer, calibration gives inputs ``X`` (n × in) and branch outputs ``Δ`` (n × out).
Only two sums are kept, streamed in float64: ``G = XᵀX`` and ``C = XᵀΔ`` (plus ``‖Δ‖²`` and ``n``).
The least-squares map is ``M = G⁻¹C``; the best rank-k map in the same least-squares sense is the
rank-k truncation of ``M`` in the metric of the input covariance: with ``G = U·diag(s)·Uᵀ`` and
``Z = diag(s)^-½·Uᵀ·C = P·diag(σ)·Qᵀ``, ``M_k = U·diag(s)^-½·P_k·diag(σ_k)·Q_kᵀ`` and the fitted
branch leaves ``‖Δ‖² − Σ_{i≤k} σ_i²`` of ``Δ``'s energy unexplained on the calibration set.

``M_k`` is written as a LoRA pair with scaling 1 and the singular values split evenly between the two
factors: ``A = diag(σ_k)^½·P_kᵀ·diag(s)^-½·Uᵀ`` (k × in), ``B = Q_k·diag(σ_k)^½`` (out × k), so that
``Δ ≈ x·Aᵀ·Bᵀ``. Directions of the input that the calibration data never visit (eigenvalues of ``G``
below ``rel_tol`` of the largest) get no weight: the map is the minimum-norm one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Moments:
    """Streamed float64 sums of one layer's calibration activations: ``XᵀX``, ``XᵀΔ``, ``‖Δ‖²``, ``n``.

    ``gram`` may be shared by layers that read the same input (q/k/v projections): they add to it once.
    """

    gram: torch.Tensor  # (in, in) float64
    cross: torch.Tensor  # (in, out) float64
    target_sq: float = 0.0
    count: int = 0

    @classmethod
    def zeros(cls, n_in: int, n_out: int, gram: torch.Tensor | None = None) -> Moments:
        if gram is None:
            gram = torch.zeros(n_in, n_in, dtype=torch.float64)
        return cls(gram=gram, cross=torch.zeros(n_in, n_out, dtype=torch.float64))

    def add(self, x: torch.Tensor, delta: torch.Tensor, update_gram: bool = True) -> None:
        """Add rows ``x`` (m × in) and their branch outputs ``delta`` (m × out)."""
        device = self.gram.device
        x64, d64 = x.detach().to(device, torch.float64), delta.detach().to(device, torch.float64)
        if update_gram:
            self.gram.add_(x64.T @ x64)
        self.cross.add_(x64.T @ d64)
        self.target_sq += float((d64 * d64).sum())
        self.count += x64.shape[0]


@dataclass
class LowRankFit:
    """A fitted branch ``Δ ≈ x·Aᵀ·Bᵀ`` (float64) and the spectrum it was cut from."""

    A: torch.Tensor  # (k, in)
    B: torch.Tensor  # (out, k)
    singular_values: torch.Tensor  # σ of the whitened target, all of them, descending
    target_sq: float  # ‖Δ‖² on the calibration set
    input_rank: int  # directions of the input kept (eigenvalues of G above the tolerance)
    count: int  # calibration rows
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    def explained(self, rank: int | None = None) -> float:
        """Share of the linearly explainable energy (``Σσ²``) that the first ``rank`` directions carry."""
        energy = self.singular_values.square()
        total = float(energy.sum())
        if total <= 0:
            return 1.0
        return float(energy[: self.rank if rank is None else rank].sum()) / total

    def calibration_error(self, rank: int | None = None) -> float:
        """Relative error ``‖Δ − X·M_k‖² / ‖Δ‖²`` of the rank-``rank`` fit on the calibration rows."""
        if self.target_sq <= 0:
            return 0.0
        kept = float(self.singular_values[: self.rank if rank is None else rank].square().sum())
        return max(0.0, 1.0 - kept / self.target_sq)


def rank_for(singular_values: torch.Tensor, explained_variance: float) -> int:
    """The smallest rank whose directions carry ``explained_variance`` of ``Σσ²`` (at least 1)."""
    energy = singular_values.to(torch.float64).square()
    total = float(energy.sum())
    if total <= 0:
        return 1
    cumulative = torch.cumsum(energy, 0) / total
    reached = torch.nonzero(cumulative >= explained_variance - 1e-12)
    return int(reached[0]) + 1 if len(reached) else len(energy)


def whitening(gram: torch.Tensor, rel_tol: float = 1e-10) -> tuple[torch.Tensor, torch.Tensor]:
    """``U`` (in × p) and ``s^-½`` (p,) of ``G = U·diag(s)·Uᵀ``, keeping eigenvalues above ``rel_tol`` of the largest.

    Layers that share ``XᵀX`` (q/k/v) share this too: compute it once per ``XᵀX``.
    """
    eigenvalues, eigenvectors = torch.linalg.eigh((gram + gram.T) / 2)
    top = float(eigenvalues.max()) if eigenvalues.numel() else 0.0
    keep = eigenvalues > rel_tol * top if top > 0 else torch.zeros_like(eigenvalues, dtype=torch.bool)
    return eigenvectors[:, keep], eigenvalues[keep].rsqrt()


def fit_low_rank(
    moments: Moments,
    rank: int,
    white: tuple[torch.Tensor, torch.Tensor] | None = None,
    output_basis: torch.Tensor | None = None,
) -> LowRankFit:
    """The rank-``rank`` least-squares map from the layer's inputs to its branch outputs (see module doc).

    ``white``: `whitening` of ``moments.gram``, when already computed. ``output_basis`` (out × q, orthonormal
    columns): a subspace every ``Δ`` lies in (the InA branch ``s·B·g`` lies in the span of B's columns);
    the SVD is then taken in those q coordinates, exactly and much faster than over all ``out``.
    """
    U, inv_sqrt = white if white is not None else whitening(moments.gram)  # (in, p), (p,)
    cross = moments.cross if output_basis is None else moments.cross @ output_basis  # (in, out) or (in, q)
    Z = (U.T @ cross) * inv_sqrt[:, None]  # Σ^-½ C in the kept eigenbasis
    P, sigma, Qt = torch.linalg.svd(Z, full_matrices=False)  # (p, m), (m,), (m, out or q)
    if output_basis is not None:
        Qt = Qt @ output_basis.T  # back to output coordinates: (m, out)
    k = max(1, min(rank, sigma.numel())) if sigma.numel() else 0
    root = sigma[:k].clamp_min(0).sqrt()
    A = (root[:, None] * (P[:, :k].T * inv_sqrt[None, :])) @ U.T  # (k, in)
    B = Qt[:k].T * root[None, :]  # (out, k)
    if k < rank:  # fewer informative directions than asked: pad with zero directions (no effect)
        A = torch.cat([A, A.new_zeros(rank - k, A.shape[1])])
        B = torch.cat([B, B.new_zeros(B.shape[0], rank - k)], dim=1)
    return LowRankFit(
        A=A,
        B=B,
        singular_values=sigma,
        target_sq=moments.target_sq,
        input_rank=int(U.shape[1]),
        count=moments.count,
    )
