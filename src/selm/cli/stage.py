"""DVC stage commands. They read params.yaml (DVC's Hydra composition of conf/loop.yaml, which
`dvc exp run -S key=value` rewrites), so an experiment's overrides reach every stage.

    python -m selm.cli.stage sft tiny-sft
    python -m selm.cli.stage experiment main             # every run of experiments/toy.yaml's `main`
    python -m selm.cli.stage loop tiny-sft 0.01 42       # one ad-hoc run (runs/adhoc/...)
    python -m selm.cli.stage eval-base tiny-sft          # AlpacaEval, MT-Bench, lm-eval of the SFT base
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from selm import console
from selm.config import ConfigError, compose_config, validate_config
from selm.stagelog import count

# Sections of params.yaml that apply to every run of the grid; the grid item sets model, alpha, seed.
SHARED_SECTIONS = ("train", "generation", "ranker", "data", "eval", "judge", "sft", "scale", "paths")
# Keys of the shared sections that every grid item sets itself (experiments/*.yaml's alphas and seeds).
GRID_KEYS = ("train.alpha", "train.seed")


@functools.lru_cache(maxsize=4)
def _composed_params(config_name: str) -> dict:
    """params.yaml as DVC's Hydra composition writes it (resolved conf/<config_name>.yaml)."""
    cfg = compose_config(config_name)
    OmegaConf.resolve(cfg)
    return OmegaConf.to_container(cfg)


