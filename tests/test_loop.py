"""The online loop: slicing, ranking into pairs, and a whole run on a handful of prompts."""

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import write_jsonl
from selm.config import compose_config
from selm.io import DataError
from selm.loop import prefs_slice, rank_pairs, run_loop, slice_index
from selm.rankers import get_ranker


class TableRanker:
    """Scores by a fixed table answer -> score; ties keep input order (as the real rankers)."""

    def __init__(self, scores):
        self.scores = scores

    def rank(self, record, candidates):
        return sorted(range(len(candidates)), key=lambda i: (-self.scores[candidates[i]], i))


def uf_row(pid, prompt, chosen, rejected, **extra):
    return {"prompt": prompt, "prompt_id": pid,
            "chosen": [{"role": "user", "content": prompt}, {"role": "assistant", "content": chosen}],
            "rejected": [{"role": "user", "content": prompt}, {"role": "assistant", "content": rejected}], **extra}


def test_rank_best_and_worst_with_ties_to_y_ref():
    rows = [uf_row("a", "p1", "good", "bad"), uf_row("b", "p2", "good", "bad"), uf_row("c", "p3", "good", "bad"),
            uf_row("d", "p4", "same", "same")]
    responses = [{"prompt_id": "a", "prompt": "p1", "response": "great"},   # y_ref best
                 {"prompt_id": "b", "prompt": "p2", "response": "awful"},   # y_ref worst
                 {"prompt_id": "c", "prompt": "p3", "response": "tie"},     # y_ref ties with y_w at the top
                 {"prompt_id": "d", "prompt": "p4", "response": "same"}]    # all equal texts: dropped
    ranker = TableRanker({"great": 3, "good": 2, "bad": 1, "awful": 0, "tie": 2, "same": 1})
    pairs, stats = rank_pairs(rows, responses, ranker)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("great", "bad"), ("good", "awful"), ("tie", "bad")]
    assert all(p["response"] == r["response"] for p, r in zip(pairs, responses))
    assert stats == {"pairs": 3, "dropped_equal": 1, "label_flipped": 0, "y_ref_chosen": 2, "y_ref_rejected": 1}


def test_labels_can_flip():
    rows = [uf_row("a", "p", "said-good", "said-bad")]
    pairs, stats = rank_pairs(rows, [{"prompt_id": "a", "prompt": "p", "response": "mid"}],
                              TableRanker({"said-good": 0, "said-bad": 2, "mid": 1}))
    assert (pairs[0]["chosen"], pairs[0]["rejected"], stats["label_flipped"]) == ("said-bad", "said-good", 1)


def test_missing_y_ref_is_named():
    with pytest.raises(DataError, match="no y_ref for prompt_id a"):
        rank_pairs([uf_row("a", "p", "x", "y")], [], TableRanker({}))


def test_slices_are_contiguous_and_never_reused():
    rows = [{"prompt_id": str(i)} for i in range(10)]
    seen = set()
    for t in (0, 1, 2, 3):  # Zephyr-like: offline step + 3 online iterations
        ids = [r["prompt_id"] for r in prefs_slice(rows, slice_index(t, True), 2)]
        assert ids == [str(2 * t), str(2 * t + 1)]
        assert not seen & set(ids)
        seen |= set(ids)
    assert slice_index(1, False) == 0  # a base without the offline step starts at slice 0
    with pytest.raises(DataError, match="slice 5 needs rows 10..11 but there are only 10"):
        prefs_slice(rows, 5, 2)


def test_unknown_ranker_lists_known_names():
    with pytest.raises(KeyError, match=r"ranker.name='pairm' is not a known ranker; known: \['oracle', 'pairrm'\]"):
        get_ranker(OmegaConf.create({"name": "pairm"}))


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    from selm.world.build import build_world

    out = tmp_path_factory.mktemp("world")
    build_world(out, seed=0, n_sft=10, n_train_prefs=40, n_test_prefs=8, n_eval=4, n_mt_bench=2, n_lmeval=4)
    return out


