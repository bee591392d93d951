"""The report stage: tables (ours beside the paper's), figures, and results/REPORT.md, all from files
written by earlier stages; never edited by hand. It renders only: every number and verdict it states
was computed by the analyze stage (analysis/*.json, with claims.json and comparison.json from
selm.report.claims), and no statistical test or verdict function is imported here
(tests/test_layers.py checks it).

    python -m selm.report.build --spec experiments/toy.yaml --scale toy

Writes results/<scale>/tables/*, results/figures/<scale>/*.png and results/REPORT.md, and logs the
figures to W&B (offline by default) when the spec's logger config enables it.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

from omegaconf import OmegaConf

from selm import layout
from selm.io import write_json_atomic, write_text_atomic
from selm.provenance import config_hash, provenance
from selm.report import eval_tables, figures, toy_table
from selm.report.claims_text import CLAIMS_FILE, COMPARISON_FILE
from selm.report.spec import spec_config
from selm.report.stats import fmt_mean_ci, fmt_test, fmt_threshold

def comparison_markdown(rows: list[dict]) -> str:
    labels = ["AE2 LC", "MT avg", "academic mean"]
    head = "| paper model | our model | " + " | ".join(f"{l} ours (Δ) | {l} paper (Δ)" for l in labels) + " |"
    lines = [head, "|---|---|" + "---|---|" * len(labels)]
    for r in rows:
        cells = []
        for l in labels:
            if f"{l} ours" not in r:
                cells += ["n/a", f"{r.get(f'{l} paper', 'n/a')}"]
                continue
            d = r.get(f"{l} ours delta")
            cells.append(fmt_mean_ci(r[f"{l} ours"], r.get(f"{l} ours ci95") if r["seeds"] > 1 else None, 2)
                         + (f" ({d:+.2f})" if d is not None else ""))
            cells.append(f"{r[f'{l} paper']:.2f} ({r[f'{l} paper delta']:+.2f})")
        ours_name = f"{r['our_base']} " + {"sft": "SFT base", "base": "SFT base", "offline_dpo": "iter0 (offline DPO)",
                                           "dpo": f"iterative DPO iter{r['iteration']}",
                                           "selm": f"SELM iter{r['iteration']}"}[r["method"]]
        lines.append(f"| {r['paper_model']} | {ours_name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt_test(t: dict, scale: float = 1.0, digits: int = 3) -> str:
    return fmt_test({**t, **{k: t[k] * scale for k in ("mean_diff", "ci_low", "ci_high") if t.get(k) is not None}},
                    digits)


def paired_markdown(paired: dict) -> str:
    if not any(e["iterations"] for e in paired.values()):
        return "(fewer than 2 seeds per cell: no paired test; the paper's protocol runs one seed)"
    cols = [("mean_reward", "r*"), ("frac_prompts_covered", "high-reward coverage"), ("alpaca_lc_win_rate", "AE2 LC"),
            ("mt_bench_average", "MT avg"), ("lmeval_mean", "lm-eval mean")]
    present = {k for e in paired.values() for row in e["iterations"] for k in row}
    cols = [c for c in cols if c[0] in present]
    lines = ["| base / SELM alpha | iteration | " + " | ".join(c for _, c in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for cell, entry in paired.items():
        for row in entry["iterations"]:
            cells = [_fmt_test(row[k]) if k in row else "n/a" for k, _ in cols]
            lines.append(f"| {cell} | {row['iteration']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def coverage_markdown(paired: dict) -> str | None:
    if not any("frac_prompts_covered" in row for e in paired.values() for row in e["iterations"]):
        return None  # no true reward at this scale
    lines = ["| base / SELM alpha | iteration | coverage DPO | coverage SELM | best-of-8 r* DPO | best-of-8 r* SELM "
             "| distinct of 8 DPO | distinct of 8 SELM |", "|---|---|---|---|---|---|---|---|"]
    for cell, entry in paired.items():
        for row in entry["iterations"]:
            c, b, d = row["frac_prompts_covered"], row["mean_best_of_k"], row["mean_distinct"]
            lines.append(f"| {cell} | {row['iteration']} | {c['b_mean']:.3f} | {c['a_mean']:.3f} | {b['b_mean']:.3f} | "
                         f"{b['a_mean']:.3f} | {d['b_mean']:.2f} | {d['a_mean']:.2f} |")
    return "\n".join(lines)


def regime_markdown(regimes: dict, verdicts: dict) -> str:
    """The regime map's table; `verdicts`: claims.json's `regimes` (regime -> alpha -> verdict)."""
    lines = ["| regime | DPO final r* | SELM alpha | SELM final r* | SELM - DPO (95% CI, p, SELM better in) "
             "| threshold | verdict |", "|---|---|---|---|---|---|---|"]
    for name, e in regimes.items():
        for alpha, s in sorted(e["selm"].items(), key=lambda kv: float(kv[0])):
            v = verdicts[name][alpha]
            dpo, selm = e["dpo_final_r_star"], s["final_r_star"]
            lines.append(f"| {name} | {fmt_mean_ci(dpo['mean'], dpo['ci95'])} | {float(alpha):g} | "
                         f"{fmt_mean_ci(selm['mean'], selm['ci95'])} | {_fmt_test(s['diff'])} | {fmt_threshold(v)} | "
                         f"{v['verdict']}" + (f" ({v['reason']})" if v["verdict"] == "inconclusive" else "") + " |")
    return "\n".join(lines)


def regime_conclusion(regimes: dict, verdicts: dict) -> str:
    """The regime map's conclusion, cells grouped by verdict (`verdicts` as regime_markdown's)."""
    by_verdict: dict[str, list[str]] = {}
    n = 0
    for name, e in regimes.items():
        for alpha, s in e["selm"].items():
            n += 1
            by_verdict.setdefault(verdicts[name][alpha]["verdict"], []).append(
                f"{name} at alpha={float(alpha):g} ({s['diff']['mean_diff']:+.3f} r*)")
    parts = []
    for verdict in ("helps", "hurts", "inconclusive"):
        cells = by_verdict.get(verdict, [])
        parts.append(f"- optimism **{verdict}** in {len(cells)} cell(s)" + (": " + "; ".join(sorted(cells)) if cells else ""))
    parts.append(f"- Read with care: {n} comparisons at the 95% level, so about {0.05 * n:.1f} verdicts are expected "
                 "to be wrong by chance alone, and the seed intervals hold the SFT base fixed: another machine's SFT "
                 "base moves every cell (hence the between-machine floor); the size of each difference (in r*, on a "
                 "0-1 scale) says more than its verdict.")
    return "\n".join(parts)


def make_figures(analysis: Path, figdir: Path) -> tuple[list[Path], dict]:
    """Figures 1-6, and the regime map where its analysis exists, as PNGs in figdir from the
    analysis files (the regime map's colours from claims.json's verdicts); and Figure 1's facts (the
    report's text quotes them)."""
    load = lambda name: json.loads((analysis / name).read_text())  # noqa: E731
    fig1, fig1_facts = figures.figure1_concept(figdir)
    pngs = [fig1, *figures.figure2_heatmaps(load("figure2_heatmaps.json"), figdir),
            *figures.figure3(load("figure3_alpha.json"), figdir), *figures.figure4(load("figure4_ird.json"), figdir),
            *figures.figure5(load("figure5_own_samples.json"), figdir),
            *figures.figure6(load("figure6_ablations.json"), figdir)]
    if (analysis / "regime_map.json").is_file():
        pngs += figures.regime_map(load("regime_map.json"), load(CLAIMS_FILE)["regimes"], figdir)
    return pngs, fig1_facts


