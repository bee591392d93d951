"""MT-Bench: FastChat's rating parser, two-turn generation (turn 2 sees the model's own turn-1
answer), FastChat's judge prompts through a real local server, and run averages by hand."""

import random
import statistics

import pytest
from judge_server import JudgeServer, text_reply

from selm.benchmarks import mt_bench
from selm.generation import get_backend
from selm.judges import get_judge
from selm.judges.mt_bench_prompt import parse_rating
from selm.world import POLICIES, sample_records
from selm.world.evalsets import mt_bench_records, mt_bench_rows

KEY_ENV = "SELM_TEST_JUDGE_KEY"


@pytest.mark.parametrize(
    "text, score",
    [("The answer is fine. Rating: [[8]]", 8.0), ("[[8.5]]", 8.5), ("Rating: [7]", 7.0), ("[[10]] overall", 10.0)],
)
def test_rating_parser_reads_fastchat_formats(text, score):
    assert parse_rating(text) == (score, None)


@pytest.mark.parametrize("text, reason", [("I would rate it highly.", "no [[rating]]"), ("[[0]]", "outside 1..10")])
def test_rating_parser_reports_unparsable_text(text, reason):
    score, error = parse_rating(text)
    assert score is None and reason in error


QUESTIONS = [
    {"question_id": 1, "category": "writing", "turns": ["Write a haiku.", "Now make it rhyme."]},
    {"question_id": 2, "category": "math", "turns": ["What is 2+3?", "Now double it."]},
]


def test_turn_two_sees_the_models_own_first_answer():
    seen = []

    def fake_generate(conversations):
        seen.append(conversations)
        return [f"answer to: {c[-1]['content']}" for c in conversations]

    rows = mt_bench.generate_answers(fake_generate, QUESTIONS, model_id="fake", tstamp=0.0)
    turn2 = seen[1][0]
    assert [m["role"] for m in turn2] == ["user", "assistant", "user"]
    assert turn2[1]["content"] == rows[0]["choices"][0]["turns"][0] == "answer to: Write a haiku."
    assert set(rows[0]) == {"question_id", "answer_id", "model_id", "choices", "tstamp"}
    assert rows == mt_bench.generate_answers(fake_generate, QUESTIONS, model_id="fake", tstamp=0.0)


def test_hf_generation_renders_the_whole_conversation_with_the_chat_template(tiny_model, tmp_path):
    backend = get_backend("hf", tiny_model, batch_size=4, progress=False)
    generate = mt_bench.chat_generator(backend, max_new_tokens=6, do_sample=True, seed=3)
    rows = mt_bench.generate_answers(generate, QUESTIONS, model_id="tiny")
    mt_bench.write_answers(tmp_path / "tiny.jsonl", rows)
    answers = mt_bench.load_answers(tmp_path / "tiny.jsonl")
    first_answer = answers[1]["choices"][0]["turns"][0]
    assert first_answer  # sampled from a random model: some characters
    expected = backend.tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTIONS[0]["turns"][0]},
         {"role": "assistant", "content": first_answer},
         {"role": "user", "content": QUESTIONS[0]["turns"][1]}],
        add_generation_prompt=True, tokenize=False,
    )
    assert expected in generate.rendered and first_answer in expected


