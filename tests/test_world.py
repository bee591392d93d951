"""Tests of the toy world (selm.world): rewards by hand, policies, preference corpus, oracles, build."""

from __future__ import annotations

import hashlib
import json
import random
import statistics

import pytest

from selm.world import (
    FAMILIES,
    MIXES,
    POLICIES,
    OracleJudge,
    OracleRanker,
    build_world,
    demonstrations,
    hash_normal,
    levenshtein,
    mt_bench_records,
    prompt_id,
    true_reward,
)
from selm.world.build import main as build_main

SMALL = dict(n_sft=300, n_train_prefs=200, n_test_prefs=60, n_eval=50, n_mt_bench=12, n_lmeval=40)
PRINTABLE = {chr(c) for c in range(32, 127)} | {"\n"}


def rec(family: str, prompt: str) -> dict:
    """A record built the way the world builds them: gold solved from the prompt."""
    fam = FAMILIES[family]
    return {"family": family, "prompt": prompt, "gold": fam.solve(fam.parse(prompt))}


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    manifest = build_world(out, seed=7, **SMALL)
    return out, manifest


# --- rewards, computed by hand ------------------------------------------------------------------


def test_levenshtein():
    assert levenshtein("", "abc") == 3
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("abc", "abc") == 0


@pytest.mark.parametrize(
    "family, prompt, gold, cases",
    [
        # 1 - edits / max(len): one substitution in 3 chars -> 2/3; copy "abc" vs "cba" is 2 edits.
        ("reverse", "reverse: abc", "cba", {"cba": 1.0, "cbx": 2 / 3, "abc": 1 / 3, "cbaa": 0.75, "": 0.0}),
        # habit "Abcd": 3 of 4 letters wrong
        ("upper", "upper: abcd", "ABCD", {"ABCD": 1.0, "Abcd": 0.25, "ABC": 0.75, "abcd": 0.0}),
        # habit (descending) "cba" vs "abc": two substitutions
        ("sort", "sort: bca", "abc", {"abc": 1.0, "cba": 1 / 3, "ab": 2 / 3}),
        ("rotate", "rotate: abcd", "bcda", {"bcda": 1.0, "bcd": 0.75, "bcdax": 0.8}),
        # habit copies "banana": 3 deletions over 6 chars
        ("dedup", "dedup: banana", "ban", {"ban": 1.0, "banana": 0.5, "bn": 2 / 3}),
        # habit appends " (done)": 7 insertions over 14 chars
        ("join", "join -: cat dog", "cat-dog", {"cat-dog": 1.0, "cat-dog (done)": 0.5, "cat dog": 6 / 7}),
    ],
)
def test_string_rewards(family, prompt, gold, cases):
    record = rec(family, prompt)
    assert record["gold"] == gold
    for answer, expected in cases.items():
        assert true_reward(record, answer) == pytest.approx(expected), answer


def test_number_rewards():
    count = rec("count", "count a: banana")
    assert count["gold"] == "3"
    # 1 / (1 + |difference|); non-integers get nothing; "03" is the number 3
    expected = {"3": 1.0, "4": 0.5, "6": 0.25, "-1": 0.2, "03": 1.0, "three": 0.0, "3.0": 0.0, "": 0.0}
    for answer, value in expected.items():
        assert true_reward(count, answer) == pytest.approx(value), answer
    add = rec("add", "add: 18+27")
    assert add["gold"] == "45"
    assert FAMILIES["add"].habit_answer(add) == "35"  # 8+7 -> 5, carry dropped; 1+2 -> 3
    assert true_reward(add, "35") == pytest.approx(1 / 11)
    assert true_reward(add, "44") == pytest.approx(0.5)


def test_whitespace_is_stripped_before_grading():
    assert true_reward(rec("reverse", "reverse: abc"), " cba\n") == 1.0
    assert true_reward(rec("count", "count a: banana"), "3\n") == 1.0
    assert true_reward(rec("join", "join -: cat dog"), "cat -dog") < 1.0  # inner whitespace counts


