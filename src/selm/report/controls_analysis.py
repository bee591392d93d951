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

The paper's claimed gain on the same scale: (SELM iter3 - DPO iter3) / (DPO iter3 - the model the
online iterations start from), read from paper/table1_alpacaeval_mtbench.csv (Zephyr:
2.06 / 6.78 LC), times the toy DPO arm's own gain over its start (r* at the last iteration minus r*
at the iteration the online loop starts from).

    python -m selm.report.controls_analysis --spec experiments/toy_controls.yaml --out results/toy/controls
    python -m selm.report.controls_analysis --sections positive_control screening   # without the power runs
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
from selm.report.stats import MACHINE_FLOOR, effect_verdict, mde, paired_test

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


SECTIONS = {"positive_control": "positive", "power": "power", "screening": "screening"}  # output -> spec key


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
    fraction = paper_fraction(root / "paper" / "table1_alpacaeval_mtbench.csv", c.get("paper_base", "zephyr"))
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
