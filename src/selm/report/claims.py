"""Every verdict the report states, computed by the analyze stage into analysis/claims.json: the
number of loop runs per experiment, the paper's claims one by one (the numbers each quotes and its
verdict), the changes from the loop's start model, the SELM-vs-DPO verdicts at the last iteration,
the alpha verdicts, Figures 3-6's takeaways and the regime map's verdicts. selm.report.claims_text
and selm.report.report_text render them.

A claim is decided by stats.effect_verdict: agrees / does not agree only when the difference is beyond
the smallest one the design can detect (its 95% interval excludes 0 and it is at least the minimum
detectable effect and, in r*, the between-machine floor), otherwise inconclusive; one seed or zero
spread gives no interval and no test, so "inconclusive". Claims the paper does not make (r*,
coverage, orderings it does not state) are marked as ours (`ours`). Every input is an analysis file
or the comparison table (selm.report.comparison); nothing here is specific to one scale.

    python -m selm.report.claims --spec experiments/toy.yaml --analysis results/toy/analysis

recomputes claims.json (and comparison.json) from the analysis files already there, without
redoing the analyses.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from selm.report.claims_text import CLAIMS_FILE, COMPARISON_FILE, WORDS
from selm.report.stats import (MACHINE_FLOOR, against_base_spread, effect_verdict, regime_verdict, sample_test,
                               summary_diff)


def combine(verdicts: list[str]) -> str:
    """One verdict on a claim made of several comparisons ("positive" / "negative" / "inconclusive"
    each): agrees only if every one is positive; does not agree if some are negative and none
    positive; mixed if both; else inconclusive."""
    if verdicts and all(v == "positive" for v in verdicts):
        return "agrees"
    if "negative" in verdicts:
        return "mixed" if "positive" in verdicts else "does not agree"
    return "inconclusive"


def _summary(mean: float, ci: float | None, n: int) -> dict:
    return {"mean": mean, "ci95": ci, "n": n}


# --- the comparison table: changes from the loop's start, SELM minus DPO -------------------------------

def loop_start_rows(comparison: list[dict]) -> dict[str, dict]:
    """Per base, the comparison row of the model the online iterations start from."""
    return {r["our_base"]: r for r in comparison if (r["method"], r["iteration"]) in (("offline_dpo", "0"), ("base", "0"))}


def change_verdict(row: dict, start: dict, label: str) -> dict:
    """The change of `label` ('AE2 LC', ...) from the loop's start model to `row`, with its verdict."""
    def side(r):
        return _summary(r[f"{label} ours"], r.get(f"{label} ours ci95"), r["seeds"])
    return effect_verdict(summary_diff(side(row), side(start)))


CHANGE_LABELS = ("AE2 LC", "MT avg", "academic mean")


def changes(comparison: list[dict]) -> list[dict]:
    """Every (model, metric) change from the loop's start model, in the table's order: its verdict and
    whether it goes the paper's way beyond what the seeds resolve (`direction`: agree / opposite /
    unresolved; None where the paper's change is missing or zero)."""
    start = loop_start_rows(comparison)
    out = []
    for r in comparison:
        s = start.get(r["our_base"])
        if s is None or r is s:
            continue
        for label in CHANGE_LABELS:
            if f"{label} ours" not in r or f"{label} ours" not in s:
                continue
            v = change_verdict(r, s, label)
            paper = r.get(f"{label} paper delta")
            direction = None if not paper else "unresolved" if v["verdict"] == "inconclusive" else (
                "agree" if (v["verdict"] == "positive") == (paper > 0) else "opposite")
            out.append({"paper_model": r["paper_model"], "our_base": r["our_base"], "method": r["method"],
                        "iteration": r["iteration"], "label": label, "ours_delta": r.get(f"{label} ours delta"),
                        "paper_delta": paper, "verdict": v, "direction": direction})
    return out


def paper_selm_minus_dpo(comparison: list[dict], base: str, iteration: str) -> float | None:
    """The paper's SELM - DPO AlpacaEval LC of the paper model that `base` plays, at `iteration`."""
    rows = {r["method"]: r for r in comparison if r["our_base"] == base and r["iteration"] == iteration}
    if "selm" not in rows or "dpo" not in rows or "AE2 LC paper" not in rows["selm"]:
        return None
    return rows["selm"]["AE2 LC paper"] - rows["dpo"]["AE2 LC paper"]


