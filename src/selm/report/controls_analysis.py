"""The controls' analysis (experiments/toy_controls.yaml's `controls` section): the positive control
and the power of the SELM-vs-DPO comparison, from finished loop runs, into results/toy/controls/*.json.

A comparison names two arms, each a list of cells (<experiment>/<cell>/alpha<alpha>); an arm's seeds
are the union of its cells' seeds (e.g. toy.yaml's main cell for seeds 42-44 and the controls'
power cell for 45-51). A seed found in two cells of one arm must give the same final r* (they are
the same training), else the analysis stops naming both. Arms are paired by seed.

Metrics per run, at the last iteration: r* of the greedy answers (`r_star`), and where the run
measured them the high-reward coverage of 8 samples (`coverage`), the mean best-of-8 r*
(`best_of_k`), and AlpacaEval 2.0 LC from the experiment's evaluation (`alpaca_lc`).

A screening entry (`controls.screening`) is the same comparison on one seed or a few, used to find a
setting of the world in which the positive control works: per setting, explorer minus DPO in r* after
the first online iteration and at the last, beside what each arm trains on (`pair_quality`).

The positive control across SFT bases (`controls.bases`, into bases.json): the same comparison on
several toy bases of the SFT recipe (`base_seeds`; a cell of base seed b is read as `<cell>.b<b>`,
selm.layout.base_cell_ref), with the base as a random factor: per base the mean difference over its
seeds, the verdict on the mean over bases with the bases as the units (stats.across_base_test), the
between-base and between-seed spreads (stats.variance_components), and the design's power from the
single-base measurements named in `prior` and its cost (`cost`: design_table, choose_design).

The paper's claimed gain on the same scale: (SELM iter3 - DPO iter3) / (DPO iter3 - the model the
online iterations start from), read from paper/table1_alpacaeval_mtbench.csv (Zephyr:
2.06 / 6.78 LC), times the toy DPO arm's own gain over its start (r* at the last iteration minus r*
at the iteration the online loop starts from).

    python -m selm.report.controls_analysis --spec experiments/toy_controls.yaml --out results/toy/controls
    python -m selm.report.controls_analysis --sections positive_control screening   # without the power runs
    python -m selm.report.controls_analysis --sections bases                        # the control across bases
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from pathlib import Path

from omegaconf import OmegaConf

from selm import layout
from selm.io import DataError, write_json_atomic
from selm.provenance import config_hash, provenance
from selm.report.stats import (MACHINE_FLOOR, across_base_mde, across_base_test, components_from_summaries,
                               effect_verdict, mde, paired_test, sd_from_interval, variance_components)

METRICS = ("r_star", "coverage", "best_of_k", "alpaca_lc")
FLOORS = {"r_star": MACHINE_FLOOR["r_star"]}
PAPER_START = {"zephyr": ("offline_dpo", "0"), "llama3": ("base", "0")}


def _last_iteration(summary: dict) -> str:
    iters = [k for k in summary if layout.parse_iteration_name(k) is not None]
    if not iters:
        raise DataError(f"{layout.SUMMARY} has no iteration")
    return max(iters, key=layout.parse_iteration_name)


def run_metrics(run_dir: Path, eval_dir: Path, start_iteration: str = layout.iteration_name(0)) -> dict:
    """The metrics of one finished run (module doc); `start` is r* where the online loop starts."""
    path = run_dir / layout.SUMMARY
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the run has not finished (no {layout.SUMMARY})")
    summary = json.loads(path.read_text())
    last = _last_iteration(summary)
    final = summary[last]
    out = {"iteration": last, "r_star": final["mean_reward"], "start_r_star": summary[start_iteration]["mean_reward"]}
    if "coverage" in final:
        out["coverage"] = final["coverage"]["frac_prompts_covered"]
        out["best_of_k"] = final["coverage"]["mean_best_of_k"]
    for it, key in ((last, "alpaca_lc"), (start_iteration, "start_alpaca_lc")):
        metrics = eval_dir / it / layout.EVAL_METRICS
        if metrics.is_file():
            value = json.loads(metrics.read_text()).get("alpaca_lc_win_rate")
            if value is not None:
                out[key] = value
    return out


def arm(cells: list[str], root: Path = Path("."), unfinished: list | None = None) -> dict[int, dict]:
    """seed -> metrics over the union of the cells' seeds (module doc). With a list `unfinished`, a
    run folder without summary.json is appended to it instead of stopping the analysis."""
    by_seed: dict[int, dict] = {}
    where: dict[int, str] = {}
    for cell in cells:
        cell_dir = root / layout.RUNS / cell
        seeds = layout.cell_runs(cell_dir)
        if not seeds:
            if unfinished is not None:
                unfinished.append(str(cell_dir))
                continue
            raise FileNotFoundError(f"{cell_dir}: no run folders (seed*)")
        for seed, sd in seeds:
            if unfinished is not None and not (sd / layout.SUMMARY).is_file():
                unfinished.append(str(sd))
                continue
            m = run_metrics(sd, root / layout.eval_dir_of(sd.relative_to(root)))
            if seed in by_seed:
                if not math.isclose(by_seed[seed]["r_star"], m["r_star"], abs_tol=1e-12):
                    raise DataError(f"seed {seed}: {where[seed]} and {cell} disagree on final r* "
                                    f"({by_seed[seed]['r_star']} vs {m['r_star']}); they should be the same training")
                by_seed[seed] = {**m, **by_seed[seed]}  # the first cell's metrics win, the later one fills gaps
                continue
            by_seed[seed], where[seed] = m, cell
    return by_seed


def compare(a: dict[int, dict], b: dict[int, dict], floor_by_metric: dict | None = None) -> dict:
    """a - b paired by seed, per metric both arms have for at least two common seeds."""
    floors = FLOORS if floor_by_metric is None else floor_by_metric
    out = {}
    for metric in METRICS:
        seeds = sorted(s for s in set(a) & set(b) if metric in a[s] and metric in b[s])
        if len(seeds) < 2:
            continue
        test = paired_test([a[s][metric] for s in seeds], [b[s][metric] for s in seeds])
        verdict = effect_verdict(test, floors.get(metric, 0.0))
        out[metric] = {"seeds": seeds, **test, "verdict": verdict["verdict"], "threshold": verdict["threshold"],
                       "reason": verdict["reason"]}
    return out


def paper_fraction(table1: Path, base: str) -> dict:
    """The paper's SELM - DPO gain at its last iteration as a fraction of DPO's gain over the loop's start."""
    with table1.open(newline="") as f:
        rows = {(r["base"], r["method"], r["iteration"]): r for r in csv.DictReader(f)}
    if base not in PAPER_START:
        raise KeyError(f"paper base {base!r}: known {sorted(PAPER_START)}")
    last = str(max(int(k[2]) for k in rows if k[0] == base and k[1] == "dpo"))
    try:
        selm, dpo = (float(rows[(base, m, last)]["lc_win_rate"]) for m in ("selm", "dpo"))
        start = float(rows[(base, *PAPER_START[base])]["lc_win_rate"])
    except KeyError as e:
        raise DataError(f"{table1}: no row for {e.args[0]}") from None
    return {"base": base, "iteration": int(last), "selm_lc": selm, "dpo_lc": dpo, "start_lc": start,
            "selm_minus_dpo": selm - dpo, "dpo_gain": dpo - start, "fraction": (selm - dpo) / (dpo - start)}


