"""Judges end to end through a real local OpenAI-compatible server (the paper-scale judge path),
plus the oracle judge and the registry."""

import json
import logging
import math
import random
from pathlib import Path

import pytest
from judge_server import JudgeServer, Reply, error_reply, logprob_reply, text_reply

from selm.benchmarks import alpaca
from selm.judges import AnnotationCache, SingleItem, get_judge
from selm.judges import alpaca_prompt
from selm.judges.openai_judge import JudgeUnavailable
from selm.judges.streaming import StreamIncomplete, StreamLimits, merge_chunks
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
    cfg.setdefault("sleep", sleeps.append if sleeps is not None else (lambda s: None))
    return get_judge(
        "openai", base_url=server.base_url, api_key_env=KEY_ENV,
        cache=None if tmp_path is None else tmp_path / "cache.jsonl", **cfg,
    )


def mt_bench_reply(n_tokens: int, score: int = 7) -> Reply:
    """An MT-Bench judgment that the test server streams as `n_tokens` tokens (words), the last its rating."""
    return text_reply(" ".join([f"w{k}" for k in range(n_tokens - 1)] + [f"[[{score}]]"]))


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


def test_a_slow_streaming_server_is_waited_for_and_asked_once(secret):
    """A judge served the way vLLM serves it: three MT-Bench judgments at once, each streaming 120
    tokens at 40 tokens/s (3 s), twice the judge's first-token and silence allowances (1.5 s each) but
    never silent for more than 1/60 of them. Every judgment completes on its first request, and the
    server generates no more than the tokens the judgments need (the bound asked for: 1.2x). Against
    this server the former client (one 1.5 s timeout per request, re-sent up to 6 times) got none of
    the three, after 18 requests and 1,061 tokens generated."""
    n_items, n_tokens = 3, 120
    with JudgeServer(default=lambda body: mt_bench_reply(n_tokens), tokens_per_second=40) as server:
        judge = openai_judge(server, concurrency=3, first_token_timeout=1.5, silence_timeout=1.5)
        ratings = judge.single_many([SingleItem([f"question {k}"], [f"answer {k}"]) for k in range(n_items)])
        assert server.wait_idle(timeout=30, requests=n_items)
        records, generated = list(server.requests), server.tokens_generated
    assert [r.score for r in ratings] == [7] * n_items
    assert all(r.raw == mt_bench_reply(n_tokens).body["choices"][0]["message"]["content"] for r in ratings)
    assert generated <= 1.2 * n_items * n_tokens
    assert len(records) == n_items and all(r["outcome"] == "answered" for r in records)
    assert all(r["body"]["stream"] is True and r["body"]["max_tokens"] == 2048 for r in records)
    assert judge.stats["retries"] == 0 and judge.stats["judged"] == n_items


def test_errors_and_silence_are_retried_and_a_silent_request_is_hung_up_on_first(secret):
    """429 and 5xx are retried with exponential backoff. A request that goes silent is given up on
    by closing its connection, and the server stops generating it there (not one token more) before
    the judgment is asked again: the tokens generated are the silent request's 5 plus the answer's 30.
    (The silence allowance, 2 s, is what the stuck request costs this test; a shorter one could be
    reached by a loaded machine's pauses inside the answers that do stream.)"""
    sleeps = []
    with JudgeServer() as server:
        stuck = mt_bench_reply(30)
        stuck.stall_after = 5  # silent after 5 tokens until the client hangs up (or 60 s)
        server.push(error_reply(429), error_reply(500), error_reply(503), stuck, mt_bench_reply(30))
        judge = openai_judge(server, sleeps=sleeps, silence_timeout=2.0, backoff=0.5)
        rating = judge.single(["say hi"], ["hi"])
        assert server.wait_idle(timeout=30, requests=5)
        records, generated = list(server.requests), server.tokens_generated
    assert rating.ok and rating.score == 7
    assert len(records) == 5
    assert sleeps == [0.5, 1.0, 2.0, 4.0]  # exponential backoff
    assert judge.stats["retries"] == 4 and judge.stats["timeouts"] == 1
    assert (records[3]["outcome"], records[3]["tokens"]) == ("client hung up", 5)
    assert (records[4]["outcome"], records[4]["tokens"]) == ("answered", 30)
    assert generated == 35 <= 1.2 * 30


