"""Loop evaluations computed once per identity and linked into every run that asks for it
(selm.evalstore): shared between runs, recomputed for another identity, never trusted when the
stored entry is half-written or corrupted, and byte-identical to a fresh computation."""

import json
import threading
import time
from pathlib import Path

import pytest

import selm.loop
from selm import evalstore
from selm.config import compose_config
from selm.generation import backend_from_config
from selm.io import read_jsonl
from selm.loop import run_loop, true_reward_scorer
from selm.provenance import digest

EVAL_FILES = ("eval.json", "eval_answers.jsonl", "eval_identity.json")


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    from selm.world.build import build_world

    out = tmp_path_factory.mktemp("world")
    build_world(out, seed=0, n_sft=10, n_train_prefs=40, n_test_prefs=8, n_eval=4, n_mt_bench=2, n_lmeval=4)
    return out


def loop_cfg(tiny_model, world, run_dir, shared, *overrides):
    """A run without online iterations (model.iterations=[]) on 6 test prompts: the base's
    evaluation, and iteration 0's (offline DPO) when `model.offline_dpo_iteration=true` is given."""
    return compose_config("loop", [
        f"model.path={tiny_model}", f"data.train_prefs={world}/train_prefs.jsonl",
        f"data.test_prefs={world}/test_prefs.jsonl", "data.slice_size=8", "eval.n_prompts=6",
        "model.iterations=[]",
        "logger=none", f"run_dir={run_dir}", f"paths.ref_cache_dir={shared}/cache", f"paths.shared_runs={shared}",
        "train.global_batch_size=4", "train.per_device_batch_size=4", "scale.max_new_tokens=8", *overrides,
    ])


@pytest.fixture
def evaluations(monkeypatch):
    """The checkpoints the loop's evaluator actually ran on, in order."""
    seen, original = [], selm.loop.evaluate_test_answers

    def counting(backend, records, *args, **kwargs):
        seen.append(len(records))
        return original(backend, records, *args, **kwargs)

    monkeypatch.setattr(selm.loop, "evaluate_test_answers", counting)
    evalstore.take_counts()
    return seen


def files(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in EVAL_FILES}


def test_two_runs_sharing_the_base_and_iteration_0_evaluate_each_once(tiny_model, tiny_world, tmp_path, evaluations):
    shared = tmp_path / "shared"
    a = run_loop(loop_cfg(tiny_model, tiny_world, tmp_path / "a", shared, "model.offline_dpo_iteration=true",
                           "train.alpha=0.0"))
    assert len(evaluations) == 2  # the base and iteration 0, 6 prompts each
    b = run_loop(loop_cfg(tiny_model, tiny_world, tmp_path / "b", shared, "model.offline_dpo_iteration=true",
                           "train.alpha=0.1"))
    assert evaluations == [6, 6]  # the second run (another alpha) computed nothing
    assert evalstore.take_counts() == {"r* evaluations computed": 2, "r* evaluations linked": 2}
    for folder in ("base", "iter0"):
        assert files(a / folder) == files(b / folder)
        assert (a / folder / "eval.json").stat().st_ino == (b / folder / "eval.json").stat().st_ino  # linked
        assert len(read_jsonl(a / folder / "eval_answers.jsonl")) == 6
    entries = sorted(p.name for p in (shared / "evals").iterdir() if p.is_dir())
    assert entries == sorted(digest(json.loads((a / f / "eval_identity.json").read_text())) for f in ("base", "iter0"))
    assert json.loads((a / "summary.json").read_text()) == json.loads((b / "summary.json").read_text())


def test_another_identity_is_computed_again(tiny_model, tiny_world, tmp_path, evaluations):
    shared = tmp_path / "shared"
    a = run_loop(loop_cfg(tiny_model, tiny_world, tmp_path / "a", shared, "model.offline_dpo_iteration=false"))
    b = run_loop(loop_cfg(tiny_model, tiny_world, tmp_path / "b", shared, "model.offline_dpo_iteration=false",
                          "eval.n_prompts=4"))
    assert evaluations == [6, 4]
    assert evalstore.take_counts() == {"r* evaluations computed": 2}
    assert len(read_jsonl(b / "base" / "eval_answers.jsonl")) == 4
    assert (a / "base" / "eval.json").read_bytes() != (b / "base" / "eval.json").read_bytes()
    # the run folder itself, rerun under the first identity, gets the first evaluation back (linked)
    run_loop(loop_cfg(tiny_model, tiny_world, tmp_path / "b", shared, "model.offline_dpo_iteration=false"))
    assert evaluations == [6, 4]
    assert files(b / "base") == files(a / "base")