def seeds_needed(sd: float, effect: float, most: int = 200) -> int | None:
    """The fewest paired seeds whose minimum detectable effect (paired t, 95%, power 0.8) is <= effect."""
    if sd == 0:
        return 2
    for n in range(2, most + 1):
        if mde(sd, n) <= effect:
            return n
    return None


def power_row(name: str, dpo: dict[int, dict], selm: dict[int, dict], fraction: float) -> dict:
    """The power of one SELM - DPO comparison in r*: measured spread, MDE at 3 seeds and at the seeds
    run, the paper-size effect on this cell's scale, and the verdict."""
    test = compare(selm, dpo)["r_star"]
    seeds = test["seeds"]
    dpo_gain = statistics.fmean(dpo[s]["r_star"] - dpo[s]["start_r_star"] for s in seeds)
    paper_effect = fraction * dpo_gain
    sd = test["sd"]
    return {"name": name, "n": test["n"], "mean_diff": test["mean_diff"], "ci_low": test["ci_low"],
            "ci_high": test["ci_high"], "p_value": test["p_value"], "n_selm_greater": test["n_a_greater"],
            "sd": sd, "mde_3_seeds": mde(sd, 3), "mde_at_n": mde(sd, test["n"]), "floor": FLOORS["r_star"],
            "dpo_gain_over_start": dpo_gain, "paper_effect": paper_effect,
            "seeds_for_paper_effect": seeds_needed(sd, max(paper_effect, 0.0)) if paper_effect > 0 else None,
            "paper_effect_below_floor": paper_effect < FLOORS["r_star"],
            "verdict": test["verdict"], "threshold": test["threshold"], "reason": test["reason"],
            "seeds": seeds}


