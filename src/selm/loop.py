"""The online SELM loop for one base model, as small stages over files (SELM.md section 2).

    for t in iterations:
        D_t    = t-th contiguous slice of train_prefs (no replay)
        y_ref  = pi_{t-1}(x) for each prompt of D_t              -> iter{t}/responses.jsonl
        rank {y_ref, y_w, y_l}: best -> chosen, worst -> rejected -> iter{t}/pairs.jsonl
        pi_t   = train from pi_{t-1} with reference pi_{t-1}      -> iter{t}/model/
        greedy answers of pi_t on the test prompts, true reward  -> iter{t}/eval.json

A base with `offline_dpo_iteration` (Zephyr's role) first runs iteration 0: plain DPO on slice 0
with the ORIGINAL pairs. Every output is written atomically and a stage whose output exists is
skipped, so a rerun after a crash picks up where it stopped.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from selm.generation import backend_from_config
from selm.io import DataError, read_jsonl, reuse_or_reset, write_json_atomic, write_jsonl_atomic, write_text_atomic

log = logging.getLogger(__name__)

# UltraFeedback-binarized schema (the fields the loop reads; others are kept)
PREFS_SCHEMA = {"prompt": (str, True), "prompt_id": (str, True), "chosen": (list, True), "rejected": (list, True)}
RESPONSES_SCHEMA = {"prompt_id": (str, True), "prompt": (str, True), "response": (str, True)}


def last_assistant(messages: list, where: str) -> str:
    if not messages or not isinstance(messages[-1], dict) or messages[-1].get("role") != "assistant":
        raise DataError(f"{where}: expected a message list ending with an assistant turn")
    return messages[-1]["content"]


def prefs_slice(rows: list[dict], index: int, slice_size: int, source: str = "train_prefs") -> list[dict]:
    """The index-th contiguous slice; slices never overlap, so no prompt is reused (no replay)."""
    start, stop = index * slice_size, (index + 1) * slice_size
    if stop > len(rows):
        raise DataError(f"{source}: slice {index} needs rows {start}..{stop - 1} but there are only {len(rows)}")
    return rows[start:stop]


def slice_index(iteration: int, offline_dpo_iteration: bool) -> int:
    """Zephyr: iteration 0 (offline DPO) uses slice 0, SELM t uses slice t. Others: SELM t uses slice t-1."""
    return iteration if offline_dpo_iteration else iteration - 1


def original_pairs(rows: list[dict], source: str) -> list[dict]:
    """The corpus's own chosen/rejected (iteration 0, offline DPO): no y_ref."""
    return [
        {"prompt": r["prompt"], "prompt_id": r["prompt_id"],
         "chosen": last_assistant(r["chosen"], f"{source}:{r['prompt_id']}:chosen"),
         "rejected": last_assistant(r["rejected"], f"{source}:{r['prompt_id']}:rejected")}
        for r in rows
    ]


def rank_pairs(rows: list[dict], responses: list[dict], ranker,
               candidates: tuple[str, ...] = ("y_ref", "y_w", "y_l")) -> tuple[list[dict], dict]:
    """Rank the named candidates per prompt (default [y_ref, y_w, y_l]; Figure 6's label-update
    ablation ranks [y_ref, y_w]); best -> chosen, worst -> rejected. Drops pairs whose chosen and
    rejected texts are equal (nothing to learn) and counts every outcome."""
    unknown = set(candidates) - {"y_ref", "y_w", "y_l"}
    if unknown or len(candidates) < 2 or candidates[0] != "y_ref":
        raise ValueError(f"variant.candidates={list(candidates)}: must start with y_ref and name at least two of "
                         "y_ref, y_w, y_l")
    by_id = {r["prompt_id"]: r["response"] for r in responses}
    pairs, stats = [], {"pairs": 0, "dropped_equal": 0, "label_flipped": 0, "y_ref_chosen": 0, "y_ref_rejected": 0}
    for row in rows:
        if row["prompt_id"] not in by_id:
            raise DataError(f"responses: no y_ref for prompt_id {row['prompt_id']}")
        texts = {"y_ref": by_id[row["prompt_id"]],
                 "y_w": last_assistant(row["chosen"], f"train_prefs:{row['prompt_id']}:chosen"),
                 "y_l": last_assistant(row["rejected"], f"train_prefs:{row['prompt_id']}:rejected")}
        order = ranker.rank(row, [texts[name] for name in candidates])
        best, worst = candidates[order[0]], candidates[order[-1]]
        if texts[best] == texts[worst]:
            stats["dropped_equal"] += 1
            continue
        stats["y_ref_chosen"] += best == "y_ref"
        stats["y_ref_rejected"] += worst == "y_ref"
        stats["label_flipped"] += (best, worst) == ("y_l", "y_w")
        pairs.append({
            "prompt": row["prompt"], "prompt_id": row["prompt_id"],
            "chosen": texts[best], "rejected": texts[worst], "response": texts["y_ref"],
            "sources": f"{best}>{worst}",
        })
    stats["pairs"] = len(pairs)
    if not pairs:
        raise DataError("ranking left no pair with distinct chosen and rejected answers")
    return pairs, stats