def test_the_stored_entry_equals_a_fresh_evaluation(tiny_model, tiny_world, tmp_path, evaluations):
    shared = tmp_path / "shared"
    cfg = loop_cfg(tiny_model, tiny_world, tmp_path / "a", shared, "model.offline_dpo_iteration=false")
    run = run_loop(cfg)
    identity = json.loads((run / "base" / "eval_identity.json").read_text())
    entry = shared / "evals" / digest(identity)
    # a fresh evaluation of the base, written as the loop wrote eval.json and its answers before the store
    test = read_jsonl(tiny_world / "test_prefs.jsonl")[:6]
    with backend_from_config(cfg, Path(tiny_model)) as backend:
        metrics, rows = selm.loop.evaluate_test_answers(backend, test, cfg.generation, true_reward_scorer("toy"), 0)
    assert (entry / "eval.json").read_text() == json.dumps(metrics, indent=2, sort_keys=True) + "\n"
    assert (entry / "eval_answers.jsonl").read_text() == "".join(
        json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    assert (entry / "eval_identity.json").read_text() == json.dumps(identity, indent=2, sort_keys=True) + "\n"
    assert files(entry) == files(run / "base")


# --- the store alone, with a stand-in evaluator ------------------------------------------------

IDENTITY = {"checkpoint": "c" * 64, "test": "t" * 64, "eval": {"n_prompts": 2}}


class Evaluator:
    """Counts its calls; its metrics say which call made them."""

    def __init__(self, fail: bool = False, pause: float = 0.0):
        self.calls, self.fail, self.pause = 0, fail, pause

    def __call__(self):
        self.calls += 1
        time.sleep(self.pause)
        if self.fail:
            raise RuntimeError("evaluation crashed")
        return {"n": 2, "call": self.calls}, [{"prompt_id": "a", "answer": "x"}, {"prompt_id": "b", "answer": "é"}]


def stored(tmp_path, out="run/base", evaluator=None, identity=IDENTITY):
    return evalstore.shared_evaluation(tmp_path / "shared", identity, tmp_path / out, evaluator or Evaluator())


def entry_of(tmp_path, identity=IDENTITY) -> Path:
    return tmp_path / "shared" / "evals" / digest(identity)


def test_a_store_entry_is_reused_and_its_files_are_exactly_what_was_computed(tmp_path):
    first = Evaluator()
    assert stored(tmp_path, "a/base", first) == {"n": 2, "call": 1}
    second = Evaluator()
    assert stored(tmp_path, "b/base", second) == {"n": 2, "call": 1}
    assert (first.calls, second.calls) == (1, 0)
    assert (tmp_path / "b/base/eval.json").read_text() == '{\n  "call": 1,\n  "n": 2\n}\n'
    assert (tmp_path / "b/base/eval_answers.jsonl").read_text() == (
        '{"prompt_id": "a", "answer": "x"}\n{"prompt_id": "b", "answer": "é"}\n')
    assert json.loads((tmp_path / "b/base/eval_identity.json").read_text()) == IDENTITY
    assert sorted(p.name for p in entry_of(tmp_path).iterdir()) == sorted([*EVAL_FILES, "stored.json"])


@pytest.mark.parametrize("damage", ["no record", "truncated eval.json", "answers missing", "other identity",
                                    "record not JSON"])
def test_a_damaged_entry_is_computed_again_never_trusted(tmp_path, damage):
    stored(tmp_path, "a/base")
    entry = entry_of(tmp_path)
    if damage == "no record":  # as a build that stopped before its last file
        (entry / "stored.json").unlink()
    elif damage == "truncated eval.json":
        (entry / "eval.json").write_text('{\n  "call": 1,\n')
    elif damage == "answers missing":
        (entry / "eval_answers.jsonl").unlink()
    elif damage == "other identity":
        record = json.loads((entry / "stored.json").read_text())
        record["identity"]["eval"]["n_prompts"] = 3
        (entry / "stored.json").write_text(json.dumps(record))
    else:
        (entry / "stored.json").write_text('{"identity": ')
    assert evalstore.entry_problem(entry, IDENTITY) is not None
    again = Evaluator()
    again.calls = 1  # so this computation's metrics say "call 2"
    assert stored(tmp_path, "b/base", again) == {"n": 2, "call": 2}
    assert again.calls == 2
    assert evalstore.entry_problem(entry, IDENTITY) is None
    assert json.loads((tmp_path / "b/base/eval.json").read_text()) == {"n": 2, "call": 2}


def test_a_crash_mid_evaluation_leaves_nothing_that_looks_finished(tmp_path):
    with pytest.raises(RuntimeError, match="evaluation crashed"):
        stored(tmp_path, "a/base", Evaluator(fail=True))
    assert not entry_of(tmp_path).exists()
    assert not (tmp_path / "a/base/eval.json").exists()
    # a build folder left by a process killed while writing is neither used nor in the way
    building = entry_of(tmp_path).with_name("." + entry_of(tmp_path).name + ".building")
    building.mkdir(parents=True)
    (building / "eval.json").write_text('{"n": 2, "call": 99}\n')
    ok = Evaluator()
    assert stored(tmp_path, "a/base", ok) == {"n": 2, "call": 1}
    assert ok.calls == 1 and not building.exists()


def test_a_run_folder_from_another_identity_loses_its_old_results(tmp_path):
    stored(tmp_path, "a/base")
    other = {**IDENTITY, "test": "u" * 64}
    stored(tmp_path, "a/base", identity=other)
    assert json.loads((tmp_path / "a/base/eval_identity.json").read_text()) == other
    assert sorted(p.name for p in (tmp_path / "a/base").iterdir()) == sorted(EVAL_FILES)


def test_parallel_runs_wait_for_the_first_and_compute_once(tmp_path):
    evaluator, results = Evaluator(pause=0.3), {}

    def run(name):
        results[name] = stored(tmp_path, f"{name}/base", evaluator)

    threads = [threading.Thread(target=run, args=(name,)) for name in ("a", "b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert evaluator.calls == 1
    assert results == {name: {"n": 2, "call": 1} for name in ("a", "b", "c")}