def selm_minus_dpo(comparison: list[dict]) -> list[dict]:
    """SELM minus iterative DPO, AlpacaEval LC, plain means, per (base, iteration) where both were
    evaluated, ours and the paper's, sorted by base and iteration."""
    by_key = {(r["our_base"], r["iteration"], r["method"]): r for r in comparison}
    return [{"base": base, "iteration": it, "ours": r["AE2 LC ours"] - by_key[(base, it, "dpo")]["AE2 LC ours"],
             "paper": paper_selm_minus_dpo(comparison, base, it)}
            for (base, it, method), r in sorted(by_key.items())
            if method == "selm" and (base, it, "dpo") in by_key and "AE2 LC ours" in r
            and "AE2 LC ours" in by_key[(base, it, "dpo")]]


# --- SELM vs DPO, paired by seed --------------------------------------------------------------------

PAIRED_KEYS = ("alpaca_lc_win_rate", "mean_reward", "frac_prompts_covered", "mt_bench_average")


def paired_last(paired: dict) -> dict:
    """Per cell with paired iterations: the last iteration and the verdict on each measure there
    (r* with its between-machine floor)."""
    out = {}
    for cell, entry in paired.items():
        if not entry["iterations"]:
            continue
        last = entry["iterations"][-1]
        out[cell] = {"iteration": last["iteration"],
                     "verdicts": {k: effect_verdict(last[k], MACHINE_FLOOR.get(k, 0.0)) for k in PAIRED_KEYS if k in last}}
    return out


# --- the claims -----------------------------------------------------------------------------------------

def dpo_improves(comparison: list[dict], change_list: list[dict]) -> dict | None:
    """Each (base, iteration) of iterative DPO against the model the loop starts from, AlpacaEval LC."""
    cells = [{"base": c["our_base"], "iteration": c["iteration"], "verdict": c["verdict"]}
             for c in change_list if c["method"] == "dpo" and c["label"] == "AE2 LC"]
    if not cells:
        return None
    return {"kind": "dpo_improves", "cells": cells, "verdict": combine([c["verdict"]["verdict"] for c in cells]),
            "ours": False}


def one_seed_selm_vs_dpo(diffs: list[dict]) -> list[dict]:
    """One seed (the paper's protocol): the plain SELM - DPO difference per iteration, no interval."""
    return [{"kind": "one_seed_selm_vs_dpo", **d, "verdict": "inconclusive", "ours": False} for d in diffs]


PAIRED_CLAIMS = (("alpaca_lc_win_rate", "AlpacaEval LC"), ("mean_reward", "true reward r*"),
                 ("frac_prompts_covered", "high-reward coverage"))


def paired_selm_vs_dpo(paired: dict, comparison: list[dict], last: dict) -> list[dict]:
    """SELM vs iterative DPO at the last iteration, paired by seed, per cell and measure."""
    claims = []
    for cell, entry in last.items():
        t_last, base = paired[cell]["iterations"][-1], cell.split("/")[0]
        for key, label in PAIRED_CLAIMS:
            if key not in t_last:
                continue
            v = entry["verdicts"][key]
            ours = key != "alpaca_lc_win_rate"
            claims.append({"kind": "paired_selm_vs_dpo", "cell": cell, "iteration": t_last["iteration"], "key": key,
                           "label": label, "test": t_last[key], "test_verdict": v, "verdict": WORDS[v["verdict"]],
                           "paper": None if ours else paper_selm_minus_dpo(comparison, base, str(t_last["iteration"])),
                           "ours": ours})
    return claims