def test_habits_by_hand():
    habit = {f: FAMILIES[f].habit_answer for f in FAMILIES}
    assert habit["reverse"](rec("reverse", "reverse: abc")) == "abc"
    assert habit["upper"](rec("upper", "upper: abcd")) == "Abcd"
    assert habit["sort"](rec("sort", "sort: bca")) == "cba"
    assert habit["rotate"](rec("rotate", "rotate: abcd")) == "dabc"
    assert habit["dedup"](rec("dedup", "dedup: banana")) == "banana"
    assert habit["count"](rec("count", "count a: banana")) == "6"
    assert habit["join"](rec("join", "join -: cat dog")) == "cat-dog (done)"


def test_unknown_family_names_the_known_ones():
    with pytest.raises(KeyError, match="reverse"):
        FAMILIES["nope"]
    with pytest.raises(KeyError):
        true_reward({"family": "nope", "prompt": "x", "gold": "y"}, "y")


def test_families_sample_consistent_short_printable_records():
    assert len(FAMILIES) >= 6
    rng = random.Random(0)
    for name, fam in FAMILIES.items():
        for _ in range(200):
            r = fam.sample(rng)
            assert r["family"] == name
            assert fam.solve(fam.parse(r["prompt"])) == r["gold"]
            assert len(r["prompt"]) <= 40 and len(r["gold"]) <= 24
            assert set(r["prompt"] + r["gold"]) <= PRINTABLE
            assert true_reward(r, r["gold"]) == 1.0
            assert true_reward(r, fam.habit_answer(r)) < 1.0  # every habit is a real error


# --- policies ---------------------------------------------------------------------------------


def test_noise_policies_are_imperfect_and_deterministic():
    rng = random.Random(1)
    for name, fam in FAMILIES.items():
        for _ in range(50):
            r = fam.sample(rng)
            for policy in ("noise", "habit_noise"):
                state = rng.getstate()
                answer = POLICIES[policy](r, rng)
                rng.setstate(state)
                assert POLICIES[policy](r, rng) == answer
                assert answer and true_reward(r, answer) < 1.0
                assert set(answer) <= PRINTABLE


def test_demonstration_mix_proportions():
    rows = demonstrations(4000, "weak", seed=1)
    for policy, weight in MIXES["weak"].items():
        share = sum(r["policy"] == policy for r in rows) / len(rows)
        assert share == pytest.approx(weight, abs=0.03), policy
    custom = demonstrations(2000, {"gold": 1, "habit": 1}, seed=2)
    assert sum(r["policy"] == "gold" for r in custom) / 2000 == pytest.approx(0.5, abs=0.04)
    with pytest.raises(KeyError):
        demonstrations(10, "no-such-mix")
    with pytest.raises(KeyError):
        demonstrations(10, {"oracle": 1.0})


def test_headroom_weak_demonstrations_well_below_gold():
    def mean_reward(rows):
        return statistics.fmean(true_reward(r, r["completion"]) for r in rows)

    weak = demonstrations(2000, "weak", seed=3)
    strong = demonstrations(2000, "strong", seed=3)
    gold = demonstrations(500, {"gold": 1.0}, seed=3)
    assert mean_reward(gold) == 1.0
    assert mean_reward(weak) < 0.75
    assert mean_reward(weak) < mean_reward(strong) < 1.0
    habit = [r for r in weak if r["policy"] == "habit"]
    assert mean_reward(habit) < 0.45  # the habit is a real mode error, far from gold


# --- oracles ----------------------------------------------------------------------------------


def test_hash_normal_is_deterministic_and_standard():
    assert hash_normal("s", "p", "a") == hash_normal("s", "p", "a")
    assert hash_normal("s", "p", "a") != hash_normal("t", "p", "a")
    draws = [hash_normal("s", "p", str(i)) for i in range(4000)]
    assert abs(statistics.fmean(draws)) < 0.1
    assert statistics.stdev(draws) == pytest.approx(1.0, abs=0.1)


