"""Named experiments (experiments/<scale>.yaml): which runs exist and which figure they feed.

An experiment is cells x alphas x seeds, and where it says `base_seeds` (the experiment's or a cell's
list) x SFT bases: the run of base seed b is the cell `<cell>.b<b>` trained from the toy base
`<model>.b<b>` (selm.layout.base_name, selm.compose.with_base_seed), which the `sft` stage trains
(`python -m selm.cli.stage sft tiny-sft.b1`); without `base_seeds`, or for the default base seed,
a run is what it always was (same folder, config and identities). Each run is the online loop of one cell (selm.loop) and
then the experiment's evaluations of every checkpoint (selm.evaluate). A DVC stage runs one
experiment (the paper scale) or several (the toy scale: every experiment of the spec) with one pool of
worker processes, one torch thread each, so the results do not depend on the number of workers;
every run resumes from its files after a crash. With `executor: slurm` in the spec each run is its
own Slurm job instead (selm.slurm, docs/cluster.md), with the same bytes.

    python -m selm.cli.stage experiment main
    python -m selm.cli.stage experiment --all    # every experiment of the spec, one pool
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from selm import console, layout
from selm.compose import run_config
from selm.io import write_json_atomic
from selm.slurm import executor_name, job_settings, run_jobs
from selm.stagelog import add_counts
from selm.workers import failures_error, init_worker, spawn_pool

log = logging.getLogger(__name__)

GROUP_KEYS = ("model", "variant", "preset")  # cell keys that pick a config group option; others are dotted values


@dataclass(frozen=True)
class Run:
    experiment: str
    cell: str          # <cell>/alpha<alpha> (selm.layout.cell_path)
    alpha: float
    seed: int
    groups: dict = field(default_factory=dict)     # model / variant / experiment options
    values: dict = field(default_factory=dict)     # dotted key -> value
    eval_parts: tuple = ()
    config_name: str = "loop"      # entry config in conf/ (the paper scale: loop_paper)
    use_params: bool = True        # take the shared sections from params.yaml (toy); false: conf/ alone
    base_seed: int | None = None   # the SFT base's seed (None: the model as configured; selm.compose.with_base_seed)

    @property
    def run_dir(self) -> Path:
        return layout.run_dir(self.experiment, self.cell, self.seed)

    @property
    def eval_dir(self) -> Path:
        return layout.eval_dir(self.experiment, self.cell, self.seed)

    @property
    def name(self) -> str:
        return layout.run_name(self.experiment, self.cell, self.seed)

    def config(self, params_file: Path | None) -> DictConfig:
        """The run's config (selm.compose.run_config): its entry config with the cell's groups,
        params.yaml's shared sections (toy scale), alpha and seed, the cell's values, then the run's
        names, folders and evaluations."""
        names = {"run.experiment": self.experiment, "run.cell": self.cell, "run_dir": str(self.run_dir),
                 "eval.parts": list(self.eval_parts)}
        return run_config(params_file if self.use_params else None, self.config_name, self.groups, self.alpha,
                          self.seed, {**self.values, **names}, base_seed=self.base_seed)


def load_experiments(path: str | os.PathLike) -> DictConfig:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no experiments file")
    spec = OmegaConf.load(path)
    for key in ("seeds", "experiments"):
        if key not in spec:
            raise KeyError(f"{path}: missing top-level key {key!r}")
    return spec


def base_seeds_of(value, where: str) -> list[int | None]:
    """A `base_seeds` list (None: absent, one run per seed from the model as configured): distinct
    non-negative integers, else an error naming `where`."""
    if value is None:
        return [None]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(b, int) and not isinstance(b, bool)
                                                                    and b >= 0 for b in value):
        raise ValueError(f"{where}.base_seeds: expected a non-empty list of non-negative integers, got {value!r}")
    if len(set(value)) != len(value):
        raise ValueError(f"{where}.base_seeds: a base seed is named twice in {list(value)}")
    return [int(b) for b in value]


def expand(spec: DictConfig, name: str, source: str = "experiments") -> list[Run]:
    """Every run of experiment `name`, in a fixed order (cell, alpha, base seed, seed)."""
    if name not in spec.experiments:
        raise KeyError(f"{source}: no experiment {name!r}; known: {sorted(spec.experiments)}")
    exp = spec.experiments[name]
    for key in ("alphas", "cells"):
        if key not in exp:
            raise KeyError(f"{source}: experiments.{name} has no {key!r}")
    seeds = list(exp.get("seeds", spec.seeds))
    exp_bases = exp.get("base_seeds")
    if OmegaConf.is_config(exp_bases):
        exp_bases = OmegaConf.to_container(exp_bases)
    config_name, use_params = str(spec.get("config_name", "loop")), bool(spec.get("params", True))
    runs = []
    for cell, overrides in exp.cells.items():
        overrides = OmegaConf.to_container(overrides, resolve=True)
        alphas = overrides.pop("alphas", list(exp.alphas))  # a cell may sweep its own alphas (per base at the paper scale)
        cell_seeds = overrides.pop("seeds", seeds)  # and run its own seeds (the controls reuse other cells' seeds)
        bases = base_seeds_of(overrides.pop("base_seeds", exp_bases), f"{source}: experiments.{name}.cells.{cell}")
        if "model" not in overrides and "preset" not in overrides:
            raise KeyError(f"{source}: experiments.{name}.cells.{cell} names no model (or preset)")
        bad = [k for k in overrides if "." not in k and k not in GROUP_KEYS]
        if bad:
            raise KeyError(f"{source}: experiments.{name}.cells.{cell}: {bad} are not config groups "
                           f"({list(GROUP_KEYS)}); set values with dotted keys (e.g. generation.do_sample)")
        groups = {k: v for k, v in overrides.items() if k in GROUP_KEYS}
        values = {k: v for k, v in overrides.items() if k not in GROUP_KEYS}
        for alpha in alphas:
            for base in bases:
                for seed in cell_seeds:
                    runs.append(Run(name, layout.cell_path(layout.base_cell(cell, base), alpha), float(alpha),
                                    int(seed), groups, values, tuple(exp.get("eval", [])), config_name, use_params,
                                    base))
    return runs


def execute(run: Run, params_file: Path) -> dict:
    """The loop of one run, then the evaluation of each of its checkpoints (skipping finished work).
    Returns what it did (files written anew, r* evaluations computed or linked), for the stage's time table."""
    from selm import evalstore
    from selm.loop import run_loop

    cfg = run.config(params_file)
    freeze_heap()
    before = output_state(run)
    evalstore.take_counts()  # left by a run of this process that failed (which reported nothing)
    run_loop(cfg)
    if run.eval_parts:
        evaluate_run(cfg, run.eval_dir)
    return {"run": run.name, "did": {**work_done(before, output_state(run)), **evalstore.take_counts()}}


