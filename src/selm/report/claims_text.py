"""The claims section of REPORT.md ("What agrees with the paper"): one line per claim of
analysis/claims.json (selm.report.claims computes the numbers and verdicts; this module only words
them), and the small formatters of verdicts the other sections share.
"""

from __future__ import annotations

from selm.report.stats import fmt_threshold

CLAIMS_FILE = "claims.json"  # in the analysis folder: every verdict (selm.report.claims)
COMPARISON_FILE = "comparison.json"  # in the analysis folder: Tables 1-2 beside the paper's (selm.report.comparison)
# a verdict on "a > b" in the report's words
WORDS = {"positive": "agrees", "negative": "does not agree", "inconclusive": "inconclusive"}


def bold(verdict: str) -> str:
    return f"**{verdict}**"


def verdict_note(v: dict) -> str:
    """What the difference was held against ('MDE 0.004, floor 0.028') and, when inconclusive, why."""
    if v["verdict"] != "inconclusive":
        return fmt_threshold(v)
    return v["reason"] if "below the" in v["reason"] or v["threshold"] is None else f"{v['reason']}; {fmt_threshold(v)}"


def interval(t: dict) -> str:
    """'[-0.002, +0.001]', or why there is none."""
    if t.get("ci_low") is None:
        return "no interval (same difference in every seed)" if t.get("n", 0) >= 2 else "no interval (one seed)"
    return f"[{t['ci_low']:+.3f}, {t['ci_high']:+.3f}]"


def dpo_improves(c: dict, doc: dict, figs: dict) -> str:
    n_up = sum(x["verdict"]["verdict"] == "positive" for x in c["cells"])
    parts = [f"{x['base']} iter{x['iteration']} {x['verdict']['mean_diff']:+.2f} ({verdict_note(x['verdict'])})"
             for x in c["cells"]]
    return (f"- *Iterative DPO improves AlpacaEval LC over the loop's start model at every iteration* (paper: "
            f"yes, Table 1). Ours: {n_up} of {len(c['cells'])} (base, iteration) cells improve by more than they "
            f"can be told apart from the start: " + "; ".join(parts) + f": {bold(c['verdict'])}.")


def one_seed_selm_vs_dpo(c: dict, doc: dict, figs: dict) -> str:
    paper = c["paper"]
    return (f"- *SELM beats iterative DPO (AlpacaEval LC), iteration {c['iteration']}* (paper: "
            + (f"{paper:+.2f}" if paper is not None else "yes") + f"). Ours, {c['base']}: "
            f"{c['ours']:+.2f} from one seed, so without an interval: {bold('inconclusive')}.")


def paired_selm_vs_dpo(c: dict, doc: dict, figs: dict) -> str:
    t, v = c["test"], c["test_verdict"]
    if c["ours"]:
        source = "ours, not the paper's: it has no true reward; its exploration argument implies SELM >= DPO"
    else:
        source = "paper: " + (f"{c['paper']:+.2f} LC at this iteration" if c["paper"] is not None else "yes")
    return (f"- *SELM beats iterative DPO at the last iteration ({c['label']})* ({source}). Ours, {c['cell']} iteration "
            f"{c['iteration']}: {t['mean_diff']:+.3f} {interval(t)}, {verdict_note(v)}: "
            f"{bold(c['verdict'])}" + (" (SELM lower)" if v["verdict"] == "negative" else "") + ".")


def greedy_reward_rises(c: dict, doc: dict, figs: dict) -> str:
    text = (f"- *The reward of greedy answers moves up over SELM iterations (Figure 3 right)* (paper: yes). Ours: "
            f"mean ranker reward {' -> '.join(f'{m:.3f}' for m in c['ranker_means'])}")
    if c["r_star"] is None:
        return text + f": one value per iteration, no interval: {bold('inconclusive')}."
    return (text + "; r* of the same checkpoints " + " -> ".join(f"{m:.3f}" for m in c["r_star"])
            + " (steps " + ", ".join(f"{v['mean_diff']:+.3f} ({verdict_note(v)})" for v in c["steps"]) + "): "
            + bold(c["verdict"]) + ".")


