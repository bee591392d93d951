"""The SELM objective and DPO, as pure functions over summed sequence log-probs.

With r(x, y) = beta * (log pi_theta(y|x) - log pi_ref(y|x)):

    L_DPO  = -log sigmoid(r(x, y_w) - r(x, y_l))
    L_SELM = L_DPO + alpha * beta * (log pi_theta(y_ref|x) - log pi_ref(y_ref|x))

y_ref is the reference policy's own answer. Minimising the optimism term pushes
log pi_theta(y_ref|x) down: the policy is moved away from its current answer, towards
responses it has not explored (paper, section 4). The pi_ref part of that term is constant in
theta; it is kept so the logged value is the paper's, it does not change the gradient.
alpha = 0 is exactly DPO.

Each function returns per-example losses (not reduced) and detached rewards.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sigmoid DPO loss. Returns (losses, chosen_rewards, rejected_rewards), all of shape (batch,)."""
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def optimism_term(
    policy_response_logps: torch.Tensor, ref_response_logps: torch.Tensor, *, beta: float, alpha: float
) -> torch.Tensor:
    """alpha * beta * log-ratio of y_ref, per example (the part SELM adds to DPO)."""
    return alpha * beta * (policy_response_logps - ref_response_logps)


def selm_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    policy_response_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    ref_response_logps: torch.Tensor,
    *,
    beta: float,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SELM loss (DPO plus the optimism term). Returns (losses, chosen_rewards, rejected_rewards).

    All inputs are 1-D tensors of summed token log-probs, one entry per example; "response" is
    y_ref. With alpha == 0 the result is bit-for-bit `dpo_loss`.
    """
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=beta
    )
    if alpha != 0:
        losses = losses + optimism_term(policy_response_logps, ref_response_logps, beta=beta, alpha=alpha)
    return losses, chosen_rewards, rejected_rewards

