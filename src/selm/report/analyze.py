"""The analyses behind every figure and test of the report, from the runs and evaluations named in
experiments/<scale>.yaml's `figures`. Writes one JSON per analysis into --out, then (selm.report.claims)
comparison.json (Tables 1-2 beside the paper's tables in --paper) and claims.json (every verdict the
report states); plots, tables and REPORT.md are rendered from these files by selm.report.build (no
model is loaded and no statistic computed there).

    python -m selm.report.analyze --spec experiments/toy.yaml --out results/toy/analysis

Choices the paper leaves open, recorded here and in the JSON:
- Figure 3's scalar "reward" of an answer is the ranker's score (toy: the oracle ranker's r* plus its
  deterministic noise; at the paper scale PairRM's aggregated pairwise logit, selm.pairrm).
- Figure 3's alpha selection (the paper's rule: the alpha with the best average external reward on the
  hold-out set): the ranker's score above, of the final iteration's greedy answers to the held-out
  prompts, one mean per seed, seeds averaged; the argmax over alpha > 0 (the searched alphas).
- Figure 4: r_SELM - r_DPO on the test chosen/rejected answers at iteration 1. Both runs of a seed start
  iteration 1 from the same checkpoint (iteration 0 is alpha-free and seeded), so
  r_SELM - r_DPO = beta * (log pi_SELM(y|x) - log pi_DPO(y|x)); averaged over seeds per prompt.
- Figure 5: each model's own samples (3 at T = 1), implicit reward beta * (log pi_t - log pi_{t-1}).
- Figures 4 and 5 load each checkpoint in its run's training precision (train.precision: bf16 at the
  paper scale) and compute log-probs `analysis.batch_size` pairs at a time, the vocabulary
  log-softmax over `analysis.seq_chunk` positions at a time (the spec's `analysis` section), so
  memory stays bounded at a 128k vocabulary and 1,024 tokens.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from selm import layout
from selm.experiments import expand, load_experiments
from selm.io import read_jsonl, write_json_atomic
from selm.report import claims
from selm.report.spec import selm_alpha
from selm.report.stats import paired_test, regime_verdict, summarize


def _has_r_star(run_dir: Path, t: int) -> bool:
    path = layout.iteration_dir(run_dir, t) / layout.LOOP_EVAL
    return path.is_file() and "mean_reward" in json.loads(path.read_text())


def _runs_by_cell(spec, experiment: str) -> dict[str, list]:
    cells: dict[str, list] = {}
    for run in expand(spec, experiment):
        cells.setdefault(run.cell, []).append(run)
    return cells


def _cell_runs(spec, path: str) -> list:
    """Runs of '<experiment>/<cell>/alpha<a>' (selm.layout.figure_ref) over its seeds."""
    ref = layout.parse_figure_ref(path)
    experiment = ref.experiment
    runs = _runs_by_cell(spec, experiment).get(ref.cell_path)
    if not runs:
        raise KeyError(f"figures: no cell {path!r} in experiments.{experiment}")
    return runs


def _run_config(run):
    """The config a run was made with (runs/.../config.json: model, train, data, generation, ranker, ...)."""
    return OmegaConf.create(_json(run.run_dir / layout.RUN_CONFIG))


def _json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (run `dvc repro` for the stage that writes it)")
    return json.loads(path.read_text())


# --- worker processes ------------------------------------------------------------------------------

WORKERS = 2  # processes for the independent (base, seed) units of Figures 2, 4 and 5


def parallel_map(fn, units: list[tuple], workers: int, threads: int | None = None) -> list:
    """[fn(*unit) for unit in units], in order: in this process when `workers` <= 1 (or one unit),
    else on a spawned pool of `workers` processes, each with `threads` torch threads (None: torch's
    default, and torch is not imported for it). Each unit is computed alone from its arguments, so
    the results do not depend on which process computed them."""
    if workers <= 1 or len(units) <= 1:
        return [fn(*unit) for unit in units]
    from selm.workers import spawn_pool

    with spawn_pool(min(workers, len(units)), threads) as pool:
        return list(pool.map(fn, *zip(*units)))


# --- Figure 2: pairwise AlpacaEval LC heatmaps -------------------------------------------------------

FIGURE2_JUDGE_CACHE = "figure2_judge_cache.jsonl"  # in the analysis folder (a persist output of the stage)


def alpaca_settings(runs: list) -> DictConfig:
    """The config the runs' checkpoints were evaluated with (selm.experiments.Run.config, as the
    experiment stage composes it): its `judge` and `eval.alpaca_eval` must be the same for every run,
    or their pairwise win rates would mix judges or LC estimators."""
    configs = [(run, run.config(Path("params.yaml"))) for run in runs]
    first_run, first = configs[0]

    def settings(cfg):
        return OmegaConf.to_container(cfg.judge, resolve=True), OmegaConf.to_container(cfg.eval.alpaca_eval, resolve=True)

    for run, cfg in configs[1:]:
        if settings(cfg) != settings(first):
            raise ValueError(f"{run.name} and {first_run.name} were evaluated with different judge or "
                             "eval.alpaca_eval settings: their outputs cannot share one Figure 2 heatmap")
    return first


def heatmaps(spec, fig, judge_cache: Path, workers: int = 1) -> dict:
    """Every model of a base against every other's AlpacaEval outputs as the reference, judged and
    scored as Table 1 is (selm.evaluate.make_judge, eval.alpaca_eval.glm_data's LC estimator);
    judgments go through `judge_cache`, so a rerun re-judges nothing. This process judges every
    (base, seed) matrix in order; their GLM fits run on `workers` processes."""
    from selm.benchmarks.alpaca import load_outputs, pairwise_tables, tables_metrics
    from selm.benchmarks.alpaca_data import glm_data
    from selm.evaluate import make_judge

    cells = _runs_by_cell(spec, fig.experiment)
    bases, units = {}, []
    for base in spec.bases:
        dpo = {r.seed: r for r in cells[layout.cell_path(base, 0.0)]}
        selm = {r.seed: r for r in cells[layout.cell_path(base, selm_alpha(fig, base))]}
        cfg = alpaca_settings([*dpo.values(), *selm.values()])
        glm = glm_data(cfg.eval.alpaca_eval)  # Table 1's GLM data (paper: the official df_gamed.csv; toy: none)
        judge = make_judge(cfg, judge_cache)
        start_it = 0 if layout.iteration_dir(dpo[min(dpo)].run_dir, 0).is_dir() else None
        base_label = "offline DPO (iter0)" if start_it == 0 else "SFT base"
        names = [f"SELM iter{t}" for t in (1, 2, 3)] + [f"DPO iter{t}" for t in (1, 2, 3)] + [base_label]
        for seed in sorted(dpo):
            outputs = {}
            for t in (1, 2, 3):
                outputs[f"SELM iter{t}"] = load_outputs(layout.iteration_dir(selm[seed].eval_dir, t) / layout.ALPACA_OUTPUTS)
                outputs[f"DPO iter{t}"] = load_outputs(layout.iteration_dir(dpo[seed].eval_dir, t) / layout.ALPACA_OUTPUTS)
            base_dir = layout.iteration_dir(dpo[seed].eval_dir, 0) if start_it == 0 else layout.base_eval_dir(base)
            base_file = base_dir / layout.ALPACA_OUTPUTS
            outputs[base_label] = load_outputs(base_file)
            units.append((base, (pairwise_tables(outputs, judge), glm)))
        bases[base] = (names, base_label, sorted(dpo), judge, glm)
    matrices = parallel_map(tables_metrics, [u for _, u in units], workers)
    out = {}
    for base, (names, base_label, seeds, judge, glm) in bases.items():
        # matrix[row][col]: LC win rate of the row model with the column model's outputs as reference
        per_seed = [[[m[col][row]["length_controlled_winrate"] for col in names] for row in names]
                    for (b, _), m in zip(units, matrices) if b == base]
        mean = np.mean(np.array(per_seed, dtype=float), axis=0)
        order = sorted(range(len(names)), key=lambda i: -mean[i][names.index(base_label)])
        out[base] = {"models": [names[i] for i in order],
                     "matrix": [[round(float(mean[i][j]), 2) for j in order] for i in order],
                     "seeds": seeds, "base_model": base_label, "judge": judge.identity("pairwise"),
                     "lc_glm": f"{glm.glm_name}; {glm.source}" if glm is not None else "neutral difficulties (no glm_data)",
                     "note": "LC win rate (%) of the row model against the column model's outputs, mean over seeds; "
                             "rows and columns ordered by win rate against the base, as in the paper"}
    return out


# --- Figure 3: alpha ablation and reward histograms --------------------------------------------------

def _ranker(run):
    from selm.rankers import get_ranker

    return get_ranker(_run_config(run).ranker)  # the ranker the run itself used


def _ranker_rewards(ranker, run_dir: Path, t: int, test: dict) -> list[float]:
    """The ranker's score of each greedy test answer, scored beside the test set's chosen answer (a
    pairwise ranker such as PairRM has no score for one answer alone; the oracle ranker's score of an
    answer does not depend on the others)."""
    rows = read_jsonl(layout.iteration_dir(run_dir, t) / layout.EVAL_ANSWERS)
    return [float(ranker.score(test[r["prompt_id"]], [r["answer"], test[r["prompt_id"]]["chosen"][-1]["content"]])[0])
            for r in rows]


# What Figure 3's "reward" is, per ranker (ranker.name of the runs' config)
RANKER_REWARD = {"oracle": "the true reward r* plus the oracle ranker's deterministic noise",
                 "pairrm": "PairRM's aggregated pairwise logit of the answer beside the test set's chosen answer"}


def reward_histogram(values: list[float], bins: np.ndarray) -> list[float]:
    """Fraction of `values` per bin; values beyond the first or last edge are counted in the edge bin,
    so the fractions always sum to 1 (np.histogram alone drops them)."""
    clipped = np.clip(np.asarray(values, dtype=float), bins[0], bins[-1])
    return (np.histogram(clipped, bins=bins)[0] / len(clipped)).round(4).tolist()


def beyond_bins(values: list[float], bins: np.ndarray) -> float:
    """The fraction of `values` outside [bins[0], bins[-1]] (counted in the edge bins)."""
    v = np.asarray(values, dtype=float)
    return round(float(((v < bins[0]) | (v > bins[-1])).mean()), 4)


def alpha_ablation(spec, fig, test: dict) -> dict:
    ranker = _ranker(_cell_runs(spec, fig.shift_cell)[0])
    curves, hist_alpha, hist_shift, all_rewards = {}, {}, {}, []
    bins = np.asarray(fig.get("bins", np.linspace(-0.4, 1.4, 19).round(3).tolist()))  # toy: width 0.1 over r* + noise
    for path in fig.cells:
        runs = _cell_runs(spec, path)
        alpha = runs[0].alpha
        its = layout.finished_iterations(runs[0].run_dir)
        lc, rstar = {}, {}
        for t in its:
            lc[t] = summarize([_json(layout.iteration_dir(r.eval_dir, t) / layout.EVAL_METRICS)["alpaca_lc_win_rate"]
                               for r in runs])
            if _has_r_star(runs[0].run_dir, t):
                rstar[t] = summarize([_json(layout.iteration_dir(r.run_dir, t) / layout.LOOP_EVAL)["mean_reward"]
                                      for r in runs])
        curves[str(alpha)] = {"cell": path, "lc": lc, "r_star": rstar, "seeds": [r.seed for r in runs]}
        rewards = [x for r in runs for x in _ranker_rewards(ranker, r.run_dir, 2, test)]
        hist_alpha[str(alpha)] = reward_histogram(rewards, bins)
        all_rewards += rewards
    shift_runs = _cell_runs(spec, fig.shift_cell)
    for t in [t for t in layout.finished_iterations(shift_runs[0].run_dir) if t >= 1]:  # SELM iterations 1..T
        runs = shift_runs
        rewards = [x for r in runs for x in _ranker_rewards(ranker, r.run_dir, t, test)]
        hist_shift[str(t)] = {"hist": reward_histogram(rewards, bins), "mean": round(float(np.mean(rewards)), 4)}
        all_rewards += rewards
    return {"curves": curves, "bins": bins.round(3).tolist(), "hist_by_alpha_iter2": hist_alpha,
            "hist_by_iteration": hist_shift, "shift_cell": fig.shift_cell, "beyond_bins": beyond_bins(all_rewards, bins),
            "reward": "the ranker's score of the greedy answer to each test prompt ("
                      + RANKER_REWARD[str(_run_config(shift_runs[0]).ranker.name)] + ")",
            "selection": alpha_selection(spec, fig, test, ranker)}


SELECTION_RULE = ("the searched alpha (> 0; 0 is iterative DPO) with the highest mean external reward (the ranker's "
                  "score, as in the histograms) of the final iteration's greedy answers to the held-out prompts, one "
                  "mean per seed, averaged over seeds")


def _final_iteration(runs: list, path: str) -> int:
    """The last trained iteration, the same in every seed of a cell (else the seeds would not average)."""
    last = {r.seed: (layout.finished_iterations(r.run_dir) or [None])[-1] for r in runs}
    if None in last.values() or len(set(last.values())) != 1:
        raise ValueError(f"figures.figure3_alpha: {path}: the seeds' last trained iterations differ or are missing "
                         f"({last}); the alpha selection averages one iteration over seeds")
    return next(iter(last.values()))


def alpha_selection(spec, fig, test: dict, ranker) -> dict:
    """The paper's alpha selection rule on Figure 3's cells: per alpha, the mean external reward (the
    ranker's score, Figure 3's reward: PairRM at the paper scale, the oracle ranker at the toy scale)
    of the final iteration's greedy answers to the held-out prompts, one mean per seed, summarized
    over seeds; the selected alpha is the argmax among alphas > 0 (the paper searched SELM's alphas;
    alpha 0 is kept as the reference). Where every run measured the true reward r* of the same
    answers, also its summary and the alpha r* would select; `runner_up` is the second by external
    reward (the report holds the selection's lead over it against the seeds' resolution)."""
    alphas = {}
    for path in fig.cells:
        runs = _cell_runs(spec, path)
        t = _final_iteration(runs, path)
        external = [float(np.mean(_ranker_rewards(ranker, r.run_dir, t, test))) for r in runs]
        entry = {"cell": path, "iteration": t, "seeds": [r.seed for r in runs], "external_reward": summarize(external)}
        if all(_has_r_star(r.run_dir, t) for r in runs):
            entry["r_star"] = summarize([_json(layout.iteration_dir(r.run_dir, t) / layout.LOOP_EVAL)["mean_reward"]
                                         for r in runs])
        alphas[str(runs[0].alpha)] = entry
    searched = sorted((a for a in alphas if float(a) > 0), key=float)
    if not searched:
        raise ValueError("figures.figure3_alpha: no cell with alpha > 0: the alpha selection has nothing to choose from")
    by_external = sorted(searched, key=lambda a: -alphas[a]["external_reward"]["mean"])  # stable: ties keep alpha order
    out = {"rule": SELECTION_RULE, "alphas": alphas, "searched": [float(a) for a in searched],
           "selected": float(by_external[0]), "runner_up": float(by_external[1]) if len(by_external) > 1 else None}
    if all("r_star" in alphas[a] for a in searched):
        best = sorted(searched, key=lambda a: -alphas[a]["r_star"]["mean"])[0]
        out.update(best_r_star=float(best), agree=best == by_external[0])
    return out


# --- Figures 4 and 5: implicit rewards -------------------------------------------------------------

ANALYSIS_DEFAULTS = {"batch_size": 4, "seq_chunk": 256}


def analysis_options(spec) -> dict:
    """The spec's `analysis` section (Figures 4/5's log-prob passes): `batch_size` pairs per forward
    pass and `seq_chunk` positions per log-softmax chunk; absent keys take ANALYSIS_DEFAULTS."""
    section = spec.get("analysis") or {}
    unknown = sorted(set(section) - set(ANALYSIS_DEFAULTS))
    if unknown:
        raise KeyError(f"experiments spec: analysis.{unknown[0]} is not a known key; known: {sorted(ANALYSIS_DEFAULTS)}")
    options = {**ANALYSIS_DEFAULTS, **section}
    for key, value in options.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"experiments spec: analysis.{key} must be a positive integer, got {value!r}")
    return options


def _precision(train, run_dir: Path) -> str:
    """The run's training precision (train.precision of runs/.../config.json: auto, bf16 or fp32)."""
    from selm.train import resolve_precision

    if train.get("precision") is None:
        raise KeyError(f"{run_dir / layout.RUN_CONFIG}: no train.precision (the analysis loads models in it)")
    return resolve_precision(str(train.precision))


