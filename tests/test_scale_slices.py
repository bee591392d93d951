"""A slice of each scale's DVC pipeline, run by `dvc repro` itself on a copy of the repository's
pipeline files with small parameters, so that a change in a shared module (or in a stage's deps, outs
or params) cannot silently break a scale that `make test` does not otherwise run:

- toy (dvc.yaml at the root): world -> corpus_variants -> sft -> eval_base -> experiments -> checksums,
  with the real experiments/toy.yaml cut to one cell, one alpha, one seed and one online iteration
  per experiment, and a second `dvc repro` that finds everything up to date;
- evalcheck (scales/evalcheck/dvc.yaml): answers -> grade -> toy_eval on a tiny ChatML llama standing in
  for SmolLM2 (its real conversion and MT-Bench download are test_evalcheck.py's network test), graded by
  the project's judge server on 127.0.0.1.

The rehearsal's slice is tests/test_rehearsal.py::test_slice_one_cell_one_iteration_end_to_end.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import venv_env

ROOT = Path(__file__).resolve().parents[1]
# what the pipelines read from a checkout (their deps, params and specs), copied; nothing else
PIPELINE_FILES = ["dvc.yaml", "params.yaml", "conf", "eval", "experiments", "paper", "src", "scales",
                  ".dvc/config", ".dvcignore"]


def pipeline_copy(dest: Path) -> Path:
    for name in PIPELINE_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", ".wheels", "dvc.lock"))
        elif src.exists():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    for lock in ["dvc.lock", *(str(p.relative_to(ROOT)) for p in (ROOT / "scales").glob("*/dvc.lock"))]:
        (dest / lock).unlink(missing_ok=True)  # the slice's own runs, not the committed ones
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)  # DVC's repository root
    return dest


def dvc(cwd: Path, *args: str, timeout: int = 900) -> str:
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=venv_env(), capture_output=True,
                          text=True, timeout=timeout)  # offline: conftest.py sets the hub, W&B and DVC variables
    assert done.returncode == 0, f"dvc {' '.join(args)} failed:\n{(done.stdout + done.stderr)[-6000:]}"
    return done.stdout + done.stderr


def small_params(path: Path, **sections) -> None:
    """params.yaml with evaluation and SFT sizes cut down; every other value as committed."""
    params = yaml.safe_load(path.read_text())
    params["eval"].update(n_prompts=6)
    params["eval"]["alpaca_eval"]["limit"] = 4
    params["eval"]["mt_bench"].update(limit=2, judge_runs=1)
    params["eval"]["lmeval"]["limit"] = 4
    params["sft"].update(epochs=0.05, headroom_prompts=4, headroom_n=2)
    params["data"]["slice_size"] = 8
    for key, values in sections.items():
        params[key].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def slice_spec(path: Path) -> dict:
    """experiments/toy.yaml with each experiment cut to its first cell and alpha, one seed and one
    online iteration (iteration 0, then 1): every output the `experiments` stage declares still exists."""
    spec = yaml.safe_load(path.read_text())
    spec["seeds"] = spec["seeds"][:1]
    for exp in spec["experiments"].values():
        name, cell = next(iter(exp["cells"].items()))
        exp["cells"] = {name: {**cell, "model.iterations": [1],
                               "train.learning_rates": cell.get("train.learning_rates", [3.0e-5] * 4)[:2]}}
        exp["alphas"] = exp["alphas"][-1:]
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return spec


@pytest.mark.slow
def test_toy_pipeline_slice_runs_under_dvc_and_is_then_up_to_date(tmp_path):
    repo = pipeline_copy(tmp_path / "repo")
    small_params(repo / "params.yaml")
    spec = slice_spec(repo / "experiments" / "toy.yaml")
    dvc(repo, "repro", "eval_base", "checksums")
    for base in spec["bases"]:
        assert (repo / "models" / base / "model.safetensors").is_file()
        headroom = json.loads((repo / "models" / base / "headroom.json").read_text())
        assert 0.0 <= headroom["greedy"]["mean"] <= 1.0
        base_eval = json.loads((repo / "evals" / "base" / base / "metrics.json").read_text())
        assert 0.0 <= base_eval["alpaca_win_rate"] <= 100.0
    for name, exp in spec["experiments"].items():
        (cell,), (alpha,) = exp["cells"], exp["alphas"]
        run = repo / "runs" / name / cell / f"alpha{alpha}" / f"seed{spec['seeds'][0]}"
        assert (run / "iter1" / "model" / "model.safetensors").is_file(), f"{run}: iteration 1 not trained"
        if exp["eval"]:  # the evaluations the experiment asks for, of its final checkpoint
            metrics = json.loads((repo / "evals" / name / cell / f"alpha{alpha}" / f"seed{spec['seeds'][0]}"
                                  / "iter1" / "metrics.json").read_text())
            for part in exp["eval"]:  # metric keys start with the part's name (alpaca_win_rate, mt_bench_average, ...)
                assert any(key.startswith(part) for key in metrics), f"{name}: no {part} metric in {sorted(metrics)}"
    checksums = json.loads((repo / "results" / "toy" / "checksums.json").read_text())["md5"]
    for base in spec["bases"]:
        assert len(checksums[f"models/{base}/model.safetensors"]) == 32
    # every stage's deps and outs are declared: a second repro has nothing to do
    again = dvc(repo, "repro", "eval_base", "checksums")
    assert "Running stage" not in again, again[-3000:]


@pytest.mark.slow
def test_evalcheck_pipeline_slice_answers_grades_and_evaluates_a_stand_in(tmp_path, monkeypatch):
    from judge_server import JudgeServer, text_reply
    from test_evalcheck import write_tiny_gguf

    from selm import artifacts
    from selm.world.build import build_world

    repo = pipeline_copy(tmp_path / "repo")
    small_params(repo / "params.yaml")
    params_file = repo / "scales" / "evalcheck" / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    # the stand-in where the convert stage would put SmolLM2, and MT-Bench data in FastChat's layout
    model = repo / params["model"]["path"]
    artifacts.convert_gguf(write_tiny_gguf(tmp_path / "tiny.gguf"), model, source={"wheel": "stand-in"})
    questions = [{"question_id": 81, "category": "writing", "turns": ["Write a line.", "Shorter."]},
                 {"question_id": 111, "category": "math", "turns": ["What is 2+3?", "And 2*3?"]}]
    reference = {"question_id": 111, "answer_id": "r111", "model_id": "gpt-4", "tstamp": 0.0,
                 "choices": [{"index": 0, "turns": ["5", "6"]}]}
    data = repo / params["mt_bench"]["data"]
    (data / "reference_answer").mkdir(parents=True)
    (data / "question.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    (data / "reference_answer" / "gpt-4.jsonl").write_text(json.dumps(reference) + "\n")
    build_world(repo / "data" / "world", seed=0, n_sft=10, n_train_prefs=8, n_test_prefs=6, n_eval=4,
                n_mt_bench=2, n_lmeval=4)
    with JudgeServer(default=lambda body: text_reply("Fine. Rating: [[6]]")) as judge:
        params["answers"].update(backend="hf", max_new_tokens=8, limit=2)
        params["judge"].update(base_url=judge.base_url, model="stand-in", api_key_env="SELM_SLICE_KEY", runs=1,
                               concurrency=2)
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        monkeypatch.setenv("SELM_SLICE_KEY", "x")
        for stage in ["answers", "grade", "toy_eval"]:
            dvc(repo, "repro", "--single-item", f"scales/evalcheck/dvc.yaml:{stage}")
    answers = [json.loads(line) for line in
               (repo / params["answers"]["out"] / f"{params['model']['id']}.jsonl").read_text().splitlines()]
    assert [a["question_id"] for a in answers] == [81, 111] and all(len(a["choices"][0]["turns"]) == 2 for a in answers)
    grade = json.loads((repo / params["judge"]["out"] / "grade.json").read_text())
    assert grade["graded"] is True and grade["summary"]["average"]["mean"] == 6.0
    toy = json.loads((repo / "evals" / "base" / params["model"]["id"] / "metrics.json").read_text())
    assert 0.0 <= toy["alpaca_win_rate"] <= 100.0 and 1.0 <= toy["mt_bench_average"] <= 10.0
