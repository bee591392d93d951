"""Generation backends: left padding, determinism, EOS handling, registry, vLLM settings."""

import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from selm.generation import BACKENDS, HFBackend, VLLMBackend, get_backend, sampling_params_kwargs

# Mixed lengths, so a batch of them needs real left padding.
PROMPTS = [
    "a",
    "reverse: abcdefghijklmnop",
    "add: 12+7",
    "sort: zyx",
    "upper: hello world, how are you today?",
    "count c: cacc",
    "join -: cat dog",
    "rotate 2: abcdef",
]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model):
    return AutoModelForCausalLM.from_pretrained(tiny_model), AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def varied(model_and_tokenizer):
    """The tiny model with weights drawn at std 0.3: freshly initialised (std 0.02) it answers every
    prompt with the same token, which would hide a padding or ordering bug."""
    from conftest import vary_weights

    model, tokenizer = model_and_tokenizer
    return vary_weights(model), tokenizer


def test_greedy_is_deterministic_and_batch_size_invariant(varied):
    one = HFBackend(*varied, batch_size=1, progress=False)
    eight = HFBackend(*varied, batch_size=8, progress=False)
    kwargs = dict(do_sample=False, max_new_tokens=12, seed=0)
    alone = one.generate(PROMPTS, **kwargs)
    batched = eight.generate(PROMPTS, **kwargs)
    assert batched == alone
    assert eight.generate(PROMPTS, **kwargs) == batched
    assert len(set(a[0] for a in batched)) == len(PROMPTS)  # answers differ by prompt: order is checked
    assert eight.generate(PROMPTS, n=3, **kwargs) == [a * 3 for a in batched]
    ids = eight.generate_ids(PROMPTS, **kwargs)
    assert [[one.tokenizer.decode(a[0], skip_special_tokens=True)] for a in ids] == batched


def test_sampling_is_reproducible_from_the_seed(varied):
    backend = HFBackend(*varied, batch_size=8, progress=False)
    kwargs = dict(n=2, do_sample=True, temperature=1.0, max_new_tokens=10)
    first = backend.generate(PROMPTS, seed=1, **kwargs)
    assert backend.generate(PROMPTS, seed=1, **kwargs) == first
    assert backend.generate(PROMPTS, seed=2, **kwargs) != first
    assert [len(a) for a in first] == [2] * len(PROMPTS)


def test_answers_hold_no_special_tokens(tiny_model):
    backend = HFBackend(tiny_model, batch_size=8, progress=False)  # loaded from a folder
    answers = backend.generate(PROMPTS, n=4, do_sample=True, max_new_tokens=32, seed=0)
    specials = backend.tokenizer.all_special_tokens
    # A random model emits special tokens often (checked here); the decoded answers must not show them.
    ids = backend.generate_ids(PROMPTS, n=4, do_sample=True, max_new_tokens=32, seed=0)
    special_ids = set(backend.tokenizer.all_special_ids) - {backend.tokenizer.eos_token_id}
    assert any(i in special_ids for per_prompt in ids for answer in per_prompt for i in answer)
    for text in (t for per_prompt in answers for t in per_prompt):
        assert not any(s in text for s in specials), text


def _with_eos_bias(model, tokenizer, bias: float):
    """A copy of `model` whose output layer adds `bias` to the EOS logit (untied from the input)."""
    import copy

    model = copy.deepcopy(model)
    old = model.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[tokenizer.eos_token_id] = bias
    model.lm_head = head
    return model


def test_generation_stops_at_eos(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    backend = HFBackend(_with_eos_bias(model, tokenizer, 100.0), tokenizer, batch_size=4, progress=False)
    for do_sample in (False, True):
        answers = backend.generate(PROMPTS, n=2, do_sample=do_sample, max_new_tokens=16, seed=0)
        assert answers == [["", ""]] * len(PROMPTS)
        assert backend.last_stats["tokens"] == len(PROMPTS) * (2 if do_sample else 1)  # only the EOS


def test_generation_without_eos_is_bounded_by_max_new_tokens(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    model = _with_eos_bias(model, tokenizer, -100.0)
    backend = HFBackend(model, tokenizer, batch_size=8, progress=False)
    answers = backend.generate(PROMPTS, do_sample=True, max_new_tokens=7, seed=0)
    assert backend.last_stats["tokens"] == len(PROMPTS) * 7
    assert all(len(a[0]) <= 7 for a in answers)  # char-level: one token is at most one character


def test_answers_end_before_the_first_eos(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    backend = HFBackend(model, tokenizer, progress=False)
    a, b = tokenizer.convert_tokens_to_ids(["a", "b"])
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    assert backend._cut_at_eos([a, b, eos, a, pad]) == ([a, b], 3)
    assert backend._cut_at_eos([a, b]) == ([a, b], 2)


def test_generate_leaves_the_caller_tokenizer_and_mode_alone(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    side = tokenizer.padding_side
    model.train()
    HFBackend(model, tokenizer, progress=False).generate(PROMPTS[:2], do_sample=False, max_new_tokens=2, seed=0)
    assert model.training and tokenizer.padding_side == side
    model.eval()


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(KeyError, match="hf.*vllm"):
        get_backend("hff")
    assert set(BACKENDS) == {"hf", "vllm"}


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_vllm_backend_without_vllm_says_how_to_install():
    with pytest.raises(ImportError, match=r"pip install selm\[gpu\]"):
        VLLMBackend("some/model")
    with pytest.raises(ImportError, match="vllm"):
        get_backend("vllm", "some/model")


def test_vllm_sampling_params():
    greedy = sampling_params_kwargs(n=4, do_sample=False, temperature=0.7, max_new_tokens=64, seed=3, eos_token_id=2)
    assert greedy == {
        "n": 1, "temperature": 0.0, "top_p": 1.0, "max_tokens": 64, "seed": 3,
        "skip_special_tokens": True, "stop_token_ids": [2],
    }
    sampled = sampling_params_kwargs(n=16, do_sample=True, temperature=0.7, top_p=0.9, max_new_tokens=32, seed=5)
    assert sampled == {"n": 16, "temperature": 0.7, "top_p": 0.9, "max_tokens": 32, "seed": 5, "skip_special_tokens": True}
    with pytest.raises(ValueError):
        sampling_params_kwargs(do_sample=True, temperature=0.0, max_new_tokens=8, seed=0)