def freeze_heap() -> None:
    """Move every object alive now out of the cyclic garbage collector's sight (gc.freeze).

    A full gc.collect() scans every tracked object: with torch, transformers, lm-eval and W&B
    imported that is ~0.5 M objects and ~0.5 s of CPU, and a run calls it about ten times (the
    generation backends' close, accelerate after training, the loop before training). Frozen, the
    modules and whatever earlier runs left are no longer scanned; reference counting still frees
    them. Called before each run, after the loop's and the evaluations' modules are imported, so
    even a worker's first run profits; nothing a run computes depends on it."""
    import gc

    import selm.evaluate  # noqa: F401  (their imports: torch, transformers, trl, the judges)
    import selm.train  # noqa: F401

    gc.collect()
    gc.freeze()


# What a run's files say it did: a checkpoint's train_metrics.json, a checkpoint evaluation's
# metrics.json. Each is written atomically (a new inode), so one that is new or changed was made by
# this invocation. A hard-linked checkpoint is iteration 0, trained once in the shared folder
# (selm.loop) and linked into the run. The r* evaluations (eval.json) are hard-linked from their
# shared store whether this run computed them or not: selm.evalstore counts which.
OUTPUT_KINDS = {layout.TRAIN_METRICS: "iterations trained", layout.EVAL_METRICS: "checkpoint evaluations"}


def output_state(run: Run) -> dict[str, tuple]:
    state = {}
    patterns = [(run.run_dir, f"{layout.ITERATION_GLOB}/{layout.MODEL}/{layout.TRAIN_METRICS}"),
                (run.eval_dir, f"{layout.ITERATION_GLOB}/{layout.EVAL_METRICS}")]
    for root, pattern in patterns:
        for path in root.glob(pattern):
            st = path.stat()
            state[str(path)] = (st.st_ino, st.st_mtime_ns, st.st_nlink)
    return state


def work_done(before: dict[str, tuple], after: dict[str, tuple]) -> dict[str, int]:
    did = {"runs": 1}
    for path, (ino, mtime, nlink) in after.items():
        if before.get(path, (None, None, None))[:2] == (ino, mtime):
            continue
        kind = OUTPUT_KINDS[Path(path).name]
        if kind == "iterations trained" and nlink > 1:
            kind = "shared iterations 0 linked"
        did[kind] = did.get(kind, 0) + 1
    return did


