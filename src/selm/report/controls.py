"""The report's controls section (markdown) from results/toy/controls/*.json: the positive control,
the positive control across SFT bases, the screen of the world that lets the positive control work, the power of the SELM-vs-DPO
comparison, the 10-seed verdicts and the mechanism table. It says which
experiment the numbers come from (the JSON's provenance), and renders only what was analysed.

    python -m selm.report.controls --results results/toy/controls --out results/toy/controls/CONTROLS.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from selm.io import write_text_atomic

METRIC_NAMES = {"r_star": "r* (greedy)", "coverage": "high-reward coverage (8 samples)",
                "best_of_k": "best-of-8 r*", "alpaca_lc": "AlpacaEval 2.0 LC"}


def _num(x, digits: int = 3, sign: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _interval(t: dict, digits: int = 3) -> str:
    if t.get("ci_low") is None:
        return "no interval (zero spread)"
    return f"[{_num(t['ci_low'], digits, True)}, {_num(t['ci_high'], digits, True)}]"


def _source(result: dict) -> str:
    p = result.get("provenance", {})
    return f"`{p.get('spec', '?')}` (commit {str(p.get('git_commit', '?'))[:10]})"


def positive_markdown(result: dict) -> str:
    lines = ["### Positive control: an explorer known to do better, through the same loop",
             "",
             f"Built from {_source(result)}. The explorer's y_ref is the ranker's best of 8 samples of "
             "pi_{t-1} (variant `best_of_k`, alpha 0); everything else is iterative DPO. Differences are "
             "explorer minus iterative DPO at the last iteration, paired by seed, 95% t intervals; the verdict "
             "needs the interval to exclude 0 and the effect to reach max(MDE, floor).",
             "",
             "| setting | metric | seeds | explorer | DPO | difference [95% CI] | explorer better | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        for metric, t in row["tests"].items():
            digits = 2 if metric == "alpaca_lc" else 3
            lines.append(f"| {row['name']} | {METRIC_NAMES.get(metric, metric)} | {t['n']} | {_num(t['a_mean'], digits)} "
                         f"| {_num(t['b_mean'], digits)} | {_num(t['mean_diff'], digits, True)} {_interval(t, digits)} "
                         f"| {t['n_a_greater']}/{t['n']} | {t['verdict']} |")
    notes = [r for r in result["rows"] if r.get("what")]
    if notes:
        lines += [""] + [f"- {r['name']}: {r['what']}" for r in notes]
    quality = [(r["name"], arm, r["pair_quality"][arm]) for r in result["rows"] for arm in ("dpo", "explorer")
               if r.get("pair_quality", {}).get(arm)]
    if quality:
        lines += ["", "What each arm trains on (true reward r* of the online iterations' pairs, averaged over "
                  "iterations and seeds) beside the policy the iteration starts from and what one iteration adds:",
                  "", "| setting | arm | r*(chosen) | r*(y_ref) | r*(rejected) | policy r* at the start | "
                  "policy r* gain per iteration |", "|---|---|---|---|---|---|---|"]
        for name, arm, q in quality:
            lines.append(f"| {name} | {'iterative DPO' if arm == 'dpo' else 'explorer'} | {_num(q['mean_r_star_chosen'])} "
                         f"| {_num(q['mean_r_star_y_ref'])} | {_num(q['mean_r_star_rejected'])} "
                         f"| {_num(q['mean_r_star_policy_start'])} | {_num(q['mean_r_star_policy_gain'], 3, True)} |")
    lines += ["", *[positive_reading(r) for r in result["rows"]]]
    lines += _unfinished(result)
    return "\n".join(lines)


def _gain_sources(q: dict) -> str:
    """What each arm's chosen answers are worth and how far one iteration moves the policy (r*), where
    both arms' pair quality is known; else nothing."""
    d, e = q.get("dpo"), q.get("explorer")
    if not (d and e):
        return ""
    return (f" The explorer's chosen answers have r* {e['mean_r_star_chosen']:.3f} against DPO's "
            f"{d['mean_r_star_chosen']:.3f}, and one iteration moves the policy by "
            f"{e['mean_r_star_policy_gain']:+.3f} (explorer) and {d['mean_r_star_policy_gain']:+.3f} (DPO) "
            "in r* on average.")


