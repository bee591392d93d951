"""Tables 1 and 2 beside the paper's, as numbers: per paper model, ours (mean and 95% t interval over
seeds) beside the paper's, and each one's change from the model the online iterations start from.
Computed by the analyze stage (analysis/comparison.json); selm.report.build renders it.
"""

from __future__ import annotations

import csv
from pathlib import Path

from selm import layout
from selm.report.stats import mean_ci

# our base -> the paper's base in paper/*.csv
PAPER_BASE = {"tiny-sft": "zephyr", "tiny-instruct": "llama3",  # the toy bases play the paper's
              "zephyr-7b-sft": "zephyr", "llama3-8b-instruct": "llama3",
              "rehearsal-zephyr": "zephyr", "rehearsal-llama3": "llama3"}  # the rehearsal's stand-ins
LOOP_START = {"zephyr": ("offline_dpo", "0"), "llama3": ("base", "0")}  # what the online iterations start from
# (our evaluation key, the paper's column, the label of the comparison's columns)
METRICS = (("alpaca_lc_win_rate", "lc_win_rate", "AE2 LC"), ("alpaca_win_rate", "win_rate", "AE2 WR"),
           ("mt_bench_average", "mtbench_avg", "MT avg"), ("lmeval_mean", "average", "academic mean"))


def _paper_key(base: str, method: str, iteration: str) -> tuple | None:
    pb = PAPER_BASE.get(base)
    if pb is None:
        return None
    if iteration == "base":
        return (pb, "sft" if pb == "zephyr" else "base", "0")
    t = str(layout.parse_iteration_name(iteration))
    if t == "0":
        return (pb, "offline_dpo", "0") if method == "iterative DPO" else None
    return (pb, "dpo" if method == "iterative DPO" else "selm", t)


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def paper_comparison(rows: list[dict], paper1: list[dict], paper2: list[dict],
                     selm_alpha: float | dict[str, float]) -> list[dict]:
    """One row per paper model: ours (mean over seeds) beside the paper's, and each one's change from
    the model the online iterations start from (Zephyr-7B-DPO / Llama-3-8B-Instruct and their roles)."""
    paper = {(r["base"], r["method"], r["iteration"]): {**r, **p} for r in paper1 for p in paper2
             if (p["base"], p["method"], p["iteration"]) == (r["base"], r["method"], r["iteration"])}
    ours: dict[tuple, list[dict]] = {}
    for r in rows:
        alpha = selm_alpha.get(r["base"], 0.0) if isinstance(selm_alpha, dict) else selm_alpha
        if r["method"].startswith("SELM") and f"alpha={alpha:g}" not in r["method"]:
            continue
        key = _paper_key(r["base"], r["method"], r["iteration"])
        if key:
            ours.setdefault(key, []).append(r)
    out = []
    for key, p in paper.items():
        if key not in ours:
            continue
        start = LOOP_START[key[0]]
        row = {"paper_model": p["model"], "our_base": ours[key][0]["base"],
               "method": key[1], "iteration": key[2], "seeds": len(ours[key])}
        for ours_key, paper_key, label in METRICS:
            vals = [float(r[ours_key]) for r in ours[key] if ours_key in r]
            if not vals:
                continue
            mean, ci = mean_ci(vals)
            start_vals = [float(r[ours_key]) for r in ours.get((key[0], *start), []) if ours_key in r]
            row[f"{label} ours"] = round(mean, 2)
            row[f"{label} ours ci95"] = None if ci is None else round(ci, 4)  # not 2: a CI below 0.005 is no zero spread
            row[f"{label} paper"] = float(p[paper_key])
            if start_vals:
                row[f"{label} ours delta"] = round(mean - mean_ci(start_vals)[0], 2)
            row[f"{label} paper delta"] = round(float(p[paper_key]) - float(paper[(key[0], *start)][paper_key]), 2)
        out.append(row)
    return out
