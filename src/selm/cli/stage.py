"""DVC stage commands. They read params.yaml (DVC's Hydra composition of conf/loop.yaml, which
`dvc exp run -S key=value` rewrites), so an experiment's overrides reach every stage.

    python -m selm.cli.stage sft tiny-sft
    python -m selm.cli.stage sft tiny-sft tiny-instruct  # both bases at once, one process each
    python -m selm.cli.stage sft tiny-sft.b1 tiny-sft.b2 # tiny-sft's bases of SFT seeds 1 and 2 (models/tiny-sft.b1, ...)
    python -m selm.cli.stage experiment main             # every run of experiments/toy.yaml's `main`
    python -m selm.cli.stage experiment --all            # every experiment of the spec, one worker pool
    python -m selm.cli.stage loop tiny-sft 0.01 42       # one ad-hoc run (runs/adhoc/...)
    python -m selm.cli.stage eval-base tiny-sft          # AlpacaEval, MT-Bench, lm-eval of the SFT base
    python -m selm.cli.stage eval-base tiny-sft tiny-instruct  # both at once, one process each
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

from omegaconf import DictConfig

from selm import console, layout
from selm.compose import run_config
from selm.stagelog import count

def sft(cfg: DictConfig) -> None:
    """SFT of the base cfg.model into cfg.model.path, with its headroom."""
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


def eval_base(cfg: DictConfig) -> None:
    """AlpacaEval, MT-Bench and lm-eval of the SFT base cfg.model into evals/base/<its name>/."""
    from selm.evaluate import PARTS, evaluate_checkpoint

    start, base = time.perf_counter(), cfg.model.name
    out = layout.base_eval_dir(base)
    path = out / layout.EVAL_METRICS
    before = path.stat().st_mtime_ns if path.exists() else None
    metrics = evaluate_checkpoint(cfg, cfg.model.path, out, f"{base}/base")
    count("checkpoint evaluations" if path.stat().st_mtime_ns != before else "evaluations kept")
    console.summary(f"eval-base {base}", f"{', '.join(cfg.eval.get('parts', PARTS))} "
                    f"-> {out} ({len([v for v in metrics.values() if isinstance(v, float)])} scores)", start)


PER_BASE = {"sft": sft, "eval-base": eval_base}
# torch threads of each base's process when several bases run at once (None: torch's default). One
# thread gives the same bytes as torch's default on the toy bases (measured: tiny-sft's SFT checkpoint
# and headroom; both bases' evaluations), and the processes then share the cores.
THREADS = {"sft": 1, "eval-base": 1}


def base_config(params: Path, base: str, dotlist: list[str]):
    """The config of one base named on the command line: a model of conf/model/ (`tiny-sft`), or one
    of its bases of another SFT seed (`tiny-sft.b1`: selm.layout.base_name, selm.compose.with_base_seed)."""
    model, base_seed = layout.parse_base_name(base)
    return run_config(params, groups={"model": model}, dotlist=dotlist,
                      base_seed=None if base_seed == layout.DEFAULT_BASE_SEED else base_seed)


def _one_base(stage: str, params: Path, base: str, dotlist: list[str], bars: bool) -> dict[str, int]:
    """One base's `stage` in a worker of per_base; returns what it did, for the stage's tally. Only
    the first base's process draws its bar (the bases run at once, in similar time)."""
    from selm.stagelog import take_counts

    console.setup(bars=bars)
    PER_BASE[stage](base_config(params, base, dotlist))
    return take_counts()


def per_base(stage: str, params: Path, bases: list[str], dotlist: list[str], threads: int | None = None) -> None:
    """`stage` (sft, eval-base) of every base in `bases`: one base in this process, as before; several
    at once, one spawned process per base with `threads` torch threads (default THREADS[stage]). Each
    base's work is independent and seeded, so its outputs do not depend on what runs beside it. A
    failing base does not stop the others; the error names each failure with its traceback."""
    if len(set(bases)) != len(bases):
        raise ValueError(f"{stage}: a base is named twice in {bases}")
    for base in bases:
        layout.parse_base_name(base)  # a misspelt base seed stops the stage before any base starts
    if len(bases) == 1:
        PER_BASE[stage](base_config(params, bases[0], dotlist))
        return
    from selm.stagelog import add_counts
    from selm.workers import failures_error, spawn_pool

    start, failures = time.perf_counter(), []
    with spawn_pool(len(bases), THREADS[stage] if threads is None else threads) as pool:
        futures = {base: pool.submit(_one_base, stage, params, base, list(dotlist), i == 0)
                   for i, base in enumerate(bases)}
        for base, future in futures.items():
            try:
                add_counts(future.result())
            except Exception as e:  # every base is waited for; the failures are raised together below
                failures.append((base, "".join(traceback.format_exception(e))))
    if failures:
        raise failures_error(f"bases of {stage}", failures, len(bases))
    console.summary(f"{stage} {' '.join(bases)}", f"{len(bases)} bases at once", start)