def greedy_reward_rises(fig3: dict) -> dict:
    """Figure 3 right: the ranker's mean reward of greedy answers per SELM iteration; the verdict uses
    the true reward r* of the same cell (seed intervals), the ranker means having none."""
    means = [h["mean"] for _, h in sorted(fig3["hist_by_iteration"].items(), key=lambda kv: int(kv[0]))]
    curve = next((c for c in fig3["curves"].values() if c.get("cell") == fig3.get("shift_cell")), None)
    rstar = {int(t): s for t, s in (curve or {}).get("r_star", {}).items() if int(t) >= 1}
    out = {"kind": "greedy_reward_rises", "ranker_means": means, "ours": False}
    if len(rstar) < 2:
        return {**out, "r_star": None, "steps": None, "verdict": "inconclusive"}
    steps = [effect_verdict(summary_diff(rstar[t], rstar[t - 1]), MACHINE_FLOOR["r_star"])
             for t in sorted(rstar)[1:] if t - 1 in rstar]
    return {**out, "r_star": [rstar[t]["mean"] for t in sorted(rstar)], "steps": steps,
            "verdict": combine([v["verdict"] for v in steps])}


def final_lc_by_alpha(fig3: dict) -> dict[float, dict]:
    """Figure 3 left: the last iteration's LC summary ({mean, ci95, n}) per alpha."""
    return {float(a): c["lc"][max(c["lc"], key=int)] for a, c in fig3["curves"].items()}


def alpha_verdicts(fig3: dict) -> dict:
    """'Too large an alpha hurts' (the largest alpha below every other beyond what the seeds resolve)
    and the alpha that is above every other beyond it (None if none is), decided with intervals;
    `final` as [alpha, summary] pairs sorted by alpha, `lowest` / `highest` the alphas of the lowest
    and highest final mean LC."""
    final = final_lc_by_alpha(fig3)
    largest = max(final)
    below = [effect_verdict(summary_diff(final[a], final[largest]))["verdict"] for a in final if a != largest]
    above_all = [a for a in final if len(final) > 1 and all(
        effect_verdict(summary_diff(final[a], final[b]))["verdict"] == "positive" for b in final if b != a)]
    return {"final": [[a, s] for a, s in sorted(final.items())], "largest": largest, "below": below,
            "hurts": combine(below), "best": above_all[0] if above_all else None,
            "lowest": min(final, key=lambda x: final[x]["mean"]), "highest": max(final, key=lambda x: final[x]["mean"])}


def alpha_claim(alpha: dict) -> dict:
    """Figure 3 left, both halves of the paper's statement, each decided with intervals."""
    best = alpha["best"]
    best_verdict = "inconclusive" if best is None else "agrees" if 0 < best < alpha["largest"] else "does not agree"
    verdict = alpha["hurts"] if alpha["hurts"] == best_verdict else (
        "mixed" if {alpha["hurts"], best_verdict} == {"agrees", "does not agree"} else "inconclusive")
    return {"kind": "alpha", "best_verdict": best_verdict, "verdict": verdict, "ours": False}


# Figure 6's orderings: (claim, better, worse, the paper's statement or None for a claim of ours)
FIGURE6_CLAIMS = (("ranking {y_w, y_l, y_ref} beats the label update ({y_w, y_ref})", "iterative", "rank_w_ref", "yes"),
                  ("iterative DPO beats stepwise DPO", "iterative", "stepwise", "yes"),
                  ("stepwise DPO beats offline DPO", "stepwise", "offline", None))
FIGURE6_KEYS = (("mt_bench", "MT-Bench"), ("r_star", "r*"))


def _versus(a: dict, b: dict) -> list[dict]:
    """Two Figure 6 points compared on MT-Bench and r*, where both have them: means and verdict."""
    return [{"key": key, "label": label, "a": a[key]["mean"], "b": b[key]["mean"],
             "verdict": effect_verdict(summary_diff(a[key], b[key]), MACHINE_FLOOR.get(key, 0.0))}
            for key, label in FIGURE6_KEYS if key in a and key in b]


def figure6_claims(fig6: dict) -> list[dict]:
    """Figure 6's orderings on the last point of each variant (the paper's y axis is MT-Bench): the
    difference of the two variants' seed means against its minimum detectable effect."""
    final = {label.split(" ")[0]: s["points"][-1] for label, s in fig6.items()}
    claims = []
    for claim, better, worse, paper in FIGURE6_CLAIMS:
        if better not in final or worse not in final:
            continue
        parts = _versus(final[better], final[worse])
        claims.append({"kind": "figure6", "claim": claim, "paper": paper, "parts": parts,
                       "verdict": combine([p["verdict"]["verdict"] for p in parts]), "ours": paper is None})
    return claims


