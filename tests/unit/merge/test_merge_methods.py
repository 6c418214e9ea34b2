"""The merge maths (SPEC §3) on small tensors: the Gram-side WUDI loss against the direct
formula, closed form vs Adam, AMM's reduction to WUDI, hand-computed task arithmetic and TIES,
and the per-tensor treatment around every method (zero task vectors, dtypes, non-finite results).
"""

from __future__ import annotations

import functools

import pytest
import torch

from tiny_r1v.merge.config import AmmConfig, TaskArithmeticConfig, TiesConfig, WudiClosedConfig, WudiConfig
from tiny_r1v.merge.methods import METHODS, compatibility, importance, input_basis
from tiny_r1v.merge.objective import WudiObjective, resolve_side
from tiny_r1v.merge.runner import merge_tensor

CPU = torch.device("cpu")


def task_vectors(k: int, d_out: int, d_in: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """K low-rank-plus-noise task vectors with different scales, like fine-tuning deltas."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(k, d_out, 2, generator=g, dtype=dtype) @ torch.randn(k, 2, d_in, generator=g, dtype=dtype)
    scales = torch.linspace(0.5, 2.0, k, dtype=dtype).view(k, 1, 1)
    return 1e-3 * scales * (low + 0.1 * torch.randn(k, d_out, d_in, generator=g, dtype=dtype))


def direct_loss(x: torch.Tensor, taus: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """SPEC §3's D(x), written out literally."""
    return sum(c[k] * ((x - tau) @ tau.T).square().sum() / tau.square().sum() for k, tau in enumerate(taus))


@pytest.mark.parametrize("shape", [(12, 5), (5, 12), (7, 7)], ids=["tall", "wide", "square"])
@pytest.mark.parametrize("side", ["gram", "direct"])
def test_loss_and_gradient_equal_the_direct_formula(shape, side):
    taus = task_vectors(3, *shape, dtype=torch.float64)
    c = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    x = (taus.sum(0) + 1e-3 * torch.randn(shape, dtype=torch.float64)).requires_grad_()
    expected = direct_loss(x, taus, c)
    (expected_grad,) = torch.autograd.grad(expected, x)
    loss, grad = WudiObjective(taus, side).loss_and_grad(x.detach(), c)
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-10, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-20)


def test_auto_side_takes_the_smaller_gram():
    assert resolve_side("auto", torch.Size([11008, 2048])) == "gram"  # up/gate: G is 2048 x 2048
    assert resolve_side("auto", torch.Size([2048, 11008])) == "direct"  # down: (X - tau) tau^T is 2048^2
    assert resolve_side("auto", torch.Size([2048, 2048])) == "gram"
    assert resolve_side("direct", torch.Size([11008, 2048])) == "direct"


def test_gram_and_direct_sides_give_the_same_wudi_merge():
    taus = task_vectors(3, 16, 6)
    gram = METHODS["wudi"](taus, WudiConfig(steps=20, side="gram"))
    direct = METHODS["wudi"](taus, WudiConfig(steps=20, side="direct"))
    torch.testing.assert_close(gram, direct, rtol=1e-4, atol=1e-7)


def test_closed_form_reaches_a_loss_no_higher_than_adam():
    taus = task_vectors(3, 16, 10)
    ones = torch.ones(3, dtype=torch.float64)
    closed = METHODS["wudi_closed"](taus, WudiClosedConfig())
    start = direct_loss(taus.sum(0).double(), taus.double(), ones)
    for steps, lr in ((20, 1e-5), (400, 1e-4)):  # SPEC's lr, and one that gets Adam close
        adam = METHODS["wudi"](taus, WudiConfig(steps=steps, lr=lr))
        adam_loss = direct_loss(adam.double(), taus.double(), ones)
        assert adam_loss < start
        assert direct_loss(closed.double(), taus.double(), ones) <= adam_loss


def test_amm_with_uniform_alpha_no_beta_no_projection_is_wudi():
    taus = task_vectors(3, 16, 6)
    plain = AmmConfig(steps=25, alpha="uniform", beta="none", projection="none")
    torch.testing.assert_close(
        METHODS["amm"](taus, plain), METHODS["wudi"](taus, WudiConfig(steps=25)), rtol=1e-6, atol=1e-9
    )
    # the switches change the result
    assert not torch.allclose(METHODS["amm"](taus, AmmConfig(steps=25)), METHODS["amm"](taus, plain))


def test_task_arithmetic_hand_computed():
    taus = torch.tensor([[[1.0, 2, 0], [0, -1, 3], [2, 0, 1]], [[0.0, -2, 1], [4, 1, 0], [-2, 1, 0]]])
    expected = torch.tensor([[0.3, 0, 0.3], [1.2, 0, 0.9], [0, 0.3, 0.3]])
    torch.testing.assert_close(METHODS["task_arithmetic"](taus, TaskArithmeticConfig(lam=0.3)), expected)


