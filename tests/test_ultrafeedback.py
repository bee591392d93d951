"""UltraFeedback export (selm.ultrafeedback) on a tiny local dataset folder, and the paper's slicing."""

import json

import pandas as pd
import pytest

from selm.config import compose_config
from selm.io import DataError, read_jsonl
from selm.loop import PREFS_SCHEMA, prefs_slice, slice_index
from selm.provenance import file_sha256
from selm.ultrafeedback import EXPECTED_ROWS, KEPT_FIELDS, export, load_splits, main

# Out of order on purpose: the export must keep the dataset's order, not sort by prompt_id.
TRAIN_IDS = ["f3", "a9", "c1", "b7", "e2", "d5", "a1", "z0", "m4", "k8", "b2", "q6"]


def row(prompt_id: str, i: int) -> dict:
    prompt = f"question {i} ({prompt_id})"
    return {
        "prompt": prompt, "prompt_id": prompt_id,
        "chosen": [{"content": prompt, "role": "user"}, {"content": f"good {i}", "role": "assistant"}],
        "rejected": [{"content": prompt, "role": "user"}, {"content": f"bad {i}", "role": "assistant"}],
        "messages": [{"content": prompt, "role": "user"}, {"content": f"good {i}", "role": "assistant"}],
        "score_chosen": 8.5, "score_rejected": 3.0,
    }


def write_dataset(root, splits: dict) -> str:
    """A folder laid out as the hub's parquet export: data/<split>-00000-of-00001.parquet."""
    (root / "data").mkdir(parents=True)
    for split, rows in splits.items():
        pd.DataFrame(rows).to_parquet(root / "data" / f"{split}-00000-of-00001.parquet")
    return str(root)


@pytest.fixture
def source(tmp_path):
    return write_dataset(tmp_path / "uf", {
        "train_prefs": [row(pid, i) for i, pid in enumerate(TRAIN_IDS)],
        "test_prefs": [row(f"t{i}", i) for i in range(4)],
        "train_sft": [row(f"s{i}", i) for i in range(2)],   # another split: not exported
    })


def test_export_keeps_order_schema_and_writes_a_manifest(source, tmp_path):
    out = tmp_path / "out"
    manifest = export(out, source, cache_dir=str(tmp_path / "cache"))
    train = read_jsonl(out / "train_prefs.jsonl", PREFS_SCHEMA)  # what the loop reads
    assert [r["prompt_id"] for r in train] == TRAIN_IDS
    assert all(tuple(r) == KEPT_FIELDS for r in train)           # `messages` dropped, scores kept
    assert train[2]["chosen"][-1] == {"content": "good 2", "role": "assistant"}
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "test_prefs.jsonl", "train_prefs.jsonl"]
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == source and manifest["revision"] is None  # local folder: no hub commit
    for split, rows in (("train_prefs", 12), ("test_prefs", 4)):
        info = manifest["splits"][split]
        assert info["rows"] == rows and info["sha256"] == file_sha256(out / info["file"])


def test_split_list_must_be_a_list(source):
    with pytest.raises(TypeError, match="list of split names"):
        load_splits(source, "train_prefs,test_prefs")


def test_malformed_row_names_split_row_and_key(tmp_path):
    rows = [row(f"p{i}", i) for i in range(5)]
    rows[3]["rejected"] = rows[3]["rejected"][:1]       # ends with the user turn: no answer
    source = write_dataset(tmp_path / "bad", {"train_prefs": rows, "test_prefs": [row("t0", 0)]})
    with pytest.raises(DataError, match=r"split train_prefs row 3: key 'rejected'.*assistant turn"):
        export(tmp_path / "out", source, cache_dir=str(tmp_path / "cache"))
    assert not (tmp_path / "out" / "train_prefs.jsonl").exists()   # nothing half written


def test_cli_reports_bad_rows_without_traceback(tmp_path, capsys):
    rows = [row("p0", 0), dict(row("p1", 1), prompt_id=None)]
    source = write_dataset(tmp_path / "bad", {"train_prefs": rows, "test_prefs": [row("t0", 0)]})
    code = main(["--out", str(tmp_path / "out"), "--source", source, "--cache-dir", str(tmp_path / "cache")])
    assert code == 1
    assert "split train_prefs row 1: key 'prompt_id' must be str" in capsys.readouterr().err


def test_paper_slicing_arithmetic():
    """docs/paper.md section 2: Zephyr 4 slices of 61,135 // 4 (iteration 0 + SELM 1..3), Llama-3 3 of // 3."""
    n = EXPECTED_ROWS["train_prefs"]
    assert (n // 4, n // 3) == (15_283, 20_378)
    rows = list(range(n))
    for experiment, size in (("paper_zephyr", 15_283), ("paper_llama3", 20_378)):
        cfg = compose_config("loop_paper", [f"preset={experiment}"])
        assert cfg.data.slice_size == size
        iterations = ([0] if cfg.model.offline_dpo_iteration else []) + list(cfg.model.iterations)
        slices = [prefs_slice(rows, slice_index(t, cfg.model.offline_dpo_iteration), size) for t in iterations]
        assert [s[0] for s in slices] == [k * size for k in range(len(iterations))]  # contiguous, no replay
        assert sum(map(len, slices)) == size * len(iterations) <= n
        with pytest.raises(DataError, match=f"slice {len(iterations)} needs rows"):
            prefs_slice(rows, len(iterations), size)