def loop_cfg(tiny_model, world, run_dir, *overrides):
    return compose_config("loop", [
        f"model.path={tiny_model}", f"data.train_prefs={world}/train_prefs.jsonl",
        f"data.test_prefs={world}/test_prefs.jsonl", "data.slice_size=8", "eval.n_prompts=6",
        "logger=none", f"run_dir={run_dir}", f"paths.ref_cache_dir={run_dir}/cache", f"paths.shared_runs={run_dir}/shared",
        "train.global_batch_size=4", "train.per_device_batch_size=4", "scale.max_new_tokens=8", *overrides,
    ])


def test_loop_end_to_end_chains_checkpoints(tiny_model, tiny_world, tmp_path):
    run = run_loop(loop_cfg(tiny_model, tiny_world, tmp_path / "run", "train.alpha=0.01"))
    summary = json.loads((run / "summary.json").read_text())
    assert list(summary) == ["base", "iter0", "iter1", "iter2", "iter3"]
    previous = str(tiny_model)
    prompts_seen = set()
    for t in range(4):
        it = run / f"iter{t}"
        metrics = json.loads((it / "model" / "train_metrics.json").read_text())
        assert metrics["init_checkpoint"] == previous  # trained from, and against, checkpoint t-1
        assert metrics["iteration"] == t
        assert metrics["with_y_ref"] is (t > 0)  # iteration 0 is offline DPO on the original pairs
        assert metrics["config"]["train"]["alpha"] == (0.0 if t == 0 else 0.01)
        ids = {json.loads(line)["prompt_id"] for line in (it / "pairs.jsonl").read_text().splitlines()}
        assert not ids & prompts_seen
        prompts_seen |= ids
        previous = str(it / "model")
    # y_ref of iteration t comes from pi_{t-1}: the responses file exists for every online iteration
    assert all((run / f"iter{t}" / "responses.jsonl").exists() for t in (1, 2, 3))


def test_loop_resumes_without_redoing_finished_stages(tiny_model, tiny_world, tmp_path):
    cfg = loop_cfg(tiny_model, tiny_world, tmp_path / "run", "model.offline_dpo_iteration=false",
                   "model.iterations=[1,2]")
    run = run_loop(cfg)
    model_file = run / "iter1" / "model" / "model.safetensors"
    stamp = model_file.stat().st_mtime_ns
    (run / "iter2" / "eval.json").unlink()
    run_loop(cfg)
    assert model_file.stat().st_mtime_ns == stamp  # finished iteration reused
    assert (run / "iter2" / "eval.json").exists()  # missing output recomputed


def test_bad_prefs_line_is_named(tiny_model, tmp_path):
    bad = tmp_path / "prefs.jsonl"
    write_jsonl(bad, [uf_row("a", "p", "x", "y")])
    with bad.open("a") as f:
        f.write('{"prompt": "q", "prompt_id": "b", "chosen": []}\n')
    cfg = loop_cfg(tiny_model, tmp_path, tmp_path / "run")
    cfg.data.train_prefs = str(bad)
    with pytest.raises(DataError, match=f"{bad}:2: missing required key 'rejected'"):
        run_loop(cfg)


def test_a_run_with_another_config_starts_afresh(tiny_model, tiny_world, tmp_path):
    overrides = ("model.offline_dpo_iteration=false", "model.iterations=[1]")
    run = run_loop(loop_cfg(tiny_model, tiny_world, tmp_path / "run", *overrides))
    first = json.loads((run / "iter1" / "model" / "train_metrics.json").read_text())
    run_loop(loop_cfg(tiny_model, tiny_world, tmp_path / "run", *overrides, "train.beta=0.5"))
    second = json.loads((run / "iter1" / "model" / "train_metrics.json").read_text())
    assert (first["config"]["train"]["beta"], second["config"]["train"]["beta"]) == (0.1, 0.5)


def test_loop_writes_nothing_into_the_base_checkpoint(tiny_model, tiny_world, tmp_path):
    before = sorted(p.name for p in Path(tiny_model).iterdir())
    run_loop(loop_cfg(tiny_model, tiny_world, tmp_path / "run", "model.offline_dpo_iteration=false",
                      "model.iterations=[1]"))
    assert sorted(p.name for p in Path(tiny_model).iterdir()) == before  # it may be a DVC-tracked output