def alpha(c: dict, doc: dict, figs: dict) -> str:
    a = doc["alpha"]
    if a["best"] is None:
        best_text = "no alpha is above every other beyond the MDE: **inconclusive**."
    else:
        best_text = f"alpha {a['best']:g} is above every other alpha beyond the MDE: {bold(c['best_verdict'])}."
    return ("- *A small positive alpha is best and a too large alpha hurts (Figure 3 left)* (paper: alpha 0.001 "
            "above both 0 and 0.01). Ours, final LC: " + ", ".join(f"alpha {x:g}: {s['mean']:.2f}" for x, s in a["final"])
            + f". 'Too large an alpha hurts' (alpha {a['largest']:g} below each other alpha by more than the "
            f"seeds resolve: {sum(v == 'positive' for v in a['below'])} of {len(a['below'])}): "
            f"{bold(a['hurts'])}. 'A small positive alpha is best': " + best_text)


def versus_text(p: dict) -> str:
    """'MT-Bench 6.100 vs 6.000 (+0.100, MDE 0.050: higher)': one Figure 6 comparison."""
    v = p["verdict"]
    return (f"{p['label']} {p['a']:.3f} vs {p['b']:.3f} ({v['mean_diff']:+.3f}, {verdict_note(v)}: "
            f"{v['verdict'].replace('positive', 'higher').replace('negative', 'lower')})")


def figure6(c: dict, doc: dict, figs: dict) -> str:
    source = f"paper: {c['paper']}" if c["paper"] else "ours, not the paper's: it shows iterative DPO above both"
    return (f"- *{c['claim']} (Figure 6)* ({source}). Ours, last point: " + "; ".join(map(versus_text, c["parts"]))
            + ": " + bold(c["verdict"]) + ".")


def figure4(c: dict, doc: dict, figs: dict) -> str:
    parts = []
    for b, d in figs["figure4_ird"].items():
        ch, rj = doc["figure4"][b]["chosen"], doc["figure4"][b]["rejected"]
        parts.append(f"{b} {d['mean_chosen']:+.5f} / {d['mean_rejected']:+.5f}"
                     + (f" (MDE {ch['mde']:.5f} / {rj['mde']:.5f})" if ch and rj and ch["mde"] and rj["mde"] else ""))
    return ("- *SELM's implicit reward exceeds DPO's on both the chosen and the rejected test answers "
            "(Figure 4)* (paper: yes). Ours, per-prompt means over seeds, chosen / rejected: " + "; ".join(parts)
            + f": {bold(c['verdict'])}.")


def figure5(c: dict, doc: dict, figs: dict) -> str:
    parts = []
    for b, d in figs["figure5_own_samples"].items():
        v = doc["figure5"][b]
        parts.append(f"{b} {d['mean']:+.5f} ({100 * d['frac_positive']:.0f}% of prompts > 0"
                     + (f", MDE {v['mde']:.5f})" if v and v["mde"] else ")"))
    return ("- *SELM's own samples carry higher implicit reward than DPO's (Figure 5)* (paper: yes). Ours: "
            + "; ".join(parts) + f": {bold(c['verdict'])}.")


RENDERERS = {"dpo_improves": dpo_improves, "one_seed_selm_vs_dpo": one_seed_selm_vs_dpo,
             "paired_selm_vs_dpo": paired_selm_vs_dpo, "greedy_reward_rises": greedy_reward_rises, "alpha": alpha,
             "figure6": figure6, "figure4": figure4, "figure5": figure5}


def claim_line(c: dict, doc: dict, figs: dict) -> str:
    """One claim of claims.json as its line; an unknown kind is an error naming it."""
    if c["kind"] not in RENDERERS:
        raise KeyError(f"claims.json: claim kind {c['kind']!r} has no renderer; known: {sorted(RENDERERS)}")
    return RENDERERS[c["kind"]](c, doc, figs)


def render_claims(doc: dict, figs: dict) -> str:
    """The claims section's lines, one per claim, in claims.json's order; `figs`: the analyses by stem."""
    return "\n".join(claim_line(c, doc, figs) for c in doc["claims"])
