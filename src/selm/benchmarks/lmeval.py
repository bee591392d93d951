"""lm-evaluation-harness runs: the paper's academic suite and the toy world's two local tasks.

Everything goes through `lm_eval.simple_evaluate` (backend `hf`; `vllm` where installed), with the
task list of a config in eval/lmeval/ (`toy.yaml`, `paper.yaml`, loaded with OmegaConf: the group is
not part of conf/train.yaml or conf/loop.yaml). The result is one JSON file per (model, config):
per-task metrics plus what the paper leaves unsaid and a reader needs to compare numbers: harness
version, task versions, few-shot counts, generation settings, limit, model path, whether the chat
template was applied (and its text).

Per-task settings. In lm-eval 0.4.13 a `{"task": name, ...}` dict given to simple_evaluate becomes a
NEW inline task that does not inherit the registered YAML, and simple_evaluate's `num_fewshot` is one
number for every task. Per-task few-shot counts and data paths therefore go in as the children of
one inline group (`{"group": ..., "task": [{"task": name, **overrides}]}`): lm-eval merges a group
member's keys over the registered YAML (a shallow merge: an override of `dataset_kwargs` replaces
the whole dict). The group itself has no metrics and is dropped from the record. Every few-shot
count is checked against lm-eval's own `n-shot` report after the run.

Local tasks. The toy and rehearsal task YAMLs (and their utils.py) sit in eval/lm_eval_tasks/ at the
repository root, beside the suites (eval/lmeval/*.yaml) that name them in their `include_path`; both
are found from the checkout the way conf/ is (selm.config.EVAL_DIR). Entries of an include_path are
folders, relative ones to the repository root.

Data paths. The toy YAMLs name `data/world/...` relative to the repository root,
but `datasets` resolves `data_files` against the current directory. A task with `world_file` in its
config gets `dataset_kwargs.data_files.test` set to the absolute path of that file in the world
folder given at run time (checked to exist first), so a run does not depend on where it starts.
Relative paths inside a eval/lmeval file (`world`, `include_path`) are resolved against the
repository root; paths given on the command line against the current directory.

Chat template. `apply_chat_template` is a config value: on for the toy tasks (the toy models only
know `<bos><|user|>...<|assistant|>...<eos>`), off for the paper suite (Open LLM Leaderboard v1 ran
plain few-shot prompts).

CLI: ``python -m selm.benchmarks.lmeval --model DIR --config toy|paper|FILE --out FILE [--world DIR]
[--limit N]``.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import importlib.util
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selm.config import EVAL_DIR, REPO_ROOT
from selm.io import write_json_atomic, write_jsonl_atomic

FORMAT = "selm-lmeval/1"
LMEVAL_CONF_DIR = EVAL_DIR / "lmeval"
# The local task YAMLs (the toy world's and the rehearsal's tasks)
TASKS_DIR = EVAL_DIR / "lm_eval_tasks"
DEFAULT_INCLUDE_PATH = TASKS_DIR
# Name of the inline group carrying the per-task overrides (must not be a registered name).
RUN_GROUP = "selm_lmeval_run"
BACKENDS = ("hf", "vllm")


@dataclass
class TaskSpec:
    """One task of a run, as written in a eval/lmeval file (or given as a bare name).

    `metric` is lm-eval's result key (`acc_norm,none`, `exact_match,strict-match`) whose value, times
    `scale`, is the task's score in the record; `in_mean` says whether that score enters the mean.
    `world_file` names the file in the world folder the task reads; `overrides` are any other task
    config keys merged over the registered YAML.
    """

    name: str
    num_fewshot: int | None = None
    metric: str | None = None
    scale: float = 100.0
    in_mean: bool = True
    world_file: str | None = None
    overrides: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, item: str | Mapping) -> "TaskSpec":
        if isinstance(item, str):
            return cls(name=item)
        item = dict(item)
        name = item.pop("name", None) or item.pop("task", None)
        if not name:
            raise ValueError(f"task entry without a name: {item}")
        unknown = set(item) - {"num_fewshot", "metric", "scale", "in_mean", "world_file", "overrides"}
        if unknown:
            raise ValueError(f"task {name!r}: unknown keys {sorted(unknown)}")
        return cls(name=name, **item)


def load_lmeval_config(name_or_path: str | os.PathLike) -> dict:
    """A eval/lmeval group file by name (`toy`, `paper`) or any YAML path, as a plain dict."""
    from omegaconf import OmegaConf

    path = Path(name_or_path)
    if not path.suffix:
        path = LMEVAL_CONF_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in LMEVAL_CONF_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no lm-eval config {path} (known names: {known})")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def _repo_path(value: str | os.PathLike | None) -> Path | None:
    """A path from a eval/lmeval file: relative ones are relative to the repository root."""
    if value is None:
        return None
    path = Path(value)
    return path if path.is_absolute() else REPO_ROOT / path


def include_dir(value: str | os.PathLike) -> Path:
    """A folder of an include_path (relative ones to the repository root); it must exist."""
    folder = _repo_path(value)
    if not folder.is_dir():
        raise FileNotFoundError(f"include_path {value}: no task folder {folder}")
    return folder


def task_manager(include_path: Sequence[str | os.PathLike], names: Sequence[str], *,
                 include_defaults: bool | None = None):
    """A TaskManager that knows `names`.

    Indexing lm-eval's ~15k built-in tasks costs ~5 s, so by default (`include_defaults=None`) a run
    of local tasks only indexes `include_path`, and the built-ins are added only when a name is not
    found there. Unknown names raise here, listing them: lm-eval's index skips a YAML it cannot parse
    with only a debug log, so a broken local YAML would otherwise surface later as "not found".
    """
    from lm_eval.tasks import TaskManager

    paths = [str(Path(p).resolve()) for p in include_path]
    if include_defaults is None:
        local = TaskManager(include_path=paths, include_defaults=False) if paths else None
        if local is not None and all(n in local.all_tasks for n in names):
            manager = local
        else:
            manager = TaskManager(include_path=paths or None)
    else:
        manager = TaskManager(include_path=paths or None, include_defaults=include_defaults)
    missing = [n for n in names if n not in manager.all_tasks]
    if missing:
        raise KeyError(f"lm-eval {harness_version()} knows no task {missing} (include_path={paths})")
    return manager


def declared_metrics(manager, name: str) -> set[str]:
    """The `metric,filter` result keys a task's YAML declares, read from the TaskManager's index
    (no dataset is loaded): each metric of `metric_list` (or lm-eval's defaults for the output type)
    under each filter of `filter_list` (or `none`)."""
    from lm_eval.api.registry import DEFAULT_METRIC_REGISTRY

    cfg = manager.task_index[name].cfg or {}
    if cfg.get("metric_list"):
        metrics = [m["metric"] for m in cfg["metric_list"]]
    else:
        metrics = list(DEFAULT_METRIC_REGISTRY.get(cfg.get("output_type"), []))
    filters = [f["name"] for f in cfg.get("filter_list") or []] or ["none"]
    return {f"{m},{f}" for m in metrics for f in filters}


def check_specs(manager, specs: Sequence["TaskSpec"]) -> None:
    """Fail before any model or dataset is loaded if a spec's metric is not one its task declares."""
    for spec in specs:
        if spec.metric is not None and spec.metric not in (known := declared_metrics(manager, spec.name)):
            raise KeyError(f"{spec.name}: its YAML declares no metric {spec.metric!r} (it declares {sorted(known)})")


def harness_version() -> str:
    return importlib.metadata.version("lm_eval")


def task_overrides(spec: TaskSpec, world: Path | None) -> dict:
    """The keys merged over the task's registered YAML for this run."""
    overrides = dict(spec.overrides)
    if spec.num_fewshot is not None:
        overrides["num_fewshot"] = spec.num_fewshot
    if spec.world_file is not None:
        if world is None:
            raise ValueError(f"task {spec.name!r} reads the world's {spec.world_file}: give the world folder")
        data = (world / spec.world_file).resolve()
        if not data.is_file():
            raise FileNotFoundError(f"task {spec.name!r}: {data} does not exist (build the world first)")
        overrides["dataset_kwargs"] = {"data_files": {"test": str(data)}}
    return overrides


def _backend(backend: str, model_dir: str, model_args: Mapping | None) -> tuple[str, dict]:
    if backend not in BACKENDS:
        raise ValueError(f"unknown lm-eval backend {backend!r}; known: {BACKENDS}")
    if backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise RuntimeError("backend 'vllm' requested but vllm is not installed (pip install '.[gpu]'; CUDA only)")
    return backend, {"pretrained": model_dir, **(model_args or {})}


def _jsonable(value: Any) -> Any:
    """lm-eval's results hold numpy scalars, dtypes and the odd callable: keep JSON types, stringify
    the rest, and turn NaN into None (JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if hasattr(value, "item"):  # numpy / torch scalar
        return _jsonable(value.item())
    return str(value)


def summarize(results: Mapping, specs: Sequence[TaskSpec]) -> dict:
    """Per-task record from simple_evaluate's results, and the mean of the tasks' scores.

    Raises if lm-eval ran a task with a few-shot count other than the spec's (an override that did
    not take) or if a spec's metric is not among the task's results.
    """
    tasks = {}
    for spec in specs:
        metrics = {k: v for k, v in results["results"][spec.name].items() if k not in ("name", "alias", "sample_len")}
        values = {k: v for k, v in metrics.items() if "_stderr," not in k}
        stderr = {k.replace("_stderr,", ","): v for k, v in metrics.items() if "_stderr," in k}
        n_shot = results["n-shot"][spec.name]
        if spec.num_fewshot is not None and n_shot != spec.num_fewshot:
            raise RuntimeError(f"{spec.name}: asked for {spec.num_fewshot}-shot, lm-eval ran {n_shot}-shot")
        config = results["configs"][spec.name]
        entry = {
            "version": results["versions"][spec.name],
            "num_fewshot": n_shot,
            "n_samples": results["n-samples"][spec.name],
            "metrics": values,
            "stderr": stderr,
            "output_type": config["output_type"],
            "generation_kwargs": config.get("generation_kwargs") if config["output_type"] == "generate_until" else None,
            "dataset": {k: config.get(k) for k in ("dataset_path", "dataset_name", "dataset_kwargs")},
            "config_source": (config.get("metadata") or {}).get("config_source"),
        }
        if spec.metric is not None:
            if spec.metric not in values:
                raise KeyError(f"{spec.name}: no metric {spec.metric!r}; it reports {sorted(values)}")
            entry.update(metric=spec.metric, scale=spec.scale, score=values[spec.metric] * spec.scale)
        tasks[spec.name] = entry
    in_mean = [s.name for s in specs if s.in_mean and s.metric is not None]
    mean = sum(tasks[n]["score"] for n in in_mean) / len(in_mean) if in_mean else None
    return {"tasks": tasks, "mean": {"score": mean, "over": in_mean}}


def _write_samples(path: Path, samples: Mapping[str, list]) -> int:
    """One line per (task, document): the request arguments, the responses and the metric values,
    enough to audit the rendered prompts without lm-eval's bulky per-sample hashes."""
    keep = ("doc_id", "target", "arguments", "filtered_resps", "filter", "metrics")
    rows = []
    for task, task_samples in samples.items():
        for s in task_samples:
            row = {"task": task, **{k: s[k] for k in keep if k in s}}
            row.update({m: s[m] for m in s.get("metrics", []) if m in s})
            rows.append(_jsonable(row))
    return write_jsonl_atomic(path, rows)