def pair_quality(cells: list[str], root: Path = Path("."), seeds: list[int] | None = None) -> dict:
    """Why an explorer helps or not: the true reward r* of what the loop trains on (chosen, rejected,
    y_ref of each online iteration's pairs) beside the r* of the policy that iteration starts from,
    averaged over the arm's iterations and seeds, or only `seeds` (toy world only: needs the records'
    gold answers)."""
    from selm.io import read_jsonl
    from selm.world import true_reward

    sums: dict[str, list[float]] = {"chosen": [], "rejected": [], "y_ref": [], "policy_start": [], "policy_gain": []}
    records: dict[str, dict] = {}
    for cell in cells:
        for seed, sd in layout.cell_runs(root / layout.RUNS / cell):
            if not (sd / layout.SUMMARY).is_file() or (seeds is not None and seed not in seeds):
                continue
            config = json.loads((sd / layout.RUN_CONFIG).read_text())
            source = root / config["data"]["train_prefs"]
            if str(source) not in records:
                records[str(source)] = {r["prompt_id"]: r for r in read_jsonl(source)}
            rows, summary = records[str(source)], json.loads((sd / layout.SUMMARY).read_text())
            for t, it in sorted(layout.iteration_dirs(sd).items(), key=lambda kv: kv[1]):
                if t == 0 or not (it / layout.RESPONSES).is_file():
                    continue
                pairs = read_jsonl(it / layout.PAIRS)
                for kind, key in (("chosen", "chosen"), ("rejected", "rejected"), ("y_ref", "response")):
                    sums[kind].append(statistics.fmean(true_reward(rows[p["prompt_id"]], p[key]) for p in pairs))
                start, now = summary[layout.iteration_name(t - 1)], summary[layout.iteration_name(t)]
                sums["policy_start"].append(start["mean_reward"])
                sums["policy_gain"].append(now["mean_reward"] - start["mean_reward"])
    if not sums["chosen"]:
        return {}
    return {f"mean_r_star_{k}": statistics.fmean(v) for k, v in sums.items()} | {"iterations": len(sums["chosen"])}


def screening_row(item: dict, root: Path = Path(".")) -> dict:
    """One screened setting: explorer minus DPO in r* after the first online iteration and at the
    last, per common seed and averaged, with what each arm trains on (pair_quality)."""
    for key in ("name", "dpo", "explorer"):
        if key not in item:
            raise KeyError(f"controls.screening entry {item!r}: missing key {key!r}")
    runs = {side: {} for side in ("dpo", "explorer")}
    for side in runs:
        for cell in item[side]:
            for seed, sd in layout.cell_runs(root / layout.RUNS / cell):
                path = sd / layout.SUMMARY
                if not path.is_file():
                    raise FileNotFoundError(f"{path}: the run has not finished (no summary.json)")
                runs[side][seed] = json.loads(path.read_text())
    seeds = sorted(set(runs["dpo"]) & set(runs["explorer"]))
    if not seeds:
        raise DataError(f"controls.screening {item['name']!r}: no seed run by both arms "
                        f"({item['dpo']} vs {item['explorer']})")
    per_seed = []
    for seed in seeds:
        d, e = runs["dpo"][seed], runs["explorer"][seed]
        last = _last_iteration(d)
        if _last_iteration(e) != last:
            raise DataError(f"controls.screening {item['name']!r} seed {seed}: the arms end at different iterations")
        row = {"seed": seed, "iteration": last}
        for key, it in (("first", "iter1"), ("last", last)):
            row[f"dpo_r_star_{key}"], row[f"explorer_r_star_{key}"] = d[it]["mean_reward"], e[it]["mean_reward"]
            row[f"diff_{key}"] = e[it]["mean_reward"] - d[it]["mean_reward"]
        per_seed.append(row)
    return {"name": item["name"], "dpo": item["dpo"], "explorer": item["explorer"], "what": item.get("what", ""),
            "seeds": seeds, "per_seed": per_seed,
            "mean_diff_first": statistics.fmean(r["diff_first"] for r in per_seed),
            "mean_diff_last": statistics.fmean(r["diff_last"] for r in per_seed),
            "pair_quality": {side: pair_quality(item[side], root, seeds) for side in ("dpo", "explorer")}}