def _log_figures_to_wandb(paths: list[Path], scale: str, logger) -> None:
    """The figures as images of one W&B run, `report/<scale>` (settings as selm.tracking.init_wandb's)."""
    if not logger.wandb:
        return
    import os

    import wandb

    os.environ.setdefault("WANDB_MODE", logger.mode)
    run = wandb.init(project=logger.project, group="report", name=f"report/{scale}", dir=logger.dir,
                     id=f"report-{scale}", resume="allow", reinit="finish_previous",
                     settings=wandb.Settings(x_disable_stats=True, x_disable_meta=True, save_code=False,
                                             console="off", silent=True))
    run.log({f"figures/{p.stem}": wandb.Image(str(p)) for p in paths})
    run.finish()


def report_runs(experiments: set[str], root: Path = layout.RUNS) -> dict[str, str]:
    """run folder -> config hash of the runs of these experiments only: other folders below runs/
    (another spec's experiments, ad-hoc runs) are no input of this report."""
    return {str(run.path): config_hash(json.loads((run.path / layout.RUN_CONFIG).read_text()))
            for experiment in sorted(experiments)
            for run in layout.experiment_runs(Path(root) / experiment, having=layout.RUN_CONFIG)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=Path("experiments/toy.yaml"))
    parser.add_argument("--scale", default="toy")
    parser.add_argument("--report", type=Path, default=Path("results/REPORT.md"))
    args = parser.parse_args(argv)
    spec = OmegaConf.load(args.spec)
    tables = Path("results") / args.scale / "tables"
    analysis = Path("results") / args.scale / "analysis"
    figdir = Path("results") / "figures" / args.scale
    heat = spec.figures.figure2_heatmap

    # tables: true reward per iteration and headroom (toy world only), evaluations, paper comparison
    main_runs = layout.RUNS / heat.experiment
    if any(json.loads((run.path / layout.SUMMARY).read_text()).get(layout.iteration_name(1), {}).get("mean_reward")
           is not None for run in layout.experiment_runs(main_runs, having=layout.SUMMARY)):
        toy_table.main(["--runs", str(main_runs), "--models", "models", "--out", str(tables), "--bases", *spec.bases])
    eval_tables.main(["--evals", str(layout.EVALS), "--bases", *spec.bases, "--experiment", heat.experiment, "--out", str(tables)])
    load = lambda name: json.loads((analysis / name).read_text())  # noqa: E731
    comparison = load(COMPARISON_FILE)["rows"]
    buf = io.StringIO()
    fields = sorted({k for r in comparison for k in r}, key=lambda k: (k not in ("paper_model", "our_base", "method",
                                                                                   "iteration", "seeds"), k))
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(comparison)
    write_text_atomic(tables / "paper_comparison.csv", buf.getvalue())
    write_text_atomic(tables / "paper_comparison.md",
                      "# Tables 1 and 2: ours beside the paper's\n\nOurs: mean ± 95% t interval over seeds; (Δ): change "
                      "from the model the online iterations start from. Paper: paper/*.csv (docs/paper.md). Generated "
                      "by `python -m selm.report.build`; do not edit.\n\n" + comparison_markdown(comparison) + "\n")
    paired = load("paired_tests.json")
    regimes = load("regime_map.json") if (analysis / "regime_map.json").is_file() else None

    pngs, fig1_facts = make_figures(analysis, figdir)

    report = render_report(args, spec, comparison, paired, regimes, load, fig1_facts, tables, figdir)
    write_text_atomic(args.report, report)
    run_configs = report_runs(set(spec.get("experiments", {})))
    command = f"{spec.report.command} (report stage)" if "report" in spec and "command" in spec.report else None
    if command is None:
        raise KeyError(f"{args.spec}: no report.command (the command that rebuilds this scale's report)")
    write_json_atomic(tables / "provenance.json", {**provenance(command=command), "runs": run_configs})
    _log_figures_to_wandb(pngs, args.scale, spec_config(spec).logger)
    print(f"wrote {args.report}, {len(pngs)} figures in {figdir}")


