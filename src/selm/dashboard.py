"""The W&B workspace a SELM user needs, defined in code (wandb-workspaces, W&B's library for its UI).

    .venv/bin/wandb sync --include-offline wandb/offline-run-*     # the runs, once logged in
    python -m selm.dashboard --entity ENTITY --project selm        # this workspace (`make dashboard`)

Runs are grouped by experiment cell (the W&B group `<experiment>/<cell>`, e.g. main/tiny-sft/alpha0.1;
one run per training iteration and seed, see selm.train.init_wandb). Three sections:

- Training, grouped by alpha: the SELM loss and its two parts, the implicit rewards, the
  log-probabilities of pi_t against pi_ref on y_ref (what the optimism term pushes), learning rate
  and gradient norm, per optimizer step. transformers' W&B callback logs the trainer's metrics
  under `train/` (selm.trainer.SELMTrainer.compute_loss names them).
- Evaluation: each eval/* score (selm.evaluate.log_eval_to_wandb) against the run's iteration.
- Figures: the report stage's PNGs, logged as images of the run `report/<scale>` (selm.report.build).

`tests/test_dashboard.py` checks every key a panel names against the keys an offline run of this
code actually logged, so a renamed metric fails a test instead of leaving an empty panel.
"""

from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path

from omegaconf import OmegaConf

from selm.io import DataError

# (panel title, metric keys as logged); every training panel is grouped by train.alpha
TRAINING_PANELS = (
    ("loss (SELM objective)", ("train/loss",)),
    ("loss/dpo", ("train/loss/dpo",)),
    ("loss/optimism", ("train/loss/optimism",)),
    ("logps on y_ref: pi_response vs ref_response", ("train/logps/pi_response", "train/logps/ref_response")),
    ("rewards/chosen vs rewards/rejected", ("train/rewards/chosen", "train/rewards/rejected")),
    ("rewards/margins", ("train/rewards/margins",)),
    ("rewards/accuracies", ("train/rewards/accuracies",)),
    ("logps/chosen vs logps/rejected", ("train/logps/chosen", "train/logps/rejected")),
    ("learning rate", ("train/learning_rate",)),
    ("gradient norm", ("train/grad_norm",)),
)
EVAL_METRICS = (  # selm.evaluate.flat_metrics, logged as eval/<name> into the run that trained the checkpoint
    "eval/alpaca_lc_win_rate", "eval/alpaca_win_rate", "eval/alpaca_avg_length",
    "eval/mt_bench_average", "eval/mt_bench_turn_1", "eval/mt_bench_turn_2", "eval/lmeval_mean",
)
GROUP_BY_ALPHA = "train.alpha"      # config keys (the run's composed Hydra config)
ITERATION = "iteration"


def figure_keys(spec) -> list[str]:
    """The images the report stage logs for an experiments spec: figures/<PNG name> (selm.report.figures)."""
    stems = ["figure1_concept", *(f"figure2_heatmap_{base}" for base in spec.bases), "figure3_alpha",
             "figure4_ird", "figure5_own_samples", "figure6_ablations"]
    if "regime_map" in spec.get("figures", {}):
        stems.append("regime_map")
    return [f"figures/{stem}" for stem in stems]