def test_a_silent_server_is_given_up_on_within_the_attempts_and_the_time(secret):
    """A server that never sends a token: each attempt is hung up on, so nothing is generated and no
    request is left running; the judge stops after max_attempts, or when the next wait would pass
    max_seconds. (The server may not see every attempt: on a loaded machine an allowance can run
    out before the request is through; the attempts are counted by the judge.)"""
    stuck = Reply(body=mt_bench_reply(3).body, stall_after=0)  # silent until hung up on (or 60 s)
    with JudgeServer(default=lambda body: stuck) as server:
        with pytest.raises(JudgeUnavailable, match=r"3 attempts; last error: no first token within 0.2 s"):
            openai_judge(server, max_attempts=3, first_token_timeout=0.2).single(["q"], ["a"])
        # The time budget, on a clock that moves only when the judge sleeps: after attempt 1 (t=0) it
        # waits 1 s; after attempt 2 (t=1) a wait of 2 s would pass max_seconds=2.5, so it stops.
        now = [0.0]
        judge = openai_judge(server, max_attempts=10, first_token_timeout=0.2, backoff=1.0, max_seconds=2.5,
                             sleep=lambda s: now.__setitem__(0, now[0] + s), clock=lambda: now[0])
        with pytest.raises(JudgeUnavailable, match=r"after 2 attempts in 1 s \(judge.max_seconds=2.5\)"):
            judge.single(["q"], ["a"])
        assert server.wait_idle(timeout=30)
        assert server.requests and {r["outcome"] for r in server.requests} == {"client hung up"}
        assert server.tokens_generated == 0


def test_a_stream_is_rebuilt_or_found_cut():
    def chunk(delta, finish=None, logprobs=None):
        return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                             "logprobs": None if logprobs is None else {"content": logprobs}}]}

    lp = [{"token": "m", "logprob": -0.1, "top_logprobs": []}]
    choice = merge_chunks([chunk({"role": "assistant", "content": "Rat"}, logprobs=lp), chunk({"content": "ing"}),
                           chunk({}, finish="stop")])
    assert choice == {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Rating"},
                      "logprobs": {"content": lp}}
    assert merge_chunks([{"choices": []}]) is None  # a server that answered with no choice
    with pytest.raises(StreamIncomplete, match="without a finish_reason"):
        merge_chunks([chunk({"content": "Rat"})])
    with pytest.raises(StreamIncomplete, match="before sending anything"):
        merge_chunks([])


def test_the_judge_configs_document_every_setting_and_the_old_timeout_is_named(secret):
    """conf/judge/openai.yaml states each wait and retry setting with the client's own default, and
    both judge configs build a judge; the retired request-wide `timeout` is refused by name."""
    from omegaconf import OmegaConf

    from selm.config import compose_config

    conf = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "judge" / "openai.yaml")
    assert {k: conf[k] for k in vars(StreamLimits())} == vars(StreamLimits())
    with JudgeServer() as server:
        for group in ("openai", "rehearsal"):
            cfg = OmegaConf.to_container(compose_config("loop", [f"judge={group}"]).judge, resolve=True)
            judge = get_judge(cfg.pop("name"), **dict(cfg, base_url=server.base_url, api_key_env=KEY_ENV))
            assert judge.limits == StreamLimits(**{k: cfg[k] for k in vars(StreamLimits())})
        with pytest.raises(ValueError, match="judge.timeout .* judge.silence_timeout"):
            openai_judge(server, timeout=120)


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
    """Nine judgments through a pool of 3: the server sees 3 in flight at once and never more. The
    first answers are held until three requests are in flight, so the pool's parallelism is observed
    rather than hoped for; the server counts a request out before the last byte of its answer, so a
    worker's next request cannot be counted beside the one it has finished."""
    server = JudgeServer()

    def held(body):
        server.wait_in_flight(3, timeout=30)
        return _reply_by_content(body)

    server.default = held
    with server:
        openai_judge(server, concurrency=3).pairwise_many([(f"i{k}", "a", f"b{k}") for k in range(9)])
        assert len(server.requests) == 9
        assert server.max_in_flight == 3


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
