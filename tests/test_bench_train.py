"""The training benchmark's accounting: parameters in matmuls, token counts, FLOP utilisation."""

import argparse
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from selm.bench import train as bench_train
from selm.data import tokenize_pairs, without_y_ref


def _llama(tied: bool):
    config = LlamaConfig(vocab_size=50, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=tied)
    return LlamaForCausalLM(config)


def test_matmul_parameters_leave_out_an_untied_input_embedding():
    # hand count for hidden 8, intermediate 16, vocab 50, one layer:
    # q, k, v, o: 4 x 8 x 8 = 256; MLP: 3 x 8 x 16 = 384; two RMSNorms + the final one: 3 x 8 = 24;
    # the output head 50 x 8 = 400; the input embedding 50 x 8 = 400 (the same tensor when tied)
    assert bench_train.matmul_parameters(_llama(tied=False)) == 256 + 384 + 24 + 400
    assert bench_train.matmul_parameters(_llama(tied=True)) == 256 + 384 + 24 + 400
    assert sum(p.numel() for p in _llama(tied=False).parameters()) == 256 + 384 + 24 + 800


class FakeClock:
    def __init__(self):
        self.t0, self.train_begin = 100.0, 103.0  # 3 s of set-up
        self.step_ends = [105.0, 106.0, 107.5]
        self.step_tokens = [500, 400, 600]
        self.top_ops = None

    def step_seconds(self):
        return bench_train.StepClock.step_seconds(self)


@pytest.mark.parametrize("per_step_ref", [False, True])
def test_summarise_splits_setup_steady_and_end_to_end(per_step_ref):
    n, peak = 1000, 1e7
    out = {"clock": FakeClock(), "end": 108.0, "sequences_per_pair": 2, "setup_parts": {"x": 1.0},
           "reference_tokens_setup": None if per_step_ref else 1500, "reference_forward_per_step": per_step_ref}
    r = bench_train.summarise("t", out, n, warmup=1, peak=peak)
    assert r["setup_seconds"] == 3.0
    assert r["step_seconds"] == [2.0, 1.0, 1.5]
    assert r["steady_policy_tokens_per_s"] == pytest.approx(1000 / 2.5)  # steps 2 and 3: 1000 tokens in 2.5 s
    flops_per_token = 8 * n if per_step_ref else 6 * n  # a reference forward at every step adds 2N
    assert r["steady_utilisation"] == pytest.approx(round(1000 * flops_per_token / 2.5 / peak, 4))
    assert r["epoch_seconds"] == 8.0
    # end to end: 1500 policy tokens trained (6N each) and 1500 reference tokens (2N each) in 8 s
    assert r["end_to_end_utilisation"] == pytest.approx(round(1500 * 8 * n / 8.0 / peak, 4))
    with pytest.raises(ValueError, match="not more than --warmup-steps 3"):
        bench_train.summarise("t", out, n, warmup=3, peak=peak)


def test_per_size_values_and_bad_input():
    defaults = {"toy": 1, "smollm2": 2, "zephyr": 3, "llama3": 4}
    assert bench_train.parse_per_size("toy=9,llama3=7", defaults, "--pairs") == {**defaults, "toy": 9, "llama3": 7}
    assert bench_train.parse_per_size("5", defaults, "--pairs") == dict.fromkeys(defaults, 5)
    with pytest.raises(SystemExit, match="--batch: unknown size 'gpt4'"):
        bench_train.parse_per_size("gpt4=2", defaults, "--batch")
    with pytest.raises(SystemExit, match=r"--pairs: 'toy=0' is not SIZE=N"):
        bench_train.parse_per_size("toy=0", defaults, "--pairs")


def test_counted_tokens_are_the_pairs_tokens(tiny_model):
    """The forward hook counts exactly the non-padding tokens of every pair's sequences, 3 per pair
    with y_ref and 2 at alpha = 0; the steps after the warm-up make the steady state."""
    tok = AutoTokenizer.from_pretrained(tiny_model)
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    rows = bench_train.bench_pairs(12, seed=0)  # what bench_size trains on (args.seed)
    pairs, _ = tokenize_pairs(rows, tok, max_length=64, max_prompt_length=32)
    expected = {
        "selm_yref": sum(len(p.prompt_ids) * 3 + len(p.chosen_ids) + len(p.rejected_ids) + len(p.response_ids)
                         for p in pairs),
        "selm_alpha0": sum(len(p.prompt_ids) * 2 + len(p.chosen_ids) + len(p.rejected_ids)
                           for p in without_y_ref(pairs)),
    }
    args = argparse.Namespace(seed=0, trainers=["selm_yref", "selm_alpha0"], profile=["toy/fp32"], warmup_steps=1,
                              max_length=64, batch_per_size={"toy": 4})
    result = bench_train.bench_size("toy", "fp32", tiny_model, 12, args, {"fp32": 1e9, "bf16": 1e9})
    for name, tokens in expected.items():
        run = result["trainers"][name]
        assert run["epoch_policy_tokens"] == tokens, name
        assert run["steps"] == 3 and len(run["step_seconds"]) == 3
        assert run["sequences_per_pair"] == (3 if name == "selm_yref" else 2)
        # the warm-up step was profiled: operators with their call counts (times are not asserted)
        assert run["top_ops"] and all(op["op"] and op["calls"] >= 1 for op in run["top_ops"])
    assert result["model"] == f"<elsewhere>/{Path(tiny_model).name}"  # outside the working directory: no machine path



def test_growth_fit_and_matmul_peak():
    from selm.bench.growth import linear_fit

    # y = 10 + 0.5 x through three points, by hand
    assert linear_fit([32, 64, 128], [26.0, 42.0, 74.0]) == pytest.approx((10.0, 0.5))
    with pytest.raises(ValueError, match="two different x values"):
        linear_fit([8, 8], [1.0, 2.0])
    peak, rates = bench_train.matmul_peak(torch.float32, [32, 64])
    assert set(rates) == {32, 64} and peak == max(rates.values()) > 0
