"""The toy pipeline's per-base stages: `python -m selm.cli.stage sft A B` trains every named base at
once, one spawned process per base, to the same bytes as `sft A` alone in its own process; the DVC
`sft` and `eval_base` stages name exactly the spec's bases."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from selm.cli.stage import main as stage_main
from selm.world import build_world

ROOT = Path(__file__).resolve().parents[1]
BASES = ["tiny-sft", "tiny-instruct"]
# a 14k-parameter model, 2 epochs of 160 rows, headroom on 4 prompts: seconds per base
SMALL = ["sft.size=14k", "sft.epochs=2", "sft.batch_size=16", "sft.lr=0.03", "sft.headroom_prompts=4",
         "sft.headroom_n=2", "scale.max_new_tokens=16"]


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _headroom(model: Path) -> dict:
    """headroom.json without its `seconds` (how long the generation took)"""
    headroom = json.loads((model / "headroom.json").read_text())
    assert isinstance(headroom.pop("seconds"), float)
    return headroom


@pytest.fixture
def small_world(tmp_path):
    world = tmp_path / "data" / "world"
    build_world(world, seed=0, n_sft=160, n_train_prefs=10, n_test_prefs=10, n_eval=10, n_mt_bench=2,
                n_lmeval=10, families=["upper", "count"])
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def _stage(work: Path, *bases: str) -> None:
    cwd = Path.cwd()
    os.chdir(work)
    try:
        stage_main(["--params", "params.yaml", *[a for kv in SMALL for a in ("--set", kv)], "sft", *bases])
    finally:
        os.chdir(cwd)


def test_sft_of_several_bases_at_once_gives_the_bytes_of_one_at_a_time(small_world, tmp_path_factory):
    _stage(small_world, *BASES)  # both bases, one spawned process each
    for base in BASES:
        alone = tmp_path_factory.mktemp(base)
        shutil.copytree(small_world / "data", alone / "data")
        shutil.copy(small_world / "params.yaml", alone)
        _stage(alone, base)  # one base, in this process
        weights = "model.safetensors"
        assert _md5(small_world / "models" / base / weights) == _md5(alone / "models" / base / weights), base
        assert _headroom(small_world / "models" / base) == _headroom(alone / "models" / base), base
        assert not (alone / "models" / ({*BASES} - {base}).pop()).exists()  # `sft <base>` trains that base only
    # the two bases differ (different demonstrations): each process trained its own base
    assert _md5(small_world / "models" / BASES[0] / "model.safetensors") != _md5(
        small_world / "models" / BASES[1] / "model.safetensors")


def test_a_failing_base_is_named_and_the_other_still_trains(small_world):
    (small_world / "data" / "world" / "sft_strong.jsonl").unlink()  # tiny-instruct's demonstrations
    with pytest.raises(RuntimeError, match=r"1 of 2 bases of sft failed:\n--- tiny-instruct\n(.|\n)*sft_strong.jsonl"):
        _stage(small_world, *BASES)
    assert (small_world / "models" / "tiny-sft" / "headroom.json").is_file()
    with pytest.raises(ValueError, match="named twice"):
        _stage(small_world, "tiny-sft", "tiny-sft")


@pytest.mark.parametrize("stage, outs", [("sft", "models/{}"), ("eval_base", "evals/base/{}")])
def test_toy_per_base_stages_name_exactly_the_spec_bases(stage, outs):
    """dvc.yaml's single `sft` and `eval_base` stages name every base of experiments/toy.yaml's
    `bases` in their command, outs and model configs (a base added to the spec but not here would not run)."""
    bases = yaml.safe_load((ROOT / "experiments" / "toy.yaml").read_text())["bases"]
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]
    assert spec["cmd"].split()[-len(bases) - 1:] == [stage.replace("_", "-"), *bases]
    assert spec["outs"] == [outs.format(b) for b in bases]
    assert [d for d in spec["deps"] if d.startswith("conf/model/")] == [f"conf/model/{b}.yaml" for b in bases]
