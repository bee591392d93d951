"""The SELM loss against hand arithmetic (docs/paper.md section 1)."""

import math

import pytest
import torch

from selm.losses import dpo_loss, selm_loss


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64, requires_grad=True)


def test_hand_computed_values():
    beta, alpha = 0.1, 0.5
    # example 1: chosen log-ratio +1, rejected -1, y_ref +1
    #   DPO = -log sigmoid(0.1 * (1 - (-1))) = log(1 + e^-0.2); optimism = 0.5 * 0.1 * 1 = 0.05
    # example 2: chosen log-ratio -2, rejected +3, y_ref -3
    #   DPO = log(1 + e^{0.5}); optimism = 0.5 * 0.1 * (-3) = -0.15
    losses, chosen_r, rejected_r = selm_loss(
        t(-10.0, -14.0), t(-12.0, -8.0), t(-8.0, -12.0),
        t(-11.0, -12.0), t(-11.0, -11.0), t(-9.0, -9.0),
        beta=beta, alpha=alpha,
    )
    expected = [math.log(1 + math.exp(-0.2)) + 0.05, math.log(1 + math.exp(0.5)) - 0.15]
    assert losses.tolist() == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx([0.6481388693815918, 0.8240769841801067], abs=1e-12)
    assert chosen_r.tolist() == pytest.approx([0.1, -0.2], abs=1e-12)
    assert rejected_r.tolist() == pytest.approx([-0.1, 0.3], abs=1e-12)


def test_alpha_zero_is_exactly_dpo():
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(7, generator=g, dtype=torch.float64) * 20 for _ in range(6)]
    selm = selm_loss(*xs, beta=0.01, alpha=0.0)
    dpo = dpo_loss(xs[0], xs[1], xs[3], xs[4], beta=0.01)
    for a, b in zip(selm, dpo):
        assert torch.equal(a, b)


def test_gradient_wrt_response_is_alpha_beta():
    beta, alpha = 0.01, 0.001
    g = torch.Generator().manual_seed(1)
    inputs = [torch.randn(5, generator=g, dtype=torch.float64).requires_grad_() for _ in range(6)]
    losses, _, _ = selm_loss(*inputs, beta=beta, alpha=alpha)
    losses.sum().backward()
    assert inputs[2].grad.tolist() == pytest.approx([alpha * beta] * 5, rel=1e-12)
    # the reference's y_ref log-prob is a constant of theta, but the loss value uses it: d/dref = -alpha*beta
    assert inputs[5].grad.tolist() == pytest.approx([-alpha * beta] * 5, rel=1e-12)


def test_dpo_gradient_wrt_chosen_matches_hand_formula():
    # d/d logp_w of -log sigmoid(beta*m) = -beta * sigmoid(-beta*m), with m = 2 here
    beta = 0.1
    pc, pr = t(-10.0), t(-12.0)
    losses, _, _ = dpo_loss(pc, pr, torch.tensor([-11.0], dtype=torch.float64),
                            torch.tensor([-11.0], dtype=torch.float64), beta=beta)
    losses.sum().backward()
    assert pc.grad.item() == pytest.approx(-beta / (1 + math.exp(0.2)), rel=1e-12)
    assert pr.grad.item() == pytest.approx(beta / (1 + math.exp(0.2)), rel=1e-12)


def test_rewards_are_detached():
    inputs = [t(-1.0, -2.0) for _ in range(6)]
    _, chosen_r, rejected_r = selm_loss(*inputs, beta=0.1, alpha=0.1)
    assert not chosen_r.requires_grad and not rejected_r.requires_grad


def test_preferring_chosen_lowers_loss():
    ref = [torch.tensor([-10.0]) for _ in range(3)]
    neutral, _, _ = selm_loss(torch.tensor([-10.0]), torch.tensor([-10.0]), torch.tensor([-10.0]), *ref,
                              beta=0.1, alpha=0.001)
    prefers_chosen, _, _ = selm_loss(torch.tensor([-9.0]), torch.tensor([-11.0]), torch.tensor([-10.0]), *ref,
                                     beta=0.1, alpha=0.001)
    prefers_rejected, _, _ = selm_loss(torch.tensor([-11.0]), torch.tensor([-9.0]), torch.tensor([-10.0]), *ref,
                                       beta=0.1, alpha=0.001)
    assert neutral.item() == pytest.approx(math.log(2))
    assert prefers_chosen.item() < neutral.item() < prefers_rejected.item()


def test_optimism_pushes_own_answer_down():
    # Raising log pi(y_ref|x) raises the SELM loss: the minimiser moves mass away from y_ref.
    ref = [torch.tensor([-10.0]) for _ in range(3)]
    low, _, _ = selm_loss(torch.tensor([-10.0]), torch.tensor([-10.0]), torch.tensor([-12.0]), *ref, beta=0.1, alpha=1.0)
    high, _, _ = selm_loss(torch.tensor([-10.0]), torch.tensor([-10.0]), torch.tensor([-8.0]), *ref, beta=0.1, alpha=1.0)
    assert high.item() - low.item() == pytest.approx(1.0 * 0.1 * 4.0, rel=1e-6)