def select_families(rows: list[dict], families, source: str) -> list[dict]:
    """Rows of the named task families only (data.families; null keeps all): the regime map's
    task-difficulty axis. Order is kept, so slicing stays contiguous within the subset."""
    if not families:
        return rows
    wanted = set(families)
    known = {r.get("family") for r in rows}
    if wanted - known:
        raise DataError(f"{source}: data.families names {sorted(wanted - known)}, which no row has "
                        f"(families present: {sorted(f for f in known if f)})")
    return [r for r in rows if r.get("family") in wanted]


def generate_responses(backend, rows: list[dict], gen: DictConfig, seed: int) -> list[dict]:
    answers = backend.generate(
        [r["prompt"] for r in rows], n=1, do_sample=gen.do_sample, temperature=gen.temperature,
        top_p=gen.top_p, max_new_tokens=gen.max_new_tokens, seed=seed,
    )
    return [{"prompt_id": r["prompt_id"], "prompt": r["prompt"], "response": a[0]} for r, a in zip(rows, answers)]


def evaluate_true_reward(backend, records: list[dict], gen: DictConfig, coverage_samples: int = 0,
                         high_reward: float = 1.0) -> tuple[dict, list[dict]]:
    """Greedy answers to the test prompts, scored by the toy world's true reward r* where the
    records carry it (toy world: `family`, `gold`); elsewhere (UltraFeedback) the answers alone, for
    the ranker-reward histograms of Figure 3. With `coverage_samples` = k > 0 (toy only) also k
    samples at T = 1 per prompt, to measure exploration: the fraction of prompts where some sample
    reaches r* >= `high_reward` (high-reward coverage), the mean best-of-k r*, and the mean number
    of distinct answers per prompt."""
    from selm.world import true_reward

    scored = all("family" in r and "gold" in r for r in records)
    if coverage_samples and not scored:
        raise ValueError("eval.coverage_samples > 0 needs the toy world's true reward: the test records have none")
    prompts = [r["prompt"] for r in records]
    answers = backend.generate(prompts, n=1, do_sample=False, temperature=1.0, top_p=1.0,
                               max_new_tokens=gen.max_new_tokens, seed=0)
    samples = (backend.generate(prompts, n=coverage_samples, do_sample=True, temperature=1.0, top_p=1.0,
                                max_new_tokens=gen.max_new_tokens, seed=1) if coverage_samples else None)
    rows = []
    for i, (record, answer) in enumerate(zip(records, answers)):
        if scored:  # (key order as before: files of earlier runs stay byte-identical)
            row = {"prompt_id": record["prompt_id"], "family": record["family"], "answer": answer[0],
                   "reward": true_reward(record, answer[0])}
        else:
            row = {"prompt_id": record["prompt_id"], "answer": answer[0]}
        if samples is not None:
            row["sample_rewards"] = [true_reward(record, a) for a in samples[i]]
            row["distinct_samples"] = len(set(a.strip() for a in samples[i]))
        rows.append(row)
    metrics = {"n": len(rows), "mean_length": sum(len(r["answer"]) for r in rows) / len(rows)}
    if not scored:
        return metrics, rows
    rewards = [r["reward"] for r in rows]
    families = sorted({r["family"] for r in rows})
    metrics.update({
        "mean_reward": sum(rewards) / len(rewards),
        "frac_correct": sum(r == 1.0 for r in rewards) / len(rewards),
        "per_family": {
            f: sum(r["reward"] for r in rows if r["family"] == f) / sum(r["family"] == f for r in rows)
            for f in families
        },
    })
    if samples is not None:
        metrics["coverage"] = {
            "k": coverage_samples, "high_reward": high_reward,
            "frac_prompts_covered": sum(max(r["sample_rewards"]) >= high_reward for r in rows) / len(rows),
            "mean_best_of_k": sum(max(r["sample_rewards"]) for r in rows) / len(rows),
            "mean_sample_reward": sum(sum(r["sample_rewards"]) / coverage_samples for r in rows) / len(rows),
            "mean_distinct": sum(r["distinct_samples"] for r in rows) / len(rows),
        }
    return metrics, rows


def iteration_config(cfg: DictConfig, t: int, init: Path, pairs: Path, out: Path,
                     reference: Path | None = None) -> DictConfig:
    """The `selm-train` config of iteration t: the loop's config with this iteration's files."""
    tcfg = OmegaConf.merge(cfg, {"iteration": t, "init_checkpoint": str(init), "pairs": str(pairs),
                                 "output_dir": str(out), "overwrite": False,
                                 "reference_checkpoint": str(reference) if reference else None})
    OmegaConf.resolve(tcfg)  # W&B names and groups keep the method's alpha, also for iteration 0
    if t == 0:
        tcfg.train.alpha = 0.0  # the offline step is plain DPO on the original pairs
    return tcfg


# What the loop's outputs depend on; changing anything else (judges, evaluation sets, W&B
# names) must not throw finished iterations away.
LOOP_SECTIONS = ("model", "train", "data", "generation", "ranker", "variant", "scale")