def workspace(entity: str, project: str, spec_file: str | Path = "experiments/toy.yaml", name: str = "SELM"):
    """The workspace object (nothing is sent until `.save()`)."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    spec = OmegaConf.load(spec_file)
    training = [wr.LinePlot(title=title, x="Step", y=list(keys), groupby=wr.Config(GROUP_BY_ALPHA),
                            groupby_aggfunc="mean", groupby_rangefunc="stderr")
                for title, keys in TRAINING_PANELS]
    evaluation = [wr.ScatterPlot(title=f"{key} per iteration", x=wr.Config(ITERATION), y=wr.SummaryMetric(key))
                  for key in EVAL_METRICS]
    figures = [wr.MediaBrowser(title="report figures", media_keys=figure_keys(spec), num_columns=2)]
    return ws.Workspace(
        entity=entity, project=project, name=name,
        sections=[
            ws.Section(name="Training (grouped by alpha)", panels=training, is_open=True),
            ws.Section(name="Evaluation per iteration", panels=evaluation, is_open=True),
            ws.Section(name="Report figures", panels=figures, is_open=True),
        ],
        runset_settings=ws.RunsetSettings(groupby=[ws.Metric("Group")]),  # one group per experiment cell
    )


def panel_keys(space) -> dict[str, set[str]]:
    """What the panels name: {"metrics": history/summary keys, "media": image keys, "config": config keys}."""
    import wandb_workspaces.reports.v2 as wr

    found = {"metrics": set(), "media": set(), "config": set()}

    def config(value) -> None:
        if isinstance(value, wr.Config):
            found["config"].add(value.name)

    for section in space.sections:
        for panel in section.panels:
            if isinstance(panel, wr.LinePlot):
                found["metrics"].update(panel.y)
                config(panel.groupby)
            elif isinstance(panel, wr.ScatterPlot):
                for axis in (panel.x, panel.y):
                    config(axis)
                    if isinstance(axis, wr.SummaryMetric):
                        found["metrics"].add(axis.name)
            elif isinstance(panel, wr.MediaBrowser):
                found["media"].update(panel.media_keys)
            else:
                raise TypeError(f"panel_keys: no rule for {type(panel).__name__} panels")
    return found


# An offline run's `run-<id>.wandb` file: W&B's record log (the LevelDB log format): a 7-byte
# header, then 32 KiB blocks of records, each a 7-byte header (CRC, length, type) and a chunk of
# one protobuf `Record`, whole (type 1) or split over blocks (2 first, 3 middle, 4 last).
_HEADER, _BLOCK, _RECORD_HEADER = b":W&B", 32768, 7


def _records(path: Path):
    data = path.read_bytes()
    if data[:4] != _HEADER:
        raise DataError(f"{path}: not a W&B run file (no {_HEADER!r} header)")
    pos, pending = 7, b""
    while pos + _RECORD_HEADER <= len(data):
        if _BLOCK - pos % _BLOCK < _RECORD_HEADER:  # a block's tail too short for a header is padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + _RECORD_HEADER])
        chunk, pos = data[pos + _RECORD_HEADER:pos + _RECORD_HEADER + length], pos + _RECORD_HEADER + length
        if kind == 0 and length == 0:  # zero padding up to the next block
            pos += -pos % _BLOCK
        elif kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk
        else:
            raise DataError(f"{path}: record of unknown type {kind} at byte {pos - length - _RECORD_HEADER}")


def _flatten(prefix: str, value) -> set[str]:
    if isinstance(value, dict) and "value" in value and set(value) <= {"value", "desc"}:
        value = value["value"]  # W&B's config wrapping {"value": ...}
    if isinstance(value, dict):
        return {k for key, v in value.items() for k in _flatten(f"{prefix}.{key}" if prefix else key, v)}
    return {prefix}


def logged_keys(run_file: str | Path) -> dict[str, set[str]]:
    """What one offline run logged: {"metrics": history and summary keys, "config": dotted config
    keys}. An image's key (`figures/x`) is a metric key with its fields under it (`figures/x/path`)."""
    from wandb.proto import wandb_internal_pb2

    found = {"metrics": set(), "config": set()}
    for data in _records(Path(run_file)):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        items = {"history": lambda: record.history.item, "summary": lambda: record.summary.update}.get(kind)
        if items is not None:
            found["metrics"].update(item.key or "/".join(item.nested_key) for item in items())
        elif kind in ("run", "config"):  # the config given to wandb.init arrives in the run record
            for item in (record.run.config if kind == "run" else record.config).update:
                found["config"] |= _flatten(item.key or ".".join(item.nested_key), json.loads(item.value_json))
    return found


def missing_keys(space, run_files) -> list[str]:
    """Every key a panel names that none of the run files logged (media: no field under the key)."""
    logged = {"metrics": set(), "config": set()}
    for path in run_files:
        for kind, keys in logged_keys(path).items():
            logged[kind] |= keys
    named = panel_keys(space)
    missing = [k for k in named["metrics"] if k not in logged["metrics"]]
    missing += [k for k in named["media"] if not any(m.startswith(k + "/") for m in logged["metrics"])]
    missing += [f"config:{k}" for k in named["config"] if k not in logged["config"]]
    return sorted(missing)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m selm.dashboard", description=__doc__.splitlines()[0])
    parser.add_argument("--entity", required=True, help="W&B entity (user or team) that owns the project")
    parser.add_argument("--project", default="selm", help="W&B project the runs were synced to (logger.project)")
    parser.add_argument("--spec", default="experiments/toy.yaml", help="experiments spec (which figures exist)")
    parser.add_argument("--name", default="SELM", help="name of the saved workspace view")
    args = parser.parse_args(argv)
    space = workspace(args.entity, args.project, args.spec, args.name).save()
    print(f"workspace saved: {space.url}")


if __name__ == "__main__":
    from selm import console

    console.setup()  # library bars and info logs off unless SELM_VERBOSE=1
    main()