def machine_description() -> str:
    """'<CPU model>, <n> cores' and the GPU's name where one is visible: where the report was built."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    text = f"{cpu}, {os.cpu_count()} cores"
    import torch

    if torch.cuda.is_available():
        text += f", {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return text


def render_report(args, spec, comparison, paired, regimes, load, fig1_facts, tables: Path, figdir: Path,
                  extra: list | None = None) -> str:
    """REPORT.md's text; `extra` sections (report_text.Section: experiments beyond the paper's) come last."""
    from selm.report.report_text import ReportData, render

    variant_stats = Path("data/variants/weak_corpus/stats.json")
    figs = {name: load(f"{name}.json") for name in ("figure3_alpha", "figure4_ird", "figure5_own_samples",
                                                     "figure6_ablations")}
    figs["figure1"] = fig1_facts
    figs["figure2_heatmaps"] = load("figure2_heatmaps.json")
    claims = load(CLAIMS_FILE)
    data = ReportData(
        scale=args.scale, spec_path=str(args.spec), spec=spec, report=args.report, tables=tables, figdir=figdir,
        comparison=comparison, paired=paired, claims=claims, figs=figs, regimes=regimes,
        markdown={"comparison": comparison_markdown(comparison), "paired": paired_markdown(paired),
                  "coverage": coverage_markdown(paired),
                  "regimes": regime_markdown(regimes, claims["regimes"]) if regimes else None,
                  "regime_conclusion": regime_conclusion(regimes, claims["regimes"]) if regimes else None},
        variants=json.loads(variant_stats.read_text()) if regimes and variant_stats.is_file() else {},
        machine=machine_description(), commit=provenance().get("git_commit"),
        runs=dict(claims["runs"]), extra=list(extra or []))
    return render(data)


if __name__ == "__main__":
    from selm import console
    from selm.stagelog import stage_timer

    console.setup()  # library bars and info logs off unless SELM_VERBOSE=1
    with stage_timer():
        main()