def test_ranker_orders_by_reward_without_noise():
    r = rec("reverse", "reverse: abcd")  # gold "dcba"
    ranker = OracleRanker(noise=0.0)
    assert ranker.score(r, ["dcba", "dcbx", ""]) == pytest.approx([1.0, 0.75, 0.0])
    assert ranker.rank(r, ["", "dcba", "dcbx"]) == [1, 2, 0]


def test_ranker_ties_go_to_the_earlier_candidate():
    r = rec("reverse", "reverse: abcd")
    assert OracleRanker(noise=0.0).rank(r, ["dcbx", "dcxa", "dcba"]) == [2, 0, 1]
    assert OracleRanker(noise=0.0).rank(r, ["zzzz", "dcbx", "dcxa"]) == [1, 2, 0]
    # with noise, identical answers (up to surrounding whitespace) get identical scores and tie
    noisy = OracleRanker(noise=0.5, salt="x")
    assert noisy.rank(r, ["abcd", "abcd\n", "abcd"]) == [0, 1, 2]


def test_ranker_noise_is_deterministic_per_candidate():
    r = rec("sort", "sort: bca")
    ranker = OracleRanker(noise=0.2)
    first = ranker.score(r, ["abc", "cba", "ab"])
    assert ranker.score(r, ["ab", "abc"]) == [first[2], first[0]]
    assert first != OracleRanker(noise=0.0).score(r, ["abc", "cba", "ab"])
    assert OracleRanker(noise=0.2, salt="other").score(r, ["abc"]) != first[:1]


def test_judge_prefers_longer_answer_at_equal_reward():
    r = rec("reverse", "reverse: abcd")  # gold "dcba"
    judge = OracleJudge(noise=0.0)
    short, long = "dcb", "dcbx"  # one deletion vs one substitution: both r* = 0.75
    assert true_reward(r, short) == true_reward(r, long)
    p = judge.prefers(r, long, short)
    assert 0.5 < p < 0.75  # a mild bias, not a landslide
    assert judge.prefers(r, short, long) == pytest.approx(1 - p)
    assert judge.score(r, long) > judge.score(r, short)
    assert judge.prefers(r, "dcba", "dcba") == 0.5


def test_judge_prefers_reward_over_length():
    r = rec("join", "join -: cat dog")
    judge = OracleJudge(noise=0.0)
    assert judge.prefers(r, "cat-dog", "cat-dog (done)") > 0.9
    assert judge.score(r, "cat-dog") == 10.0
    assert judge.score(r, "") == 1.0
    noisy = OracleJudge()
    assert noisy.prefers(r, "cat-dog", "x") == noisy.prefers(r, "cat-dog", "x")
    assert 1.0 <= noisy.score(r, "cat-dog (done)") <= 10.0


# --- the built world --------------------------------------------------------------------------


def test_build_is_deterministic(world, tmp_path):
    out, manifest = world
    again = build_world(tmp_path / "again", seed=7, **SMALL)
    assert again == manifest
    for name in manifest["sha256"]:
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes()
    assert (tmp_path / "again" / "world.json").read_bytes() == (out / "world.json").read_bytes()
    other = build_world(tmp_path / "other", seed=8, **SMALL)
    assert all(other["sha256"][n] != manifest["sha256"][n] for n in manifest["sha256"])


