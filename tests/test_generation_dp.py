"""Data-parallel generation (generation.data_parallel): engines in worker processes over shards of
the prompts, answers in prompt order, greedy answers equal to one engine's."""

import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import vary_weights
from selm.generation import DataParallelBackend, HFBackend, backend_from_config, shard_prompts, worker_devices

# Mixed lengths (some equal), more prompts than one batch, so the shards pad differently from each other.
PROMPTS = ["a", "reverse: abcdefghijklmnop", "add: 12+7", "sort: zyx", "upper: hello world, how are you today?",
           "count c: cacc", "join -: cat dog", "rotate 2: abcdef", "add: 3+4", "sort: banana", "b"]


def test_shards_are_whole_batches_of_the_length_order():
    lengths = [5, 1, 3, 3, 9, 2, 7]  # order by length, ties by position: 1, 5, 2, 3, 0, 6, 4
    assert shard_prompts(lengths, 2, 2) == [[1, 5, 0, 6], [2, 3, 4]]
    assert shard_prompts(lengths, 3, 2) == [[1, 5, 4], [2, 3], [0, 6]]
    assert shard_prompts(lengths, 1, 64) == [[1, 5, 2, 3, 0, 6, 4]]
    assert shard_prompts([4, 4], 3, 1) == [[0], [1], []]  # more workers than prompts
    with pytest.raises(ValueError, match="must be >= 1"):
        shard_prompts(lengths, 0, 2)


def test_each_worker_gets_its_own_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert worker_devices(8, 1, environ={}) == [str(i) for i in range(8)]
    assert worker_devices(2, 4, environ={}) == ["0,1,2,3", "4,5,6,7"]
    assert worker_devices(2, 1, environ={"CUDA_VISIBLE_DEVICES": "3,5"}) == ["3", "5"]
    with pytest.raises(ValueError, match="data_parallel=3 engines x tensor_parallel_size=2 GPUs need 6 GPUs; "
                                         "this process sees 4"):
        worker_devices(3, 2, environ={"CUDA_VISIBLE_DEVICES": "0,1,2,3"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert worker_devices(2, 1) is None  # a CPU: the workers share its cores


@pytest.fixture(scope="module")
def varied_dir(tiny_model, tmp_path_factory):
    """The tiny model with weights at std 0.3 (freshly initialised it answers everything alike), saved."""
    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_model), AutoTokenizer.from_pretrained(tiny_model)
    model = vary_weights(model)
    out = tmp_path_factory.mktemp("varied")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.slow
def test_two_hf_workers_answer_as_one_engine(varied_dir, monkeypatch):
    """2 worker processes (HF backend, batches of 4 prompts) vs one HFBackend: the same greedy token
    ids and texts, in prompt order, for single prompts and two-turn chats; a config with
    generation.data_parallel=2 builds the same; a closed backend refuses to generate."""
    greedy = dict(n=2, do_sample=False, max_new_tokens=10, seed=0)
    one = HFBackend(str(varied_dir), batch_size=4, progress=False, device="cpu")
    encoded = [one.encode(p) for p in PROMPTS]
    expected_ids, expected = one.answer_ids(encoded, **greedy), one.generate(PROMPTS, **greedy)
    chats = [[{"role": "user", "content": p}, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "again"}]
             for p in PROMPTS[:5]]
    expected_chat = one.chat(chats, **greedy)
    one.close()
    assert len({tuple(a[0]) for a in expected_ids}) > 3  # the answers differ: an ordering bug would show

    from selm.config import compose_config

    cfg = compose_config("loop", [f"model.path={varied_dir}", "generation.data_parallel=2", "generation.batch_size=4"])
    with backend_from_config(cfg, varied_dir) as dp:
        assert isinstance(dp, DataParallelBackend) and len(dp._procs) == 2
        assert [dp.encode(p) for p in PROMPTS] == encoded  # templated and tokenised here, as one engine does
        assert dp.answer_ids(encoded, **greedy) == expected_ids
        assert dp.generate(PROMPTS, **greedy) == expected
        assert dp.chat(chats, **greedy) == expected_chat
        assert dp.last_stats["tokens"] > 0
        procs = list(dp._procs)
    assert all(not p.is_alive() and p.exitcode == 0 for p in procs)  # closed: the workers are gone
    with pytest.raises(RuntimeError, match="closed"):
        dp.generate(PROMPTS[:1], **greedy)


def test_bad_settings_are_refused_before_any_worker_starts(tmp_path):
    with pytest.raises(ValueError, match="data_parallel must be an integer >= 1, got 0"):
        DataParallelBackend("hf", tmp_path, workers=0)
    with pytest.raises(KeyError, match="unknown generation backend 'vlm'"):
        DataParallelBackend("vlm", tmp_path, workers=2)


@pytest.mark.slow
def test_a_worker_that_cannot_start_names_itself_and_its_error(varied_dir, tmp_path):
    """A folder with the tokenizer but no model: the workers fail to build their engines; the error
    names the worker and carries its traceback, and no worker is left running."""
    AutoTokenizer.from_pretrained(varied_dir).save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match=r"(?s)generation worker 0 \(hf\) failed:.*Traceback") as error:
        DataParallelBackend("hf", tmp_path, workers=2, batch_size=4)
    assert str(tmp_path) in str(error.value)
    assert not [p for p in __import__("multiprocessing").active_children() if p.name.startswith("selm-generate")]
