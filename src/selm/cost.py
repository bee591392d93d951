"""The paper scale's GPU-hours, computed in one place: every run of the grid (experiments/paper.yaml,
composed as the experiment stage composes it) priced with the assumptions of conf/cost/paper.yaml.

    python -m selm.cost            # the table by experiment and the total the docs quote

An iteration on a slice of R preference rows costs, in node-hours: its training and reference pass
(R x sequences per pair x tokens per sequence x 10 x parameters FLOP at the node's sustained rate;
3 sequences when y_ref is trained on, i.e. alpha > 0 with generated pairs, else 2), y_ref's
generation and PairRM's ranking when the variant generates (not for the original pairs of iteration
0, `offline` and `stepwise`), and a fixed part for loading and saving. Iteration 0 (offline DPO) is
counted once per base and iteration-0 settings (its own learning rate, the slice, the rest of the
train section but alpha): the cells that agree share it. Every checkpoint is evaluated once per
part its experiment asks for (and both bases with every part): AlpacaEval and MT-Bench generation
on the node, lm-eval on one GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from selm.config import CONF_DIR
from selm.experiments import expand, load_experiments

ROOT = CONF_DIR.parent
ASSUMPTIONS = CONF_DIR / "cost" / "paper.yaml"
GRID = ROOT / "experiments" / "paper.yaml"


@dataclass
class Cost:
    """GPU-hours by experiment: training loops and evaluations (checkpoints first seen there)."""
    loops: dict[str, float] = field(default_factory=dict)
    evaluations: dict[str, float] = field(default_factory=dict)

    def total(self) -> float:
        return sum(self.loops.values()) + sum(self.evaluations.values())

    def rounded(self) -> int:
        """The figure the docs quote: the total to the nearest 5 GPU-hours."""
        return int(5 * round(self.total() / 5))


def iteration_node_hours(a: DictConfig, base: str, rows: int, sequences: int, generates: bool) -> float:
    train = rows * sequences * a.tokens_per_sequence * a.flops_per_token_parameter * a.parameters[base] / a.node_flops
    hours = train / 3600 + a.fixed_node_hours_per_iteration
    if generates:
        hours += rows * a.generated_tokens_per_row / a.node_generated_tokens_per_s / 3600
        hours += rows / 1000 * a.pairrm_node_hours_per_1k_rows
    return hours


def iteration0_key(cfg: DictConfig) -> str:
    """What iteration 0 uses (selm.loop.iteration0_train: the train section without alpha and with its
    own learning rate only), with the base and its slice size."""
    from selm.loop import iteration0_train

    return json.dumps({"base": cfg.model.name, "slice_size": cfg.data.slice_size, "train": iteration0_train(cfg)},
                      sort_keys=True)


def evaluation_gpu_hours(a: DictConfig, parts) -> float:
    e, n = a.evaluation, a.gpus_per_node
    return sum({"alpaca": e.alpaca_node_hours * n, "mt_bench": e.mt_bench_node_hours * n,
                "lmeval": e.lmeval_gpu_hours}[p] for p in parts)


def grid_cost(grid: Path = GRID, assumptions: Path = ASSUMPTIONS) -> Cost:
    a = OmegaConf.load(assumptions)
    spec = load_experiments(grid)
    cost, trained0, evaluated = Cost(), set(), set()

    def evaluate(experiment: str, checkpoint: str, parts) -> None:
        new = [p for p in parts if (checkpoint, p) not in evaluated]
        evaluated.update((checkpoint, p) for p in new)
        cost.evaluations[experiment] = cost.evaluations.get(experiment, 0.0) + evaluation_gpu_hours(a, new)

    for name in spec.experiments:
        node_hours = 0.0
        for run in expand(spec, name):
            cfg = run.config(None)
            base, rows = cfg.model.name, cfg.data.slice_size
            checkpoints = []
            if cfg.model.offline_dpo_iteration:
                key = iteration0_key(cfg)
                if key not in trained0:
                    trained0.add(key)
                    node_hours += iteration_node_hours(a, base, rows, 2, generates=False)
                checkpoints.append(key)
            generates = cfg.variant.pairs != "original"
            sequences = 3 if generates and cfg.train.alpha > 0 else 2
            for t in cfg.model.iterations:
                node_hours += iteration_node_hours(a, base, rows, sequences, generates)
                checkpoints.append(f"{run.run_dir}/iter{t}")
            for checkpoint in checkpoints:
                evaluate(name, checkpoint, run.eval_parts)
        cost.loops[name] = node_hours * a.gpus_per_node
    for base in spec.bases:
        evaluate("bases", f"base:{base}", ("alpaca", "mt_bench", "lmeval"))
    return cost


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m selm.cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", type=Path, default=GRID)
    parser.add_argument("--assumptions", type=Path, default=ASSUMPTIONS)
    args = parser.parse_args(argv)
    cost = grid_cost(args.grid, args.assumptions)
    print(f"{'experiment':<18} {'loops GPU-h':>12} {'evaluation GPU-h':>17}")
    for name in [*cost.loops, *(k for k in cost.evaluations if k not in cost.loops)]:
        print(f"{name:<18} {cost.loops.get(name, 0.0):12.1f} {cost.evaluations.get(name, 0.0):17.1f}")
    print(f"total: {cost.total():.1f} GPU-hours, about {cost.rounded()} GPU-hours "
          f"({cost.total() / OmegaConf.load(args.assumptions).gpus_per_node:.0f} node-hours)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
