"""Judges end to end through a real local OpenAI-compatible server (the paper-scale judge path),
plus the oracle judge and the registry."""

import json
import logging
import math
import random

import pytest
from judge_server import JudgeServer, Reply, error_reply, logprob_reply, text_reply

from selm.benchmarks import alpaca
from selm.judges import AnnotationCache, get_judge
from selm.judges import alpaca_prompt
from selm.judges.openai_judge import JudgeUnavailable
from selm.world import sample_records
from selm.world.evalsets import alpaca_eval_rows

KEY_ENV = "SELM_TEST_JUDGE_KEY"
SECRET = "sk-test-do-not-leak-4f9c2e"


@pytest.fixture
def secret(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    return SECRET


def openai_judge(server, tmp_path=None, sleeps=None, **cfg):
    cfg.setdefault("concurrency", 1)
    return get_judge(
        "openai", base_url=server.base_url, api_key_env=KEY_ENV,
        cache=None if tmp_path is None else tmp_path / "cache.jsonl",
        sleep=(sleeps.append if sleeps is not None else (lambda s: None)), **cfg,
    )


def test_registry_lists_known_names_on_a_typo():
    with pytest.raises(KeyError, match=r"'openia'.*\['openai', 'oracle'\]"):
        get_judge("openia")


def test_missing_key_variable_is_named(monkeypatch):
    monkeypatch.delenv("SELM_NO_SUCH_KEY", raising=False)
    with pytest.raises(KeyError, match="SELM_NO_SUCH_KEY"):
        get_judge("openai", base_url="http://127.0.0.1:9/v1", api_key_env="SELM_NO_SUCH_KEY")


def _template_user_message(instruction, first, second):
    """The user message the alpaca_eval template should produce, built here by plain replacement."""
    template = alpaca_prompt.load_annotator().template
    user = template.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0].strip()
    return user.replace("{instruction}", instruction).replace("{output_1}", first).replace("{output_2}", second)


def test_alpaca_annotation_uses_the_real_template_and_logprobs(secret, tmp_path):
    # Instructions chosen so that alpaca_eval's seeded coin flip shows the outputs both ways.
    instructions = [f"Instruction number {k}" for k in range(12)]
    flips = {i: alpaca_prompt.is_switched(i, 0) for i in instructions}
    plain = next(i for i in instructions if not flips[i])
    switched = next(i for i in instructions if flips[i])
    p_m = 0.8  # the judge's probability that the FIRST shown output ('m') is best
    with JudgeServer() as server:
        server.push(*[logprob_reply({"m": math.log(p_m), "M": math.log(1 - p_m), "The": -9.0})] * 2)
        judge = openai_judge(server, tmp_path)
        a_plain = judge.pairwise(plain, "reference answer", "model answer")
        a_switched = judge.pairwise(switched, "reference answer", "model answer")
        bodies = server.bodies()
        auth = server.requests[0]["headers"].get("authorization")
    # preference = 1 + P(output_2 wins); shown order undone when alpaca_eval switched it.
    assert a_plain.preference == pytest.approx(1 + (1 - p_m))
    assert a_switched.preference == pytest.approx(1 + p_m)
    assert a_plain.raw == "m" and not a_plain.meta["switched"] and a_switched.meta["switched"]
    assert auth == f"Bearer {secret}"
    body = bodies[0]
    assert body["model"] == "gpt-4-1106-preview"
    assert (body["max_tokens"], body["temperature"], body["logprobs"], body["top_logprobs"]) == (1, 1, True, 5)
    system, user = body["messages"]
    assert system["role"] == "system" and system["content"].startswith("You are a highly efficient assistant")
    assert user == {"role": "user", "content": _template_user_message(plain, "reference answer", "model answer")}
    assert '"instruction": """Instruction number' in user["content"]
    # Switched: the model's output is shown first, as model 'm'.
    assert bodies[1]["messages"][1]["content"] == _template_user_message(switched, "model answer", "reference answer")


def test_429_500_and_timeouts_are_retried_with_backoff(secret):
    sleeps = []
    with JudgeServer() as server:
        ok = logprob_reply({"m": -0.1, "M": -2.4})
        slow = logprob_reply({"m": -0.1, "M": -2.4})
        slow.delay = 0.5
        server.push(error_reply(429), error_reply(500), error_reply(503), slow, ok)
        judge = openai_judge(server, sleeps=sleeps, timeout=0.2, backoff=0.5)
        annotation = judge.pairwise("say hi", "hi", "hello")
        n_requests = len(server.requests)
    assert annotation.ok and 1 < annotation.preference < 2
    assert n_requests == 5
    assert sleeps == [0.5, 1.0, 2.0, 4.0]  # exponential backoff
    assert judge.stats["retries"] == 4


def test_retries_are_bounded_and_client_errors_are_not_retried(secret):
    with JudgeServer() as server:
        server.push(*[error_reply(500)] * 3)
        with pytest.raises(JudgeUnavailable, match="3 attempts.*HTTP 500"):
            openai_judge(server, max_attempts=3).pairwise("q", "a", "b")
        assert len(server.requests) == 3
        server.push(error_reply(401, "bad key"))
        with pytest.raises(Exception, match="bad key"):
            openai_judge(server, max_attempts=3).pairwise("q", "a", "b")
        assert len(server.requests) == 4