def figure6_panel(label: str) -> str | None:
    """Which of Figure 6's batch / schedule / iteration-count panels a variant belongs to (None: the
    label- and dataset-update variants, which the claims section covers)."""
    if label.startswith("batch"):
        return "batch size"
    if label.endswith("_lr"):
        return "learning-rate schedule"
    if label.endswith("_iterations"):
        return "number of iterations"
    return None


def figure6_panels(fig6: dict) -> list[dict] | None:
    """Each variant of Figure 6's batch, schedule and iteration-count panels against iterative DPO at
    the last point (MT-Bench, and r* where measured); None without an iterative-DPO variant."""
    iterative = next((s for label, s in fig6.items() if label.startswith("iterative")), None)
    if iterative is None:
        return None
    base, out = iterative["points"][-1], []
    for label, s in fig6.items():
        panel, last = figure6_panel(label), s["points"][-1]
        if panel is not None:
            out.append({"label": label, "panel": panel, "pairs_k": last.get("pairs_k"), "parts": _versus(last, base)})
    return out


def figure6_range(fig6: dict) -> dict:
    """The variants with the highest and lowest final MT-Bench and the verdict on their gap (None for
    one variant)."""
    final = {label: s["points"][-1]["mt_bench"] for label, s in fig6.items()}
    hi, lo = max(final, key=lambda k: final[k]["mean"]), min(final, key=lambda k: final[k]["mean"])
    return {"highest": hi, "lowest": lo,
            "verdict": None if hi == lo else effect_verdict(summary_diff(final[hi], final[lo]))}


def implicit_rewards(fig4: dict, fig5: dict) -> tuple[dict, dict]:
    """Figures 4 and 5: per base, the verdicts on the per-prompt implicit-reward differences (seeds
    pooled) against their MDE; Figure 4's `both`: chosen and rejected both positive (the paper: SELM's
    implicit reward is higher than DPO's on both, docs/paper.md section 4)."""
    v4 = {}
    for b, d in fig4.items():
        c = effect_verdict(sample_test(d["chosen_sorted"])) if "chosen_sorted" in d else None
        r = effect_verdict(sample_test(d["rejected_sorted"])) if "rejected_sorted" in d else None
        v4[b] = {"chosen": c, "rejected": r,
                 "both": combine([c["verdict"], r["verdict"]]) if c and r else "inconclusive"}
    v5 = {b: effect_verdict(sample_test(d["sorted"])) if "sorted" in d else None for b, d in fig5.items()}
    return v4, v5


def implicit_reward_claims(v4: dict, v5: dict) -> list[dict]:
    """Figures 4 and 5 as claims: every base's differences positive beyond their MDE."""
    f4 = [x for e in v4.values() for x in ([e["chosen"]["verdict"], e["rejected"]["verdict"]]
                                           if e["chosen"] and e["rejected"] else ["inconclusive"])]
    f5 = [v["verdict"] if v else "inconclusive" for v in v5.values()]
    return [{"kind": "figure4", "verdict": combine(f4), "ours": False},
            {"kind": "figure5", "verdict": combine(f5), "ours": False}]


# --- Figure 3's alpha selection, the regime map -------------------------------------------------------

def selection_verdicts(sel: dict) -> dict:
    """The selected alpha's lead in external reward over the runner-up (None when it is the only
    one), and, where the scale knows r* and r* selects another alpha, that alpha's r* lead."""
    lead = None
    if sel["runner_up"] is not None:
        a, b = (sel["alphas"][str(x)]["external_reward"] for x in (sel["selected"], sel["runner_up"]))
        lead = effect_verdict(summary_diff(a, b))
    truth = None
    if "best_r_star" in sel and not sel["agree"]:
        r = {x: sel["alphas"][str(x)]["r_star"] for x in (sel["selected"], sel["best_r_star"])}
        truth = effect_verdict(summary_diff(r[sel["best_r_star"]], r[sel["selected"]]), MACHINE_FLOOR["r_star"])
    return {"lead": lead, "true_reward": truth}


