"""Benchmarks that print figures and write them to results/bench/.

    python -m selm.bench train      # one epoch, same pairs, same tiny model: SELMTrainer vs trl DPOTrainer

`train` times, end to end, what one iteration costs after the model is loaded: tokenisation,
reference log-probs and one training epoch. Ours carries y_ref (three sequences per pair, one
forward); trl's DPOTrainer carries two, once with its default (a reference forward every step)
and once with `precompute_ref_log_probs=True`; the faster trl variant is the baseline. Throughput
counts the tokens pushed through the policy's training forwards (prompt + answer, no padding).
The variants run interleaved, `--repeats` times, and medians are reported (the machine is noisy).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

from selm.data import PairCollator, PairDataset, tokenize_pairs
from selm.io import write_json_atomic
from selm.logps import compute_reference_logps
from selm.provenance import provenance
from selm.tiny import build_tiny_model
from selm.trainer import SELMTrainer


def bench_pairs(n: int, seed: int) -> list[dict]:
    """Toy-world preference pairs; y_ref is a third answer of the same length profile (the chosen reversed)."""
    from selm.world import preference_pairs
    import random

    rows = preference_pairs(n, random.Random(seed))
    return [
        {"prompt": r["prompt"], "chosen": r["chosen"][-1]["content"], "rejected": r["rejected"][-1]["content"],
         "response": r["chosen"][-1]["content"][::-1]}
        for r in rows
    ]


def _args(out: str, batch: int, lr: float, seed: int) -> dict:
    return dict(output_dir=out, per_device_train_batch_size=batch, learning_rate=lr, num_train_epochs=1,
                lr_scheduler_type="cosine", warmup_steps=0.1, logging_steps=10_000, save_strategy="no",
                report_to=[], seed=seed, use_cpu=True, disable_tqdm=True, dataloader_pin_memory=False)


def run_selm(base, tok, rows, batch, lr, seed, workdir) -> float:
    model = copy.deepcopy(base)
    start = time.perf_counter()
    pairs, _ = tokenize_pairs(rows, tok, max_length=128, max_prompt_length=64)
    ref = compute_reference_logps(model, pairs, pad_token_id=tok.pad_token_id, batch_size=64)
    trainer = SELMTrainer(model=model, args=TrainingArguments(**_args(workdir, batch, lr, seed)),
                          train_dataset=PairDataset(pairs, ref), data_collator=PairCollator(tok.pad_token_id),
                          beta=0.1, alpha=0.001)
    trainer.train()
    return time.perf_counter() - start


def run_trl(base, tok, rows, batch, lr, seed, workdir, precompute: bool) -> float:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    data = Dataset.from_list([
        {"prompt": [{"role": "user", "content": r["prompt"]}],
         "chosen": [{"role": "assistant", "content": r["chosen"]}],
         "rejected": [{"role": "assistant", "content": r["rejected"]}]}
        for r in rows
    ])
    model, ref_model = copy.deepcopy(base), copy.deepcopy(base)
    start = time.perf_counter()
    args = DPOConfig(**_args(workdir, batch, lr, seed), beta=0.1, loss_type=["sigmoid"], max_length=128,
                     precompute_ref_log_probs=precompute, precompute_ref_batch_size=64 if precompute else None)
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=data, processing_class=tok)
    trainer.train()
    return time.perf_counter() - start


def policy_tokens(tok, rows, with_response: bool) -> int:
    pairs, _ = tokenize_pairs(rows, tok, max_length=128, max_prompt_length=64)
    total = 0
    for p in pairs:
        completions = [p.chosen_ids, p.rejected_ids] + ([p.response_ids] if with_response else [])
        total += sum(len(p.prompt_ids) + len(c) for c in completions)
    return total


def bench_train(n_pairs: int, batch: int, repeats: int, size: str, seed: int, out: Path) -> dict:
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "model", size=size, seed=seed)
        tok = AutoTokenizer.from_pretrained(model_dir)
        base = AutoModelForCausalLM.from_pretrained(model_dir)
        rows = bench_pairs(n_pairs, seed)
        variants = {
            "selm": lambda: run_selm(base, tok, rows, batch, 3e-5, seed, tmp),
            "trl_dpo_default": lambda: run_trl(base, tok, rows, batch, 3e-5, seed, tmp, precompute=False),
            "trl_dpo_precompute": lambda: run_trl(base, tok, rows, batch, 3e-5, seed, tmp, precompute=True),
        }
        variants["selm"]()  # warm-up: first-call costs (imports, allocator) are not the trainer's
        seconds = {name: [] for name in variants}
        for _ in range(repeats):
            for name, fn in variants.items():
                seconds[name].append(fn())
        params = sum(p.numel() for p in base.parameters())

    tokens = {"selm": policy_tokens(tok, rows, True), "trl": policy_tokens(tok, rows, False)}
    median = {name: statistics.median(s) for name, s in seconds.items()}
    tps = {
        "selm": tokens["selm"] / median["selm"],
        "trl_dpo_default": tokens["trl"] / median["trl_dpo_default"],
        "trl_dpo_precompute": tokens["trl"] / median["trl_dpo_precompute"],
    }
    trl_best = max(tps["trl_dpo_default"], tps["trl_dpo_precompute"])
    prov = provenance(command=f"python -m selm.bench train --pairs {n_pairs} --batch {batch} --repeats {repeats} "
                              f"--size {size} --seed {seed}")
    result = {
        "selm_tokens_per_s": round(tps["selm"], 1),
        "trl_dpo_tokens_per_s": round(trl_best, 1),
        "trl_dpo_default_tokens_per_s": round(tps["trl_dpo_default"], 1),
        "trl_dpo_precompute_tokens_per_s": round(tps["trl_dpo_precompute"], 1),
        "ratio": round(tps["selm"] / trl_best, 3),
        "pairs_per_s": {name: round(n_pairs / s, 1) for name, s in median.items()},
        "median_epoch_seconds": {name: round(s, 3) for name, s in median.items()},
        "all_epoch_seconds": {name: [round(x, 3) for x in s] for name, s in seconds.items()},
        "policy_tokens": tokens,
        "n_pairs": n_pairs, "batch": batch, "repeats": repeats, "model_size": size, "parameters": params,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "git_commit": prov["git_commit"],
        "provenance": prov,
    }
    write_json_atomic(out, result)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="selm benchmarks")
    sub = parser.add_subparsers(dest="what", required=True)
    train = sub.add_parser("train", help="one epoch: SELMTrainer (with y_ref) vs trl DPOTrainer")
    train.add_argument("--pairs", type=int, default=512)
    train.add_argument("--batch", type=int, default=16)
    train.add_argument("--repeats", type=int, default=3)
    train.add_argument("--size", default="small")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", type=Path, default=Path("results/bench/train_step.json"))
    args = parser.parse_args(argv)
    result = bench_train(args.pairs, args.batch, args.repeats, args.size, args.seed, args.out)
    print(f"SELMTrainer (chosen+rejected+y_ref): {result['selm_tokens_per_s']:>10,.0f} tokens/s")
    print(f"trl DPOTrainer default            : {result['trl_dpo_default_tokens_per_s']:>10,.0f} tokens/s")
    print(f"trl DPOTrainer precompute ref     : {result['trl_dpo_precompute_tokens_per_s']:>10,.0f} tokens/s")
    print(f"ratio (ours / faster trl)         : {result['ratio']:.3f}   -> {args.out}")


if __name__ == "__main__":
    main()
