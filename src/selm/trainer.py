"""SELMTrainer: transformers' Trainer with the SELM loss and one policy forward per step.

transformers' Trainer brings gradient accumulation, AdamW, the cosine schedule with warmup,
gradient checkpointing, bf16, DeepSpeed through accelerate, checkpoint/resume and W&B; this class
only supplies the loss. The reference log-probs arrive in the batch (`ref_logps`, computed once per
iteration, see selm.logps), so no reference model is held or run during training. A batch of 2B
rows (chosen, rejected) is DPO; 3B rows add y_ref for the optimism term. selm.train gives alpha = 0
the two-sequence batches (selm.data.without_y_ref): y_ref would cost a third of the compute there
for a zero gradient.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from transformers import Trainer

from selm.logps import completion_logps
from selm.losses import optimism_term, selm_loss


class SELMTrainer(Trainer):
    # Our loss is a mean over the micro-batch: Trainer must divide it by the accumulation steps
    # (without this, a model whose forward takes **kwargs makes Trainer skip that division).
    loss_is_scaled_for_ga = False

    def __init__(self, *args, beta: float, alpha: float, **kwargs):
        super().__init__(*args, **kwargs)
        # Batches carry `ref_logps` and `completion_mask`, which the model's forward does not take:
        # Trainer must not strip them as "unused columns".
        self.args.remove_unused_columns = False
        self.beta = beta
        self.alpha = alpha
        self._pending_metrics: dict[str, list[float]] = defaultdict(list)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ref = inputs["ref_logps"]  # (B, K): chosen, rejected[, response]
        batch_size, n_kinds = ref.shape
        logps, mean_logits = completion_logps(
            model, inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"]
        )
        policy = logps.view(n_kinds, batch_size)
        has_response = n_kinds == 3
        if not has_response and self.alpha != 0:
            raise ValueError("alpha != 0 needs y_ref: the pairs file has no 'response' field")
        policy_response = policy[2] if has_response else torch.zeros_like(policy[0])
        ref_response = ref[:, 2] if has_response else torch.zeros_like(ref[:, 0])
        losses, chosen_rewards, rejected_rewards = selm_loss(
            policy[0], policy[1], policy_response, ref[:, 0], ref[:, 1], ref_response,
            beta=self.beta, alpha=self.alpha,
        )
        loss = losses.mean()

        optimism = optimism_term(policy_response.detach(), ref_response, beta=self.beta, alpha=self.alpha)
        logits = mean_logits.view(n_kinds, batch_size)
        metrics = {
            "rewards/chosen": chosen_rewards.mean(),
            "rewards/rejected": rejected_rewards.mean(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
            "logps/chosen": policy[0].detach().mean(),
            "logps/rejected": policy[1].detach().mean(),
            "logits/chosen": logits[0].mean(),
            "logits/rejected": logits[1].mean(),
            "loss/dpo": (losses.detach() - optimism).mean(),
            "loss/optimism": optimism.mean(),
        }
        if has_response:
            metrics["logps/pi_response"] = policy[2].detach().mean()
            metrics["logps/ref_response"] = ref[:, 2].mean()
        for name, value in metrics.items():
            self._pending_metrics[name].append(float(value))
        return (loss, {"losses": losses.detach()}) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Average the per-micro-batch metrics gathered since the last log call, then over ranks
        # (every rank calls log at the same steps, and Trainer's own loss is reduced the same way),
        # so a multi-GPU run logs the metrics of its global batch, not those of rank 0's shard.
        if "loss" in logs:
            means = {name: sum(v) / len(v) for name, v in sorted(self._pending_metrics.items())}
            if means and self.accelerator.num_processes > 1:
                stacked = torch.tensor(list(means.values()), dtype=torch.float64, device=self.accelerator.device)
                means = dict(zip(means, self.accelerator.reduce(stacked, reduction="mean").tolist()))
            logs.update(means)
            self._pending_metrics.clear()
        super().log(logs, start_time)