def test_rank_w_ref_lets_y_ref_replace_the_chosen_or_the_rejected_answer():
    """Figure 6's label update (docs/paper.md section 4): y_ref is compared with y_w only; if it wins it
    replaces the chosen answer (pair y_ref > y_l), otherwise the rejected one (pair y_w > y_ref)."""
    from selm.loop import replace_pairs

    rows = [uf_row("a", "p1", "good", "bad"),    # y_ref "great" beats y_w "good": (great, bad)
            uf_row("b", "p2", "good", "bad"),    # y_ref "awful" loses to y_w: (good, awful), y_l is not used
            uf_row("c", "p3", "good", "best"),   # y_ref "mid" loses to y_w; y_l would win a 3-way ranking
            uf_row("d", "p4", "good", "bad"),    # y_ref ties with y_w: ties go to y_ref, (tie, bad)
            uf_row("e", "p5", "good", "great")]  # y_ref "great" wins but equals y_l: nothing to learn, dropped
    responses = [{"prompt_id": pid, "prompt": f"p{i + 1}", "response": y}
                 for i, (pid, y) in enumerate(zip("abcde", ["great", "awful", "mid", "tie", "great"]))]
    ranker = TableRanker({"great": 3, "good": 2, "tie": 2, "mid": 1.5, "bad": 1, "awful": 0, "best": 9})
    pairs, stats = replace_pairs(rows, responses, ranker)
    assert [(p["chosen"], p["rejected"], p["sources"]) for p in pairs] == [
        ("great", "bad", "y_ref>y_l"), ("good", "awful", "y_w>y_ref"), ("good", "mid", "y_w>y_ref"),
        ("tie", "bad", "y_ref>y_l")]
    assert [p["response"] for p in pairs] == ["great", "awful", "mid", "tie"]  # y_ref stays the optimism target
    assert stats == {"pairs": 4, "dropped_equal": 1, "label_flipped": 0, "y_ref_chosen": 2, "y_ref_rejected": 2}


def test_rank_w_ref_variant_runs_the_replacement_rule(tiny_model, tiny_world, tmp_path):
    run = run_loop(loop_cfg(tiny_model, tiny_world, tmp_path / "run", "variant=rank_w_ref", "train.alpha=0.0",
                            "model.offline_dpo_iteration=false", "model.iterations=[1]"))
    pairs = [json.loads(line) for line in (run / "iter1" / "pairs.jsonl").read_text().splitlines()]
    prefs = {r["prompt_id"]: r for r in map(json.loads, (tiny_world / "train_prefs.jsonl").read_text().splitlines())}
    for p in pairs:  # y_ref takes one slot; the other is the corpus's y_l (y_ref won) or y_w (y_ref lost)
        row = prefs[p["prompt_id"]]
        expected = {"y_ref>y_l": (p["response"], row["rejected"][-1]["content"]),
                    "y_w>y_ref": (row["chosen"][-1]["content"], p["response"])}[p["sources"]]
        assert (p["chosen"], p["rejected"]) == expected


def test_family_filter_keeps_order_and_names_unknown_families():
    from selm.loop import select_families

    rows = [{"family": f, "i": i} for i, f in enumerate(["add", "sort", "add", "upper"])]
    assert [r["i"] for r in select_families(rows, ["add", "upper"], "f")] == [0, 2, 3]
    assert select_families(rows, None, "f") == rows
    with pytest.raises(DataError, match=r"f: data.families names \['nope'\]"):
        select_families(rows, ["nope"], "f")


def test_stepwise_keeps_original_pairs_and_updates_the_reference(tiny_model, tiny_world, tmp_path):
    run = run_loop(loop_cfg(tiny_model, tiny_world, tmp_path / "run", "variant=stepwise", "train.alpha=0.0",
                            "model.offline_dpo_iteration=false", "model.iterations=[1,2]"))
    prefs = [json.loads(line) for line in (tiny_world / "train_prefs.jsonl").read_text().splitlines()]
    first = [json.loads(line) for line in (run / "iter1" / "pairs.jsonl").read_text().splitlines()]
    assert [(p["chosen"], p["rejected"]) for p in first] == \
        [(r["chosen"][-1]["content"], r["rejected"][-1]["content"]) for r in prefs[:8]]
    assert not (run / "iter1" / "responses.jsonl").exists()  # no y_ref is generated
    metrics = json.loads((run / "iter2" / "model" / "train_metrics.json").read_text())
    assert metrics["reference_checkpoint"] == str(run / "iter1" / "model")