# --- the positive control across SFT bases (controls.bases) -------------------------------------------

def base_arm(cells: list[str], base_seed: int, root: Path = Path("."), unfinished: list | None = None,
             seeds: list[int] | None = None) -> dict[int, dict]:
    """An arm (`arm`) of one SFT base: each cell <experiment>/<cell>/alpha<alpha> read as the base's
    cell (selm.layout.base_cell_ref: control_weak/dpo.b1/alpha0.0 for base seed 1), those with run
    folders, restricted to `seeds`. A base none of whose cells has run folders stops the analysis
    (or, with a list `unfinished`, is appended to it)."""
    refs = [layout.base_cell_ref(c, base_seed) for c in cells]
    found = [r for r in refs if layout.cell_runs(root / layout.RUNS / r)]
    if not found:
        if unfinished is not None:
            unfinished.extend(str(root / layout.RUNS / r) for r in refs)
            return {}
        raise FileNotFoundError(f"base seed {base_seed}: no run folders in any of {refs}")
    by_seed = arm(found, root, unfinished)
    return {s: m for s, m in by_seed.items() if seeds is None or s in seeds}


def prior_components(prior: list[dict]) -> dict:
    """Between-base and between-seed sd of a paired difference from earlier measurements on single
    bases (each {name, ci: [low, high], n}: a mean difference's 95% t interval over n seeds)."""
    for p in prior:
        if not isinstance(p, dict) or sorted(p) != ["ci", "n", "name"] or len(p["ci"]) != 2:
            raise KeyError(f"controls.bases prior entry {p!r}: expected {{name, ci: [low, high], n}} "
                           "(quote a name with a comma)")
    means = [(p["ci"][0] + p["ci"][1]) / 2 for p in prior]
    sds = [sd_from_interval(p["ci"][0], p["ci"][1], int(p["n"])) for p in prior]
    return {**components_from_summaries(means, sds, [int(p["n"]) for p in prior]), "means": means, "sds": sds}


def design_cost(bases: int, seeds: int, cost: dict) -> float:
    """Estimated wall seconds of a design: every base beyond `existing_bases` is trained by SFT
    (`sft_cpu_s` of one core) and runs `arms` x seeds loop runs (`run_cpu_s` each), on `cores` cores."""
    new = bases - int(cost.get("existing_bases", 1))
    if new < 0:
        raise ValueError(f"a design of {bases} bases has fewer than the {cost['existing_bases']} existing ones")
    return new * (float(cost["sft_cpu_s"]) + seeds * int(cost.get("arms", 2)) * float(cost["run_cpu_s"])) / int(
        cost.get("cores", 1))


def design_table(sd_between: float, sd_within: float, cost: dict, max_bases: int = 12,
                 seeds: tuple[int, ...] = (2, 3, 4, 6, 8)) -> list[dict]:
    """(bases, seeds, MDE of the mean over bases, estimated seconds) for every design of 2 to
    max_bases bases (at least 2 seeds each, so that the between-seed spread is measured too)."""
    return [{"bases": b, "seeds": s, "mde": across_base_mde(sd_between, sd_within, b, s),
             "seconds": design_cost(b, s, cost)}
            for b in range(max(2, int(cost.get("existing_bases", 1))), max_bases + 1) for s in seeds]


def choose_design(table: list[dict], budget_s: float) -> dict | None:
    """The design of smallest MDE within the budget (ties: the cheaper); None if none fits."""
    fits = [d for d in table if d["seconds"] <= budget_s]
    return min(fits, key=lambda d: (d["mde"], d["seconds"])) if fits else None