def _logps(model_dir: Path, records: list[dict], train, precision: str, options: dict) -> np.ndarray:
    """(N, K) summed completion log-probs of `records` under the checkpoint, in its training
    precision, `options['batch_size']` pairs at a time (selm.logps.bounded_logps)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selm.data import pad_token_id, tokenize_pairs
    from selm.logps import bounded_logps

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    if torch.cuda.is_available():
        model.to("cuda")
    pairs, _ = tokenize_pairs(records, tokenizer, max_length=train.max_length, max_prompt_length=train.max_prompt_length)
    logps = bounded_logps(model, pairs, pad_token_id=pad_token_id(tokenizer), batch_size=options["batch_size"],
                          seq_chunk=options["seq_chunk"])
    del model
    return logps.numpy()


def _implicit_unit(selm_run: Path, dpo_run: Path, records: list[dict], train, precision: str, options: dict,
                   beta: float, t: int, t5: int, k: int, max_new_tokens: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One seed's pair of runs: Figure 4's beta * (log pi_SELM - log pi_DPO) of the test answers at
    iteration t, (prompts, 2); Figure 5's SELM-minus-DPO mean implicit reward of each model's own k
    samples at iteration t5, (prompts,)."""
    from selm.generation import HFBackend

    lp_selm = _logps(layout.model_dir(selm_run, t), records, train, precision, options)
    lp_dpo = _logps(layout.model_dir(dpo_run, t), records, train, precision, options)
    rewards = {}
    for name, run_dir in (("selm", selm_run), ("dpo", dpo_run)):
        model_dir = layout.model_dir(run_dir, t5)
        samples = HFBackend(str(model_dir), progress=False).generate([r["prompt"] for r in records], n=k, do_sample=True,
                                                     temperature=1.0, top_p=1.0,
                                                     max_new_tokens=max_new_tokens, seed=seed)
        own = [{"prompt": r["prompt"], "chosen": s[0], "rejected": s[1], "response": s[2]}
               for r, s in zip(records, samples)]
        now = _logps(model_dir, own, train, precision, options)
        before = _logps(layout.model_dir(run_dir, t5 - 1), own, train, precision, options)
        rewards[name] = (beta * (now - before)).mean(axis=1)
    return beta * (lp_selm - lp_dpo), rewards["selm"] - rewards["dpo"]


