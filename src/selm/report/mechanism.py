"""The mechanism probe: what the optimism term does to log pi(y_ref) in one iteration, against DPO's terms.

From one start (a loop run's pi_{t-1} and its iteration-t pairs, which do not depend on alpha), one
iteration is trained per alpha with the loop's own training code (selm.train.train_iteration), and
for each alpha the probe records, on the iteration's pairs:

- the mean change of log pi(y_w), log pi(y_l) and log pi(y_ref) (summed token log-probs, after minus
  before), and of log pi(y_ref) on the pairs where y_ref is the chosen answer, the rejected one, or
  neither: where y_ref is chosen, the optimism term pushes down the very answer DPO pushes up;
- the norm of the gradient of each loss term at the start (pi = pi_ref): the DPO term
  mean(-log sigmoid(margin)) and the optimism term mean(alpha * beta * log pi(y_ref)), their cosine,
  and the ratio of the two norms (the optimism norm grows linearly in alpha, DPO's does not move);
- the true reward r* of pi_t's greedy answers to the held-out prompts.

    python -m selm.report.mechanism --run runs/control/dpo/alpha0.0/seed42 --iteration 1 \
        --alphas 0 0.001 0.01 0.1 1 3 --out results/toy/controls/mechanism.json
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
from pathlib import Path

import torch
from omegaconf import OmegaConf

from selm import layout
from selm.io import read_jsonl, write_json_atomic

PAIRS_SCHEMA = {"prompt": (str, True), "prompt_id": (str, True), "chosen": (str, True), "rejected": (str, True),
                "response": (str, True)}


def term_gradients(model, pairs, beta: float, pad_id: int, batch_size: int = 64) -> dict:
    """Gradient norms, at pi = pi_ref, of the DPO term and of the optimism term per unit alpha
    (beta * mean log pi(y_ref)), both averaged over `pairs`, and their cosine. At pi = pi_ref the
    DPO margin is 0, so its gradient is -beta/2 * mean(grad log pi(y_w) - grad log pi(y_l))."""
    from selm.data import PairCollator, PairDataset
    from selm.logps import completion_logps

    params = [p for p in model.parameters() if p.requires_grad]
    collate, dataset = PairCollator(pad_id), PairDataset(pairs)
    grads = {"dpo": [torch.zeros_like(p) for p in params], "optimism_per_alpha": [torch.zeros_like(p) for p in params]}
    model.eval()  # no dropout: the gradient of the loss at this point, not of one noisy draw
    n = len(pairs)
    for start in range(0, n, batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, n))])
        b = (batch["input_ids"].shape[0]) // 3
        logps, _ = completion_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        chosen, rejected, response = logps.view(3, b)
        margin = beta * (chosen - rejected)
        margin = margin - margin.detach()  # evaluated at pi = pi_ref: value 0, gradient kept
        terms = {"dpo": -torch.nn.functional.logsigmoid(margin).sum() / n,
                 "optimism_per_alpha": beta * response.sum() / n}
        for name, value in terms.items():
            for acc, g in zip(grads[name], torch.autograd.grad(value, params, retain_graph=name == "dpo")):
                acc += g
    flat = {k: torch.cat([g.flatten() for g in v]) for k, v in grads.items()}
    norms = {k: float(v.norm()) for k, v in flat.items()}
    cosine = float(torch.dot(flat["dpo"], flat["optimism_per_alpha"]) / (norms["dpo"] * norms["optimism_per_alpha"]))
    return {"grad_norm_dpo": norms["dpo"], "grad_norm_optimism_per_alpha": norms["optimism_per_alpha"],
            "cosine_dpo_optimism": cosine}


def sequence_logps(model_dir: Path, pairs, pad_id: int) -> torch.Tensor:
    """(N, 3) summed log-probs of chosen, rejected and y_ref under the checkpoint."""
    from transformers import AutoModelForCausalLM

    from selm.logps import bounded_logps

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return bounded_logps(model, pairs, pad_token_id=pad_id, batch_size=128, seq_chunk=256)


def changes(before: torch.Tensor, after: torch.Tensor, records: list[dict]) -> dict:
    """Mean change (after - before) of log pi per answer kind, and of log pi(y_ref) by its role."""
    delta = (after - before).tolist()
    role = ["chosen" if r["response"] == r["chosen"] else "rejected" if r["response"] == r["rejected"] else "neither"
            for r in records]
    out = {f"dlogp_{kind}": statistics.fmean(d[i] for d in delta) for i, kind in enumerate(("y_w", "y_l", "y_ref"))}
    for name in ("chosen", "rejected", "neither"):
        rows = [d[2] for d, r in zip(delta, role) if r == name]
        out[f"dlogp_y_ref_when_{name}"] = statistics.fmean(rows) if rows else None
        out[f"n_y_ref_{name}"] = len(rows)
    return out


def probe(run_dir: Path, iteration: int, alphas: list[float], work: Path, test_prompts: int | None = None) -> dict:
    """One iteration per alpha from run_dir's pi_{iteration-1} on its iteration-`iteration` pairs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selm.data import pad_token_id, tokenize_pairs
    from selm.generation import backend_from_config
    from selm.loop import PREFS_SCHEMA as TEST_SCHEMA
    from selm.loop import evaluate_test_answers, select_families, true_reward_scorer
    from selm.train import train_iteration

    start = layout.model_dir(run_dir, iteration - 1)
    pairs_path = layout.iteration_dir(run_dir, iteration) / layout.PAIRS
    # the run's own config, from the iteration probed (pi_{iteration-1} may be a shared iteration 0,
    # trained by another run whose later learning rates can differ)
    own = layout.model_dir(run_dir, iteration) / layout.TRAIN_METRICS
    for path in (start / layout.CHECKPOINT_CONFIG, pairs_path, own):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the mechanism probe needs this file of the loop run {run_dir}")
    cfg = OmegaConf.create(json.loads(own.read_text())["config"])
    records = read_jsonl(pairs_path, PAIRS_SCHEMA)
    tokenizer = AutoTokenizer.from_pretrained(start)
    pad_id = pad_token_id(tokenizer)
    pairs, _ = tokenize_pairs(records, tokenizer, max_length=cfg.train.max_length,
                              max_prompt_length=cfg.train.max_prompt_length, system_prompt=cfg.model.system_prompt)
    before = sequence_logps(start, pairs, pad_id)
    model = AutoModelForCausalLM.from_pretrained(start, dtype=torch.float32)
    grads = term_gradients(model, pairs, float(cfg.train.beta), pad_id)
    del model
    test = select_families(read_jsonl(cfg.data.test_prefs, TEST_SCHEMA), cfg.data.families,
                           str(cfg.data.test_prefs))[: test_prompts or cfg.eval.n_prompts]
    if cfg.eval.get("true_reward") is None:
        raise ValueError(f"{start / layout.TRAIN_METRICS}: eval.true_reward is not set; the probe scores answers by it")
    score = true_reward_scorer(cfg.eval.true_reward)
    rows = []
    for alpha in alphas:
        out = work / f"alpha{alpha}"
        shutil.rmtree(out, ignore_errors=True)
        tcfg = OmegaConf.merge(cfg, {"iteration": iteration, "init_checkpoint": str(start), "pairs": str(pairs_path),
                                     "output_dir": str(out / "model"), "overwrite": True, "reference_checkpoint": None,
                                     "train": {"alpha": float(alpha)}, "logger": {"wandb": False}})
        model_dir = train_iteration(tcfg)
        history = json.loads((model_dir / layout.TRAIN_METRICS).read_text())["log_history"]
        after = sequence_logps(model_dir, pairs, pad_id)
        metrics, _ = evaluate_test_answers(backend_from_config(tcfg, model_dir), test, tcfg.generation, score)
        rows.append({
            "alpha": float(alpha),
            **changes(before, after, records),
            "grad_norm_optimism": float(alpha) * grads["grad_norm_optimism_per_alpha"],
            "grad_ratio_optimism_to_dpo": float(alpha) * grads["grad_norm_optimism_per_alpha"] / grads["grad_norm_dpo"],
            "mean_train_grad_norm": statistics.fmean(h["grad_norm"] for h in history if "grad_norm" in h),
            "loss_dpo_last": history[-1]["loss/dpo"], "loss_optimism_last": history[-1]["loss/optimism"],
            "r_star": metrics["mean_reward"],
        })
        shutil.rmtree(out)
    return {"run": str(run_dir), "iteration": iteration, "start": str(start), "pairs": str(pairs_path),
            "n_pairs": len(pairs), "beta": float(cfg.train.beta), "lr": float(cfg.train.learning_rates[iteration]),
            "max_grad_norm": float(cfg.train.max_grad_norm), "steps": len(history),
            "start_logp_means": {k: float(before[:, i].mean()) for i, k in enumerate(("y_w", "y_l", "y_ref"))},
            "gradients_at_start": grads, "rows": rows}


def main(argv: list[str] | None = None) -> None:
    from selm.provenance import provenance

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a loop run folder (runs/<experiment>/<cell>/seed<s>)")
    parser.add_argument("--iteration", type=int, default=1)
    parser.add_argument("--alphas", type=float, nargs="+", required=True)
    parser.add_argument("--work", type=Path, default=Path("runs/mechanism"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if any(not math.isfinite(a) or a < 0 for a in args.alphas):
        raise SystemExit(f"--alphas: must be finite and >= 0, got {args.alphas}")
    torch.set_num_threads(1)
    result = probe(args.run, args.iteration, args.alphas, args.work)
    write_json_atomic(args.out, {**result, "provenance": provenance({"run": str(args.run), "iteration": args.iteration,
                                                                     "alphas": args.alphas})})


if __name__ == "__main__":
    main()