def _differences(ours, theirs, prefix: str) -> list[str]:
    """Dotted keys where two plain containers differ (a key only one of them has counts)."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return [d for k in sorted(set(ours) | set(theirs), key=str)
                for d in _differences(ours.get(k, "<absent>"), theirs.get(k, "<absent>"), f"{prefix}.{k}")]
    return [] if ours == theirs else [prefix]


def refuse_ignored_overrides(params: DictConfig, params_file: Path, config_name: str = "loop") -> None:
    """params.yaml's sections other than SHARED_SECTIONS (model, variant, run, logger, ...) are not
    applied to the runs: each run's model and variant come from its experiment cell. An edit there
    (`dvc exp run -S model.path=...`) would be silently ignored, so it is refused, naming the key."""
    composed = _composed_params(config_name)
    given = OmegaConf.to_container(params, resolve=True)
    for key in GRID_KEYS:
        section, name = key.split(".")
        if name in given.get(section, {}) and given[section][name] != composed[section][name]:
            raise ConfigError(f"{params_file}: {key} is set per run by the grid (experiments/*.yaml's alphas and "
                              f"seeds), so {given[section][name]!r} here would be ignored; change the experiment's "
                              "alphas / seeds instead")
    for section in sorted(set(given) - set(SHARED_SECTIONS), key=str):
        changed = _differences(given[section], composed.get(section, "<absent>"), section)
        if changed:
            raise ConfigError(
                f"{params_file}: {changed[0]} differs from conf/{config_name}.yaml's composition, but params.yaml's "
                f"'{section}' is not applied to the runs (only {', '.join(SHARED_SECTIONS)} are; each run's model "
                "and variant come from its cell in experiments/*.yaml). Set it in the experiment's cell or in conf/, "
                "or regenerate params.yaml (`make params`) if conf/ changed.")


def merge_shared_sections(cfg: DictConfig, params_file: Path | None) -> DictConfig:
    """Overlay params.yaml's shared sections (where DVC's `-S` edits land) on a composed config; an
    edit of any other section is refused (refuse_ignored_overrides), and so is a key the shared
    section does not have (a typo such as `-S train.bta=0.2`)."""
    if params_file is not None and Path(params_file).exists():
        params = OmegaConf.load(params_file)
        refuse_ignored_overrides(params, Path(params_file))
        for section in SHARED_SECTIONS:
            if section in params:
                unknown = _unknown_keys(cfg[section], params[section], section)
                if unknown:
                    raise ConfigError(f"{params_file}: {unknown[0]} is not a config key (conf/{section}/ has no such "
                                      "key), so it would be ignored")
                cfg[section] = OmegaConf.merge(cfg[section], params[section])
    return validate_config(cfg)


def _unknown_keys(have: DictConfig, given: DictConfig, prefix: str) -> list[str]:
    out = []
    for key in given:
        if key not in have:
            out.append(f"{prefix}.{key}")
        elif isinstance(given[key], DictConfig) and isinstance(have[key], DictConfig):
            out += _unknown_keys(have[key], given[key], f"{prefix}.{key}")
    return out


def run_config(params_file: Path, base: str, alpha: float | None = None, seed: int | None = None,
               extra: list[str] | None = None) -> DictConfig:
    """conf/loop.yaml composed for one grid item, with the shared values taken from params.yaml;
    `extra` dotted values are applied last."""
    overrides = [f"model={base}"]
    if alpha is not None:
        overrides.append(f"train.alpha={alpha}")
    if seed is not None:
        overrides.append(f"train.seed={seed}")
    cfg = merge_shared_sections(compose_config("loop", overrides), params_file)
    if alpha is not None:
        cfg.train.alpha = alpha
    if seed is not None:
        cfg.train.seed = seed
    if extra:  # --set key=value: for pipelines other than the toy grid (scales/small/dvc.yaml)
        cfg.merge_with_dotlist(extra)
    return validate_config(cfg)


def sft(cfg: DictConfig) -> None:
    from selm.io import read_jsonl, write_json_atomic
    from selm.sft import EVAL_SCHEMA, greedy_and_best_of_n, train_sft
    from selm.tiny import build_tiny_model

    out = Path(cfg.model.path)
    s = cfg.sft
    init = build_tiny_model(out.with_name(out.name + ".init"), size=s.size, seed=s.init_seed)
    metrics = train_sft(init, cfg.model.sft_data, out, epochs=s.epochs, lr=s.lr, batch_size=s.batch_size,
                        warmup_ratio=s.warmup_ratio, max_length=s.max_length, seed=s.seed)
    records = read_jsonl(cfg.data.test_prefs, EVAL_SCHEMA)[: s.headroom_prompts]
    headroom = greedy_and_best_of_n(out, records, n=s.headroom_n, seed=s.seed,
                                    max_new_tokens=cfg.scale.max_new_tokens)
    write_json_atomic(out / "headroom.json", headroom)
    count("bases trained")
    print(f"{cfg.model.name}: SFT {metrics['seconds']} s; greedy r* {headroom['greedy']['mean']:.3f}, "
          f"best-of-{s.headroom_n} r* {headroom[f'best_of_{s.headroom_n}']['mean']:.3f}")


def preflight(name: str, spec_file: Path, params_file: Path) -> None:
    """What every run of experiment `name` reads, checked before any run starts, so that a missing
    input stops the stage with one error naming it and nothing written: the base checkpoint (with its
    tokenizer), the preference data, the ranker's checkpoint, the evaluation data, and a judge server
    on this machine."""
    from selm.experiments import expand, load_experiments, run_config
    from selm.io import check_checkpoint  # not selm.train: the stage's own process never imports torch

    seen = set()
    for run in expand(load_experiments(spec_file), name, str(spec_file)):
        cfg = run_config(run, params_file)
        check_checkpoint(cfg.model.path, "model.path")
        files = {f"data.{k}": cfg.data[k] for k in ("train_prefs", "test_prefs")}
        if "alpaca" in run.eval_parts:
            files["eval.alpaca_eval.data"] = cfg.eval.alpaca_eval.data
        if "mt_bench" in run.eval_parts:
            files["eval.mt_bench.questions"] = cfg.eval.mt_bench.questions
        for key, path in files.items():
            if not Path(path).is_file():
                raise FileNotFoundError(f"{key}={path}: no such file (its export stage writes it)")
        if cfg.ranker.name == "pairrm" and not (Path(cfg.ranker.path) / "config.json").is_file():
            raise FileNotFoundError(f"ranker.path={cfg.ranker.path}: no PairRM checkpoint there")
        if run.eval_parts and cfg.judge.name == "openai" and cfg.judge.base_url not in seen:
            from selm.judges.reachable import check_local_server

            check_local_server(cfg.judge.base_url)
            seen.add(cfg.judge.base_url)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value after params.yaml (repeatable)")
    sub = parser.add_subparsers(dest="stage", required=True)
    p_sft = sub.add_parser("sft", help="train a toy base by SFT and report its headroom")
    p_sft.add_argument("base")
    p_loop = sub.add_parser("loop", help="every iteration of one base x alpha x seed")
    p_loop.add_argument("base")
    p_loop.add_argument("alpha", type=float)
    p_loop.add_argument("seed", type=int)
    p_eval_base = sub.add_parser("eval-base", help="AlpacaEval, MT-Bench and lm-eval of an SFT base")
    p_eval_base.add_argument("base")
    p_exp = sub.add_parser("experiment", help="every run of one named experiment, then its evaluations")
    p_exp.add_argument("name")
    p_exp.add_argument("--spec", type=Path, default=Path("experiments/toy.yaml"))
    p_exp.add_argument("--workers", type=int, default=None, help="default: the spec's `workers`")
    args = parser.parse_args(argv)
    if args.stage == "sft":
        sft(run_config(args.params, args.base, extra=args.set))
    elif args.stage == "loop":
        from selm.loop import run_loop

        start = time.perf_counter()
        run_dir = run_loop(run_config(args.params, args.base, args.alpha, args.seed, extra=args.set))
        console.summary(f"loop {run_dir}", "every iteration trained and evaluated", start)
    elif args.stage == "eval-base":
        from selm.evaluate import PARTS, evaluate_checkpoint

        start = time.perf_counter()
        cfg = run_config(args.params, args.base, extra=args.set)
        out = Path("evals") / "base" / args.base
        before = (out / "metrics.json").stat().st_mtime_ns if (out / "metrics.json").exists() else None
        metrics = evaluate_checkpoint(cfg, cfg.model.path, out, f"{args.base}/base")
        count("checkpoint evaluations" if (out / "metrics.json").stat().st_mtime_ns != before else "evaluations kept")
        console.summary(f"eval-base {args.base}", f"{', '.join(cfg.eval.get('parts', PARTS))} "
                        f"-> {out} ({len([v for v in metrics.values() if isinstance(v, float)])} scores)", start)
    else:
        from selm.experiments import run_experiment
        from selm.io import DataError

        if args.set:
            parser.error("--set does not apply to `experiment`: change experiments/*.yaml or params.yaml")
        try:
            preflight(args.name, args.spec, args.params)
        except (FileNotFoundError, DataError, ConnectionError) as e:
            sys.exit(f"error: experiment {args.name}: {e}")
        run_experiment(args.name, args.spec, args.params, workers=args.workers)


if __name__ == "__main__":
    from selm.stagelog import stage_timer

    console.setup()  # library bars and info logs off unless SELM_VERBOSE=1
    with stage_timer():
        main()