def test_manifest_sizes_and_hashes(world):
    out, manifest = world
    assert manifest["seed"] == 7
    assert sorted(manifest["families"]) == sorted(FAMILIES)
    for name, digest in manifest["sha256"].items():
        data = (out / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest
        assert len(read_jsonl(out / name)) == manifest["sizes"][name]
        assert set(data.decode()) <= PRINTABLE
    assert manifest["sizes"]["sft_weak.jsonl"] == SMALL["n_sft"]
    assert manifest["sizes"]["train_prefs.jsonl"] == SMALL["n_train_prefs"]
    assert json.loads((out / "world.json").read_text()) == manifest
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_prompt_sets_are_disjoint(world):
    out, _ = world
    sets = {
        "train_prefs": {r["prompt"] for r in read_jsonl(out / "train_prefs.jsonl")},
        "test_prefs": {r["prompt"] for r in read_jsonl(out / "test_prefs.jsonl")},
        "alpaca_eval": {r["instruction"] for r in read_jsonl(out / "alpaca_eval.jsonl")},
        "mt_bench": {r["turns"][0] for r in read_jsonl(out / "mt_bench.jsonl")},
        "lmeval_mc": {r["query"] for r in read_jsonl(out / "lmeval_mc.jsonl")},
        "lmeval_gen": {r["query"] for r in read_jsonl(out / "lmeval_gen.jsonl")},
    }
    sft = {r["prompt"] for n in ("sft_weak", "sft_strong") for r in read_jsonl(out / f"{n}.jsonl")}
    names = sorted(sets)
    for i, a in enumerate(names):
        assert not sets[a] & sft, a
        for b in names[i + 1 :]:
            assert not sets[a] & sets[b], (a, b)


def test_preference_rows_follow_ultrafeedback_schema(world):
    out, _ = world
    for split in ("train_prefs", "test_prefs"):
        rows = read_jsonl(out / f"{split}.jsonl")
        assert len({r["prompt"] for r in rows}) == len(rows)
        for row in rows:
            assert row["prompt_id"] == prompt_id(row["prompt"])
            for side in ("chosen", "rejected"):
                assert [m["role"] for m in row[side]] == ["user", "assistant"]
                assert row[side][0]["content"] == row["prompt"]
            assert row["chosen"][1]["content"] != row["rejected"][1]["content"]
            assert 1.0 <= row["score_rejected"] < row["score_chosen"] <= 10.0
            assert row["policy_chosen"] != row["policy_rejected"]
            assert row["gold"] == rec(row["family"], row["prompt"])["gold"]


def test_sft_and_eval_rows(world):
    out, _ = world
    for name in ("sft_weak", "sft_strong"):
        for row in read_jsonl(out / f"{name}.jsonl"):
            assert {"prompt", "completion", "family", "policy"} <= set(row)
    for row in read_jsonl(out / "alpaca_eval.jsonl"):
        assert {"instruction", "output", "generator", "dataset", "family", "gold"} <= set(row)
    for row in read_jsonl(out / "lmeval_mc.jsonl"):
        assert len(set(row["choices"])) == len(row["choices"]) == 4
        assert row["choices"][row["gold"]] == rec(row["family"], row["query"])["gold"]
    for row in read_jsonl(out / "lmeval_gen.jsonl"):
        assert row["answer"] == rec(row["family"], row["query"])["gold"]


def test_mt_bench_questions_grade_their_references(world):
    out, _ = world
    for q in read_jsonl(out / "mt_bench.jsonl"):
        assert len(q["turns"]) == 2 and q["turns"][1].startswith("now ")
        turn1, turn2 = mt_bench_records(q)
        assert true_reward(turn1, q["reference"][0]) == 1.0
        assert true_reward(turn2, q["reference"][1]) == 1.0
        assert q["reference"][1] != q["reference"][0]
        assert OracleJudge(noise=0.0).score(turn2, q["reference"][1]) == 10.0


def test_cli_builds_a_world(tmp_path):
    args = ["--out", str(tmp_path), "--seed", "3", "--n-sft", "20", "--n-train-prefs", "10"]
    args += ["--n-test-prefs", "5", "--n-eval", "5", "--n-mt-bench", "3", "--n-lmeval", "4"]
    assert build_main(args) == 0
    manifest = json.loads((tmp_path / "world.json").read_text())
    assert manifest["sizes"]["sft_strong.jsonl"] == 20 and manifest["seed"] == 3
