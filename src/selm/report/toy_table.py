"""Results table of the toy loop: true reward of greedy answers per base, method and iteration.

Reads runs/<base>/alpha<alpha>/seed<seed>/summary.json (written by the loop) and
models/<base>/headroom.json (written by the SFT stage), and writes results/toy/headroom.md,
results/toy/loop_table.csv (one row per run and iteration), results/toy/loop_table.md (mean and
spread over seeds) and results/toy/provenance.json (config hash of every run, versions, commit).

    python -m selm.report.toy_table --runs runs --out results/toy
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
from pathlib import Path

from selm import layout
from selm.io import write_json_atomic, write_text_atomic
from selm.provenance import config_hash, provenance
from selm.report.stats import fmt_mean_ci, mean_ci



def method_name(alpha: float) -> str:
    return "iterative DPO" if alpha == 0 else f"SELM (alpha={alpha:g})"


def collect(runs_dir: Path) -> tuple[list[dict], dict]:
    rows, configs = [], {}
    for found in layout.experiment_runs(runs_dir, having=layout.SUMMARY):
        run = found.path
        config = json.loads((run / layout.RUN_CONFIG).read_text())
        configs[str(run)] = config_hash(config)
        summary = json.loads((run / layout.SUMMARY).read_text())
        for stage, metrics in summary.items():
            rows.append({
                "base": config["model"]["name"], "alpha": config["train"]["alpha"],
                "method": method_name(config["train"]["alpha"]), "seed": config["train"]["seed"],
                "iteration": stage, "mean_reward": round(metrics["mean_reward"], 4),
                "frac_correct": round(metrics["frac_correct"], 4), "n_prompts": metrics["n"],
                "config_hash": configs[str(run)],
            })
    return rows, configs


def markdown(rows: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["base"], r["method"], r["iteration"]), []).append(r)
    order = sorted(groups, key=lambda k: (k[0], k[1], -1 if k[2] == layout.BASE else layout.parse_iteration_name(k[2])))
    lines = [
        "| base | method | iteration | mean r* | fully correct | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for key in order:
        g = groups[key]
        r_mean, r_ci = mean_ci([x["mean_reward"] for x in g])
        c_mean, c_ci = mean_ci([x["frac_correct"] for x in g])
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {fmt_mean_ci(r_mean, r_ci)} | {fmt_mean_ci(c_mean, c_ci)} "
                     f"| {len(g)} |")
    return "\n".join(lines)


def headroom_markdown(models_dir: Path, bases: list[str] | None = None) -> str:
    """Greedy vs sampled vs best-of-n true reward of each SFT base (`bases`, the scale's; None: every
    base found in models_dir), overall and per family."""
    lines = []
    paths = [models_dir / b / "headroom.json" for b in bases] if bases else sorted(models_dir.glob("*/headroom.json"))
    for path in paths:
        h = json.loads(path.read_text())
        best = f"best_of_{h['n']}"
        families = sorted(h["greedy"]["per_family"])
        lines += [f"### {path.parent.name} ({h['n_prompts']} test prompts, {h['n']} samples at T={h['temperature']})",
                  "", "| answers | mean r* | fully correct | " + " | ".join(families) + " |",
                  "|---|---|---|" + "---|" * len(families)]
        for key, label in (("greedy", "greedy"), ("sample", "one sample"), (best, f"best of {h['n']}")):
            row = h[key]
            lines.append(f"| {label} | {row['mean']:.3f} | {row['exact']:.3f} | "
                         + " | ".join(f"{row['per_family'][f]:.2f}" for f in families) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--out", type=Path, default=Path("results/toy"))
    parser.add_argument("--bases", nargs="*", default=None,
                        help="the SFT bases of the headroom table (default: every base under --models)")
    args = parser.parse_args(argv)
    rows, configs = collect(args.runs)
    if not rows:
        raise SystemExit(f"{args.runs}: no runs/<base>/alpha<alpha>/seed<seed>/summary.json found")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(args.out / "loop_table.csv", buf.getvalue())
    n_prompts = rows[0]["n_prompts"]
    text = (
        "# Toy loop: true reward of greedy answers\n\n"
        f"Mean r* (graded true reward in [0, 1]) and fraction fully correct (r* = 1) of greedy answers to "
        f"{n_prompts} held-out test_prefs prompts, after each iteration; `base` is the SFT model, `iter0` "
        "the offline-DPO step (weak base only). ± is the half-width of a 95% t interval over seeds "
        "(0 with one seed). Generated by `python -m selm.report.toy_table`; do not edit.\n\n"
        + markdown(rows) + "\n"
    )
    write_text_atomic(args.out / "loop_table.md", text)
    write_text_atomic(args.out / "headroom.md",
                      "# Headroom of the SFT bases\n\nMean true reward r* of greedy answers, of one sample and of "
                      "the best of n samples (per family: mean r*). The gap between greedy and best-of-n is what "
                      "exploration can find. Generated by `python -m selm.report.toy_table`; do not edit.\n\n"
                      + headroom_markdown(args.models, args.bases))
    write_json_atomic(args.out / "provenance.json",
                      {**provenance(command="python -m selm.report.toy_table"), "runs": configs})
    print(text)


if __name__ == "__main__":
    main()
