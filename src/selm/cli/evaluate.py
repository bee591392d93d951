"""Evaluate the checkpoints of one loop run, or its base model, under a composed config: the paper
scale's evaluation stage (scales/paper/dvc.yaml).

    python -m selm.cli.evaluate --config-name loop_paper preset=paper_zephyr run_dir=runs/paper/zephyr-selm
    python -m selm.cli.evaluate --config-name loop_paper --base preset=paper_zephyr

Why a command of its own: `selm.cli.stage` composes conf/loop.yaml with one model and takes every
other section from the toy params.yaml, and its `--set` changes values only; the paper scale
switches config groups (conf/loop_paper.yaml: data, ranker, eval, judge; the experiment), which only
a Hydra composition can do. The evaluation itself is selm.evaluate's, as at every scale.

Outputs: a run's iter<t> checkpoints go to evals/<run_dir below runs/>/iter<t>/; the base to
evals/base/<model.name>/. Finished parts are skipped on rerun (selm.evaluate).
"""

from __future__ import annotations

import argparse
import sys

from selm import layout
from selm.config import compose_config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m selm.cli.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-name", default="loop", help="entry config in conf/ (loop, loop_paper)")
    parser.add_argument("--base", action="store_true", help="evaluate the base model (model.path), not the run")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. preset=paper_zephyr train.alpha=0")
    args = parser.parse_args(argv)
    cfg = compose_config(args.config_name, args.overrides)
    try:
        evaluate(cfg, args.base)
    except (FileNotFoundError, ConnectionError) as e:  # a missing checkpoint, tokenizer or data file; a judge down
        sys.exit(f"error: {e}")


def evaluate(cfg, base: bool) -> None:
    """The base model (model.path) into evals/base/<model.name>/, or every checkpoint of cfg.run_dir."""
    if base:
        from selm.evaluate import evaluate_checkpoint

        out = layout.base_eval_dir(cfg.model.name)  # where the report looks for base models, at every scale
        metrics = evaluate_checkpoint(cfg, cfg.model.path, out, f"{cfg.model.name}/base")
        print(f"{cfg.model.name}/base -> {out}: " + ", ".join(
            f"{k} {v:.2f}" for k, v in metrics.items() if isinstance(v, float)))
    else:
        from selm.experiments import evaluate_run

        out = layout.eval_dir_of(cfg.run_dir)
        evaluate_run(cfg, out)
        print(f"{cfg.run_dir}: every checkpoint evaluated -> {out}")


if __name__ == "__main__":
    from selm import console

    console.setup()  # library bars and info logs off unless SELM_VERBOSE=1
    main()
