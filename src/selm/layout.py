"""The run layout: where a run, its iterations and its evaluations live, what their folders and
files are called, and which iterations are finished. Every module that builds or reads these paths
asks here (docs/layout.md describes what each file holds). Paths are relative to the repository
root, where every stage runs.

    runs/<experiment>/<cell>/alpha<alpha>/seed<seed>/    run_dir(experiment, cell_path(cell, alpha), seed)
        config.json                  RUN_CONFIG: the run's config
        base/eval.json               BASE / LOOP_EVAL: the base model's test answers and metrics
        iter<t>/                     iteration_dir(run_dir, t)
            identity.json            IDENTITY
            responses.jsonl          RESPONSES: y_ref
            ranking_stats.json       RANKING_STATS
            pairs.jsonl              PAIRS
            model/                   MODEL: pi_t; finished when model/config.json exists (is_trained)
                train_metrics.json   TRAIN_METRICS
            train_config.yaml        TRAIN_CONFIG (train.launcher only)
            eval.json                LOOP_EVAL, with EVAL_ANSWERS and EVAL_IDENTITY
        summary.json                 SUMMARY: {"base": ..., "iter<t>": ...}, every iteration's eval.json
    runs/shared/<base>/iter0-seed<seed>-<identity[:16]>/  shared_iteration0_dir: offline-DPO iteration 0
    runs/shared/evals/<identity digest>/                  shared_eval_dir: a loop evaluation (eval.json,
        stored.json                  STORED_EVAL           its answers and identity), computed once
    evals/<experiment>/experiment.json                    EXPERIMENT_MANIFEST
    evals/<experiment>/<cell>/alpha<alpha>/seed<seed>/    eval_dir(...), or eval_dir_of(run_dir)
        iter<t>/metrics.json         EVAL_METRICS (and alpaca_outputs.json: ALPACA_OUTPUTS, ...)
    evals/base/<base>/metrics.json                        base_eval_dir(base)

Names. A cell's folder is `<cell>/alpha<alpha>` (cell_path), with alpha written as Python writes a
float (alpha_name: 0 -> alpha0.0, 0.1 -> alpha0.1, 1 -> alpha1.0, 0.0001 -> alpha0.0001). The
`figures:` section of experiments/<scale>.yaml names cells as `<experiment>/<cell>/alpha<alpha>`
(figure_ref, parse_figure_ref). A run is named `<experiment>/<cell>/alpha<alpha>/seed<seed>`; a
checkpoint's evaluation records `<experiment>/<cell>/alpha<alpha>/iter<t>/seed<seed>` (checkpoint_id).

SFT bases. A toy base trained by the `sft` stage with base seed b (its sft.seed and sft.init_seed) is
`<model>.b<b>` (base_name: `tiny-sft.b1`, at `models/tiny-sft.b1`); the default base seed
DEFAULT_BASE_SEED (conf/sft/toy.yaml's seeds) keeps the plain name (`tiny-sft`). A cell run from such a
base is the cell `<cell>.b<b>` (base_cell: runs/<experiment>/dpo.b1/alpha0.0/seed42, its shared
iteration 0 below runs/shared/tiny-sft.b1/), so a run is (base seed, seed) and the default base's runs
keep their folders.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

RUNS = Path("runs")
EVALS = Path("evals")
BASE_EVALS = "base"  # evals/base/<base>/: the SFT bases' evaluations

# files and folders of a run
RUN_CONFIG = "config.json"
SUMMARY = "summary.json"
BASE = "base"
# files and folders of an iteration (and of the shared iteration 0)
IDENTITY = "identity.json"
RESPONSES = "responses.jsonl"
RANKING_STATS = "ranking_stats.json"
PAIRS = "pairs.jsonl"
MODEL = "model"
CHECKPOINT_CONFIG = "config.json"  # written last into model/: its presence means "trained"
TRAIN_METRICS = "train_metrics.json"
TRAIN_CONFIG = "train_config.yaml"
LOOP_EVAL = "eval.json"
EVAL_ANSWERS = "eval_answers.jsonl"
EVAL_IDENTITY = "eval_identity.json"
# the store of loop evaluations, below paths.shared_runs: one folder per evaluation identity
SHARED_EVALS = "evals"
STORED_EVAL = "stored.json"  # the entry's identity and the sha256 of each of its files
# files of a checkpoint's evaluation (evals/.../iter<t>/) and of an experiment's evaluations
EVAL_METRICS = "metrics.json"
ALPACA_OUTPUTS = "alpaca_outputs.json"
EXPERIMENT_MANIFEST = "experiment.json"

ITERATION_GLOB = "iter*"
RUN_GLOB = "*/alpha*/seed*"  # the runs of one experiment, below runs/<experiment>/ or evals/<experiment>/

_ITERATION = re.compile(r"iter(\d+)")
_ALPHA = re.compile(r"alpha(.+)")
_SEED = re.compile(r"seed(\d+)")
_BASE = re.compile(r"(.+)\.b(\d+)")
DEFAULT_BASE_SEED = 0  # the base seed of the plain-named base: conf/sft/toy.yaml's seed and init_seed


# --- names -------------------------------------------------------------------------------------

def alpha_name(alpha: float) -> str:
    """The folder of one alpha: 'alpha' + the float as Python writes it (0 -> 'alpha0.0')."""
    return f"alpha{float(alpha)}"


def parse_alpha_name(name: str) -> float:
    """alpha_name's inverse; only the canonical spelling is accepted ('alpha1' is not 'alpha1.0')."""
    m = _ALPHA.fullmatch(name)
    try:
        alpha = float(m.group(1)) if m else None
    except ValueError:
        alpha = None
    if alpha is None or alpha_name(alpha) != name:
        raise ValueError(f"{name!r} is not an alpha folder name (alpha<float as Python writes it>, e.g. alpha0.1)")
    return alpha