def evaluate_run(cfg: DictConfig, out_root: Path) -> None:
    """Evaluate every checkpoint of the run folder, in iteration order, into out_root/iter<t>/,
    and log the metrics into the W&B run that trained the checkpoint."""
    from selm.evaluate import evaluate_checkpoint, log_eval_to_wandb

    run = Path(cfg.run_dir)
    iterations = layout.finished_iterations(run)
    if not iterations:
        raise FileNotFoundError(f"{run}: no trained iteration (iter*/model) to evaluate")
    for t in console.track(iterations, f"evaluate {run}", "checkpoints"):
        model_id = layout.checkpoint_id(cfg.run.experiment, cfg.run.cell, t, cfg.train.seed)
        out = layout.iteration_dir(out_root, t)
        path = out / layout.EVAL_METRICS
        before = path.stat().st_mtime_ns if path.exists() else None
        metrics = evaluate_checkpoint(cfg, layout.model_dir(run, t), out, model_id)
        if path.stat().st_mtime_ns != before:  # logged when computed: a rerun does not log the same numbers again
            log_eval_to_wandb(cfg, t, metrics)


def _execute_safely(run: Run, params_file: Path) -> tuple[str, str | None, dict]:
    try:
        return run.name, None, execute(run, params_file)["did"]
    except Exception:  # reported by the parent with the traceback; other runs go on
        return run.name, traceback.format_exc(), {}


def _finished(result: tuple[str, str | None, dict], errors: dict, bar) -> None:
    """Record one run's outcome (and what it did, for the stage-time table) and advance the stage's
    bar; a failure is named at once (its traceback follows when every run is done)."""
    name, error, did = result
    errors[name] = error
    add_counts(did)
    if error:
        bar.write(f"failed: {name} (traceback when the stage ends)", file=sys.stderr)
    bar.update()


def run_experiment(name: str, spec_file: Path, params_file: Path, workers: int | None = None,
                   threads: int = 1) -> list[Run]:
    """Every run of one experiment (run_experiments with one name)."""
    return run_experiments([name], spec_file, params_file, workers, threads)


def run_experiments(names: list[str], spec_file: Path, params_file: Path, workers: int | None = None,
                    threads: int = 1) -> list[Run]:
    """Every run of the named experiments, in one worker pool (so the workers start once, and none
    waits idle for the last run of one experiment while the next has runs to do). A failing run does
    not stop the others, and the error lists each failure with its traceback once all are done
    (finished runs stay on disk)."""
    spec = load_experiments(spec_file)
    if len(set(names)) != len(names):
        raise ValueError(f"{spec_file}: experiments named more than once: {names}")
    by_name = {name: expand(spec, name, str(spec_file)) for name in names}
    runs = [run for name in names for run in by_name[name]]
    workers = workers or int(spec.get("workers", 1))
    executor = executor_name(spec, str(spec_file))  # local: this machine's pool; slurm: one job per run (selm.slurm)
    title = f"experiment{'s' if len(names) > 1 else ''} {' '.join(names)}"
    start = time.perf_counter()
    errors: dict[str, str | None] = {}
    with console.progress(len(runs), title, "runs") as bar:
        if executor == "slurm":
            run_jobs([(r.name, execute, (r, params_file)) for r in runs], job_settings(spec, str(spec_file)), threads,
                     lambda name, error, result: _finished((name, error, (result or {}).get("did", {})), errors, bar))
        elif workers <= 1:
            init_worker(threads)
            for run in runs:
                _finished(_execute_safely(run, params_file), errors, bar)
        else:
            with spawn_pool(workers, threads) as pool:
                for future in as_completed([pool.submit(_execute_safely, r, params_file) for r in runs]):
                    _finished(future.result(), errors, bar)
    failures = [(r.name, errors[r.name]) for r in runs if errors[r.name]]
    console.summary(title, f"{len(runs) - len(failures)}/{len(runs)} runs done"
                    + (f", {len(failures)} failed" if failures else ""), start)
    for name, own in by_name.items():
        # the experiment's manifest (also makes evals/<name> exist when the experiment evaluates nothing)
        write_json_atomic(layout.experiment_manifest(name), {
            "experiment": name, "spec": str(spec_file), "eval": list(own[0].eval_parts) if own else [],
            "runs": [{"run": r.name, "run_dir": str(r.run_dir), "eval_dir": str(r.eval_dir),
                      "ok": not errors[r.name]} for r in own]})
    if failures:
        which = f"experiment {names[0]!r}" if len(names) == 1 else f"experiments {', '.join(map(repr, names))}"
        raise failures_error(f"runs of {which}", failures, len(runs))
    return runs