def base_metric(by_base: dict[int, tuple[dict, dict]], metric: str, floor: float) -> dict | None:
    """One metric of the explorer - DPO difference over bases (None with fewer than 2 bases that
    measured it): per-base means over their common seeds, the test over bases with its verdict, the
    variance components, and the seeds-only paired test that ignores the base (for contrast)."""
    per_base, groups, pooled = [], [], ([], [])
    for base_seed, (explorer, dpo) in sorted(by_base.items()):
        seeds = sorted(s for s in set(explorer) & set(dpo) if metric in explorer[s] and metric in dpo[s])
        if not seeds:
            continue
        diffs = [explorer[s][metric] - dpo[s][metric] for s in seeds]
        groups.append(diffs)
        pooled[0].extend(explorer[s][metric] for s in seeds)
        pooled[1].extend(dpo[s][metric] for s in seeds)
        per_base.append({"base_seed": base_seed, "seeds": seeds, "mean_diff": statistics.fmean(diffs),
                         "sd": statistics.stdev(diffs) if len(diffs) > 1 else None,
                         "explorer_mean": statistics.fmean(explorer[s][metric] for s in seeds),
                         "dpo_mean": statistics.fmean(dpo[s][metric] for s in seeds)})
    if len(per_base) < 2:
        return None
    test = across_base_test([b["mean_diff"] for b in per_base])
    verdict = effect_verdict(test, floor)
    components = variance_components(groups)
    seeds = min(len(g) for g in groups)
    return {"per_base": per_base, "across": test, "verdict": verdict["verdict"], "threshold": verdict["threshold"],
            "reason": verdict["reason"], "floor": floor, "components": components,
            "mde_measured": (across_base_mde(components["sd_between"], components["sd_within"], len(groups), seeds)
                             if components["sd_within"] is not None else None),
            "seeds_only": paired_test(*pooled)}


def bases_row(item: dict, root: Path = Path("."), unfinished: list | None = None) -> dict:
    """One controls.bases comparison: explorer - DPO per metric with the SFT base as a random factor
    (base_metric), the design's power from the prior measurements (`prior`, `cost`)."""
    for key in ("name", "dpo", "explorer", "base_seeds"):
        if key not in item:
            raise KeyError(f"controls.bases entry {item.get('name', item)!r}: missing key {key!r}")
    bases = [int(b) for b in item["base_seeds"]]
    if len(bases) < 2 or len(set(bases)) != len(bases):
        raise ValueError(f"controls.bases {item['name']!r}: base_seeds needs at least 2 distinct seeds, got {bases}")
    seeds = [int(s) for s in item["seeds"]] if item.get("seeds") is not None else None
    by_base = {}
    for b in bases:
        explorer = base_arm(item["explorer"], b, root, unfinished, seeds)
        dpo = base_arm(item["dpo"], b, root, unfinished, seeds)
        if explorer and dpo:
            by_base[b] = (explorer, dpo)
    tests = {m: t for m in METRICS if (t := base_metric(by_base, m, FLOORS.get(m, 0.0))) is not None}
    out = {"name": item["name"], "dpo": item["dpo"], "explorer": item["explorer"], "what": item.get("what", ""),
           "base_seeds": bases, "seeds": seeds, "bases_found": sorted(by_base), "tests": tests}
    if item.get("prior"):
        prior = prior_components(item["prior"])
        n_seeds = len(seeds) if seeds else min(len(e) for e, _ in by_base.values()) if by_base else 2
        design = {"prior": item["prior"], "prior_components": prior, "bases": len(bases), "seeds": n_seeds,
                  "mde": across_base_mde(prior["sd_between"], prior["sd_within"], len(bases), n_seeds)}
        if item.get("cost"):
            cost = item["cost"]
            table = design_table(prior["sd_between"], prior["sd_within"], cost)
            design |= {"cost": cost, "seconds": design_cost(len(bases), n_seeds, cost),
                       "best_within_budget": choose_design(table, float(cost["budget_s"])), "table": table}
        out["design"] = design
    return out


SECTIONS = {"positive_control": "positive", "power": "power", "screening": "screening",
            "bases": "bases"}  # output -> spec key