def seed_name(seed: int) -> str:
    return f"seed{int(seed)}"


def parse_seed_name(name: str) -> int:
    m = _SEED.fullmatch(name)
    if not m:
        raise ValueError(f"{name!r} is not a seed folder name (seed<integer>)")
    return int(m.group(1))


def iteration_name(t: int) -> str:
    """The folder of iteration t, and its key in summary.json: 'iter<t>'."""
    return f"iter{int(t)}"


def parse_iteration_name(name: str) -> int | None:
    """t of 'iter<t>'; None for any other name (e.g. 'base', 'model.partial')."""
    m = _ITERATION.fullmatch(name)
    return int(m.group(1)) if m else None


def base_name(name: str, base_seed: int | None) -> str:
    """The name of a base, or of a cell, with base seed `base_seed`: '<name>.b<seed>'; the plain name
    for the default base seed (or None)."""
    if base_seed is None or int(base_seed) == DEFAULT_BASE_SEED:
        return name
    if int(base_seed) < 0:
        raise ValueError(f"base seed {base_seed}: expected a non-negative integer")
    return f"{name}.b{int(base_seed)}"


def parse_base_name(name: str) -> tuple[str, int]:
    """base_name's inverse: 'tiny-sft.b1' -> ('tiny-sft', 1); 'tiny-sft' -> ('tiny-sft', DEFAULT_BASE_SEED).
    '<name>.b0' is refused (the default base has the plain name)."""
    m = _BASE.fullmatch(name)
    if not m:
        return name, DEFAULT_BASE_SEED
    if int(m.group(2)) == DEFAULT_BASE_SEED or base_name(m.group(1), int(m.group(2))) != name:
        raise ValueError(f"{name!r}: the base of seed {DEFAULT_BASE_SEED} is {m.group(1)!r} "
                         f"(a base name is <model>.b<seed> for the other seeds, e.g. {m.group(1)}.b1)")
    return m.group(1), int(m.group(2))


def base_path(path: str, base_seed: int | None) -> str:
    """The folder of the base with seed `base_seed`, beside the default one: models/tiny-sft ->
    models/tiny-sft.b1."""
    p = Path(path)
    return str(p.with_name(base_name(p.name, base_seed)))


def base_cell(cell: str, base_seed: int | None) -> str:
    """The cell of an experiment run from the base with seed `base_seed` ('dpo' -> 'dpo.b1')."""
    return base_name(cell, base_seed)