def test_offline_variant_keeps_the_start_model_as_reference(tiny_model, tiny_world, tmp_path):
    run = run_loop(loop_cfg(tiny_model, tiny_world, tmp_path / "run", "variant=offline", "train.alpha=0.0",
                            "model.offline_dpo_iteration=false", "model.iterations=[1,2]"))
    second = json.loads((run / "iter2" / "model" / "train_metrics.json").read_text())
    assert second["init_checkpoint"] == str(run / "iter1" / "model")  # training continues
    assert second["reference_checkpoint"] == str(tiny_model)  # against the fixed start model
    with pytest.raises(ValueError, match="needs y_ref"):
        run_loop(loop_cfg(tiny_model, tiny_world, tmp_path / "run2", "variant=offline", "train.alpha=0.1"))


def test_coverage_counts_prompts_with_a_fully_correct_sample():
    from selm.loop import evaluate_test_answers, true_reward_scorer

    class Backend:  # greedy answers, then 2 samples per prompt
        def generate(self, prompts, *, n, do_sample, **kw):
            if not do_sample:
                return [["x"] for _ in prompts]
            return [["12", "x"], ["y", "y"]][: len(prompts)]

    records = [{"prompt_id": "a", "prompt": "add: 5+7", "family": "add", "gold": "12"},
               {"prompt_id": "b", "prompt": "add: 1+2", "family": "add", "gold": "3"}]
    gen = OmegaConf.create({"max_new_tokens": 4})
    metrics, rows = evaluate_test_answers(Backend(), records, gen, true_reward_scorer("toy"), coverage_samples=2)
    cov = metrics["coverage"]
    assert cov["frac_prompts_covered"] == 0.5  # prompt a has the gold "12" among its samples, b has not
    assert cov["mean_distinct"] == 1.5  # {"12", "x"} and {"y"}
    assert rows[0]["sample_rewards"][0] == 1.0


def test_launched_training_equals_in_process_training(tiny_model, tiny_world, tmp_path):
    """train.launcher runs each iteration as `<launcher> -m selm.train --config F` (accelerate launch at
    the paper scale); with the plain interpreter as launcher the checkpoint is the in-process one."""
    import sys

    common = ("train.alpha=0.01", "model.offline_dpo_iteration=false", "model.iterations=[1]")
    inproc = run_loop(loop_cfg(tiny_model, tiny_world, tmp_path / "a", *common))
    launched = run_loop(loop_cfg(tiny_model, tiny_world, tmp_path / "b", *common, f"train.launcher={sys.executable}"))
    assert (launched / "iter1" / "train_config.yaml").exists()
    a = json.loads((inproc / "iter1" / "model" / "train_metrics.json").read_text())
    b = json.loads((launched / "iter1" / "model" / "train_metrics.json").read_text())
    assert b["ref_cache_hit"] is False  # the launched training computed the reference pass itself
    assert [h["loss"] for h in b["log_history"]] == pytest.approx([h["loss"] for h in a["log_history"]], abs=1e-6)
    assert (launched / "iter1" / "model" / "model.safetensors").read_bytes() == \
        (inproc / "iter1" / "model" / "model.safetensors").read_bytes()


def test_test_answers_without_true_reward_outside_the_toy_world():
    """UltraFeedback prompts have no r*: the loop still writes the greedy answers (Figure 3 scores them
    with the ranker) and refuses a coverage measurement it cannot make."""
    from selm.loop import evaluate_test_answers

    class Backend:
        def generate(self, prompts, *, n, do_sample, **kw):
            return [["an answer"] for _ in prompts]

    records = [{"prompt_id": "a", "prompt": "Write a haiku."}]
    gen = OmegaConf.create({"max_new_tokens": 4})
    metrics, rows = evaluate_test_answers(Backend(), records, gen)
    assert metrics == {"n": 1, "mean_length": 9.0} and rows == [{"prompt_id": "a", "answer": "an answer"}]
    with pytest.raises(ValueError, match=r"coverage_samples > 0 needs a true reward \(eval.true_reward\)"):
        evaluate_test_answers(Backend(), records, gen, coverage_samples=2)