def analyze(spec_path: Path, root: Path = Path("."), allow_unfinished: bool = False,
            sections: list[str] | None = None) -> dict[str, dict]:
    """The controls' results per output section; `sections` (default: every one the spec has) picks
    some, so one section can be redone without the other sections' runs."""
    spec = OmegaConf.load(spec_path)
    if "controls" not in spec:
        raise KeyError(f"{spec_path}: no `controls` section")
    c = OmegaConf.to_container(spec.controls, resolve=True)
    if sections is not None:
        bad = [s for s in sections if s not in SECTIONS]
        if bad:
            raise KeyError(f"unknown section(s) {bad}; known: {sorted(SECTIONS)}")
        missing = [s for s in sections if SECTIONS[s] not in c]
        if missing:
            raise KeyError(f"{spec_path}: controls has no {[SECTIONS[s] for s in missing]} for section(s) {missing}")
        c = {k: v for k, v in c.items() if k not in SECTIONS.values() or k in {SECTIONS[s] for s in sections}}
    fraction = (paper_fraction(root / "paper" / "table1_alpacaeval_mtbench.csv", c.get("paper_base", "zephyr"))
                if "positive" in c or "power" in c else None)
    out = {}
    if "screening" in c:
        out["screening"] = {"rows": [screening_row(item, root) for item in c["screening"]],
                            "rule": "one seed or a few: explorer - DPO r* (greedy, 300 held-out prompts) after "
                                    "iteration 1 and at the last iteration; a screen, not a test"}
    if "positive" in c:
        rows, unfinished = [], [] if allow_unfinished else None
        for item in c["positive"]:
            dpo, explorer = arm(item["dpo"], root, unfinished), arm(item["explorer"], root, unfinished)
            rows.append({"name": item["name"], "dpo": item["dpo"], "explorer": item["explorer"],
                         "what": item.get("what", ""), "tests": compare(explorer, dpo),
                         "dpo_gain_over_start": (statistics.fmean(m["r_star"] - m["start_r_star"] for m in dpo.values())
                                                 if dpo else None),  # None: no finished DPO run (allow_unfinished)
                         "pair_quality": {"dpo": pair_quality(item["dpo"], root),
                                          "explorer": pair_quality(item["explorer"], root)}})
        out["positive_control"] = {"rows": rows, "paper_fraction": fraction, "unfinished_runs": unfinished or []}
    if "bases" in c:
        unfinished = [] if allow_unfinished else None
        out["bases"] = {"rows": [bases_row(item, root, unfinished) for item in c["bases"]],
                        "unfinished_runs": unfinished or [],
                        "rule": "per SFT base, the mean explorer - DPO difference over its seeds; the verdict is on the "
                                "mean over bases with the bases as units (t over bases, bases - 1 degrees of freedom; "
                                "the percentile bootstrap over bases beside it), needing the interval to exclude 0 and "
                                "|effect| >= max(MDE, floor); variance components by one-way random-effects ANOVA"}
    if "power" in c:
        unfinished = [] if allow_unfinished else None
        rows = [power_row(item["name"], arm(item["dpo"], root, unfinished), arm(item["selm"], root, unfinished),
                          fraction["fraction"]) for item in c["power"]]
        out["power"] = {"rows": rows, "paper_fraction": fraction, "unfinished_runs": unfinished or [],
                        "rule": "paired t over seeds, two-sided 95%, power 0.8 (selm.report.stats.mde); a verdict "
                                "needs the interval to exclude 0 and |effect| >= max(MDE, r* floor)"}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=Path("experiments/toy_controls.yaml"))
    parser.add_argument("--out", type=Path, default=Path("results/toy/controls"))
    parser.add_argument("--allow-unfinished", action="store_true",
                        help="analyse the finished runs and list the unfinished ones in the JSON (default: stop)")
    parser.add_argument("--sections", nargs="+", choices=sorted(SECTIONS), default=None,
                        help="analyse only these sections (default: every one the spec's `controls` has)")
    args = parser.parse_args(argv)
    spec = OmegaConf.to_container(OmegaConf.load(args.spec), resolve=True)
    command = f"python -m selm.report.controls_analysis --spec {args.spec}" + (
        f" --sections {' '.join(args.sections)}" if args.sections else "")
    prov = {**provenance(spec, command=command), "spec": str(args.spec), "spec_hash": config_hash(spec)}
    for name, result in analyze(args.spec, allow_unfinished=args.allow_unfinished, sections=args.sections).items():
        write_json_atomic(args.out / f"{name}.json", {**result, "provenance": prov})
        print(f"wrote {args.out / f'{name}.json'}")


if __name__ == "__main__":
    main()