def base_cell_ref(ref: str, base_seed: int | None) -> str:
    """A `figures:` / controls cell reference '<experiment>/<cell>/alpha<alpha>' for base seed
    `base_seed` ('control_weak/dpo/alpha0.0' -> 'control_weak/dpo.b1/alpha0.0')."""
    r = parse_figure_ref(ref)
    return f"{r.experiment}/{cell_path(base_cell(r.cell, base_seed), r.alpha)}"


def cell_path(cell: str, alpha: float) -> str:
    """A cell of an experiment at one alpha: '<cell>/alpha<alpha>' (e.g. 'tiny-sft/alpha0.1')."""
    return f"{cell}/{alpha_name(alpha)}"


def figure_ref(experiment: str, cell: str, alpha: float) -> str:
    """How experiments/<scale>.yaml's `figures:` names a cell: '<experiment>/<cell>/alpha<alpha>'."""
    return f"{experiment}/{cell_path(cell, alpha)}"


@dataclass(frozen=True)
class CellRef:
    experiment: str
    cell: str
    alpha: float

    @property
    def cell_path(self) -> str:
        return cell_path(self.cell, self.alpha)


def parse_figure_ref(ref: str) -> CellRef:
    """'<experiment>/<cell>/alpha<alpha>' -> CellRef; the error names the reference."""
    parts = ref.split("/")
    if len(parts) < 3 or not all(parts):
        raise ValueError(f"figures: {ref!r} is not a cell reference <experiment>/<cell>/alpha<alpha>")
    try:
        alpha = parse_alpha_name(parts[-1])
    except ValueError as e:
        raise ValueError(f"figures: {ref!r}: {e}") from None
    return CellRef(parts[0], "/".join(parts[1:-1]), alpha)


def run_name(experiment: str, cell_path_: str, seed: int) -> str:
    return f"{experiment}/{cell_path_}/{seed_name(seed)}"


def checkpoint_id(experiment: str, cell_path_: str, t: int, seed: int) -> str:
    """The name a checkpoint's evaluation records (metrics.json's `model`)."""
    return f"{experiment}/{cell_path_}/{iteration_name(t)}/{seed_name(seed)}"


# --- folders -----------------------------------------------------------------------------------

def run_dir(experiment: str, cell_path_: str, seed: int, root: Path = RUNS) -> Path:
    """runs/<experiment>/<cell>/alpha<alpha>/seed<seed> (cell_path_ from cell_path)."""
    return Path(root) / experiment / cell_path_ / seed_name(seed)


def eval_dir(experiment: str, cell_path_: str, seed: int, root: Path = EVALS) -> Path:
    """evals/<experiment>/<cell>/alpha<alpha>/seed<seed>: the evaluations of a run's checkpoints."""
    return Path(root) / experiment / cell_path_ / seed_name(seed)


def eval_dir_of(run_dir_: str | Path) -> Path:
    """evals/... mirroring runs/...: where the evaluations of a run folder's checkpoints go."""
    run = Path(run_dir_)
    if len(run.parts) < 2 or run.parts[0] != RUNS.name:
        raise ValueError(f"run_dir={run_dir_}: expected a folder under runs/ "
                         "(its evaluations go to the same path under evals/)")
    return EVALS.joinpath(*run.parts[1:])


def base_eval_dir(base: str, root: Path = EVALS) -> Path:
    """evals/base/<base>: the evaluation of an SFT base (the report looks there at every scale)."""
    return Path(root) / BASE_EVALS / base


def experiment_manifest(experiment: str, root: Path = EVALS) -> Path:
    return Path(root) / experiment / EXPERIMENT_MANIFEST


def iteration_dir(folder: Path, t: int) -> Path:
    """<folder>/iter<t>: an iteration of a run folder, or the evaluation of it below an eval folder."""
    return Path(folder) / iteration_name(t)


def model_dir(folder: Path, t: int | None = None) -> Path:
    """The checkpoint of an iteration folder (t None), or of iteration t of a run folder."""
    return (Path(folder) if t is None else iteration_dir(folder, t)) / MODEL