# torch threads of each worker process of Figures 4-5: one thread gives the same figure4/5 files as the
# serial path's torch default (measured on the toy runs), and two workers of two threads each on two
# cores took 5x the CPU time of the serial path (384 s wall against 128 s)
IMPLICIT_THREADS = 1


def implicit_rewards(spec, fig4, fig5, test_rows: list[dict], workers: int = 1) -> tuple[dict, dict]:
    """Figures 4 and 5 of every base; the (base, seed) units run on `workers` processes."""
    cells = _runs_by_cell(spec, fig4.experiment)
    options = analysis_options(spec)
    records = [{"prompt": r["prompt"], "chosen": r["chosen"][-1]["content"], "rejected": r["rejected"][-1]["content"]}
               for r in test_rows]
    t, t5, k = int(fig4.iteration), int(fig5.iteration), int(fig5.samples)
    bases, units = {}, []
    for base in spec.bases:
        dpo = {r.seed: r for r in cells[layout.cell_path(base, 0.0)]}
        selm = {r.seed: r for r in cells[layout.cell_path(base, selm_alpha(fig4, base))]}
        run_cfg = _run_config(dpo[min(dpo)])
        train, beta = run_cfg.train, float(run_cfg.train.beta)
        precision = _precision(train, dpo[min(dpo)].run_dir)
        if any(float(_run_config(r).train.beta) != beta for r in (*dpo.values(), *selm.values())):
            raise ValueError(f"{base}: SELM and DPO runs differ in train.beta; implicit rewards would not compare")
        bases[base] = (beta, precision, sorted(dpo))
        units += [(base, (selm[seed].run_dir, dpo[seed].run_dir, records, train, precision, options, beta, t, t5, k,
                          int(run_cfg.scale.max_new_tokens), seed)) for seed in sorted(dpo)]
    results = parallel_map(_implicit_unit, [u for _, u in units], workers, IMPLICIT_THREADS)
    out4, out5 = {}, {}
    for base, (beta, precision, seeds) in bases.items():
        d = np.mean([r[0] for (b, _), r in zip(units, results) if b == base], axis=0)  # (prompts, [chosen, rejected])
        out4[base] = {"chosen_sorted": np.sort(d[:, 0]).round(5).tolist(),
                      "rejected_sorted": np.sort(d[:, 1]).round(5).tolist(),
                      "mean_chosen": round(float(d[:, 0].mean()), 5), "mean_rejected": round(float(d[:, 1].mean()), 5),
                      "frac_chosen_positive": round(float((d[:, 0] > 0).mean()), 4),
                      "frac_rejected_negative": round(float((d[:, 1] < 0).mean()), 4),
                      "frac_rejected_positive": round(float((d[:, 1] > 0).mean()), 4),
                      "iteration": t, "beta": beta, "precision": precision, "seeds": seeds}
        d5 = np.mean([r[1] for (b, _), r in zip(units, results) if b == base], axis=0)
        out5[base] = {"sorted": np.sort(d5).round(5).tolist(), "mean": round(float(d5.mean()), 5),
                      "frac_positive": round(float((d5 > 0).mean()), 4), "iteration": t5, "samples": k,
                      "beta": beta, "precision": precision, "seeds": seeds}
    return out4, out5