def _reply_by_content(body):
    """The 'judge' prefers the longer shown output; 'MALFORMED' instructions get an unusable answer."""
    user = body["messages"][1]["content"]
    if "MALFORMED" in user:
        return logprob_reply({"Both": -0.2, "The": -1.9}, text="Both")
    first, second = [part.split('"""', 1)[0] for part in user.split('"output": """')[1:]]
    p_first = 0.9 if len(first) > len(second) else 0.1
    return logprob_reply({"m": math.log(p_first), "M": math.log(1 - p_first)})


def test_malformed_answer_is_reported_and_excluded_from_the_win_rate(secret, tmp_path):
    rows = [{"instruction": f"task {k}" + (" MALFORMED" if k == 3 else ""), "output": "ref " * 3} for k in range(8)]
    model = [dict(r, output="longer model output " * (1 + k % 2), generator="m") for k, r in enumerate(rows)]
    with JudgeServer(default=_reply_by_content) as server:
        judge = openai_judge(server, tmp_path)
        metrics, table = alpaca.evaluate(model, rows, judge)
        # Without logprobs at all: also an error, not a score.
        server.push(text_reply("m"), Reply(body=dict(text_reply("m").body, choices=[])))
        no_logprobs = judge.pairwise("other", "a", "b")
        no_choices = judge.pairwise("another", "a", "b")
    assert no_logprobs.preference is None and "no logprobs" in no_logprobs.error
    assert no_choices.preference is None and "no choices" in no_choices.error
    assert metrics["n_errors"] == 1 and metrics["n_total"] == 7
    assert metrics["errors"][0]["index"] == 3 and "'M'" in metrics["errors"][0]["error"]
    assert math.isnan(table.loc[3, "preference"])
    assert metrics["win_rate"] == pytest.approx(90.0)  # the model's output is always longer


def test_restart_rejudges_nothing_and_survives_a_torn_line(secret, tmp_path, caplog):
    triples = [(f"instruction {k}", f"ref {k}", f"model output {k}") for k in range(6)]
    with JudgeServer(default=_reply_by_content) as server:
        first = openai_judge(server, tmp_path).pairwise_many(triples[:3])
        assert len(server.requests) == 3
        # A crash in the middle of an append leaves a torn line; the restart repairs and reuses the rest.
        with open(tmp_path / "cache.jsonl", "ab") as f:
            f.write(b'{"key": "torn')
        with caplog.at_level(logging.WARNING):
            restarted = openai_judge(server, tmp_path, concurrency=3)
        assert "torn last line" in caplog.text
        again = restarted.pairwise_many(triples)
        assert len(server.requests) == 6  # only the 3 new triples were sent
    assert [a.preference for a in again[:3]] == [a.preference for a in first]
    assert all(a.cached for a in again[:3]) and not any(a.cached for a in again[3:])
    assert restarted.stats["cached"] == 3 and restarted.stats["judged"] == 3
    assert len(AnnotationCache(tmp_path / "cache.jsonl")) == 6


def test_concurrency_is_limited_by_the_pool(secret):
    def slow(body):
        reply = _reply_by_content(body)
        reply.delay = 0.1
        return reply

    with JudgeServer(default=slow) as server:
        openai_judge(server, concurrency=3).pairwise_many([(f"i{k}", "a", f"b{k}") for k in range(9)])
        assert len(server.requests) == 9
        assert 1 < server.max_in_flight <= 3


def test_api_key_never_reaches_cache_logs_or_outputs(secret, tmp_path, caplog):
    with caplog.at_level(logging.DEBUG), JudgeServer(default=_reply_by_content) as server:
        server.push(error_reply(429))
        judge = openai_judge(server, tmp_path)
        rows = [{"instruction": f"t{k}", "output": "r"} for k in range(6)]
        metrics, table = alpaca.evaluate([dict(r, output="mm") for r in rows], rows, judge)
        alpaca.write_annotations(tmp_path / "annotations.json", table)
        (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    assert "retrying" in caplog.text  # logging did happen
    for path in tmp_path.iterdir():
        assert SECRET not in path.read_text(), path
    assert SECRET not in caplog.text and SECRET not in repr(judge) and SECRET not in str(vars(judge))


def test_oracle_judge_prefers_gold_and_is_symmetric():
    records = sample_records(20, random.Random(0))
    rows = alpaca_eval_rows(records, random.Random(1))
    judge = get_judge("oracle", alpaca_eval=rows)
    for row in rows:
        ab = judge.pairwise(row["instruction"], row["gold"], row["gold"] + " (done)")
        ba = judge.pairwise(row["instruction"], row["gold"] + " (done)", row["gold"])
        assert ab.preference < 1.5 < ba.preference
        assert ab.preference + ba.preference == pytest.approx(3.0)
    with pytest.raises(KeyError, match="only grades the toy world"):
        judge.pairwise("not a world instruction", "a", "b")