def regime_verdicts(regimes: dict) -> dict:
    """Per regime and SELM alpha: the verdict (helps / hurts / inconclusive) on the paired SELM - DPO
    difference in final r*."""
    return {name: {alpha: regime_verdict(s["diff"]) for alpha, s in e["selm"].items()} for name, e in regimes.items()}


# --- SELM vs DPO against the between-base spread ------------------------------------------------------------
#
# The seeds vary the online loop only; each model has one SFT base. The controls experiment measures how
# far a loop difference (explorer - DPO) moves between SFT bases of the same recipe (bases.json, `rows`'
# first comparison, selm.report.controls_analysis); a SELM - DPO effect here "exceeds the between-base
# spread" when its interval widened by that spread excludes 0 (stats.against_base_spread).

# the controls' metric names -> the paired tests' keys
BASE_SPREAD_KEYS = {"r_star": "mean_reward", "alpaca_lc": "alpaca_lc_win_rate", "coverage": "frac_prompts_covered"}


def base_spread(bases: dict | None, source: str) -> dict:
    """The between-base sd per paired-test key from the controls' bases.json content (None: absent)."""
    if bases is None:
        return {"status": "absent", "source": source}
    rows = [r for r in bases.get("rows", []) if r.get("tests")]
    if not rows:
        return {"status": "empty", "source": source}
    row, spread = rows[0], {}
    for metric, key in BASE_SPREAD_KEYS.items():
        t = row["tests"].get(metric)
        if t and t["components"].get("sd_between") is not None:
            spread[key] = {"sd_between": t["components"]["sd_between"], "bases": t["components"]["bases"],
                           "sd_within": t["components"]["sd_within"]}
    return {"status": "measured", "source": source, "comparison": row["name"], "spread": spread,
            "commit": (bases.get("provenance") or {}).get("git_commit")}


def _against(test: dict, key: str, spread: dict) -> dict:
    s = spread["spread"].get(key)
    if s is None:
        return {"exceeds": None, "reason": "no between-base spread measured for this metric"}
    return against_base_spread(test, s["sd_between"], s["bases"] - 1)


def against_bases(paired: dict, last: dict, regimes: dict | None, spread: dict) -> dict:
    """Every SELM - DPO effect of the report (the paired tests at the last iteration, the regime map's
    r* differences) against the between-base spread, where it was measured."""
    if spread["status"] != "measured":
        return {**spread, "paired": {}, "regimes": {}}
    out = {cell: {key: _against(paired[cell]["iterations"][-1][key], key, spread) for key in entry["verdicts"]}
           for cell, entry in last.items()}
    reg = {name: {alpha: _against(s["diff"], "mean_reward", spread) for alpha, s in e["selm"].items()}
           for name, e in (regimes or {}).items()}
    return {**spread, "paired": out, "regimes": reg}


# --- all of it ------------------------------------------------------------------------------------------

def all_claims(comparison: list[dict], paired: dict, fig3: dict, fig4: dict, fig5: dict,
               fig6: dict | None = None) -> list[dict]:
    """Every claim the report checks, in the report's order."""
    change_list = changes(comparison)
    claims = [c for c in [dpo_improves(comparison, change_list)] if c is not None]
    if not any(entry["iterations"] for entry in paired.values()):
        claims += one_seed_selm_vs_dpo(selm_minus_dpo(comparison))
    claims += paired_selm_vs_dpo(paired, comparison, paired_last(paired))
    claims += [greedy_reward_rises(fig3), alpha_claim(alpha_verdicts(fig3))]
    claims += figure6_claims(fig6 or {})
    claims += implicit_reward_claims(*implicit_rewards(fig4, fig5))
    return claims