def test_best_of_k_y_ref_is_the_rankers_best_sample():
    from selm.loop import best_of_k_responses

    class Backend:  # k samples per prompt, recorded so the call can be checked
        calls = []

        def generate(self, prompts, *, n, do_sample, temperature, top_p, max_new_tokens, seed):
            self.calls.append((n, do_sample, temperature, seed))
            return [[f"{p}-s{i}" for i in range(n)] for p in prompts]

    rows = [uf_row("a", "pa", "x", "y"), uf_row("b", "pb", "x", "y")]
    scores = {"pa-s0": 0.1, "pa-s1": 0.9, "pa-s2": 0.5, "pb-s0": 0.7, "pb-s1": 0.2, "pb-s2": 0.7}  # pb: tie -> s0
    gen = OmegaConf.create({"do_sample": False, "temperature": 0.7, "top_p": 1.0, "max_new_tokens": 4})
    backend = Backend()
    out = best_of_k_responses(backend, rows, gen, seed=5, k=3, ranker=TableRanker(scores))
    assert [r["response"] for r in out] == ["pa-s1", "pb-s0"]
    assert out[0]["candidates"] == ["pa-s0", "pa-s1", "pa-s2"]
    assert backend.calls == [(3, True, 0.7, 5)]  # sampled even though generation.do_sample is false


def test_y_ref_samples_must_be_a_positive_integer():
    from selm.loop import y_ref_samples

    assert y_ref_samples(OmegaConf.create({"name": "iterative"})) == 1  # absent: the paper's y_ref
    assert y_ref_samples(OmegaConf.create({"name": "best_of_k", "y_ref_samples": 8})) == 8
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="variant.y_ref_samples must be an integer >= 1"):
            y_ref_samples(OmegaConf.create({"name": "v", "y_ref_samples": bad}))


def test_best_of_k_loop_picks_y_ref_among_k_samples(tiny_model, tiny_world, tmp_path):
    from selm.world import OracleRanker

    run = run_loop(loop_cfg(tiny_model, tiny_world, tmp_path / "run", "variant=best_of_k", "variant.y_ref_samples=3",
                            "train.alpha=0.0", "model.offline_dpo_iteration=false", "model.iterations=[1]"))
    responses = [json.loads(line) for line in (run / "iter1" / "responses.jsonl").read_text().splitlines()]
    prefs = {json.loads(line)["prompt_id"]: json.loads(line)
             for line in (tiny_world / "train_prefs.jsonl").read_text().splitlines()}
    ranker = OracleRanker(noise=0.1, salt="ranker")
    for r in responses:
        assert len(r["candidates"]) == 3
        scores = ranker.score(prefs[r["prompt_id"]], r["candidates"])
        assert r["response"] == r["candidates"][scores.index(max(scores))]
    with pytest.raises(ValueError, match="pairs=original never uses"):
        run_loop(loop_cfg(tiny_model, tiny_world, tmp_path / "run2", "variant=stepwise", "+variant.y_ref_samples=2",
                          "train.alpha=0.0"))


def test_the_true_reward_is_chosen_by_config():
    """eval.true_reward names the scorer (the toy world's r*); an unknown name fails naming the key,
    and the toy scorer refuses records without the world's fields instead of leaving them unscored."""
    from selm.io import DataError
    from selm.loop import evaluate_test_answers, true_reward_scorer

    class Backend:
        def generate(self, prompts, *, n, do_sample, **kw):
            return [["13"] for _ in prompts]

    gen = OmegaConf.create({"max_new_tokens": 4})
    records = [{"prompt_id": "a", "prompt": "add: 5+7", "family": "add", "gold": "12"}]
    metrics, rows = evaluate_test_answers(Backend(), records, gen, true_reward_scorer("toy"))
    assert metrics["mean_reward"] == 0.5 and rows[0]["reward"] == 0.5  # number family: 1 / (1 + |13 - 12|)
    assert true_reward_scorer(None) is None
    with pytest.raises(KeyError, match="eval.true_reward='pairrm' is not a known scorer"):
        true_reward_scorer("pairrm")
    with pytest.raises(DataError, match="test record b: no 'family'"):
        evaluate_test_answers(Backend(), [{"prompt_id": "b", "prompt": "Write a haiku."}], gen, true_reward_scorer("toy"))