def environment_report_once() -> None:
    """lm-eval puts torch's environment report (torch.utils.collect_env.get_pretty_env_info: a
    dozen subprocesses, ~5 s on 2 busy cores) into every result; run_lmeval keeps none of it, and it
    cannot change within a process, so it is made once per process (the pipeline evaluates dozens
    of checkpoints per worker)."""
    import torch.utils.collect_env as collect_env

    if not hasattr(collect_env.get_pretty_env_info, "cache_info"):
        collect_env.get_pretty_env_info = functools.cache(collect_env.get_pretty_env_info)


def run_lmeval(
    model_dir: str | os.PathLike,
    tasks: Sequence[str | Mapping | TaskSpec],
    *,
    include_path: str | os.PathLike | Sequence[str | os.PathLike] | None = DEFAULT_INCLUDE_PATH,
    world: str | os.PathLike | None = None,
    batch_size: int | str = 16,
    limit: int | float | None = None,
    device: str = "cpu",
    backend: str = "hf",
    model_args: Mapping | None = None,
    apply_chat_template: bool = True,
    fewshot_as_multiturn: bool = True,
    system_instruction: str | None = None,
    gen_kwargs: Mapping | None = None,
    bootstrap_iters: int = 100000,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    samples_out: str | os.PathLike | None = None,
) -> dict:
    """Evaluate `model_dir` on `tasks` with lm-eval; return the record (and write it to `out`).

    `tasks` are names or TaskSpec-shaped dicts (name, num_fewshot, metric, scale, in_mean,
    world_file, overrides). `world` is the toy world folder for tasks with a `world_file`.
    `gen_kwargs` overrides every generate_until task's generation settings (lm-eval semantics).
    `samples_out` writes the per-document requests and responses as JSONL. `seed` is lm-eval's
    python random seed (its numpy / torch / few-shot seeds stay at lm-eval's defaults, recorded).
    """
    import lm_eval
    from lm_eval.api.registry import get_model

    start = time.perf_counter()
    specs = [t if isinstance(t, TaskSpec) else TaskSpec.parse(t) for t in tasks]
    if not specs:
        raise ValueError("no lm-eval tasks given")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"a task is listed twice: {names}")
    if include_path is None:
        include_paths = []
    elif isinstance(include_path, (str, os.PathLike)):
        include_paths = [include_path]
    else:
        include_paths = list(include_path)
    world_path = Path(world).resolve() if world is not None else None
    model_path = str(Path(model_dir).resolve()) if Path(model_dir).exists() else str(model_dir)
    model_name, model_kwargs = _backend(backend, model_path, model_args)
    group = {"group": RUN_GROUP, "task": [{"task": s.name, **task_overrides(s, world_path)} for s in specs]}

    manager = task_manager(include_paths, names)
    check_specs(manager, specs)
    # The LM is built here, as simple_evaluate would, to read back the chat template it applies.
    lm = get_model(model_name).create_from_arg_obj(model_kwargs, {"batch_size": batch_size, "device": device})
    environment_report_once()
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=[group],
        task_manager=manager,
        limit=limit,
        apply_chat_template=apply_chat_template,
        fewshot_as_multiturn=fewshot_as_multiturn,
        system_instruction=system_instruction,
        gen_kwargs=dict(gen_kwargs) if gen_kwargs else None,
        bootstrap_iters=bootstrap_iters,
        log_samples=samples_out is not None,
        random_seed=seed,
    )
    if results is None:  # not rank 0 of a distributed run: that rank writes nothing
        return {}
    summary = summarize(results, specs)
    config = results["config"]
    record = {
        "format": FORMAT,
        "model": model_path,
        "backend": backend,
        "model_args": model_kwargs,
        "harness": {"name": "lm_eval", "version": harness_version()},
        "transformers_version": results.get("transformers_version"),
        "apply_chat_template": apply_chat_template,
        "chat_template": lm.chat_template(apply_chat_template) if apply_chat_template else None,
        "fewshot_as_multiturn": fewshot_as_multiturn,
        "system_instruction": system_instruction,
        "gen_kwargs_override": dict(gen_kwargs) if gen_kwargs else None,
        "limit": limit,
        "batch_size": batch_size,
        "device": device,
        "world": str(world_path) if world_path else None,
        "include_path": [str(Path(p).resolve()) for p in include_paths],
        "seeds": {k: config.get(k) for k in ("random_seed", "numpy_seed", "torch_seed", "fewshot_seed")},
        "bootstrap_iters": bootstrap_iters,
        "tokenizer": {
            "eos_token": results.get("tokenizer_eos_token"),
            "bos_token": results.get("tokenizer_bos_token"),
            "max_length": results.get("max_length"),
        },
        **summary,
        "elapsed_s": round(time.perf_counter() - start, 2),
    }
    record = _jsonable(record)
    if samples_out is not None:
        _write_samples(Path(samples_out), results["samples"])
    if out is not None:
        write_json_atomic(out, record)
    return record