def positive_reading(row: dict) -> str:
    """One sentence per setting: does the instrument see the explorer's gain, and if not, the numbers
    that say why (what the explorer adds to the chosen answers against what one iteration learns)."""
    t = row["tests"].get("r_star")
    if t is None:
        return f"- {row['name']}: fewer than two paired seeds; no reading."
    q = row.get("pair_quality", {})
    if t["verdict"] == "positive":
        text = (f"- {row['name']}: the explorer's gain in r* ({t['mean_diff']:+.3f} {_interval(t)}) is CI-separated and "
                "above the threshold: the toy grid can see an exploration gain of this size.")
        return text + _gain_sources(q)
    separated = t.get("ci_low") is not None and t["ci_low"] > 0
    if separated:  # the interval excludes 0 but the effect is below the verdict's threshold (MDE or floor)
        text = (f"- {row['name']}: a CI-separated gain in r* ({t['mean_diff']:+.3f} {_interval(t)}, explorer better in "
                f"{t['n_a_greater']}/{t['n']} seeds) that is below the verdict's threshold ({t['reason']}): the toy grid "
                "sees the explorer's gain here, though not yet with the power a verdict asks for.")
        return text + _gain_sources(q)
    text = (f"- {row['name']}: no CI-separated gain in r* ({t['mean_diff']:+.3f} {_interval(t)}, {t['verdict']}): "
            "in this setting the toy grid cannot show that better exploration helps, so a SELM-vs-DPO null here "
            "says nothing about the paper's claim.")
    if q.get("dpo") and q.get("explorer"):
        d, e = q["dpo"], q["explorer"]
        text += (f" The explorer raises r*(y_ref) from {d['mean_r_star_y_ref']:.3f} to {e['mean_r_star_y_ref']:.3f} but "
                 f"r*(chosen) from {d['mean_r_star_chosen']:.3f} to {e['mean_r_star_chosen']:.3f}, while the policy "
                 f"({d['mean_r_star_policy_start']:.3f} at an iteration's start) gains {d['mean_r_star_policy_gain']:+.3f} "
                 "per iteration.")
        gap = d["mean_r_star_chosen"] - d["mean_r_star_policy_start"]
        if e["mean_r_star_chosen"] - d["mean_r_star_chosen"] < 0.5 * gap and d["mean_r_star_policy_gain"] < 0.5 * gap:
            text += (" DPO's chosen answers are already far above the policy (the corpus's y_w is good) and one "
                     "iteration closes little of that gap: the loop is limited by how far an iteration moves the "
                     "policy, not by what it explores.")
    return text


