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
from selm.io import DataError, read_jsonl, reuse_or_reset, write_json_atomic, write_jsonl_atomic

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


def rank_pairs(rows: list[dict], responses: list[dict], ranker) -> tuple[list[dict], dict]:
    """Rank [y_ref, y_w, y_l] per prompt; best -> chosen, worst -> rejected. Drops pairs whose
    chosen and rejected texts are equal (nothing to learn) and counts every outcome."""
    by_id = {r["prompt_id"]: r["response"] for r in responses}
    pairs, stats = [], {"pairs": 0, "dropped_equal": 0, "label_flipped": 0, "y_ref_chosen": 0, "y_ref_rejected": 0}
    for row in rows:
        if row["prompt_id"] not in by_id:
            raise DataError(f"responses: no y_ref for prompt_id {row['prompt_id']}")
        y_ref = by_id[row["prompt_id"]]
        y_w = last_assistant(row["chosen"], f"train_prefs:{row['prompt_id']}:chosen")
        y_l = last_assistant(row["rejected"], f"train_prefs:{row['prompt_id']}:rejected")
        candidates = [y_ref, y_w, y_l]
        order = ranker.rank(row, candidates)
        best, worst = order[0], order[-1]
        if candidates[best] == candidates[worst]:
            stats["dropped_equal"] += 1
            continue
        stats["y_ref_chosen"] += best == 0
        stats["y_ref_rejected"] += worst == 0
        stats["label_flipped"] += (best, worst) == (2, 1)
        pairs.append({
            "prompt": row["prompt"], "prompt_id": row["prompt_id"],
            "chosen": candidates[best], "rejected": candidates[worst], "response": y_ref,
            "sources": ["y_ref", "y_w", "y_l"][best] + ">" + ["y_ref", "y_w", "y_l"][worst],
        })
    stats["pairs"] = len(pairs)
    if not pairs:
        raise DataError("ranking left no pair with distinct chosen and rejected answers")
    return pairs, stats


def generate_responses(backend, rows: list[dict], gen: DictConfig, seed: int) -> list[dict]:
    answers = backend.generate(
        [r["prompt"] for r in rows], n=1, do_sample=gen.do_sample, temperature=gen.temperature,
        top_p=gen.top_p, max_new_tokens=gen.max_new_tokens, seed=seed,
    )
    return [{"prompt_id": r["prompt_id"], "prompt": r["prompt"], "response": a[0]} for r, a in zip(rows, answers)]


def evaluate_true_reward(backend, records: list[dict], gen: DictConfig) -> tuple[dict, list[dict]]:
    """Greedy answers to the test prompts scored by the toy world's true reward r*."""
    from selm.world import true_reward

    answers = backend.generate([r["prompt"] for r in records], n=1, do_sample=False, temperature=1.0, top_p=1.0,
                               max_new_tokens=gen.max_new_tokens, seed=0)
    rows = []
    for record, answer in zip(records, answers):
        reward = true_reward(record, answer[0])
        rows.append({"prompt_id": record["prompt_id"], "family": record["family"], "answer": answer[0],
                     "reward": reward})
    rewards = [r["reward"] for r in rows]
    families = sorted({r["family"] for r in rows})
    metrics = {
        "n": len(rows),
        "mean_reward": sum(rewards) / len(rewards),
        "frac_correct": sum(r == 1.0 for r in rewards) / len(rewards),
        "mean_length": sum(len(r["answer"]) for r in rows) / len(rows),
        "per_family": {
            f: sum(r["reward"] for r in rows if r["family"] == f) / sum(r["family"] == f for r in rows)
            for f in families
        },
    }
    return metrics, rows


def iteration_config(cfg: DictConfig, t: int, init: Path, pairs: Path, out: Path) -> DictConfig:
    """The `selm-train` config of iteration t: the loop's config with this iteration's files."""
    tcfg = OmegaConf.merge(cfg, {"iteration": t, "init_checkpoint": str(init), "pairs": str(pairs),
                                 "output_dir": str(out), "overwrite": False})
    OmegaConf.resolve(tcfg)  # W&B names and groups keep the method's alpha, also for iteration 0
    if t == 0:
        tcfg.train.alpha = 0.0  # the offline step is plain DPO on the original pairs
    return tcfg


# What the loop's outputs depend on; changing anything else (judges, evaluation sets, W&B
# names) must not throw finished iterations away.
LOOP_SECTIONS = ("model", "train", "data", "generation", "ranker", "scale")


def run_identity(cfg: DictConfig) -> dict:
    config = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in LOOP_SECTIONS}
    config["eval"] = {"n_prompts": cfg.eval.n_prompts}
    return config


def run_loop(cfg: DictConfig) -> Path:
    """Run (or resume) every iteration of one base x method x seed; return the run folder."""
    from selm.train import check_checkpoint, train_iteration

    run_dir = Path(cfg.run_dir)
    base = check_checkpoint(cfg.model.path, "model.path")
    prefs = read_jsonl(cfg.data.train_prefs, PREFS_SCHEMA)
    test = read_jsonl(cfg.data.test_prefs, PREFS_SCHEMA)[: cfg.eval.n_prompts]
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
            if t == 0:
                write_jsonl_atomic(pairs_path, original_pairs(rows, str(cfg.data.train_prefs)))
            else:
                responses_path = it_dir / "responses.jsonl"
                if not responses_path.exists():
                    responses = generate_responses(backend_from_config(cfg, previous), rows, cfg.generation, cfg.train.seed + t)
                    write_jsonl_atomic(responses_path, responses)
                responses = read_jsonl(responses_path, RESPONSES_SCHEMA)
                ranker = ranker or _make_ranker(cfg)
                pairs, stats = rank_pairs(rows, responses, ranker)
                write_json_atomic(it_dir / "ranking_stats.json", stats)
                write_jsonl_atomic(pairs_path, pairs)
        model_dir = it_dir / "model"
        if not (model_dir / "config.json").exists():
            train_iteration(iteration_config(cfg, t, previous, pairs_path, model_dir))
        summary[f"iter{t}"] = _evaluate(cfg, model_dir, test, it_dir)
        previous = model_dir
    write_json_atomic(run_dir / "summary.json", summary)
    return run_dir


def _make_ranker(cfg: DictConfig):
    from selm.rankers import get_ranker

    return get_ranker(cfg.ranker)


def _evaluate(cfg: DictConfig, model_dir: Path, test: list[dict], out_dir: Path) -> dict:
    path = out_dir / "eval.json"
    if path.exists():
        return json.loads(path.read_text())
    metrics, rows = evaluate_true_reward(backend_from_config(cfg, model_dir), test, cfg.generation)
    write_jsonl_atomic(out_dir / "eval_answers.jsonl", rows)
    write_json_atomic(path, metrics)
    return metrics
