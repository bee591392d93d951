"""Recipe: evaluate one checkpoint the paper's way: AlpacaEval 2.0, MT-Bench and lm-eval.

    checkpoint -> <out>/alpaca_outputs.json, alpaca_annotations.json, alpaca.json
               -> <out>/mt_bench_answers.jsonl, mt_bench_judgments.jsonl, mt_bench.json
               -> <out>/lmeval.json (harness and task versions, few-shot, decoding recorded)
               -> <out>/metrics.json (everything above, flat, for tables and W&B)

The judge is chosen by config (`judge.name`): the toy oracle at toy/evalcheck scale, an
OpenAI-compatible API at the paper scale. Judgments go through the judge's cache, so a rerun after a
crash re-judges nothing. Each finished part is skipped on rerun.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from selm import layout
from selm.io import read_jsonl, reuse_or_reset, write_json_atomic, write_jsonl_atomic

log = logging.getLogger(__name__)


JUDGE_CACHE = "judge_cache.jsonl"


def make_judge(cfg: DictConfig, cache: Path):
    from selm.judges import get_judge

    params = OmegaConf.to_container(cfg.judge, resolve=True)
    return get_judge(params.pop("name"), cache=str(cache), **params)


def alpaca_eval(cfg: DictConfig, backend, judge, model_id: str, out: Path) -> dict:
    from selm.benchmarks.alpaca import annotate, compute_metrics, generate_outputs, write_annotations, write_outputs
    from selm.benchmarks.alpaca_data import glm_data

    path = out / "alpaca.json"
    if path.exists():
        return json.loads(path.read_text())
    a = cfg.eval.alpaca_eval
    glm = glm_data(a)  # eval.alpaca_eval.glm_data (paper: the official df_gamed.csv); checked before any work
    reference = read_jsonl(a.data)[: a.limit]
    outputs_path = out / layout.ALPACA_OUTPUTS
    if outputs_path.exists():
        outputs = json.loads(outputs_path.read_text())
    else:
        outputs = generate_outputs(backend, reference, generator=model_id, **cfg.eval.decoding)
        write_outputs(outputs_path, outputs)
    table = annotate(outputs, reference, judge)
    metrics = compute_metrics(table, glm)
    write_annotations(out / "alpaca_annotations.json", table)
    write_json_atomic(path, metrics)
    return metrics


def mt_bench(cfg: DictConfig, backend, judge, model_id: str, out: Path) -> dict:
    from selm.benchmarks.mt_bench import (chat_generator, generate_answer_runs, generate_answers, grade, load_answers,
                                     load_questions, summarize)

    path = out / "mt_bench.json"
    if path.exists():
        return json.loads(path.read_text())
    m = cfg.eval.mt_bench
    questions = load_questions(m.questions)[: m.limit]
    answers_path = out / "mt_bench_answers.jsonl"
    runs_over = m.get("runs_over", "judge")  # docs/evaluation.md: what an MT-Bench run repeats
    if runs_over not in ("judge", "generations"):
        raise ValueError(f"eval.mt_bench.runs_over={runs_over!r}: must be judge or generations")
    if not answers_path.exists():
        if runs_over == "generations":
            rows = generate_answer_runs(backend, questions, decoding=cfg.eval.decoding, n_runs=m.judge_runs,
                                        temperatures=m.category_temperatures, model_id=model_id, tstamp=0.0)
        else:
            rows = generate_answers(chat_generator(backend, **cfg.eval.decoding), questions, model_id=model_id,
                                    tstamp=0.0)
        write_jsonl_atomic(answers_path, rows)
    references = load_answers(m.references) if m.references else None
    judgments = grade(questions, load_answers(answers_path), judge, n_runs=m.judge_runs, references=references)
    write_jsonl_atomic(out / "mt_bench_judgments.jsonl", judgments)
    summary = summarize(judgments)
    write_json_atomic(path, summary)
    return summary


def lm_eval_suite(cfg: DictConfig, model_dir: Path, out: Path) -> dict | None:
    """The lm-eval suite named by `eval.lmeval.config` (eval/lmeval/<name>.yaml); null skips it."""
    from selm.benchmarks.lmeval import run_suite

    lm = cfg.eval.lmeval
    if lm.config is None:
        return None
    path = out / "lmeval.json"
    if path.exists():
        return json.loads(path.read_text())
    return run_suite(model_dir, lm.config, out=str(path), world=lm.world, limit=lm.limit)


def flat_metrics(alpaca: dict | None, mt: dict | None, lm: dict | None = None) -> dict:
    """The numbers of the paper's Tables 1 and 2 for one checkpoint (parts not run are absent)."""
    metrics = {}
    if lm is not None:
        metrics = {f"lmeval_{name}": task["score"] for name, task in lm["tasks"].items()}
        metrics["lmeval_mean"] = lm["mean"]["score"]
    if alpaca is not None:
        metrics.update({
            "alpaca_lc_win_rate": alpaca["length_controlled_winrate"],
            "alpaca_win_rate": alpaca["win_rate"],
            "alpaca_avg_length": alpaca["avg_length"],
            "alpaca_n_errors": alpaca["n_errors"],
        })
    if mt is not None:
        metrics.update({
            "mt_bench_average": mt["average"]["mean"],
            "mt_bench_average_std": mt["average"]["std"],
            "mt_bench_turn_1": mt["turn_1"]["mean"],
            "mt_bench_turn_2": mt["turn_2"]["mean"],
            "mt_bench_runs": mt["n_runs"],
        })
    return metrics