def screening_markdown(result: dict) -> str:
    """The screen that found a setting in which the positive control works: one row per setting."""
    lines = ["### Screening: in which toy world does the positive control work?",
             "",
             f"Built from {_source(result)}: {result['rule']}. Each setting is run by both arms (explorer: "
             "`best_of_k`, alpha 0, or SELM where the setting says so; DPO: iterative DPO), on the seeds both ran; "
             "r*(chosen) is the true reward of the online iterations' chosen answers and 'gain/iter' the policy's "
             "mean r* gain per online iteration.",
             "",
             "| setting | seeds | explorer - DPO r* after iter 1 | explorer - DPO r* at the last | explorer r* | DPO r* "
             "| r*(chosen) explorer | r*(chosen) DPO | gain/iter explorer | gain/iter DPO |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        e_last = [p["explorer_r_star_last"] for p in r["per_seed"]]
        d_last = [p["dpo_r_star_last"] for p in r["per_seed"]]
        qd, qe = r["pair_quality"].get("dpo", {}), r["pair_quality"].get("explorer", {})
        lines.append(f"| {r['name']} | {', '.join(str(s) for s in r['seeds'])} | {_num(r['mean_diff_first'], 3, True)} "
                     f"| {_num(r['mean_diff_last'], 3, True)} | {_num(sum(e_last) / len(e_last))} "
                     f"| {_num(sum(d_last) / len(d_last))} | {_num(qe.get('mean_r_star_chosen'))} "
                     f"| {_num(qd.get('mean_r_star_chosen'))} | {_num(qe.get('mean_r_star_policy_gain'), 3, True)} "
                     f"| {_num(qd.get('mean_r_star_policy_gain'), 3, True)} |")
    notes = [r for r in result["rows"] if r.get("what")]
    if notes:
        lines += [""] + [f"- {r['name']}: {r['what']}" for r in notes]
    return "\n".join(lines)


def _unfinished(result: dict) -> list[str]:
    runs = result.get("unfinished_runs") or []
    return ["", f"Not yet finished and left out ({len(runs)}): " + ", ".join(f"`{r}`" for r in runs)] if runs else []


def power_markdown(result: dict) -> str:
    f = result["paper_fraction"]
    lines = ["### Power: the smallest SELM - DPO difference in r* the toy grid detects",
             "",
             f"Built from {_source(result)}. The paper's claimed gain on the same scale: {f['base']} SELM iter "
             f"{f['iteration']} - DPO iter {f['iteration']} = {f['selm_minus_dpo']:+.2f} LC against DPO's "
             f"{f['dpo_gain']:+.2f} over its start, a fraction {f['fraction']:.3f}; times the toy DPO arm's own gain "
             "in r* over its start it gives the paper-size effect below. MDE: paired t, two-sided 95%, power 0.8, "
             "with the measured spread of the paired differences; a verdict also needs the effect to reach the r* "
             f"between-machine floor {result['rows'][0]['floor']:.3f}. \"seeds for it\": the fewest seeds whose MDE, "
             "with this spread, reaches the paper-size effect.",
             "",
             "| comparison | seeds | SELM - DPO [95% CI] | SELM better | sd | MDE (3 seeds) | MDE (these seeds) "
             "| paper-size effect | seeds for it | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        need = "never (below the floor)" if r["paper_effect_below_floor"] else (r["seeds_for_paper_effect"] or "> 200")
        lines.append(f"| {r['name']} | {r['n']} | {_num(r['mean_diff'], 3, True)} {_interval(r)} | {r['n_selm_greater']}/{r['n']} "
                     f"| {_num(r['sd'])} | {_num(r['mde_3_seeds'])} | {_num(r['mde_at_n'])} | {_num(r['paper_effect'])} "
                     f"| {need} | {r['verdict']}{'' if not r['reason'] else ' (' + r['reason'].replace('|', chr(92) + '|') + ')'} |")
    lines += _unfinished(result)
    return "\n".join(lines)


def mechanism_markdown(result: dict) -> str:
    g, r0 = result["gradients_at_start"], result["rows"][0]
    lines = ["### Mechanism: what the optimism term does to log pi(y_ref) in one iteration",
             "",
             f"Built by the `mechanism` stage of experiments/controls/dvc.yaml (commit "
             f"{str(result.get('provenance', {}).get('git_commit', '?'))[:10]}). "
             f"One iteration per alpha from the same start ({result['start']}, {result['n_pairs']} pairs of "
             f"{result['pairs']}, beta {result['beta']}, lr {result['lr']:g}). At the start (pi = pi_ref) the DPO "
             f"term's gradient norm is {g['grad_norm_dpo']:.3g} and the optimism term's is "
             f"{g['grad_norm_optimism_per_alpha']:.3g} x alpha; their cosine is {g['cosine_dpo_optimism']:+.2f}. "
             "Changes are in summed log-prob (nats), after minus before, averaged over the iteration's pairs "
             f"(start means: log pi(y_w) {result['start_logp_means']['y_w']:.2f}, log pi(y_l) "
             f"{result['start_logp_means']['y_l']:.2f}, log pi(y_ref) {result['start_logp_means']['y_ref']:.2f}). "
             + (f"Gradients are clipped to norm {result['max_grad_norm']:g} per step, so the terms share one update "
                "budget. " if "max_grad_norm" in result else "")
             + f"y_ref is the chosen answer in {r0['n_y_ref_chosen']}, the rejected one in {r0['n_y_ref_rejected']} "
             f"and neither in {r0['n_y_ref_neither']} pairs.",
             "",
             "| alpha | optimism/DPO gradient norm at start | mean gradient norm in training | d log pi(y_w) | d log pi(y_l) "
             "| d log pi(y_ref) | d log pi(y_ref), y_ref chosen | d log pi(y_ref), y_ref neither | r* after |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['alpha']:g} | {r['grad_ratio_optimism_to_dpo']:.3g} | {r['mean_train_grad_norm']:.2f} "
                     f"| {_num(r['dlogp_y_w'], 3, True)} | {_num(r['dlogp_y_l'], 3, True)} | {_num(r['dlogp_y_ref'], 3, True)} "
                     f"| {_num(r['dlogp_y_ref_when_chosen'], 3, True)} | {_num(r['dlogp_y_ref_when_neither'], 3, True)} "
                     f"| {_num(r['r_star'])} |")
    return "\n".join(lines)


def _digits(metric: str) -> int:
    return 2 if metric == "alpaca_lc" else 3


def bases_markdown(result: dict) -> str:
    """The positive control across SFT bases: per metric the mean over bases with its intervals and
    verdict, the spreads, then the per-base means, and what the design can detect."""
    lines = ["### Across SFT bases: does the positive control hold for the recipe, not one base?",
             "",
             f"Built from {_source(result)}: {result['rule']}. 'seeds only' is the paired t interval over every "
             "(base, seed) pair as if the base did not matter, for contrast.",
             "",
             "| setting | metric | bases x seeds | explorer - DPO, mean over bases | t interval over bases | bootstrap "
             "over bases | bases with explorer better | between-base sd | between-seed sd | seeds only | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        for metric, t in row["tests"].items():
            d, a, c = _digits(metric), t["across"], t["components"]
            seeds = sorted({len(b["seeds"]) for b in t["per_base"]})
            reason = f" ({t['reason']})" if t["reason"] else ""
            lines.append(
                f"| {row['name']} | {METRIC_NAMES.get(metric, metric)} | {a['n']} x {'/'.join(map(str, seeds))} "
                f"| {_num(a['mean_diff'], d, True)} | {_interval(a, d)} "
                f"| [{_num(a['bootstrap_low'], d, True)}, {_num(a['bootstrap_high'], d, True)}] "
                f"| {a['n_bases_positive']}/{a['n']} | {_num(c['sd_between'], d)} | {_num(c['sd_within'], d)} "
                f"| {_num(t['seeds_only']['mean_diff'], d, True)} {_interval(t['seeds_only'], d)} "
                f"| {t['verdict']}{reason.replace('|', chr(92) + '|')} |")
    for row in result["rows"]:
        r_star = row["tests"].get("r_star")
        if r_star:
            lines += ["", f"Per base, {row['name']}, r* (explorer - DPO over the base's seeds): " + "; ".join(
                f"base {b['base_seed']} {_num(b['mean_diff'], 3, True)} (explorer {_num(b['explorer_mean'])}, DPO "
                f"{_num(b['dpo_mean'])}, {len(b['seeds'])} seeds)" for b in r_star["per_base"]) + "."]
        if row.get("what"):
            lines += ["", f"- {row['name']}: {row['what']}"]
        lines += ["", bases_reading(row)]
    lines += _unfinished(result)
    return "\n".join(lines)


def bases_reading(row: dict) -> str:
    """What the design can detect (from its prior) and what it found, in r*."""
    parts = []
    design = row.get("design")
    if design:
        pc = design["prior_components"]
        prior = "; ".join(f"{p['name']} [{p['ci'][0]:+.3f}, {p['ci'][1]:+.3f}] over {p['n']} seeds" for p in design["prior"])
        text = (f"Design: {design['bases']} bases x {design['seeds']} seeds. From the earlier single-base measurements "
                f"({prior}) the between-base sd is {pc['sd_between']:.4f} and the between-seed sd {pc['sd_within']:.4f}; "
                f"with them this design detects a mean explorer - DPO gain in r* of {design['mde']:.3f} over bases "
                "(t over bases, two-sided 95%, power 0.8)")
        if "seconds" in design:
            best = design.get("best_within_budget")
            text += (f", at an estimated {design['seconds'] / 60:.1f} min on {design['cost']['cores']} cores"
                     + (f" (the smallest MDE within {design['cost']['budget_s'] / 60:.0f} min is {best['bases']} x "
                        f"{best['seeds']}: {best['mde']:.3f})" if best else ""))
        parts.append(text + ".")
    t = row["tests"].get("r_star")
    if t:
        a = t["across"]
        measured = (f" With the spreads measured here the design's MDE is {t['mde_measured']:.3f}."
                    if t.get("mde_measured") is not None else "")
        parts.append(f"Across {a['n']} bases the explorer's gain in r* is {a['mean_diff']:+.3f} {_interval(a)}, explorer "
                     f"better in {a['n_bases_positive']}/{a['n']} bases: {t['verdict']}"
                     + (f" ({t['reason']})" if t["reason"] else "") + f". The bases account for "
                     + (f"{t['components']['between_share']:.0%}" if t["components"].get("between_share") is not None
                        else "an unmeasured share")
                     + " of the variance of a single (base, seed) difference." + measured)
    return " ".join(parts)


def render(results: Path) -> str:
    """The controls section, from whichever of the five JSON files exist."""
    parts = ["## Controls: can the toy grid see an effect of the paper's size?"]
    for name, fn in (("positive_control", positive_markdown), ("bases", bases_markdown),
                     ("screening", screening_markdown), ("power", power_markdown), ("mechanism", mechanism_markdown)):
        path = results / f"{name}.json"
        if path.is_file():
            parts.append(fn(json.loads(path.read_text())))
    if len(parts) == 1:
        raise FileNotFoundError(f"{results}: none of positive_control.json, bases.json, screening.json, power.json, "
                                "mechanism.json")
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results/toy/controls"))
    parser.add_argument("--out", type=Path, default=Path("results/toy/controls/CONTROLS.md"))
    args = parser.parse_args(argv)
    write_text_atomic(args.out, render(args.results))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
