"""The WUDI loss of one 2-D tensor (SPEC §3), computed through the cheaper side.

    D(X) = sum_k c_k * ||(X - tau_k) tau_k^T||_F^2 / ||tau_k||_F^2,    X, tau_k: [d_out, d_in]

With w_k = c_k / ||tau_k||^2 and G_k = tau_k^T tau_k [d_in, d_in], each term is
tr((X - tau_k) G_k (X - tau_k)^T), so the whole loss is a quadratic in X:

    D(X) = <X A, X> - 2 <B, X> + sum_k w_k ||G_k||_F^2,   A = sum_k w_k G_k,  B = sum_k w_k tau_k G_k
    dD/dX = 2 (X A - B)

The Gram side precomputes G_k and tau_k G_k once; a step then costs one [d_out, d_in] x [d_in, d_in]
product however many experts there are, against 2K products through [d_out, d_out] on the direct
side. `auto` picks the Gram side when d_in <= d_out, which also keeps every intermediate no
larger than the tensor itself.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor


def resolve_side(side: Literal["auto", "gram", "direct"], shape: torch.Size) -> Literal["gram", "direct"]:
    d_out, d_in = shape
    if side == "auto":
        return "gram" if d_in <= d_out else "direct"
    return side


class WudiObjective:
    """D and its gradient for task vectors `taus` [K, d_out, d_in] (float32, none zero)."""

    def __init__(self, taus: Tensor, side: Literal["auto", "gram", "direct"] = "auto") -> None:
        self.taus = taus
        self.side = resolve_side(side, taus.shape[1:])
        self.inv_sq_norms = 1.0 / taus.flatten(1).square().sum(dim=1)  # [K]
        if self.side == "gram":
            self.grams = taus.mT @ taus  # [K, d_in, d_in]
            self.tau_grams = taus @ self.grams  # [K, d_out, d_in]
            self.gram_sq_norms = self.grams.flatten(1).square().sum(dim=1)  # [K]

    def quadratic(self, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(A [d_in, d_in], B [d_out, d_in], constant) of D for weights `c` [K] (Gram side only)."""
        w = c * self.inv_sq_norms
        a = torch.tensordot(w, self.grams, dims=1)
        b = torch.tensordot(w, self.tau_grams, dims=1)
        return a, b, torch.dot(w, self.gram_sq_norms)

    def loss_and_grad(self, x: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """D(x) (a 0-d tensor) and dD/dx [d_out, d_in] for weights `c` [K]."""
        if self.side == "gram":
            a, b, const = self.quadratic(c)
            xa = x @ a
            flat = x.reshape(-1)
            loss = torch.dot(xa.reshape(-1), flat) - 2 * torch.dot(b.reshape(-1), flat) + const
            return loss, xa.sub_(b).mul_(2)
        w = c * self.inv_sq_norms
        loss = x.new_zeros(())
        grad = torch.zeros_like(x)
        for k, tau in enumerate(self.taus):
            m = (x - tau) @ tau.T  # [d_out, d_out]
            loss += w[k] * m.square().sum()
            grad.addmm_(m.mul_(2 * w[k]), tau)
        return loss, grad
