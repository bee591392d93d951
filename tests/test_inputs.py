"""Inputs that cannot be silently wrong: input files as common tools write them are read correctly
or refused naming file:line; nonsense hyperparameters fail at composition naming the key; a
params.yaml edit that the runs would ignore is refused naming the key."""

import json
from pathlib import Path

import pytest
import yaml

from selm.compose import run_config
from selm.config import ConfigError, compose_config
from selm.io import PAIRS_SCHEMA, DataError, read_json, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
ROW = {"prompt": "übersetze: ça va — 你好", "chosen": "gut 👍", "rejected": "schlecht"}


def test_bom_windows_line_ends_and_non_ascii_are_read(tmp_path):
    path = tmp_path / "pairs.jsonl"
    body = "\r\n".join([json.dumps(ROW, ensure_ascii=False), json.dumps(ROW), ""])  # raw UTF-8 and \u escapes
    path.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    assert read_jsonl(path, PAIRS_SCHEMA) == [ROW, ROW]
    doc = tmp_path / "doc.json"
    doc.write_bytes(b"\xef\xbb\xbf" + json.dumps(ROW, ensure_ascii=False, indent=1).replace("\n", "\r\n").encode())
    assert read_json(doc) == ROW


@pytest.mark.parametrize("raw, message", [
    (b'{"prompt": "p", "chosen": "\xff", "rejected": "b"}', "not UTF-8"),
    (b'{"prompt": "p", "chosen": NaN, "rejected": "b"}', "NaN is not JSON"),
    (b'{"prompt": "p", "chosen": "a", "chosen": "b", "rejected": "b"}', "duplicate key 'chosen'"),
    (b'{"prompt": "p", "chosen": "a", "rejected": "b"}{"prompt": "q"}', "malformed JSON"),
    (b'{"prompt": "p", "chosen": "' + b"a" * 300 + b'", "rejected": "b"}', "record longer than 256 bytes"),
])
def test_bad_records_are_refused_naming_file_and_line(tmp_path, raw, message):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(json.dumps(ROW).encode() + b"\r\n\r\n" + raw + b"\r\n")
    with pytest.raises(DataError) as err:
        read_jsonl(path, PAIRS_SCHEMA, max_bytes=256)
    assert f"{path}:3:" in str(err.value) and message in str(err.value)


def test_bad_json_document_names_its_line(tmp_path):
    path = tmp_path / "m.json"
    path.write_text('{\n  "a": 1,\n  "b": ,\n}\n')
    with pytest.raises(DataError, match=f"{path}:3: malformed JSON"):
        read_json(path)


@pytest.mark.parametrize("override, message", [
    ("train.alpha=-0.1", "train.alpha: must be >= 0, got -0.1"),
    ("train.beta=0", "train.beta: must be > 0, got 0"),
    ("train.beta=abc", "train.beta: must be a finite number, got 'abc'"),
    ("train.max_prompt_length=128", "train.max_prompt_length: must be < train.max_length (128)"),
    ("train.global_batch_size=0", "train.global_batch_size: must be >= 1"),
    ("train.per_device_batch_size=3", "train.global_batch_size: must be a multiple of train.per_device_batch_size"),
    ("train.learning_rates=[1e-5,-1e-5]", "train.learning_rates[1]: must be > 0"),
    ("train.learning_rates=[1e-5]", "iteration 1 runs but learning_rates[1] is missing"),
    ("generation.top_p=0", "generation.top_p: must be in (0, 1]"),
    ("sft.batch_size=2.5", "sft.batch_size: must be an integer"),
])
def test_nonsense_values_fail_at_composition_naming_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        compose_config("loop", [override])
    assert message in str(err.value)


def _params(tmp_path, section, key, value):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params[section][key] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.mark.parametrize("section, key, value, message", [
    ("model", "path", "models/other", "model.path differs from conf/loop.yaml's composition"),  # dvc exp run -S model.path=...
    ("variant", "name", "stepwise", "variant.name differs"),
    ("train", "alpha", 0.5, "train.alpha is set per run by the grid"),
    ("train", "bta", 0.2, "train.bta is not a config key"),
    ("train", "beta", -1.0, "train.beta: must be > 0"),
])
def test_params_yaml_edits_the_runs_would_ignore_are_refused(tmp_path, section, key, value, message):
    with pytest.raises(ConfigError) as err:
        run_config(_params(tmp_path, section, key, value), groups={"model": "tiny-sft"}, alpha=0.1, seed=42)
    assert message in str(err.value)


def test_params_yaml_edits_of_shared_sections_are_honoured(tmp_path):
    assert run_config(ROOT / "params.yaml", groups={"model": "tiny-sft"}, alpha=0.1, seed=42).train.beta == 0.1  # the committed file passes
    assert run_config(_params(tmp_path, "train", "beta", 0.2), groups={"model": "tiny-sft"}, alpha=0.1, seed=42).train.beta == 0.2
