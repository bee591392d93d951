"""Named experiments (experiments/<scale>.yaml): which runs exist and which figure they feed.

An experiment is cells x alphas x seeds. Each run is the online loop of one cell (selm.loop) and
then the experiment's evaluations of every checkpoint (selm.evaluate). A DVC stage runs one
experiment with a pool of worker processes, one torch thread each, so the results do not depend
on the number of workers; every run resumes from its files after a crash.

    python -m selm.cli.stage experiment main
"""

from __future__ import annotations

import logging
import os
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from selm.compose import run_config
from selm.io import write_json_atomic

log = logging.getLogger(__name__)

GROUP_KEYS = ("model", "variant", "experiment")  # cell keys that pick a config group option; others are dotted values


@dataclass(frozen=True)
class Run:
    experiment: str
    cell: str          # <cell>/alpha<alpha>
    alpha: float
    seed: int
    groups: dict = field(default_factory=dict)     # model / variant / experiment options
    values: dict = field(default_factory=dict)     # dotted key -> value
    eval_parts: tuple = ()
    config_name: str = "loop"      # entry config in conf/ (the paper scale: loop_paper)
    use_params: bool = True        # take the shared sections from params.yaml (toy); false: conf/ alone

    @property
    def run_dir(self) -> Path:
        return Path("runs") / self.experiment / self.cell / f"seed{self.seed}"

    @property
    def eval_dir(self) -> Path:
        return Path("evals") / self.experiment / self.cell / f"seed{self.seed}"

    @property
    def name(self) -> str:
        return f"{self.experiment}/{self.cell}/seed{self.seed}"

    def config(self, params_file: Path | None) -> DictConfig:
        """The run's config (selm.compose.run_config): its entry config with the cell's groups,
        params.yaml's shared sections (toy scale), alpha and seed, the cell's values, then the run's
        names, folders and evaluations."""
        names = {"run.experiment": self.experiment, "run.cell": self.cell, "run_dir": str(self.run_dir),
                 "eval.parts": list(self.eval_parts)}
        return run_config(params_file if self.use_params else None, self.config_name, self.groups, self.alpha,
                          self.seed, {**self.values, **names})


def load_experiments(path: str | os.PathLike) -> DictConfig:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no experiments file")
    spec = OmegaConf.load(path)
    for key in ("seeds", "experiments"):
        if key not in spec:
            raise KeyError(f"{path}: missing top-level key {key!r}")
    return spec


def expand(spec: DictConfig, name: str, source: str = "experiments") -> list[Run]:
    """Every run of experiment `name`, in a fixed order (cell, alpha, seed)."""
    if name not in spec.experiments:
        raise KeyError(f"{source}: no experiment {name!r}; known: {sorted(spec.experiments)}")
    exp = spec.experiments[name]
    for key in ("alphas", "cells"):
        if key not in exp:
            raise KeyError(f"{source}: experiments.{name} has no {key!r}")
    seeds = list(exp.get("seeds", spec.seeds))
    config_name, use_params = str(spec.get("config_name", "loop")), bool(spec.get("params", True))
    runs = []
    for cell, overrides in exp.cells.items():
        overrides = OmegaConf.to_container(overrides, resolve=True)
        alphas = overrides.pop("alphas", list(exp.alphas))  # a cell may sweep its own alphas (per base at the paper scale)
        if "model" not in overrides and "experiment" not in overrides:
            raise KeyError(f"{source}: experiments.{name}.cells.{cell} names no model (or experiment)")
        bad = [k for k in overrides if "." not in k and k not in GROUP_KEYS]
        if bad:
            raise KeyError(f"{source}: experiments.{name}.cells.{cell}: {bad} are not config groups "
                           f"({list(GROUP_KEYS)}); set values with dotted keys (e.g. generation.do_sample)")
        groups = {k: v for k, v in overrides.items() if k in GROUP_KEYS}
        values = {k: v for k, v in overrides.items() if k not in GROUP_KEYS}
        for alpha in alphas:
            for seed in seeds:
                runs.append(Run(name, f"{cell}/alpha{float(alpha)}", float(alpha), int(seed), groups, values,
                                tuple(exp.get("eval", [])), config_name, use_params))
    return runs


def execute(run: Run, params_file: Path) -> dict:
    """The loop of one run, then the evaluation of each of its checkpoints (skipping finished work)."""
    from selm.loop import run_loop

    cfg = run.config(params_file)
    run_loop(cfg)
    if run.eval_parts:
        evaluate_run(cfg, run.eval_dir)
    return {"run": run.name}


def evaluate_run(cfg: DictConfig, out_root: Path) -> None:
    """Evaluate every checkpoint of the run folder, in iteration order, into out_root/iter<t>/,
    and log the metrics into the W&B run that trained the checkpoint."""
    from selm.evaluate import evaluate_checkpoint, log_eval_to_wandb

    run = Path(cfg.run_dir)
    iterations = sorted((p for p in run.glob("iter*") if (p / "model" / "config.json").exists()),
                        key=lambda p: int(p.name.removeprefix("iter")))
    if not iterations:
        raise FileNotFoundError(f"{run}: no trained iteration (iter*/model) to evaluate")
    for it in iterations:
        t = int(it.name.removeprefix("iter"))
        model_id = f"{cfg.run.experiment}/{cfg.run.cell}/{it.name}/seed{cfg.train.seed}"
        path = out_root / it.name / "metrics.json"
        before = path.stat().st_mtime_ns if path.exists() else None
        metrics = evaluate_checkpoint(cfg, it / "model", out_root / it.name, model_id)
        if path.stat().st_mtime_ns != before:  # logged when computed: a rerun does not log the same numbers again
            log_eval_to_wandb(cfg, t, metrics)


def _init_worker(threads: int, parent: int | None = None) -> None:
    import torch

    torch.set_num_threads(threads)
    if parent is not None:  # a worker whose stage was killed (kill -9 of dvc repro) must not linger
        import threading
        import time

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()


def _execute_safely(run: Run, params_file: Path) -> tuple[str, str | None]:
    try:
        execute(run, params_file)
        return run.name, None
    except Exception:  # reported by the parent with the traceback; other runs go on
        return run.name, traceback.format_exc()


def run_experiment(name: str, spec_file: Path, params_file: Path, workers: int | None = None,
                   threads: int = 1) -> list[Run]:
    """Every run of the experiment; a failing run does not stop the others, and the error lists
    each failure with its traceback once all are done (finished runs stay on disk)."""
    spec = load_experiments(spec_file)
    runs = expand(spec, name, str(spec_file))
    workers = workers or int(spec.get("workers", 1))
    failures = []
    if workers <= 1:
        _init_worker(threads)
        results = [_execute_safely(r, params_file) for r in runs]
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                                 initializer=_init_worker, initargs=(threads, os.getpid())) as pool:
            results = list(pool.map(_execute_safely, runs, [params_file] * len(runs)))
    for run_name, error in results:
        if error:
            failures.append(f"--- {run_name}\n{error}")
        else:
            print(f"done: {run_name}")
    # the experiment's manifest (also makes evals/<name> exist when the experiment evaluates nothing)
    write_json_atomic(Path("evals") / name / "experiment.json", {
        "experiment": name, "spec": str(spec_file), "eval": list(runs[0].eval_parts) if runs else [],
        "runs": [{"run": r.name, "run_dir": str(r.run_dir), "eval_dir": str(r.eval_dir),
                  "ok": not dict(results)[r.name]} for r in runs]})
    if failures:
        raise RuntimeError(f"{len(failures)} of {len(runs)} runs of experiment {name!r} failed:\n" + "\n".join(failures))
    return runs
