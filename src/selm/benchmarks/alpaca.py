"""AlpacaEval 2.0: model outputs against reference outputs, annotated by a judge, scored by alpaca_eval.

The flow is `alpaca_eval evaluate`'s, with the judge swappable: reference = output_1 (generator_1),
model = output_2 (generator_2), so preference 2 means the model won. Metrics come from alpaca_eval's
own code: `metrics.get_winrate` (win rate = mean(preference - 1) x 100, ties 0.5, standard error of
that mean) and `get_length_controlled_winrate` fed offline (see lc_glm.py); `avg_length` is
alpaca_eval's, int(mean characters of ALL model outputs).

An annotation the judge got wrong (malformed answer) keeps its row with preference NaN and the
reason in `error`; it is excluded from every metric and counted in `n_errors`. Rows keep their
instruction position as the table index, which is also what alpaca_eval's GLM uses to look up
instruction difficulty.

Pairwise mode (Figure 2's heatmaps): `pairwise_matrix` scores every model against every other
model's outputs used as the reference, in two steps: `pairwise_tables` (the judge) and
`tables_metrics` (alpaca_eval's GLM fits, which need no judge and so can run in worker processes).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from selm.io import DataError, read_jsonl, validate_record, write_json_atomic
from selm.judges import Judge

from .lc_glm import GLMData, length_controlled

OUTPUT_SCHEMA = {"instruction": (str, True), "output": (str, True), "generator": (str, False)}


def load_outputs(path: str | os.PathLike) -> list[dict]:
    """AlpacaEval outputs: a JSON list (alpaca_eval's model_outputs.json) or JSONL, validated."""
    path = Path(path)
    if path.suffix == ".json":
        rows = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON list of outputs")
        return [validate_record(r, OUTPUT_SCHEMA, f"{path}:[{i}]") for i, r in enumerate(rows)]
    return read_jsonl(path, OUTPUT_SCHEMA)


def write_outputs(path: str | os.PathLike, rows: Sequence[dict]) -> None:
    write_json_atomic(path, list(rows))


def generate_outputs(backend, eval_rows: Sequence[dict], *, generator: str, **decoding) -> list[dict]:
    """The model's answers to the eval set's instructions, as AlpacaEval output rows. `decoding`
    goes to `backend.generate` (max_new_tokens, do_sample, temperature, top_p, seed)."""
    answers = backend.generate([r["instruction"] for r in eval_rows], n=1, **decoding)
    return [
        {"instruction": r["instruction"], "output": a[0], "generator": generator, "dataset": r.get("dataset", "")}
        for r, a in zip(eval_rows, answers)
    ]


def annotate(model_outputs: Sequence[dict], reference_outputs: Sequence[dict], judge: Judge) -> pd.DataFrame:
    """One row per instruction (matched by position, checked by text), judged through the cache."""
    if len(model_outputs) != len(reference_outputs):
        raise DataError(f"{len(model_outputs)} model outputs for {len(reference_outputs)} reference outputs")
    for i, (m, r) in enumerate(zip(model_outputs, reference_outputs)):
        if m["instruction"] != r["instruction"]:
            raise DataError(f"row {i}: model and reference answer different instructions: "
                            f"{m['instruction'][:60]!r} vs {r['instruction'][:60]!r}")
    triples = [(r["instruction"], r["output"], m["output"]) for m, r in zip(model_outputs, reference_outputs)]
    annotations = judge.pairwise_many(triples)
    return pd.DataFrame({
        "instruction": [t[0] for t in triples],
        "output_1": [t[1] for t in triples],
        "output_2": [t[2] for t in triples],
        "generator_1": [r.get("generator", "reference") for r in reference_outputs],
        "generator_2": [m.get("generator", "model") for m in model_outputs],
        "annotator": judge.identity("pairwise"),
        "preference": [np.nan if a.preference is None else a.preference for a in annotations],
        "error": [a.error for a in annotations],
        "raw_completion": [a.raw for a in annotations],
    })


def _plain(value):
    """numpy scalars -> Python, NaN -> None: metrics go to JSON."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def compute_metrics(table: pd.DataFrame, glm_data: GLMData | None = None) -> dict:
    """Win rate, standard error, LC win rate (alpaca_eval's code), avg_length, error counts."""
    valid_mask = table["preference"].notna()
    if not valid_mask.any():
        raise ValueError("no valid annotation: every judgment was malformed")
    valid = table[valid_mask].copy()
    metrics = length_controlled(valid, glm_data or GLMData.neutral(len(table)))
    table.loc[valid.index, "glm_preference"] = valid.get("glm_preference")
    errors = table[~valid_mask]
    metrics.update(
        avg_length=int(table["output_2"].str.len().mean()),
        n_errors=int(len(errors)),
        errors=[{"index": int(i), "error": e} for i, e in errors["error"].items()],
        annotator=str(table["annotator"].iloc[0]),
    )
    return {k: _plain(v) for k, v in metrics.items()}


def evaluate(
    model_outputs: Sequence[dict], reference_outputs: Sequence[dict], judge: Judge, glm_data: GLMData | None = None
) -> tuple[dict, pd.DataFrame]:
    table = annotate(model_outputs, reference_outputs, judge)
    return compute_metrics(table, glm_data), table


def write_annotations(path: str | os.PathLike, table: pd.DataFrame) -> None:
    """alpaca_eval's annotations.json layout (a list of records), plus our `error` column."""
    records = json.loads(table.reset_index(names="index").to_json(orient="records"))
    write_json_atomic(path, records)


def pairwise_tables(outputs: Mapping[str, Sequence[dict]], judge: Judge) -> dict[str, dict[str, pd.DataFrame]]:
    """tables[reference_model][model]: the judge's annotations of each model against each other
    model's outputs as the reference (judged through the judge's cache, in this order)."""
    named = {name: [dict(r, generator=name) for r in rows] for name, rows in outputs.items()}
    return {ref: {model: annotate(named[model], named[ref], judge) for model in named} for ref in named}


def tables_metrics(tables: Mapping[str, Mapping[str, pd.DataFrame]], glm_data: GLMData | None = None
                   ) -> dict[str, dict[str, dict]]:
    """compute_metrics of every table of `pairwise_tables` (no judge: can run in another process)."""
    return {ref: {model: compute_metrics(table, glm_data) for model, table in row.items()} for ref, row in tables.items()}


def pairwise_matrix(
    outputs: Mapping[str, Sequence[dict]], judge: Judge, glm_data: GLMData | None = None
) -> dict[str, dict[str, dict]]:
    """metrics[reference_model][model]: each model scored against each other model's outputs as the
    reference (Figure 2). The diagonal is 50 by construction (identical outputs tie)."""
    return tables_metrics(pairwise_tables(outputs, judge), glm_data)
