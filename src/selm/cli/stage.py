"""DVC stage commands. They read params.yaml (DVC's Hydra composition of conf/loop.yaml, which
`dvc exp run -S key=value` rewrites), so an experiment's overrides reach every stage.

    python -m selm.cli.stage sft tiny-sft
    python -m selm.cli.stage loop tiny-sft 0.01 42
    python -m selm.cli.stage eval-base tiny-sft          # AlpacaEval + MT-Bench of the SFT base
    python -m selm.cli.stage eval tiny-sft 0.01 42       # ... of every checkpoint of one run
"""

from __future__ import annotations

import argparse
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from selm.config import compose_config

# Sections of params.yaml that apply to every run of the grid; the grid item sets model, alpha, seed.
SHARED_SECTIONS = ("train", "generation", "ranker", "data", "eval", "judge", "sft", "scale", "paths")


def run_config(params_file: Path, base: str, alpha: float | None = None, seed: int | None = None,
               extra: list[str] | None = None) -> DictConfig:
    """conf/loop.yaml composed for one grid item, with the shared values taken from params.yaml."""
    overrides = [f"model={base}"]
    if alpha is not None:
        overrides.append(f"train.alpha={alpha}")
    if seed is not None:
        overrides.append(f"train.seed={seed}")
    cfg = compose_config("loop", overrides)
    if params_file.exists():
        params = OmegaConf.load(params_file)
        for section in SHARED_SECTIONS:
            if section in params:
                cfg[section] = OmegaConf.merge(cfg[section], params[section])
    if alpha is not None:
        cfg.train.alpha = alpha
    if seed is not None:
        cfg.train.seed = seed
    if extra:  # --set key=value: for pipelines other than the toy grid (scales/small/dvc.yaml)
        cfg.merge_with_dotlist(extra)
    return cfg


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
    print(f"{cfg.model.name}: SFT {metrics['seconds']} s; greedy r* {headroom['greedy']['mean']:.3f}, "
          f"best-of-{s.headroom_n} r* {headroom[f'best_of_{s.headroom_n}']['mean']:.3f}")


def eval_run(cfg: DictConfig, out_root: Path) -> None:
    """Evaluate every checkpoint of the run folder, in iteration order, into out_root/iter<t>/."""
    from selm.evaluate import evaluate_checkpoint

    run = Path(cfg.run_dir)
    iterations = sorted((p for p in run.glob("iter*") if (p / "model" / "config.json").exists()),
                        key=lambda p: int(p.name.removeprefix("iter")))
    if not iterations:
        raise FileNotFoundError(f"{run}: no trained iteration (iter*/model) to evaluate")
    for it in iterations:
        model_id = f"{cfg.model.name}/alpha{cfg.train.alpha}/{it.name}/seed{cfg.train.seed}"
        metrics = evaluate_checkpoint(cfg, it / "model", out_root / it.name, model_id)
        print(f"{model_id}: AlpacaEval LC {metrics['alpaca_lc_win_rate']:.1f} WR {metrics['alpaca_win_rate']:.1f}, "
              f"MT-Bench {metrics['mt_bench_average']:.2f}")


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
    p_eval_base = sub.add_parser("eval-base", help="AlpacaEval and MT-Bench of an SFT base")
    p_eval_base.add_argument("base")
    p_eval = sub.add_parser("eval", help="AlpacaEval and MT-Bench of every checkpoint of one run")
    p_eval.add_argument("base")
    p_eval.add_argument("alpha", type=float)
    p_eval.add_argument("seed", type=int)
    args = parser.parse_args(argv)
    if args.stage == "sft":
        sft(run_config(args.params, args.base, extra=args.set))
    elif args.stage == "loop":
        from selm.loop import run_loop

        run_loop(run_config(args.params, args.base, args.alpha, args.seed, extra=args.set))
    elif args.stage == "eval-base":
        from selm.evaluate import evaluate_checkpoint

        cfg = run_config(args.params, args.base, extra=args.set)
        evaluate_checkpoint(cfg, cfg.model.path, Path("evals") / args.base / "base", f"{args.base}/base")
    else:
        cfg = run_config(args.params, args.base, args.alpha, args.seed, extra=args.set)
        eval_run(cfg, Path("evals") / args.base / f"alpha{args.alpha}" / f"seed{args.seed}")


if __name__ == "__main__":
    main()