PARTS = ("alpaca", "mt_bench", "lmeval")
EVAL_MODULES = ("selm.evaluate",)  # its code: selm.evaluate and the selm modules it imports


def eval_data_files(cfg: DictConfig) -> dict[str, str]:
    """Content hashes of the files an evaluation reads: AlpacaEval's instructions and references
    (and the LC GLM table), MT-Bench's questions and reference answers, and for lm-eval the conf
    file of its suite, the task folders it includes and the world files its tasks read."""
    from selm.benchmarks.lmeval import LMEVAL_CONF_DIR, REPO_ROOT, include_dir, load_lmeval_config
    from selm.provenance import tree_sha256

    def state(path) -> str:
        return tree_sha256(path) if Path(path).exists() else "missing"

    e, files = cfg.eval, {}
    for key in ("alpaca_eval.data", "alpaca_eval.glm_data", "mt_bench.questions", "mt_bench.references"):
        value = OmegaConf.select(e, key)
        if value:
            files[key] = state(value)
    name = e.lmeval.config
    if name is not None:
        conf = Path(name) if Path(str(name)).suffix else LMEVAL_CONF_DIR / f"{name}.yaml"
        files["lmeval.config"] = state(conf)
        suite = load_lmeval_config(name) if conf.is_file() else {}
        for include in suite.get("include_path") or []:
            files[f"lmeval.include_path:{include}"] = state(include_dir(include))
        # as lm-eval's run_suite: eval.lmeval.world (relative to here) wins over the suite's (to the repo)
        world = Path(e.lmeval.world) if e.lmeval.world else REPO_ROOT / suite["world"] if suite.get("world") else None
        for task in suite.get("tasks") or []:
            if isinstance(task, dict) and task.get("world_file") and world is not None:
                files[f"lmeval.world:{task['world_file']}"] = state(world / task["world_file"])
    return files


def evaluation_identity(cfg: DictConfig, model_dir: Path, model_id: str) -> dict:
    """What a checkpoint's evaluation depends on: the checkpoint's content (the fingerprint the
    reference cache uses), the evaluation, judge and generation-backend settings, the data files
    they read, the code."""
    from selm.logps import model_fingerprint
    from selm.provenance import code_fingerprint, result_versions

    def section(name: str):
        return OmegaConf.to_container(cfg[name], resolve=True)

    return {"model_dir": str(model_dir), "model_id": model_id,
            "checkpoint": model_fingerprint(model_dir, cfg.paths.ref_cache_dir),
            "eval": section("eval"), "judge": section("judge"), "generation": section("generation"),
            "scale": section("scale"), "system_prompt": cfg.model.system_prompt,
            "data": eval_data_files(cfg), "code": code_fingerprint(*EVAL_MODULES), "versions": result_versions()}


def evaluate_checkpoint(cfg: DictConfig, model_dir: str | Path, out: str | Path, model_id: str) -> dict:
    from selm.generation import backend_from_config
    from selm.checkpoints import check_checkpoint

    model_dir, out = check_checkpoint(model_dir, "model_dir"), Path(out)
    judge = make_judge(cfg, out / JUDGE_CACHE)  # first: a judge that cannot work stops this before anything is written
    # Finished parts are reused only under the same identity. The judge cache is kept whatever
    # changed: its keys name the judge, instruction and outputs, and its judgments may be paid for.
    reuse_or_reset(out, evaluation_identity(cfg, model_dir, model_id), record="eval_config.json", keep=(JUDGE_CACHE,))
    path = out / layout.EVAL_METRICS
    if path.exists():
        return json.loads(path.read_text())
    backend = backend_from_config(cfg, model_dir)
    parts = list(cfg.eval.get("parts", PARTS))
    if set(parts) - set(PARTS):
        raise ValueError(f"eval.parts={parts}: unknown part(s) {sorted(set(parts) - set(PARTS))}; known: {list(PARTS)}")
    try:
        alpaca = alpaca_eval(cfg, backend, judge, model_id, out) if "alpaca" in parts else None
        mt = mt_bench(cfg, backend, judge, model_id, out) if "mt_bench" in parts else None
    finally:
        # lm-eval loads its own HF model onto the same device: the generation engine (vLLM: 90% of
        # every GPU's memory) must be gone first.
        backend.close()
    metrics = flat_metrics(alpaca, mt, lm_eval_suite(cfg, model_dir, out) if "lmeval" in parts else None)
    metrics["model"] = model_id
    metrics["decoding"] = OmegaConf.to_container(cfg.eval.decoding, resolve=True)
    metrics["judge"] = judge.identity("pairwise")
    write_json_atomic(path, metrics)
    return metrics


def log_eval_to_wandb(cfg: DictConfig, iteration: int, metrics: dict) -> None:
    """Log a checkpoint's evaluation into the W&B run that trained it (same id: see
    selm.tracking.wandb_run_id), as eval/<metric>, so one run shows training curves and scores."""
    if not cfg.logger.wandb:
        return
    from selm.tracking import init_wandb

    run_cfg = OmegaConf.merge(cfg, {"iteration": iteration})
    numbers = {f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    run = init_wandb(run_cfg)
    run.log(numbers)
    run.summary.update(numbers)
    run.finish()
