"""The paper's Table 1 and 2 layouts from our evaluations: AlpacaEval 2.0 (LC, WR, length) and
MT-Bench (average, turn 1, turn 2); lm-eval task scores and mean. Per base, method and iteration,
mean ± 95% t interval over seeds.

Reads evals/base/<base>/metrics.json and evals/main/<base>/alpha<a>/seed<s>/iter<t>/metrics.json
(written by `python -m selm.cli.stage eval...`) and writes results/<scale>/table1.{csv,md}, table2.md.

    python -m selm.report.eval_tables --evals evals --out results/toy
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

from selm import layout
from selm.io import write_text_atomic
from selm.report.stats import fmt_mean_ci, mean_ci
from selm.report.toy_table import method_name

TABLE1 = [("alpaca_lc_win_rate", "AE2 LC"), ("alpaca_win_rate", "AE2 WR"), ("alpaca_avg_length", "AE2 len"),
          ("mt_bench_average", "MT avg"), ("mt_bench_turn_1", "MT T1"), ("mt_bench_turn_2", "MT T2")]


def table2_markdown(rows: list[dict]) -> str:
    """Table 2 layout: every lm-eval task score and their mean, mean ± CI over seeds."""
    columns = sorted({k for r in rows for k in r if k.startswith("lmeval_") and k != "lmeval_mean"})
    if not columns:
        return "(no lm-eval results)"
    columns.append("lmeval_mean")
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["base"], r["method"], r["iteration"]), []).append(r)
    lines = ["| base | method | iteration | " + " | ".join(c.removeprefix("lmeval_") for c in columns) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    for key in sorted(groups, key=_order):
        cells = []
        for c in columns:
            if any(c not in r for r in groups[key]):  # a suite without this task (another scale's variant)
                cells.append("n/a")
                continue
            mean, ci = mean_ci([float(r[c]) for r in groups[key]])
            cells.append(fmt_mean_ci(mean, ci, 1))
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def collect(evals: Path, bases: list[str] | None = None, experiment: str = "main") -> list[dict]:
    """Metrics of every evaluated checkpoint: evals/base/<base>/ and evals/<experiment>/<base>/alpha<a>/
    seed<s>/iter<t>/; of `bases` only when given."""
    rows = []
    for base, path in layout.evaluated_bases(evals):
        rows.append({"base": base, "method": "SFT base", "iteration": "base", "seed": None,
                     **json.loads(path.read_text())})
    for run, t, path in layout.evaluated_checkpoints(evals / experiment):
        rows.append({"base": run.cell, "method": method_name(run.alpha), "iteration": layout.iteration_name(t),
                     "seed": run.seed, **json.loads(path.read_text())})
    return [r for r in rows if bases is None or r["base"] in bases]


def _order(key: tuple) -> tuple:
    base, method, it = key
    return (base, method != "SFT base", method, -1 if it == "base" else layout.parse_iteration_name(it))


def table1_markdown(rows: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["base"], r["method"], r["iteration"]), []).append(r)
    lines = ["| base | method | iteration | " + " | ".join(label for _, label in TABLE1) + " | seeds |",
             "|---|---|---|" + "---|" * len(TABLE1) + "---|"]
    for key in sorted(groups, key=_order):
        cells = []
        for metric, _ in TABLE1:
            mean, ci = mean_ci([float(r[metric]) for r in groups[key]])
            cells.append(fmt_mean_ci(mean, ci, 2))
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells) + f" | {len(groups[key])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evals", type=Path, default=Path("evals"))
    parser.add_argument("--out", type=Path, default=Path("results/toy"))
    parser.add_argument("--bases", nargs="*", default=None, help="only these bases (default: all under --evals)")
    parser.add_argument("--experiment", default="main", help="the experiment whose runs fill the tables")
    args = parser.parse_args(argv)
    rows = collect(args.evals, args.bases, args.experiment)
    if not rows:
        raise SystemExit(f"{args.evals}: no metrics.json found")
    lm_fields = sorted({k for r in rows for k in r if k.startswith("lmeval_")})
    fields = ["base", "method", "iteration", "seed"] + [m for m, _ in TABLE1] + lm_fields + ["judge", "model"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(args.out / "table1.csv", buf.getvalue())
    judge = rows[0]["judge"]
    text = ("# Table 1 layout: AlpacaEval 2.0 and MT-Bench\n\n"
            f"Judge: `{judge}`. AE2 LC / WR: length-controlled and raw win rate (%) against the eval set's "
            "reference outputs, computed with alpaca_eval's metric code; AE2 len: mean characters of the answers; "
            "MT avg / T1 / T2: single-answer grades 1..10, averaged over the MT-Bench runs (judge runs of one greedy "
            "answer, or generation runs at FastChat's per-category temperatures: eval.mt_bench.runs_over, "
            "docs/evaluation.md). AlpacaEval answers are greedy. "
            "± is a 95% t interval over seeds. Generated by `python -m selm.report.eval_tables`; do not edit.\n\n"
            + table1_markdown(rows) + "\n")
    write_text_atomic(args.out / "table1.md", text)
    table2 = ("# Table 2 layout: lm-evaluation-harness\n\n"
              "Scores (%) of each lm-eval task of the scale's suite (eval/lmeval/) and their mean; harness and task "
              "versions, few-shot settings and decoding are recorded in each checkpoint's lmeval.json. ± is a 95% t "
              "interval over seeds. Generated by `python -m selm.report.eval_tables`; do not edit.\n\n"
              + table2_markdown(rows) + "\n")
    write_text_atomic(args.out / "table2.md", table2)
    print(text)


if __name__ == "__main__":
    main()