# --- Figure 6: iterative-DPO ablations ---------------------------------------------------------------

def ablations(spec, fig) -> dict:
    series = {}
    for path in [fig.iterative, *fig.variants]:
        runs = _cell_runs(spec, path)
        points = []
        seen_pairs = 0.0
        for t in layout.finished_iterations(runs[0].run_dir):
            n_pairs = np.mean([_json(layout.model_dir(r.run_dir, t) / layout.TRAIN_METRICS)["n_pairs"] for r in runs])
            seen_pairs += n_pairs
            mt = [_json(layout.iteration_dir(r.eval_dir, t) / layout.EVAL_METRICS)["mt_bench_average"] for r in runs]
            point = {"iteration": t, "pairs_k": round(seen_pairs / 1000, 3), "mt_bench": summarize(mt)}
            if _has_r_star(runs[0].run_dir, t):
                point["r_star"] = summarize([_json(layout.iteration_dir(r.run_dir, t) / layout.LOOP_EVAL)["mean_reward"]
                                             for r in runs])
            points.append(point)
        label = "iterative (rank y_w, y_l, y_ref)" if path == fig.iterative else layout.parse_figure_ref(path).cell
        series[label] = {"cell": path, "points": points}
    return series


# --- Beyond the paper: paired tests, coverage, regime map ----------------------------------------------

