"""selm.decode: the lean decoding loop gives transformers' `generate` token ids bit for bit, and is used
only where that is known to hold."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from selm import decode
from selm.generation import HFBackend

PROMPTS = ["reverse: abc", "count the letters in hello world", "x", "sort: dcba and then some more words here",
           "add 12 and 30", "rotate: abcdef by 2", "?", "a somewhat longer prompt that pads the others a lot more"]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model, one_torch_thread):
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    with torch.no_grad():  # make EOS likely, so rows finish at different steps (the pad-after-EOS path)
        model.model.embed_tokens.weight[tokenizer.eos_token_id] *= 4
    return model, tokenizer


def _batch(model, tokenizer, prompts=PROMPTS):
    backend = HFBackend(model, tokenizer, progress=False)
    return backend._left_pad([backend.encode(p) for p in prompts])


SAME_LENGTH = ["abcd", "efgh", "ijkl", "mnop", "qrst"]  # no padding: transformers passes SDPA no mask at all


@pytest.mark.parametrize("prompts", [PROMPTS, SAME_LENGTH], ids=["padded", "unpadded"])
@pytest.mark.parametrize("settings", [
    dict(do_sample=False),
    dict(do_sample=True, temperature=1.0, top_p=1.0),
    dict(do_sample=True, temperature=1.0, top_p=1.0, num_return_sequences=3),
    dict(do_sample=True, temperature=0.7, top_p=0.9, num_return_sequences=2),
])
def test_lean_decoding_equals_generate_bit_for_bit(model_and_tokenizer, settings, prompts):
    model, tokenizer = model_and_tokenizer
    input_ids, attention_mask = _batch(model, tokenizer, prompts)
    assert bool(attention_mask.all()) == (prompts is SAME_LENGTH)
    common = dict(max_new_tokens=24, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    hf_settings = dict(settings, top_k=0) if settings["do_sample"] else settings
    torch.manual_seed(7)
    with torch.no_grad():
        expected = model.generate(input_ids=input_ids, attention_mask=attention_mask, **common, **hf_settings)
    rng_after_hf = torch.get_rng_state()
    torch.manual_seed(7)
    got = decode.lean_generate(model, input_ids, attention_mask, **common, **settings)
    assert torch.equal(got, expected)
    # the same draws from the global generator, so the next batch of a run samples the same too
    assert torch.equal(torch.get_rng_state(), rng_after_hf)
    new = got[:, input_ids.shape[1]:]
    finished_early = ((new == tokenizer.eos_token_id).any(dim=1) & (new[:, -1] == tokenizer.pad_token_id)).sum()
    assert finished_early > 0, "no row ended before max_new_tokens: the test would not cover padding after EOS"


def test_the_backend_answers_are_those_of_generate(model_and_tokenizer, monkeypatch):
    model, tokenizer = model_and_tokenizer
    backend = HFBackend(model, tokenizer, progress=False, batch_size=6)
    settings = dict(n=2, do_sample=True, temperature=1.0, top_p=1.0, max_new_tokens=20, seed=3)
    lean = backend.generate(PROMPTS, **settings)
    monkeypatch.setattr(decode, "supports", lambda *a, **k: False)
    assert backend.generate(PROMPTS, **settings) == lean


def test_supports_only_what_was_checked(model_and_tokenizer):
    model, _ = model_and_tokenizer
    assert decode.supports(model)
    assert not decode.supports(model, top_k=50)  # top-k is not applied by the lean loop
    assert not decode.supports(model, top_k=None)  # None: the config's top_k, unset here, so transformers' 50
    zero = copy.deepcopy(model)
    zero.generation_config.top_k = 0
    assert decode.supports(zero, top_k=None)
    other = copy.deepcopy(model)
    other.generation_config.repetition_penalty = 1.3
    assert not decode.supports(other)
    assert not decode.supports(copy.deepcopy(model).to(torch.bfloat16))
    gqa = copy.deepcopy(model)
    gqa.config.num_key_value_heads = 2
    assert not decode.supports(gqa)
    assert not decode.supports(torch.nn.Linear(2, 2))


def test_unsupported_models_go_through_generate(model_and_tokenizer, monkeypatch):
    model, tokenizer = model_and_tokenizer
    input_ids, attention_mask = _batch(model, tokenizer)
    calls = []
    monkeypatch.setattr(decode, "lean_generate", lambda *a, **k: calls.append("lean"))
    monkeypatch.setattr(type(model), "generate", lambda self, **k: calls.append(("hf", k["top_k"])))
    decode.generate(model, input_ids=input_ids, attention_mask=attention_mask, top_k=50, do_sample=True,
                    max_new_tokens=3, eos_token_id=2, pad_token_id=0)
    decode.generate(model, input_ids=input_ids, attention_mask=attention_mask, top_k=0, do_sample=True,
                    max_new_tokens=3, eos_token_id=2, pad_token_id=0)
    assert calls == [("hf", 50), "lean"]


def test_the_decode_benchmark_compares_both_paths_on_the_same_answers(tiny_model, tmp_path):
    import argparse
    import json

    from selm.bench import decode as bench_decode

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    args = argparse.Namespace(model=tiny_model, prompts_file=prompts, prompts=6, samples=2, max_new_tokens=8,
                              rounds=2, out=tmp_path / "decode.json")
    threads = torch.get_num_threads()
    torch.set_num_threads(3)  # the benchmark runs on one thread and gives the caller's count back
    try:
        bench_decode.bench_decode(args, "test")
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)
    result = json.loads(args.out.read_text())
    assert result["answers_identical"] and result["prompts"] == 6 and len(result["rounds"]) == 2
    assert result["threads"] == 1 and result["provenance"]["torch_threads"] == 1
    for r in result["rounds"]:  # greedy (1 answer) + 2 samples per prompt, each at most 8 tokens
        assert r["lean"]["tokens"] == r["generate"]["tokens"] <= 6 * 3 * 8
        assert r["speedup"] == r["generate"]["seconds"] / r["lean"]["seconds"]  # the stored times' quotient, exactly
    assert result["speedup"] == [r["speedup"] for r in result["rounds"]]
    assert decode.supports.__name__ == "supports"  # restored after the comparison
    args.model = tmp_path / "absent"
    with pytest.raises(FileNotFoundError, match="--model"):
        bench_decode.bench_decode(args, "test")
