"""alpaca_eval's length-controlled (LC) win rate, computed offline by alpaca_eval's own GLM code.

What `alpaca_eval.metrics.get_length_controlled_winrate` needs beyond the annotations, and how we
give it: its featuriser (`glm_winrate._get_featurized_data`) always fetches `df_gamed.csv` from the
hub dataset tatsu-lab/alpaca_eval. That file holds, per instruction position `index`, the
`instruction_difficulty` feature, plus the annotations of two "gamed" baselines (the reference model
prompted to be verbose / concise: `preference` in [0, 1], `std_delta_len`,
`not_gamed_baseline`=False), which the `length_controlled_v1` GLM uses as a weak prior (weight
0.2 / 2) so that the length slope is identified even for a model whose lengths barely vary. We
supply that table ourselves (`GLMData`) and hand its local path to alpaca_eval by replacing the hub
download in that one module for the duration of the call; anything else asked of the hub raises.
`save_weights_dir=None`, so nothing is written into site-packages.

Where the table comes from:
- paper scale: the official df_gamed.csv, fetched once on a networked machine (`GLMData.from_csv`):
  then LC is alpaca_eval's `length_controlled_v1` exactly.
- toy / evalcheck scale (the eval set is the toy world's, so the official file does not apply):
  `GLMData.from_runs` estimates instruction difficulty from our own runs' annotations against the
  same reference, and takes gamed baselines if given (annotations of length-gamed reference
  outputs); with gamed rows the GLM is `length_controlled_v1`, without them it is
  `length_controlled_noreg` (same formula, no prior), since then nothing can carry the prior.
- `GLMData.neutral(n)`: difficulty 0 everywhere, no gamed rows (noreg): LC is the win rate at zero
  length difference from the length slope and an intercept alone.

Degenerate inputs alpaca_eval cannot fit are reported, not crashed on: with no variation in the
length difference (alpaca_eval divides by its standard deviation, giving NaN) LC equals the raw win
rate, since there is no length difference to control for; with fewer than 5 annotations (its
5-fold cross-validation) LC is None. `lc_note` says which.
"""

from __future__ import annotations

import os
import tempfile
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd

MIN_ANNOTATIONS = 5  # alpaca_eval's GLM uses 5-fold GroupKFold
_PATCH_LOCK = threading.Lock()  # the hub replacement is process-wide while it lasts


@dataclass(frozen=True)
class GLMData:
    frame: pd.DataFrame  # df_gamed.csv's columns: index, instruction_difficulty, model (+ gamed rows)
    glm_name: str
    source: str

    @classmethod
    def neutral(cls, n: int) -> "GLMData":
        frame = pd.DataFrame({"index": range(n), "instruction_difficulty": 0.0, "model": "none"})
        return cls(frame, "length_controlled_noreg", f"neutral: difficulty 0 for {n} instructions, no gamed rows")

    @classmethod
    def from_csv(cls, path: str | os.PathLike, glm_name: str = "length_controlled_v1") -> "GLMData":
        frame = pd.read_csv(path)
        missing = {"index", "instruction_difficulty", "model"} - set(frame.columns)
        if missing:
            raise ValueError(f"{path}: not a df_gamed.csv, missing columns {sorted(missing)}")
        return cls(frame, glm_name, f"file {path}")

    @classmethod
    def from_runs(
        cls, n: int, runs: Sequence[pd.DataFrame] = (), gamed: Mapping[str, pd.DataFrame] | None = None
    ) -> "GLMData":
        """Difficulty from `runs` (annotation tables of models against the reference), gamed rows from
        `gamed` (name -> annotation table of a length-gamed reference against the reference)."""
        difficulty = instruction_difficulty(runs, n)
        if not gamed:
            frame = pd.DataFrame({"index": range(n), "instruction_difficulty": difficulty, "model": "none"})
            return cls(frame, "length_controlled_noreg", f"difficulty from {len(runs)} runs, no gamed rows")
        frame = pd.concat([gamed_rows(t, name, difficulty) for name, t in gamed.items()], ignore_index=True)
        return cls(frame, "length_controlled_v1", f"difficulty from {len(runs)} runs, gamed: {sorted(gamed)}")