def test_fastchat_prompts_through_the_server_and_run_averages_by_hand(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    answers = {1: {"question_id": 1, "model_id": "m", "choices": [{"index": 0, "turns": ["A haiku.", "A rhyme."]}]},
               2: {"question_id": 2, "model_id": "m", "choices": [{"index": 0, "turns": ["5", "10"]}]}}
    references = {2: {"question_id": 2, "choices": [{"index": 0, "turns": ["2+3=5", "10"]}]}}
    # Item order with one worker: question, then run, then turn. Scores per (question, run, turn):
    scores = {1: [(8, 6), (9, 5), (7, None)], 2: [(4, 10), (5, 9), (3, 8)]}
    replies = [text_reply("garbled" if s is None else f"Explanation. Rating: [[{s}]]")
               for q in (1, 2) for run in scores[q] for s in run]
    with JudgeServer() as server:
        server.push(*replies)
        judge = get_judge("openai", base_url=server.base_url, api_key_env=KEY_ENV, concurrency=1)
        judgments = mt_bench.grade(QUESTIONS, answers, judge, n_runs=3, references=references)
        bodies = server.bodies()
    assert len(bodies) == 12  # 2 questions x 3 runs x 2 turns, runs judged separately
    turn1, turn2, math1 = bodies[0], bodies[1], bodies[6]
    assert turn1["model"] == "gpt-4" and (turn1["temperature"], turn1["max_tokens"]) == (0, 2048)
    assert turn1["messages"][0] == {"role": "system", "content": "You are a helpful assistant."}
    assert ("[Question]\nWrite a haiku.\n\n[The Start of Assistant's Answer]\nA haiku.\n"
            "[The End of Assistant's Answer]") in turn1["messages"][1]["content"]
    assert "focus on the assistant's answer to the second user question" in turn2["messages"][0]["content"]
    assert ("### User:\nWrite a haiku.\n\n### Assistant A:\nA haiku.\n\n### User:\nNow make it rhyme.\n\n"
            "### Assistant A:\nA rhyme.") in turn2["messages"][1]["content"]
    assert "[The Start of Reference Answer]\n2+3=5\n[The End of Reference Answer]" in math1["messages"][1]["content"]
    bad = [j for j in judgments if j["score"] is None]
    assert len(bad) == 1 and bad[0]["run"] == 2 and bad[0]["turn"] == 2 and "no [[rating]]" in bad[0]["error"]

    summary = mt_bench.summarize(judgments)
    # By hand, per run: average over scored turns, turn 1, turn 2.
    run_avg = [(8 + 6 + 4 + 10) / 4, (9 + 5 + 5 + 9) / 4, (7 + 3 + 8) / 3]
    run_t1 = [(8 + 4) / 2, (9 + 5) / 2, (7 + 3) / 2]
    run_t2 = [(6 + 10) / 2, (5 + 9) / 2, 8]
    for key, values in (("average", run_avg), ("turn_1", run_t1), ("turn_2", run_t2)):
        assert [r[key] for r in summary["per_run"]] == pytest.approx(values)
        assert summary[key]["mean"] == pytest.approx(sum(values) / 3)
        assert summary[key]["std"] == pytest.approx(statistics.stdev(values))
        assert (summary[key]["min"], summary[key]["max"]) == (min(values), max(values))
    assert summary["n_errors"] == 1 and summary["n_runs"] == 3


def test_oracle_grades_toy_questions_over_independent_runs():
    records = sample_records(12, random.Random(0))
    questions = mt_bench_rows(records, random.Random(1))
    judge = get_judge("oracle", mt_bench=questions)
    gold = {q["question_id"]: {"question_id": q["question_id"], "model_id": "gold",
                               "choices": [{"index": 0, "turns": list(q["reference"])}]} for q in questions}
    rng = random.Random(2)
    # Poor answers: the family's bad habit on turn 1, turn 1's gold repeated on turn 2.
    habit = {q["question_id"]: {"question_id": q["question_id"], "model_id": "habit", "choices": [{
        "index": 0, "turns": [POLICIES["habit"](mt_bench_records(q)[0], rng), q["reference"][0]]}]}
        for q in questions}
    good = mt_bench.summarize(mt_bench.grade(questions, gold, judge, n_runs=3))
    poor = mt_bench.summarize(mt_bench.grade(questions, habit, judge, n_runs=3))
    assert good["average"]["mean"] > poor["average"]["mean"] + 1
    assert poor["average"]["std"] > 0  # runs are independent judge noise, not copies
    with pytest.raises(KeyError, match="only grades the toy world"):
        judge.single(["unknown question"], ["x"])


class _RecordingBackend:
    """Answers 'T=<temperature> sample=<do_sample> seed=<seed>' and records every call's settings."""

    class tokenizer:  # noqa: N801 - stands in for a tokenizer object
        @staticmethod
        def apply_chat_template(messages, add_generation_prompt, tokenize):
            return " | ".join(m["content"] for m in messages)

    def __init__(self):
        self.calls = []

    def chat(self, conversations, n, **settings):
        self.calls.append(settings)
        return [[f"T={settings['temperature']} sample={settings['do_sample']} seed={settings['seed']}"]
                for _ in conversations]


def test_fastchat_category_temperatures():
    decoding = {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8, "seed": 0}
    temps = mt_bench.FASTCHAT_TEMPERATURES
    assert mt_bench.category_decoding(decoding, "writing", temps) == {**decoding, "do_sample": True, "temperature": 0.7}
    assert mt_bench.category_decoding(decoding, "stem", temps)["temperature"] == 0.1
    assert mt_bench.category_decoding(decoding, "math", temps) == decoding  # 0.0: greedy, as FastChat
    with pytest.raises(KeyError, match="category 'poetry' has no temperature"):
        mt_bench.category_decoding(decoding, "poetry", temps)


def test_generation_runs_give_one_choice_per_run_each_judged_once():
    backend = _RecordingBackend()
    decoding = {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8, "seed": 5}
    rows = mt_bench.generate_answer_runs(backend, QUESTIONS, decoding=decoding, n_runs=2,
                                         temperatures=mt_bench.FASTCHAT_TEMPERATURES, model_id="m", tstamp=0.0)
    writing, math = rows  # question order is kept
    assert [c["index"] for c in writing["choices"]] == [0, 1]
    # writing samples at 0.7 with seeds 5 and 6 (decoding.seed + run); math is greedy in both runs
    assert [c["turns"][0] for c in writing["choices"]] == ["T=0.7 sample=True seed=5", "T=0.7 sample=True seed=6"]
    assert [c["turns"][1] for c in math["choices"]] == ["T=1.0 sample=False seed=5", "T=1.0 sample=False seed=6"]
    seen = []

    class Judge:
        def identity(self, kind):
            return "j"

        def single_many(self, items):
            seen.extend((i.run, i.answer_turns[0]) for i in items)
            return [type("R", (), {"score": 5.0, "raw": "", "error": None, "meta": {}})() for _ in items]

    mt_bench.grade(QUESTIONS[:1], {1: writing}, Judge(), n_runs=2)
    assert sorted(set(seen)) == [(0, "T=0.7 sample=True seed=5"), (1, "T=0.7 sample=True seed=6")]
    with pytest.raises(ValueError, match="question 1: 2 answer choices for 3 runs"):
        mt_bench.grade(QUESTIONS[:1], {1: writing}, Judge(), n_runs=3)