def shared_iteration0_dir(shared_root: str | Path, base: str, seed: int, identity: str) -> Path:
    """Where offline-DPO iteration 0 of (base, seed, settings) is trained once: <shared>/<base>/
    iter0-seed<seed>-<the identity digest's first 16 characters>."""
    return Path(shared_root) / base / f"{iteration_name(0)}-{seed_name(seed)}-{identity[:16]}"


def shared_eval_dir(shared_root: str | Path, identity: str) -> Path:
    """Where the loop evaluation of one identity (its digest) is computed once and from where it is
    hard-linked into every run folder that asks for it: <shared>/evals/<identity digest>."""
    return Path(shared_root) / SHARED_EVALS / identity


# --- what exists -------------------------------------------------------------------------------

def is_trained(folder: Path) -> bool:
    """Whether the iteration folder (or shared iteration 0) holds a finished checkpoint: the model
    folder is renamed into place only when training completed, config.json inside it."""
    return (Path(folder) / MODEL / CHECKPOINT_CONFIG).exists()


def iteration_dirs(folder: Path) -> dict[int, Path]:
    """t -> <folder>/iter<t> for every iteration folder there, finished or not."""
    found = {}
    for p in Path(folder).glob(ITERATION_GLOB):
        t = parse_iteration_name(p.name)
        if t is not None:
            found[t] = p
    return found


def finished_iterations(run_dir_: Path) -> list[int]:
    """The iterations of a run folder with a finished checkpoint, ascending."""
    return sorted(t for t, p in iteration_dirs(run_dir_).items() if is_trained(p))


@dataclass(frozen=True)
class RunPath:
    """A run folder (or its eval folder) read back from its path."""
    experiment: str
    cell: str
    alpha: float
    seed: int
    path: Path

    @property
    def cell_path(self) -> str:
        return cell_path(self.cell, self.alpha)


def parse_run_dir(path: str | Path) -> RunPath:
    """(experiment, cell, alpha, seed) of '.../<experiment>/<cell>/alpha<alpha>/seed<seed>'."""
    path = Path(path)
    if len(path.parts) < 4:
        raise ValueError(f"{path}: not a run folder <experiment>/<cell>/alpha<alpha>/seed<seed>")
    experiment, cell, alpha, seed = path.parts[-4:]
    try:
        return RunPath(experiment, cell, parse_alpha_name(alpha), parse_seed_name(seed), path)
    except ValueError as e:
        raise ValueError(f"{path}: not a run folder <experiment>/<cell>/alpha<alpha>/seed<seed> ({e})") from None


def experiment_runs(experiment_dir: Path, having: str | None = None) -> list[RunPath]:
    """The run folders below runs/<experiment>/ (or evals/<experiment>/), sorted by path; with
    `having`, only those holding that file (e.g. SUMMARY)."""
    dirs = sorted(Path(experiment_dir).glob(RUN_GLOB))
    return [parse_run_dir(d) for d in dirs if d.is_dir() and (having is None or (d / having).exists())]


def evaluated_bases(root: Path = EVALS) -> list[tuple[str, Path]]:
    """(base, metrics.json) of every evaluated SFT base below evals/base/, sorted by path."""
    return [(p.parent.name, p) for p in sorted((Path(root) / BASE_EVALS).glob(f"*/{EVAL_METRICS}"))]


def evaluated_checkpoints(experiment_dir: Path) -> list[tuple[RunPath, int, Path]]:
    """(run, t, metrics.json) of every evaluated checkpoint below evals/<experiment>/, sorted by path
    (iter10 before iter2, as the file names sort)."""
    found = []
    for path in sorted(Path(experiment_dir).glob(f"{RUN_GLOB}/{ITERATION_GLOB}/{EVAL_METRICS}")):
        t = parse_iteration_name(path.parent.name)
        if t is None:
            raise ValueError(f"{path}: not below an iteration folder iter<t>")
        found.append((parse_run_dir(path.parent.parent), t, path))
    return found


def cell_runs(cell_dir: Path) -> list[tuple[int, Path]]:
    """(seed, folder) of every run below one cell folder (runs/<experiment>/<cell>/alpha<alpha>),
    sorted by folder name as the file system lists them."""
    return [(parse_seed_name(d.name), d) for d in sorted(Path(cell_dir).glob("seed*"))]
