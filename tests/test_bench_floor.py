"""`python -m selm.bench floor`: the training seconds of a finished toy pipeline, from its records."""

import argparse
import json

from selm.bench import floor as bench_floor


def test_the_training_floor_counts_a_shared_iteration0_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.yaml").write_text("seeds: [1]\nworkers: 2\nbases: [b]\nexperiments:\n  e: {alphas: [0.0], cells: {}}\n"
                                        "  f: {alphas: [0.0], cells: {}}\n")

    def iteration(path, identity, train, ref):
        (tmp_path / path / "model").mkdir(parents=True)
        (tmp_path / path / "identity.json").write_text(json.dumps(identity))
        (tmp_path / path / "model" / "train_metrics.json").write_text(json.dumps({"train_seconds": train, "ref_seconds": ref}))
    iteration("runs/e/c/alpha0.0/seed1/iter0", {"shared": "abc"}, 10.0, 2.0)
    iteration("runs/e/c/alpha0.1/seed1/iter0", {"shared": "abc"}, 10.0, 2.0)  # the same iteration 0, linked
    iteration("runs/e/c/alpha0.1/seed1/iter1", {"iteration": 1}, 5.0, 1.0)
    iteration("runs/f/c/alpha0.0/seed1/iter0", {"shared": "abc"}, 10.0, 2.0)  # shared across experiments too
    iteration("runs/f/c/alpha0.0/seed1/iter1", {"iteration": 1}, 4.0, None)
    (tmp_path / "models" / "b").mkdir(parents=True)
    (tmp_path / "models" / "b" / "sft_metrics.json").write_text(json.dumps({"seconds": 30.0}))
    (tmp_path / "stages.json").write_text(json.dumps({"git_commit": "abc", "wall_seconds": 9.0,
                                                      "stages": [{"stage": "sft", "seconds": 7.5}]}))
    args = argparse.Namespace(spec=tmp_path / "spec.yaml", stages=tmp_path / "stages.json", out=tmp_path / "floor.json")
    result = bench_floor.bench_floor(args, "test")
    assert result["experiments"] == {"e": {"iterations": 2, "train_seconds": 15.0, "ref_seconds": 3.0},
                                     "f": {"iterations": 1, "train_seconds": 4.0, "ref_seconds": 0.0}}
    assert result["experiments_training_cpu_seconds"] == 22.0 and result["experiments_training_wall_floor_seconds"] == 11.0
    assert result["sft_seconds"] == {"b": 30.0}
    written = json.loads(args.out.read_text())
    assert written["command"] == "test" and written["machine"]["cores"] >= 1
    # the stage table of the same run, named relative to the working directory (no machine path)
    assert written["stage_table"] == {"file": "stages.json", "git_commit": "abc", "wall_seconds": 9.0,
                                      "stages": {"sft": 7.5}}