PAIRED_KEYS = ("mean_reward", "frac_correct", "frac_prompts_covered", "mean_best_of_k", "mean_distinct",
               "alpaca_lc_win_rate", "mt_bench_average", "lmeval_mean")


def _iteration_metrics(run, t: int) -> dict:
    """Everything measured of a run's iteration t, read once: the loop's eval.json (coverage
    flattened) and the evaluation's metrics.json, each where it exists."""
    loop_path = layout.iteration_dir(run.run_dir, t) / layout.LOOP_EVAL
    eval_path = layout.iteration_dir(run.eval_dir, t) / layout.EVAL_METRICS
    loop = _json(loop_path) if loop_path.is_file() else {}
    return {**loop, **loop.get("coverage", {}), **(_json(eval_path) if eval_path.is_file() else {})}


def paired_main(spec, experiment: str) -> dict:
    """SELM vs iterative DPO per base and iteration, paired by seed: r*, coverage, LC, MT-Bench, lm-eval."""
    cells = _runs_by_cell(spec, experiment)
    out = {}
    for base in spec.bases:
        dpo = {r.seed: r for r in cells[layout.cell_path(base, 0.0)]}
        alphas = sorted({r.alpha for cell, runs in cells.items() if cell.startswith(f"{base}/") for r in runs
                         if r.alpha > 0})
        for alpha in alphas:
            selm = {r.seed: r for r in cells[layout.cell_path(base, alpha)]}
            seeds = sorted(set(dpo) & set(selm))
            if len(seeds) < 2:  # the paper's protocol has one seed: a paired test needs two
                out[layout.cell_path(base, alpha)] = {"seeds": seeds, "iterations": [], "note": "fewer than 2 seeds: no test"}
                continue
            rows = []
            for t in layout.finished_iterations(dpo[seeds[0]].run_dir):
                a = {s: _iteration_metrics(selm[s], t) for s in seeds}
                b = {s: _iteration_metrics(dpo[s], t) for s in seeds}
                row = {"iteration": t}
                for key in PAIRED_KEYS:  # each measure every run of the pair has (no r* at the paper scale)
                    if all(key in a[s] and key in b[s] for s in seeds):
                        row[key] = paired_test([a[s][key] for s in seeds], [b[s][key] for s in seeds])
                rows.append(row)
            out[layout.cell_path(base, alpha)] = {"seeds": seeds, "iterations": rows}
    return out


