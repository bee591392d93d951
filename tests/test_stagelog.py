"""The stage time table of `make repro`: what the stages record (selm.stagelog) and the table
read back from it (selm.bench.stages), on a two-stage DVC pipeline and on hand-made logs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import venv_env

from selm.experiments import Run, output_state, work_done
from selm.stagelog import append_record, read_log
from selm.bench.stages import format_table, stage_rows


def _env(tmp_path, **extra):
    env = venv_env(SELM_STAGE_LOG=str(tmp_path / "times.jsonl"), **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1] / "src"), env.get("PYTHONPATH", "")])
    return env


def test_rows_from_a_log_cached_interrupted_failed_and_a_torn_line(tmp_path):
    log = tmp_path / "times.jsonl"
    append_record(log, {"stage": "old", "event": "start", "time": 50.0, "pid": 1})  # before --since: ignored
    append_record(log, {"stage": "old", "event": "end", "time": 60.0, "pid": 1, "seconds": 10.0, "ok": True, "did": {}})
    append_record(log, {"stage": "a", "event": "start", "time": 100.0, "pid": 2})
    append_record(log, {"stage": "a", "event": "end", "time": 112.5, "pid": 2, "seconds": 12.5, "ok": True,
                        "did": {"runs": 3, "iterations trained": 9, "r* evaluations": 0}})
    append_record(log, {"stage": "b", "event": "start", "time": 113.0, "pid": 3})
    append_record(log, {"stage": "b", "event": "end", "time": 114.0, "pid": 3, "seconds": 1.0, "ok": False, "did": {}})
    append_record(log, {"stage": "c", "event": "start", "time": 115.0, "pid": 4})  # killed: no end
    with log.open("ab") as f:
        f.write(b'{"stage": "c", "event": "end", "ti')  # torn by the kill
    rows = stage_rows(["a", "old", "b", "c"], read_log(log), since=100.0)
    assert rows == [
        {"stage": "a", "seconds": 12.5, "status": "ok", "did": "9 iterations trained, 3 runs"},
        {"stage": "old", "seconds": 0.0, "status": "cached", "did": "cached"},
        {"stage": "b", "seconds": 1.0, "status": "failed", "did": "ran"},
        {"stage": "c", "seconds": None, "status": "interrupted", "did": "no end recorded"},
    ]
    table = format_table(rows, wall=20.0).splitlines()
    assert table[2].split() == ["a", "12.5", "9", "iterations", "trained,", "3", "runs"]
    assert table[4].split()[:3] == ["b", "1.0", "FAILED:"]
    assert table[-2].split() == ["stages", "in", "all", "13.5"]  # 12.5 + 0 + 1.0
    assert table[-1].split()[-1] == "20.0"


def test_a_killed_stage_leaves_its_start_line(tmp_path):
    # the stage waits for a signal that never comes: it is killed after its start line, however slow the machine
    code = "from selm.stagelog import stage_timer\nimport signal\nwith stage_timer():\n    signal.pause()\n"
    proc = subprocess.Popen([sys.executable, "-c", code], env=_env(tmp_path, DVC_STAGE="slow"))
    log = tmp_path / "times.jsonl"
    while not (log.exists() and log.read_text()):
        assert proc.poll() is None, f"the stage exited ({proc.returncode}) before writing its start line"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    records = read_log(log)
    assert [(r["stage"], r["event"], r["pid"]) for r in records] == [("slow", "start", proc.pid)]
    assert stage_rows(["slow"], records, since=0.0)[0]["status"] == "interrupted"


def test_nothing_is_recorded_outside_dvc(tmp_path):
    env = _env(tmp_path)
    env.pop("DVC_STAGE", None)
    subprocess.run([sys.executable, "-m", "selm.stagelog", "run", "--", sys.executable, "-c", "pass"], env=env, check=True)
    assert not (tmp_path / "times.jsonl").exists()


def test_the_table_of_a_dvc_pipeline_ran_then_cached(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "b.py").write_text(
        "from selm.stagelog import count, stage_timer\n"
        "with stage_timer():\n"
        "    count('things made', 2)\n"
        "    open('b.txt', 'w').write(open('a.txt').read() + 'b')\n")
    # laid out like the toy pipeline: dvc.yaml, every stage run from the repo root, and
    # selm.bench.stages' default pipeline (DVC names a root dvc.yaml's stages by their names)
    (repo / "dvc.yaml").write_text(
        "stages:\n"
        "  a:\n"
        "    cmd: python -m selm.stagelog run -- python -c \"open('a.txt', 'w').write('a')\"\n"
        "    outs: [a.txt]\n"
        "  b:\n"
        "    cmd: python b.py\n"
        "    deps: [a.txt, b.py]\n"
        "    outs: [b.txt]\n")
    a, b = "a", "b"
    env = _env(tmp_path)
    env.pop("DVC_STAGE", None)

    def sh(*cmd):
        return subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True, text=True).stdout

    sh("git", "init", "-q")
    sh(sys.executable, "-m", "dvc", "init", "-q")

    def repro() -> dict:
        since = time.time()
        sh(sys.executable, "-m", "dvc", "repro")
        printed = sh(sys.executable, "-m", "selm.bench", "stages", "--since", str(since), "--out", "stages.json")
        table = json.loads((repo / "stages.json").read_text())
        assert table["machine"]["cores"] >= 1 and table["machine"]["cpu_model"] and table["git_commit"]
        assert printed.splitlines()[0].split() == ["stage", "seconds", "what", "it", "did"]
        return {r["stage"]: r for r in table["stages"]}

    first = repro()
    assert (repo / "b.txt").read_text() == "ab"
    assert [first[s]["status"] for s in (a, b)] == ["ok", "ok"]
    assert (first[a]["did"], first[b]["did"]) == ("ran", "2 things made")
    ends = {r["stage"]: r for r in read_log(tmp_path / "times.jsonl") if r["event"] == "end"}
    assert all(first[s]["seconds"] == ends[s]["seconds"] for s in (a, b))  # the table shows what each stage recorded
    second = repro()  # nothing changed: DVC skips both
    assert [(second[s]["status"], second[s]["seconds"]) for s in (a, b)] == [("cached", 0.0), ("cached", 0.0)]
    (repo / "b.py").write_text((repo / "b.py").read_text().replace("count('things made', 2)", "raise SystemExit(3)"))
    since = time.time()
    with pytest.raises(subprocess.CalledProcessError):
        sh(sys.executable, "-m", "dvc", "repro")
    rows = {r["stage"]: r for r in stage_rows([a, b], read_log(tmp_path / "times.jsonl"), since)}
    assert (rows[a]["status"], rows[b]["status"]) == ("cached", "failed")


def test_what_a_run_did_is_read_from_the_files_it_wrote(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = Run("exp", "cell/alpha0.0", 0.0, 42)

    def write(path, text="{}"):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)  # a new inode, as selm.io's atomic writes

    write(run.run_dir / "base" / "eval.json")
    write(run.run_dir / "iter1" / "model" / "train_metrics.json")
    before = output_state(run)
    shared = tmp_path / "shared" / "train_metrics.json"
    write(shared)
    (run.run_dir / "iter0" / "model").mkdir(parents=True)
    os.link(shared, run.run_dir / "iter0" / "model" / "train_metrics.json")  # iteration 0, linked
    write(run.run_dir / "iter2" / "model" / "train_metrics.json")
    write(run.run_dir / "iter2" / "eval.json")
    write(run.run_dir / "iter1" / "model" / "train_metrics.json", '{"redone": 1}')
    for t in (1, 2):
        write(run.eval_dir / f"iter{t}" / "metrics.json")
    assert work_done(before, output_state(run)) == {
        "runs": 1, "iterations trained": 2, "shared iterations 0 linked": 1, "checkpoint evaluations": 2}
    assert work_done(output_state(run), output_state(run)) == {"runs": 1}