def compute(comparison: list[dict], analyses: dict[str, dict], spread: dict | None = None) -> dict:
    """claims.json's content (without provenance) from the comparison rows and the analyses (file
    stem -> content: paired_tests, figure3_alpha, figure4_ird, figure5_own_samples, figure6_ablations,
    and regime_map where the scale has one); with `spread` (base_spread: the scale's spec names the
    controls' bases.json), every SELM - DPO effect against the between-base spread."""
    paired, fig3, fig4, fig5, fig6 = (analyses[k] for k in ("paired_tests", "figure3_alpha", "figure4_ird",
                                                             "figure5_own_samples", "figure6_ablations"))
    v4, v5 = implicit_rewards(fig4, fig5)
    regimes = analyses.get("regime_map")
    return {"claims": all_claims(comparison, paired, fig3, fig4, fig5, fig6),
            "changes": changes(comparison), "selm_minus_dpo": selm_minus_dpo(comparison),
            "paired_last": paired_last(paired), "alpha": alpha_verdicts(fig3),
            "selection": selection_verdicts(fig3["selection"]) if "selection" in fig3 else None,
            "figure4": v4, "figure5": v5, "figure6_panels": figure6_panels(fig6),
            "figure6_range": figure6_range(fig6) if fig6 else None,
            "regimes": regime_verdicts(regimes) if regimes is not None else None,
            **({"between_bases": against_bases(paired, paired_last(paired), regimes, spread)} if spread else {})}


ANALYSES = ("paired_tests", "figure3_alpha", "figure4_ird", "figure5_own_samples", "figure6_ablations", "regime_map")


def write(spec, spec_path: Path, analysis: Path, paper: Path, command: str) -> None:
    """comparison.json and claims.json into `analysis`, from the evaluations, the paper's tables and
    the analysis files there; each with the provenance block."""
    from selm import layout
    from selm.experiments import expand
    from selm.io import write_json_atomic
    from selm.provenance import file_sha256, provenance
    from selm.report.comparison import paper_comparison, read_csv
    from selm.report.eval_tables import collect
    from selm.report.spec import selm_alpha

    heat = spec.figures.figure2_heatmap
    rows = collect(layout.EVALS, list(spec.bases), heat.experiment)
    comparison = paper_comparison(rows, read_csv(paper / "table1_alpacaeval_mtbench.csv"),
                                  read_csv(paper / "table2_academic.csv"),
                                  {b: selm_alpha(heat, b) for b in spec.bases})
    block = provenance(command=command)
    write_json_atomic(analysis / COMPARISON_FILE, {"provenance": block, "rows": comparison})
    analyses = {k: json.loads((analysis / f"{k}.json").read_text())
                for k in ANALYSES if (analysis / f"{k}.json").is_file()}
    missing = sorted(set(ANALYSES[:-1]) - set(analyses))  # the regime map is optional
    if missing:
        raise FileNotFoundError(f"{analysis / missing[0]}.json is missing: run python -m selm.report.analyze "
                                f"--spec {spec_path}")
    # the summary's "what ran", in the spec's order ([name, runs] pairs: the file's objects have sorted keys)
    runs = [[name, len(expand(spec, name, str(spec_path)))] for name in spec.experiments]
    spread = None
    if spec.get("between_bases"):  # the controls' bases.json: read where it exists, said to be absent otherwise
        source = Path(str(spec.between_bases))
        spread = base_spread(json.loads(source.read_text()) if source.is_file() else None, str(source))
        if source.is_file():  # which file was read: bases.json is the controls pipeline's, not a dep of analyze
            spread["sha256"] = file_sha256(source)
    write_json_atomic(analysis / CLAIMS_FILE, {"provenance": block, "runs": runs,
                                               **compute(comparison, analyses, spread)})


def main(argv: list[str] | None = None) -> None:
    from selm.experiments import load_experiments

    parser = argparse.ArgumentParser(description="recompute claims.json and comparison.json from the analysis files")
    parser.add_argument("--spec", type=Path, default=Path("experiments/toy.yaml"))
    parser.add_argument("--analysis", type=Path, default=Path("results/toy/analysis"))
    parser.add_argument("--paper", type=Path, default=Path("paper"))
    args = parser.parse_args(argv)
    write(load_experiments(args.spec), args.spec, args.analysis, args.paper,
          f"python -m selm.report.claims --spec {args.spec} --analysis {args.analysis}")
    print(f"wrote {args.analysis / COMPARISON_FILE} and {args.analysis / CLAIMS_FILE}")


if __name__ == "__main__":
    main()
