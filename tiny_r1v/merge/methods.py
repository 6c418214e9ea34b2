"""Merge methods: pure per-tensor functions in a registry, apart from all I/O (SPEC §3).

Every method maps the task vectors of one tensor, `taus` [K, *shape] (float32, none of them zero:
the caller skips zero task vectors), and its parameter section of `MergeConfig` to the merged
task vector [*shape]; the caller adds it to the base and casts back. The optimised methods
(`wudi`, `wudi_closed`, `amm`) take 2-D tensors, [K, d_out, d_in].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from tiny_r1v.merge.config import AmmConfig, TaskArithmeticConfig, TiesConfig, WudiClosedConfig, WudiConfig
from tiny_r1v.merge.objective import WudiObjective

MergeFn = Callable[[Tensor, Any], Tensor]
METHODS: dict[str, MergeFn] = {}
"""Registry: method name -> function. `MergeConfig` has a parameter section of the same name,
of the type in `PARAMS` (a unit test holds the two to each other)."""
PARAMS: dict[str, type] = {}
"""Method name -> its parameter class, declared where the method registers."""
ELEMENTWISE: set[str] = set()
"""Methods whose result at an entry depends on that entry alone, so the job may merge a tensor
in blocks of entries."""


def register(name: str, params: type, elementwise: bool = False) -> Callable[[MergeFn], MergeFn]:
    """Add the decorated function to the registry as `name`, taking a `params` instance."""

    def add(fn: MergeFn) -> MergeFn:
        if name in METHODS:
            raise ValueError(f"merge method {name!r} is registered twice")
        METHODS[name] = fn
        PARAMS[name] = params
        if elementwise:
            ELEMENTWISE.add(name)
        return fn

    return add


def total(taus: Tensor) -> Tensor:
    """sum_k taus[k] as K - 1 in-place additions: on the CPU torch's reduction over a short
    leading dim is several times slower (docs/benchmarks.md#merge)."""
    out = taus[0].clone()
    for tau in taus[1:]:
        out.add_(tau)
    return out


def mean(taus: Tensor) -> Tensor:
    """The `mean` treatment: the average task vector."""
    return total(taus).div_(len(taus))


def weighted_sum(weights: Tensor, taus: Tensor) -> Tensor:
    """sum_k weights[k] * taus[k]; weights [K]."""
    return torch.tensordot(weights, taus, dims=1)


@register("task_arithmetic", params=TaskArithmeticConfig, elementwise=True)
def task_arithmetic(taus: Tensor, params: TaskArithmeticConfig) -> Tensor:
    return total(taus).mul_(params.lam)


@register("ties", params=TiesConfig)
def ties(taus: Tensor, params: TiesConfig) -> Tensor:
    """Trim each task vector to its largest `density` share, elect a sign per entry, average the
    entries that agree with it (peft's steps); then scale by `lam`."""
    # Imported here: peft pulls in transformers (about 20 s and 300 MB), and only TIES needs it.
    from peft.utils.merge_utils import ties as peft_ties

    weights = torch.full((len(taus),), params.lam, dtype=taus.dtype, device=taus.device)
    return peft_ties(list(taus), weights, params.density, params.sign)


def adam(
    x0: Tensor,
    loss_and_grad: Callable[[Tensor], tuple[Tensor, Tensor]],
    steps: int,
    lr: float,
    after_step: Callable[[Tensor], None] | None = None,
) -> Tensor:
    """`steps` Adam steps (no weight decay) from `x0` with an analytic gradient; `after_step`
    may edit the iterate in place."""
    x = x0.clone()
    optimizer = torch.optim.Adam([x], lr=lr, weight_decay=0.0)
    for _ in range(steps):
        _, x.grad = loss_and_grad(x)
        optimizer.step()
        if after_step is not None:
            after_step(x)
    return x


@register("wudi", params=WudiConfig)
@torch.no_grad()
def wudi(taus: Tensor, params: WudiConfig) -> Tensor:
    """WUDI: Adam on D with c_k = 1 from tau_m = sum_k tau_k."""
    ones = taus.new_ones(len(taus))
    objective = WudiObjective(taus, params.side)
    return adam(weighted_sum(ones, taus), lambda x: objective.loss_and_grad(x, ones), params.steps, params.lr)


@register("wudi_closed", params=WudiClosedConfig)
@torch.no_grad()
def wudi_closed(taus: Tensor, params: WudiClosedConfig) -> Tensor:
    """The minimiser of D (c_k = 1): X (A + rho I) = B, rho = ridge * trace(A) / d_in, solved in
    float64 by Cholesky (A is a sum of K Gram matrices, so rank-deficient without the ridge)."""
    a, b, _ = WudiObjective(taus, "gram").quadratic(taus.new_ones(len(taus)))
    a = a.double()
    a.diagonal().add_(params.ridge * a.diagonal().mean())
    # A is symmetric, so X^T = (A + rho I)^-1 B^T.
    return torch.cholesky_solve(b.double().T, torch.linalg.cholesky(a)).T.to(taus.dtype)


def importance(taus: Tensor, kind: str) -> Tensor:
    """AMM's inherent importance alpha [K] (sums to 1)."""
    norms = taus.flatten(1).norm(dim=1)
    raw = {"norm": norms, "inverse_norm": 1.0 / norms, "uniform": torch.ones_like(norms)}[kind]
    return raw / raw.sum()


def compatibility(x: Tensor, taus: Tensor, temperature: float) -> Tensor:
    """AMM's dynamic compatibility beta [K] = softmax_k(cos(x, tau_k) / T)."""
    flat = taus.flatten(1)
    cos = (flat @ x.reshape(-1)) / (flat.norm(dim=1) * x.norm()).clamp_min(torch.finfo(x.dtype).tiny)
    return torch.softmax(cos / temperature, dim=0)


def input_basis(taus: Tensor, rank: int) -> Tensor | None:
    """Orthonormal [d_in, r] basis of the top `rank` right singular vectors of the task vectors
    stacked as rows, S [K * d_out, d_in]; None when they span the whole input space (P = I).

    Computed from the smaller Gram matrix of S: the eigenvectors of S^T S [d_in, d_in] are the
    right singular vectors; those u_i of S S^T give them as S^T u_i (orthonormalised).
    """
    stacked = taus.flatten(0, 1)
    rows, d_in = stacked.shape
    rank = min(rank, rows)
    if rank >= d_in:
        return None
    if d_in <= rows:
        return torch.linalg.eigh(stacked.T @ stacked).eigenvectors[:, -rank:]  # eigenvalues ascend
    left = torch.linalg.eigh(stacked @ stacked.T).eigenvectors[:, -rank:]
    return torch.linalg.qr(stacked.T @ left).Q


@register("amm", params=AmmConfig)
@torch.no_grad()
def amm(taus: Tensor, params: AmmConfig) -> Tensor:
    """AMM: Adam on D with c_k = K alpha_k beta_k (+ lam * R, or a hard projection of each step)
    from tau_m = K sum_k alpha_k tau_k. `params.rank` counts singular vectors per task."""
    k = len(taus)
    alpha = importance(taus, params.alpha)
    objective = WudiObjective(taus, params.side)
    x0 = weighted_sum(k * alpha, taus)
    basis = None if params.projection == "none" else input_basis(taus, params.rank * k)

    def loss_and_grad(x: Tensor) -> tuple[Tensor, Tensor]:
        beta = compatibility(x, taus, params.temperature) if params.beta == "softmax" else 1.0
        loss, grad = objective.loss_and_grad(x, k * alpha * beta)
        if basis is not None and params.projection == "penalty":
            drift = x - x0
            off_span = drift.sub_((drift @ basis) @ basis.T)  # (x - x0)(I - P)
            loss += params.lam * off_span.square().sum()
            grad.add_(off_span, alpha=2 * params.lam)
        return loss, grad

    def project(x: Tensor) -> None:  # x <- x0 + (x - x0) P
        x.copy_(x0 + ((x - x0) @ basis) @ basis.T)

    hard = basis is not None and params.projection == "hard"
    return adam(x0, loss_and_grad, params.steps, params.lr, project if hard else None)