def run_identity(cfg: DictConfig) -> dict:
    config = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in LOOP_SECTIONS}
    config["eval"] = {"n_prompts": cfg.eval.n_prompts, "coverage_samples": cfg.eval.coverage_samples}
    return config


def run_loop(cfg: DictConfig) -> Path:
    """Run (or resume) every iteration of one base x method x seed; return the run folder."""
    from selm.train import check_checkpoint, train_iteration

    run_dir = Path(cfg.run_dir)
    base = check_checkpoint(cfg.model.path, "model.path")
    variant = cfg.variant
    if variant.pairs not in ("ranked", "original") or variant.reference not in ("previous", "base"):
        raise ValueError(f"variant={variant.name}: pairs must be ranked|original and reference previous|base")
    if variant.pairs == "original" and cfg.train.alpha != 0:
        raise ValueError(f"variant={variant.name} keeps the original pairs, which have no y_ref: "
                         f"train.alpha={cfg.train.alpha} needs y_ref (use alpha 0)")
    prefs = select_families(read_jsonl(cfg.data.train_prefs, PREFS_SCHEMA), cfg.data.families, str(cfg.data.train_prefs))
    test = select_families(read_jsonl(cfg.data.test_prefs, PREFS_SCHEMA), cfg.data.families,
                           str(cfg.data.test_prefs))[: cfg.eval.n_prompts]
    ranker = None
    iterations = ([0] if cfg.model.offline_dpo_iteration else []) + list(cfg.model.iterations)
    reuse_or_reset(run_dir, run_identity(cfg), record="config.json")  # a changed config restarts the run

    summary = {"base": _evaluate(cfg, base, test, run_dir / "base")}
    previous = base
    for t in iterations:
        it_dir = run_dir / f"iter{t}"
        rows = prefs_slice(prefs, slice_index(t, cfg.model.offline_dpo_iteration), cfg.data.slice_size,
                           str(cfg.data.train_prefs))
        pairs_path = it_dir / "pairs.jsonl"
        if not pairs_path.exists():
            if t == 0 or variant.pairs == "original":
                write_jsonl_atomic(pairs_path, original_pairs(rows, str(cfg.data.train_prefs)))
            else:
                responses_path = it_dir / "responses.jsonl"
                if not responses_path.exists():
                    responses = generate_responses(backend_from_config(cfg, previous), rows, cfg.generation, cfg.train.seed + t)
                    write_jsonl_atomic(responses_path, responses)
                    _release_accelerator_memory()  # the generation engine is gone; training needs the memory
                responses = read_jsonl(responses_path, RESPONSES_SCHEMA)
                ranker = ranker or _make_ranker(cfg)
                pairs, stats = rank_pairs(rows, responses, ranker, tuple(variant.candidates))
                write_json_atomic(it_dir / "ranking_stats.json", stats)
                write_jsonl_atomic(pairs_path, pairs)
        model_dir = it_dir / "model"
        if not (model_dir / "config.json").exists():
            reference = base if variant.reference == "base" else None
            tcfg = iteration_config(cfg, t, previous, pairs_path, model_dir, reference)
            if cfg.train.get("launcher"):
                launch_training(tcfg, it_dir)
            else:
                train_iteration(tcfg)
        summary[f"iter{t}"] = _evaluate(cfg, model_dir, test, it_dir)
        previous = model_dir
    write_json_atomic(run_dir / "summary.json", summary)
    return run_dir


def _release_accelerator_memory() -> None:
    import gc

    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def launch_training(tcfg: DictConfig, it_dir: Path) -> None:
    """Train one iteration in other processes (`train.launcher`, e.g. accelerate launch with the
    DeepSpeed ZeRO-3 config on 8 GPUs): the loop writes the iteration's resolved config, fills the
    reference log-prob cache here on one device (a ZeRO-3-sharded model cannot run that pass outside
    the engine), then runs `<launcher> -m selm.train --config <file>` and checks its exit status."""
    import shlex
    import subprocess

    from selm.train import precompute_reference

    path = it_dir / "train_config.yaml"
    write_text_atomic(path, OmegaConf.to_yaml(tcfg, resolve=True))
    precompute_reference(tcfg)
    command = [*shlex.split(tcfg.train.launcher), "-m", "selm.train", "--config", str(path)]
    log.info("launching: %s", " ".join(command))
    done = subprocess.run(command, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"training iteration {tcfg.iteration} failed (exit {done.returncode}): {' '.join(command)}")


def _make_ranker(cfg: DictConfig):
    from selm.rankers import get_ranker

    return get_ranker(cfg.ranker)


def _evaluate(cfg: DictConfig, model_dir: Path, test: list[dict], out_dir: Path) -> dict:
    path = out_dir / "eval.json"
    if not test:  # eval.n_prompts = 0: no true reward outside the toy world (paper scale)
        return {}
    if path.exists():
        return json.loads(path.read_text())
    metrics, rows = evaluate_true_reward(backend_from_config(cfg, model_dir), test, cfg.generation,
                                         coverage_samples=cfg.eval.coverage_samples)
    write_jsonl_atomic(out_dir / "eval_answers.jsonl", rows)
    write_json_atomic(path, metrics)
    return metrics