def run_suite(model_dir: str | os.PathLike, config: str | os.PathLike | Mapping, **overrides) -> dict:
    """`run_lmeval` with the settings of a eval/lmeval file (name, path or loaded dict); keyword
    arguments win over the file's values (None means: keep the file's)."""
    cfg = dict(config) if isinstance(config, Mapping) else load_lmeval_config(config)
    settings = {
        "include_path": [include_dir(p) for p in cfg.get("include_path") or []],
        "world": _repo_path(cfg.get("world")),
        **{k: cfg[k] for k in ("batch_size", "limit", "device", "backend", "model_args", "apply_chat_template",
                               "fewshot_as_multiturn", "system_instruction", "gen_kwargs", "bootstrap_iters", "seed")
           if k in cfg},
    }
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return run_lmeval(model_dir, cfg["tasks"], **settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a eval/lmeval suite on a model with lm-evaluation-harness.")
    parser.add_argument("--model", required=True, help="model folder (or hub id at the paper scale)")
    parser.add_argument("--config", default="toy", help="eval/lmeval name (toy, paper) or a YAML path")
    parser.add_argument("--out", required=True, help="result JSON")
    parser.add_argument("--world", default=None, help="toy world folder (default: the config's)")
    parser.add_argument("--limit", type=float, default=None, help="documents per task (<1: a fraction)")
    parser.add_argument("--batch-size", default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--backend", default=None, choices=BACKENDS)
    parser.add_argument("--samples-out", default=None, help="per-document requests and responses (JSONL)")
    args = parser.parse_args(argv)
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    batch_size = int(args.batch_size) if args.batch_size and args.batch_size.isdigit() else args.batch_size
    record = run_suite(
        args.model, args.config, out=args.out, world=args.world, limit=limit, batch_size=batch_size,
        device=args.device, backend=args.backend, samples_out=args.samples_out,
    )
    scores = ", ".join(f"{n}={t['score']:.2f}" for n, t in record["tasks"].items() if "score" in t)
    print(f"lm-eval {record['harness']['version']} on {record['model']}: {scores}; mean={record['mean']['score']}"
          f" ({record['elapsed_s']} s) -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from selm import console

    console.setup()  # library bars and info logs off unless SELM_VERBOSE=1
    sys.exit(main())