def instruction_difficulty(runs: Sequence[pd.DataFrame], n: int) -> np.ndarray:
    """Per instruction: logit of the reference's mean win probability over the runs (clipped to
    [0.02, 0.98]), centred; 0 where no run has a valid annotation. Higher = harder to beat."""
    wins, counts = np.zeros(n), np.zeros(n)
    for table in runs:
        valid = table["preference"].notna()
        idx = table.index[valid].to_numpy(dtype=int)
        np.add.at(wins, idx, 2.0 - table.loc[valid, "preference"].to_numpy(dtype=float))
        np.add.at(counts, idx, 1.0)
    seen = counts > 0
    p = np.clip(np.divide(wins, counts, out=np.full(n, 0.5), where=seen), 0.02, 0.98)
    logit = np.where(seen, np.log(p / (1 - p)), 0.0)
    if seen.any():
        logit[seen] -= logit[seen].mean()
    return logit


def gamed_rows(table: pd.DataFrame, name: str, difficulty: np.ndarray) -> pd.DataFrame:
    """A gamed baseline's annotations featurised as alpaca_eval featurises a model's (rows for every
    instruction 0..n-1 in order, so alpaca_eval's difficulty lookup by row label stays right)."""
    n = len(difficulty)
    if list(table.index) != list(range(n)):
        raise ValueError(f"gamed baseline {name!r} must have one row per instruction 0..{n - 1}, in order")
    delta = table["output_1"].str.len() - table["output_2"].str.len()
    if not delta.std() > 0:
        raise ValueError(f"gamed baseline {name!r} has no variation in length difference")
    return pd.DataFrame({
        "index": range(n),
        "instruction_difficulty": difficulty,
        "preference": table["preference"].astype(float).to_numpy() - 1.0,
        "std_delta_len": (delta / delta.std()).to_numpy(),
        "not_gamed_baseline": False,
        "model": name,
    })


def check_lookup(frame: pd.DataFrame, indices) -> None:
    """alpaca_eval looks difficulty up by row LABEL of the first row of each index; check that this
    lands on the right instruction for every annotation index."""
    first = frame.drop_duplicates("index")
    if not first.index.is_unique:
        raise ValueError("GLM data rows have duplicate row labels: alpaca_eval's difficulty lookup is ambiguous")
    right = set(first.index[first["index"].to_numpy() == first.index.to_numpy()].tolist())  # row i holds instruction i
    bad = [int(i) for i in indices if i not in right]
    if bad:
        raise ValueError(f"GLM data rows are not in instruction order for indices {bad[:10]} "
                         f"(the first row of instruction i must be row i)")


def length_controlled(table: pd.DataFrame, data: GLMData) -> dict:
    """alpaca_eval's LC metrics for valid annotations (index = instruction position). Adds a
    'glm_preference' column to `table` in place."""
    from alpaca_eval.metrics import get_winrate, glm_winrate

    same_generator = table["generator_1"].iloc[0] == table["generator_2"].iloc[0]
    delta = table["output_1"].str.len() - table["output_2"].str.len()
    if not same_generator and len(table) < MIN_ANNOTATIONS:
        out = dict(get_winrate(table), length_controlled_winrate=None, lc_standard_error=None)
        return {**out, "lc_note": f"fewer than {MIN_ANNOTATIONS} valid annotations: LC not computed"}
    if not same_generator and not delta.std() > 0:
        out = get_winrate(table)
        note = "no variation in length difference: LC equals the raw win rate"
        return {**out, "length_controlled_winrate": out["win_rate"],
                "lc_standard_error": out["standard_error"], "lc_note": note}
    check_lookup(data.frame, table.index)
    with tempfile.TemporaryDirectory() as tmp, _PATCH_LOCK:
        path = Path(tmp) / "df_gamed.csv"
        data.frame.to_csv(path, index=False)

        def local_file(*, repo_id, filename, **_):
            if filename != "df_gamed.csv":
                raise RuntimeError(f"alpaca_eval asked the hub for {repo_id}/{filename}: not available offline")
            return str(path)

        with mock.patch.object(glm_winrate, "hf_hub_download", local_file), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module="sklearn")
            metrics = glm_winrate.get_length_controlled_winrate(
                table, glm_name=data.glm_name, save_weights_dir=None, is_warn_extreme_changes=True
            )
    return {**metrics, "lc_note": f"{data.glm_name}; GLM data: {data.source}"}