def preflight(name: str, spec_file: Path, params_file: Path) -> None:
    """What every run of experiment `name` reads, checked before any run starts, so that a missing
    input stops the stage with one error naming it and nothing written: the base checkpoint (with its
    tokenizer), the preference data, the ranker's checkpoint, the evaluation data, and a judge server
    on this machine."""
    from selm.experiments import expand, load_experiments
    from selm.checkpoints import check_checkpoint  # not selm.train: the stage's own process never imports torch

    seen = set()
    for run in expand(load_experiments(spec_file), name, str(spec_file)):
        cfg = run.config(params_file)
        try:
            check_checkpoint(cfg.model.path, "model.path")
        except FileNotFoundError as e:
            if run.base_seed in (None, layout.DEFAULT_BASE_SEED):
                raise
            raise FileNotFoundError(f"{e}; base seed {run.base_seed}: train it with "
                                    f"`python -m selm.cli.stage sft {cfg.model.name}`") from None
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
    p_sft = sub.add_parser("sft", help="train toy bases by SFT (several: at once) and report their headroom; "
                           "<model>.b<seed> is the model's base of another SFT seed")
    p_sft.add_argument("bases", nargs="+", metavar="base")
    p_loop = sub.add_parser("loop", help="every iteration of one base x alpha x seed")
    p_loop.add_argument("base")
    p_loop.add_argument("alpha", type=float)
    p_loop.add_argument("seed", type=int)
    p_eval_base = sub.add_parser("eval-base", help="AlpacaEval, MT-Bench and lm-eval of SFT bases (several: at once)")
    p_eval_base.add_argument("bases", nargs="+", metavar="base")
    p_exp = sub.add_parser("experiment", help="every run of the named experiments (one worker pool), then their "
                           "evaluations")
    p_exp.add_argument("names", nargs="*", metavar="name")
    p_exp.add_argument("--all", action="store_true", help="every experiment of the spec")
    p_exp.add_argument("--spec", type=Path, default=Path("experiments/toy.yaml"))
    p_exp.add_argument("--workers", type=int, default=None, help="default: the spec's `workers`")
    args = parser.parse_args(argv)
    if args.stage == "sft":
        per_base("sft", args.params, args.bases, args.set)
    elif args.stage == "loop":
        from selm.loop import run_loop

        start = time.perf_counter()
        run_dir = run_loop(run_config(args.params, groups={"model": args.base}, alpha=args.alpha, seed=args.seed,
                                      dotlist=args.set))
        console.summary(f"loop {run_dir}", "every iteration trained and evaluated", start)
    elif args.stage == "eval-base":
        per_base("eval-base", args.params, args.bases, args.set)
    else:
        from selm.experiments import load_experiments, run_experiments
        from selm.io import DataError

        if args.set:
            parser.error("--set does not apply to `experiment`: change experiments/*.yaml or params.yaml")
        if bool(args.names) == args.all:
            parser.error("experiment: name the experiments, or give --all (not both)")
        names = list(load_experiments(args.spec).experiments) if args.all else args.names
        for name in names:
            try:
                preflight(name, args.spec, args.params)
            except (FileNotFoundError, DataError, ConnectionError, KeyError) as e:
                sys.exit(f"error: experiment {name}: {e.args[0] if isinstance(e, KeyError) else e}")
        run_experiments(names, args.spec, args.params, workers=args.workers)


if __name__ == "__main__":
    from selm.stagelog import stage_timer

    console.setup()  # library bars and info logs off unless SELM_VERBOSE=1
    with stage_timer():
        main()