def regime_map(spec, fig) -> dict:
    def final_rewards(path: str) -> dict[int, float]:
        runs = _cell_runs(spec, path)
        return {r.seed: _json(r.run_dir / layout.SUMMARY)[layout.iteration_name(layout.finished_iterations(r.run_dir)[-1])]
                ["mean_reward"] for r in runs}

    regimes = {"standard": {"dpo": fig.baseline.dpo, "selm": list(fig.baseline.selm)}}
    cells = _runs_by_cell(spec, fig.experiment)
    for name in fig.regimes:
        alphas = sorted(r.alpha for r in (runs[0] for cell, runs in cells.items() if cell.startswith(f"{name}/")))
        regimes[name] = {"dpo": layout.figure_ref(fig.experiment, name, 0.0),
                         "selm": [layout.figure_ref(fig.experiment, name, a) for a in alphas if a > 0]}
    out = {}
    for name, paths in regimes.items():
        dpo = final_rewards(paths["dpo"])
        entry = {"dpo_cell": paths["dpo"], "dpo_final_r_star": summarize(list(dpo.values())), "selm": {}}
        for path in paths["selm"]:
            selm = final_rewards(path)
            seeds = sorted(set(dpo) & set(selm))
            test = paired_test([selm[s] for s in seeds], [dpo[s] for s in seeds])
            verdict = regime_verdict(test)["verdict"]
            alpha = str(layout.parse_figure_ref(path).alpha)
            entry["selm"][alpha] = {"cell": path, "final_r_star": summarize(list(selm.values())), "diff": test,
                                    "verdict": verdict}
        out[name] = entry
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=Path("experiments/toy.yaml"))
    parser.add_argument("--out", type=Path, default=Path("results/toy/analysis"))
    parser.add_argument("--paper", type=Path, default=Path("paper"), help="the paper's tables (CSV)")
    parser.add_argument("--workers", type=int, default=WORKERS,
                        help="processes for Figures 2, 4 and 5 (the same files with any number)")
    args = parser.parse_args(argv)
    spec = load_experiments(args.spec)
    figs = spec.figures
    # the held-out prompts every run answered after each iteration (the loop's data.test_prefs, eval.n_prompts)
    first = _run_config(expand(spec, figs.figure4_ird.experiment)[0])
    test_all = read_jsonl(first.data.test_prefs)
    test_rows, test = test_all[: int(first.eval.n_prompts)], {r["prompt_id"]: r for r in test_all}
    write_json_atomic(args.out / "paired_tests.json", paired_main(spec, figs.figure4_ird.experiment))
    if "regime_map" in figs:
        write_json_atomic(args.out / "regime_map.json", regime_map(spec, figs.regime_map))
    write_json_atomic(args.out / "figure6_ablations.json", ablations(spec, figs.figure6_ablations))
    write_json_atomic(args.out / "figure3_alpha.json", alpha_ablation(spec, figs.figure3_alpha, test))
    write_json_atomic(args.out / "figure2_heatmaps.json",
                      heatmaps(spec, figs.figure2_heatmap, args.out / FIGURE2_JUDGE_CACHE, args.workers))
    fig4, fig5 = implicit_rewards(spec, figs.figure4_ird, figs.figure5_own_samples, test_rows, args.workers)
    write_json_atomic(args.out / "figure4_ird.json", fig4)
    write_json_atomic(args.out / "figure5_own_samples.json", fig5)
    claims.write(spec, args.spec, args.out, args.paper,
                 f"python -m selm.report.analyze --spec {args.spec} --out {args.out}")
    print(f"analyses written to {args.out}")


if __name__ == "__main__":
    from selm import console
    from selm.stagelog import stage_timer

    console.setup()  # library bars and info logs off unless SELM_VERBOSE=1
    with stage_timer():
        main()