def test_ties_hand_computed():
    taus = torch.tensor(
        [
            [[0.9, -0.1, 0.4], [-0.6, 0.2, 0.8], [0.3, -0.7, 0.05]],
            [[-0.5, 0.3, 0.6], [0.7, -0.2, 0.1], [-0.9, 0.4, 0.8]],
            [[0.2, 0.8, -0.3], [-0.1, 0.9, -0.4], [0.6, -0.5, 0.7]],
        ]
    )
    # Keep 4 of 9 entries each; the elected sign of entry (1, 0) is + (-0.6 + 0.7), so the
    # disjoint mean keeps 0.7 only; (2, 0) is - (-0.9 + 0.6); (2, 2) averages 0.8 and 0.7.
    expected = torch.tensor([[0.9, 0.8, 0.6], [0.7, 0.9, 0.8], [-0.9, -0.7, 0.75]])
    torch.testing.assert_close(METHODS["ties"](taus, TiesConfig(density=0.5)), expected)
    torch.testing.assert_close(METHODS["ties"](taus, TiesConfig(density=0.5, lam=2.0)), 2 * expected)


def test_amm_weights():
    taus = torch.stack([torch.full((2, 2), 1.0), torch.full((2, 2), 3.0)])  # norms 2 and 6
    torch.testing.assert_close(importance(taus, "norm"), torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(importance(taus, "inverse_norm"), torch.tensor([0.75, 0.25]))
    torch.testing.assert_close(importance(taus, "uniform"), torch.tensor([0.5, 0.5]))
    x = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])  # cos 0 with both
    torch.testing.assert_close(compatibility(x, taus, 1.0), torch.tensor([0.5, 0.5]))
    beta = compatibility(torch.ones(2, 2), torch.stack([torch.ones(2, 2), -torch.ones(2, 2)]), 0.5)
    torch.testing.assert_close(beta, torch.softmax(torch.tensor([2.0, -2.0]), 0))


@pytest.mark.parametrize("shape", [(3, 20, 8), (3, 4, 30)], ids=["through S^T S", "through S S^T"])
def test_input_basis_spans_the_top_right_singular_vectors(shape):
    taus = torch.randn(*shape, dtype=torch.float64)
    basis = input_basis(taus, 5)
    top = torch.linalg.svd(taus.flatten(0, 1)).Vh[:5].T
    torch.testing.assert_close(basis @ basis.T, top @ top.T)
    k, d_out, d_in = shape
    if k * d_out >= d_in:
        assert input_basis(taus, d_in) is None  # the whole input space: no projection
    else:
        assert input_basis(taus, d_in).shape == (d_in, k * d_out)  # at most the rank of the stack


def test_hard_projection_keeps_the_update_in_the_span_and_the_penalty_pulls_towards_it():
    taus = task_vectors(2, 12, 10)
    common = {"steps": 30, "lr": 1e-4, "rank": 2, "alpha": "uniform"}
    init = taus.sum(0)
    basis = input_basis(taus, 4)

    def off_span(x):
        drift = x - init
        return (drift - drift @ basis @ basis.T).norm()

    free = off_span(METHODS["amm"](taus, AmmConfig(projection="none", **common)))
    hard = off_span(METHODS["amm"](taus, AmmConfig(projection="hard", **common)))
    penalised = off_span(METHODS["amm"](taus, AmmConfig(projection="penalty", lam=1e3, **common)))
    assert hard < 1e-6 * free
    assert penalised < free


def test_treatment_skips_zero_task_vectors_and_casts_back():
    base = torch.randn(4, 3).bfloat16()
    delta = torch.full((4, 3), 0.5)
    experts = [base.clone(), (base.float() + delta).bfloat16(), base.clone()]
    seen = []

    def spy(taus):
        seen.append(taus.shape)
        return taus.sum(0)

    merged, used = merge_tensor(base, experts, "merge", spy, CPU)
    assert used == [1] and seen == [(1, 4, 3)]  # only the non-zero task vector reaches the method
    assert merged.dtype == torch.bfloat16
    torch.testing.assert_close(merged, experts[1])
    merged, used = merge_tensor(base, experts, "mean", spy, CPU)
    torch.testing.assert_close(merged, experts[1])  # mean over the non-zero one, not over three
    same, used = merge_tensor(base, [base.clone(), base.clone()], "mean", spy, CPU)
    assert used == [] and same is base
    kept, used = merge_tensor(base, experts, "base", spy, CPU)
    assert kept is base and len(seen) == 1


def test_non_finite_result_is_an_error():
    base = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="NaN or inf"):
        merge_tensor(base, [torch.full((2, 2), float("nan"))], "mean", None, CPU)


@pytest.mark.parametrize("treatment", ["mean", "merge"])
@pytest.mark.parametrize("block", [1, 7, 12, 1000])
def test_blocked_elementwise_merge_equals_the_whole_tensor(treatment, block):
    g = torch.Generator().manual_seed(3)
    base = torch.randn(4, 3, generator=g).bfloat16()
    experts = [(base.float() + 0.1 * torch.randn(4, 3, generator=g)).bfloat16() for _ in range(3)]
    experts[1] = base.clone()  # a zero task vector inside blocks too
    fn = functools.partial(METHODS["task_arithmetic"], params=TaskArithmeticConfig(lam=0.7))
    whole, used = merge_tensor(base, experts, treatment, fn, CPU)
    blocked, used_blocked = merge_tensor(base, experts, treatment, fn, CPU, block=block)
    assert used == used_blocked == [0, 2]
    assert torch.equal(blocked, whole)


def test_non_finite_entry_in_a_later_block_is_an_error():
    base = torch.zeros(4, 4)
    expert = torch.ones(4, 4)
    expert[3, 3] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        merge_tensor(base, [expert], "mean", None, CPU, block=5)
