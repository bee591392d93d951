"""SFT stage of the toy scale: train the tiny bases (weak `tiny-sft`, strong `tiny-instruct`).

The paper starts from released SFT models; the toy scale has to make its own from the world's
imperfect demonstrations (docs/design.md section 3), so that the online loop has headroom to close.
The loss is completion-only causal LM: prompt tokens are labelled -100, answers end in exactly one
EOS (tokenised with `selm.data.encode_prompt_answer`, the same template generation uses), so the
model learns when to stop.

Why a plain torch loop and not transformers' Trainer: this stage exists only at the toy scale (the
paper and evalcheck scales start from released instruction models), so it needs none of Trainer's
scale features, and the loop is shorter. Measured on 2 idle cores, 200 steps of batch 32: Trainer
57-66 ms/step vs loop 55-58 for the tiny size "453k", 24-27 vs 19-23 for "113k".

`greedy_and_best_of_n` measures the headroom docs/design.md asks for: mean r* of greedy answers against
the mean r* of the best of n samples.

The function's and the CLI's defaults (tiny size "113k"; lr 3e-3, batch 32,
8 epochs, cosine, 5% warmup) were chosen on the seed-0 world: weak base greedy r* 0.52 vs best-of-16
0.86 on 300 test_prefs prompts. The toy pipeline's `sft` stage trains 4 epochs instead
(conf/sft/toy.yaml: 8 gains about 0.04 greedy r* at twice the time).

CLI: `python -m selm.sft --init DIR --data FILE --out DIR [--epochs 8 ...] [--eval FILE]`.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, get_cosine_schedule_with_warmup

from selm import console
from selm.data import encode_prompt_answer, pad_token_id
from selm.generation import HFBackend
from selm.io import read_jsonl, write_json_atomic
from selm.world import true_reward

SFT_SCHEMA = {"prompt": (str, True), "completion": (str, True)}
EVAL_SCHEMA = {"prompt": (str, True), "family": (str, True), "gold": (str, True)}


def tokenize_sft(records: list[dict], tokenizer, *, max_length: int, system_prompt: str | None = None):
    """(input_ids, labels) per record, prompt labels -100; too-long answers are cut from the right.

    Returns the examples and how many were truncated (a truncated answer loses its EOS)."""
    examples, truncated = [], 0
    for record in records:
        prompt_ids, answer_ids = encode_prompt_answer(tokenizer, record["prompt"], record["completion"], system_prompt)
        if len(prompt_ids) >= max_length:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens leaves no room for an answer (max_length {max_length})")
        ids = prompt_ids + answer_ids
        if len(ids) > max_length:
            ids, truncated = ids[:max_length], truncated + 1
        examples.append((ids, [-100] * len(prompt_ids) + ids[len(prompt_ids) :]))
    return examples, truncated


@dataclass
class SFTCollator:
    """Right-pads a list of (input_ids, labels) into a batch; padding is masked and labelled -100."""

    pad_token_id: int

    def __call__(self, examples: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(ids) for ids, _ in examples)
        input_ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), width), -100, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
        for i, (ids, labs) in enumerate(examples):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(labs)] = torch.tensor(labs)
            attention_mask[i, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def completion_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over answer tokens only (labels != -100)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), batch["labels"][:, 1:].reshape(-1), ignore_index=-100
    )


def _replace_dir(src: Path, dst: Path) -> None:
    """Move the finished folder `src` to `dst`; an older `dst` is moved aside first, then removed."""
    old = dst.with_name(f"{dst.name}.old-{os.getpid()}")
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    if old.exists():
        shutil.rmtree(old)


def train_sft(
    init_dir,
    sft_jsonl,
    out_dir,
    *,
    epochs: float = 8,
    lr: float = 3e-3,
    batch_size: int = 32,
    warmup_ratio: float = 0.05,
    weight_decay: float = 0.0,
    max_grad_norm: float = 1.0,
    max_length: int = 128,
    seed: int = 0,
    n_limit: int | None = None,
    log_every: int = 25,
) -> dict:
    """Train the model at `init_dir` on `sft_jsonl` rows {prompt, completion}; write it to `out_dir`.

    The model, tokenizer and `sft_metrics.json` are written to `<out_dir>.partial` and renamed to
    `out_dir` only when complete. Returns the metrics dict.
    """
    start = time.perf_counter()
    records = read_jsonl(sft_jsonl, SFT_SCHEMA)[:n_limit]
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(init_dir)
    model = AutoModelForCausalLM.from_pretrained(init_dir)
    examples, truncated = tokenize_sft(records, tokenizer, max_length=max_length)
    collate = SFTCollator(pad_token_id(tokenizer))

    steps_per_epoch = math.ceil(len(examples) / batch_size)
    total_steps = max(1, math.ceil(steps_per_epoch * epochs))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(warmup_ratio * total_steps), total_steps)
    generator = torch.Generator().manual_seed(seed)

    model.train()
    curve, window, step = [], [], 0
    with console.progress(total_steps, f"sft {Path(out_dir).name}", "steps") as bar:
        while step < total_steps:
            for chunk in torch.randperm(len(examples), generator=generator).split(batch_size):
                if step >= total_steps:
                    break
                loss = completion_loss(model, collate([examples[i] for i in chunk.tolist()]))
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                bar.update()
                window.append(loss.item())
                if step % log_every == 0 or step == total_steps:
                    curve.append({"step": step, "epoch": round(step / steps_per_epoch, 3),
                                  "loss": sum(window) / len(window)})
                    window = []
    train_seconds = time.perf_counter() - start

    metrics = {
        "init_dir": str(init_dir),
        "data": str(sft_jsonl),
        "n_rows": len(examples),
        "n_truncated": truncated,
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": total_steps,
        "params": {
            "epochs": epochs, "lr": lr, "batch_size": batch_size, "warmup_ratio": warmup_ratio,
            "weight_decay": weight_decay, "max_grad_norm": max_grad_norm, "max_length": max_length,
            "seed": seed, "n_limit": n_limit, "schedule": "cosine", "optimizer": "AdamW",
        },
        "loss_curve": curve,
        "final_loss": curve[-1]["loss"],
        "seconds": round(train_seconds, 2),
    }
    out_dir = Path(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)  # left over from a crashed run of this stage
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    write_json_atomic(partial / "sft_metrics.json", metrics)
    _replace_dir(partial, out_dir)
    return metrics


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 4)


def _summarise(rewards: list[float], families: list[str]) -> dict:
    by_family = defaultdict(list)
    for r, f in zip(rewards, families):
        by_family[f].append(r)
    return {
        "mean": _mean(rewards),
        "exact": _mean([float(r == 1.0) for r in rewards]),
        "per_family": {f: _mean(xs) for f, xs in sorted(by_family.items())},
    }


def greedy_and_best_of_n(
    model_dir,
    records: list[dict],
    n: int = 16,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 32,
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Mean r* of greedy answers, of single samples and of the best of `n` samples, overall and per
    family: the gap between greedy and best-of-n is the headroom exploration can find."""
    backend = HFBackend(model_dir, batch_size=batch_size, progress=progress)
    prompts = [r["prompt"] for r in records]
    families = [r["family"] for r in records]
    start = time.perf_counter()
    greedy = backend.generate(prompts, do_sample=False, max_new_tokens=max_new_tokens, seed=seed)
    samples = backend.generate(
        prompts, n=n, do_sample=True, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed
    )
    sample_rewards = [[true_reward(rec, a) for a in answers] for rec, answers in zip(records, samples)]
    return {
        "n_prompts": len(records),
        "n": n,
        "temperature": temperature,
        "top_p": top_p,
        "greedy": _summarise([true_reward(rec, a[0]) for rec, a in zip(records, greedy)], families),
        # Every sample counts once, so "exact" is the share of samples that are fully right.
        "sample": _summarise([r for rs in sample_rewards for r in rs], [f for f in families for _ in range(n)]),
        f"best_of_{n}": _summarise([max(rs) for rs in sample_rewards], families),
        "seconds": round(time.perf_counter() - start, 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="SFT a tiny base model on toy-world demonstrations.")
    parser.add_argument("--init", required=True, help="folder of the initial model (selm.tiny)")
    parser.add_argument("--data", required=True, help="SFT JSONL with rows {prompt, completion}")
    parser.add_argument("--out", required=True, help="output folder (written atomically)")
    parser.add_argument("--epochs", type=float, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup-ratio", type=float, default=0.05)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-limit", type=int, default=None, help="use only the first N rows")
    parser.add_argument("--eval", default=None, help="JSONL with {prompt, family, gold}: write headroom.json")
    parser.add_argument("--eval-limit", type=int, default=300)
    parser.add_argument("--eval-n", type=int, default=16)
    args = parser.parse_args(argv)
    metrics = train_sft(
        args.init, args.data, args.out, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
        warmup_ratio=args.warmup_ratio, max_length=args.max_length, seed=args.seed, n_limit=args.n_limit,
    )
    print(f"SFT done in {metrics['seconds']} s, final loss {metrics['final_loss']:.4f} -> {args.out}")
    if args.eval:
        records = read_jsonl(args.eval, EVAL_SCHEMA)[: args.eval_limit]
        headroom = greedy_and_best_of_n(args.out, records, n=args.eval_n, seed=args.seed)
        write_json_atomic(Path(args.out) / "headroom.json", headroom)
        best = headroom[f"best_of_{args.eval_n}"]["mean"]
        print(f"greedy r* {headroom['greedy']['mean']:.3f}, best-of-{args.eval_n} r* {best:.3f}")


if __name__ == "__main__":
    from selm import console

    console.setup()  # library bars and info logs off unless SELM_VERBOSE=1
    main()
