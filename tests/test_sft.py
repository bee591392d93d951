"""The SFT stage: completion-only labels, JSONL validation, and that a short run learns something."""

import json

import pytest
from transformers import AutoTokenizer

from selm.io import DataError, read_jsonl
from selm.sft import SFTCollator, greedy_and_best_of_n, main, tokenize_sft, train_sft
from selm.tiny import build_tiny_model
from selm.world import build_world


def test_prompt_tokens_are_masked(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    rows = [{"prompt": "upper: ab", "completion": "AB"}, {"prompt": "reverse: abcd", "completion": "dcba"}]
    examples, truncated = tokenize_sft(rows, tokenizer, max_length=64)
    batch = SFTCollator(tokenizer.pad_token_id)(examples)
    ids, labels, mask = batch["input_ids"][0].tolist(), batch["labels"][0].tolist(), batch["attention_mask"][0].tolist()
    # <bos><|user|>upper: ab<|assistant|> = 12 prompt tokens, then A, B, <eos>; row 2 is 16 + 5 = 21 long: 6 pads.
    n_prompt = 3 + len("upper: ab")
    assert tokenizer.decode(ids[:n_prompt]) == "<bos><|user|>upper: ab<|assistant|>"
    assert labels[:n_prompt] == [-100] * n_prompt
    assert labels[n_prompt : n_prompt + 3] == tokenizer.convert_tokens_to_ids(["A", "B", "<eos>"])
    assert labels[n_prompt + 3 :] == [-100] * 6
    assert ids[n_prompt + 3 :] == [tokenizer.pad_token_id] * 6 and mask == [1] * (n_prompt + 3) + [0] * 6
    assert truncated == 0 and batch["labels"][1].tolist().count(-100) == 3 + len("reverse: abcd")

    # A too-long answer is cut from the right (and then has no EOS); the prompt is kept whole.
    (ids, labels), = tokenize_sft(rows[1:], tokenizer, max_length=18)[0]
    assert len(ids) == 18 and labels[-2:] == tokenizer.convert_tokens_to_ids(["d", "c"])


def test_malformed_jsonl_names_file_line_and_key(tmp_path, tiny_model):
    bad = tmp_path / "sft.jsonl"
    bad.write_text('{"prompt": "upper: a", "completion": "A"}\n{"prompt": "upper: b", \n')
    with pytest.raises(DataError, match=rf"{bad}:2: malformed JSON"):
        train_sft(tiny_model, bad, tmp_path / "out")
    bad.write_text('{"prompt": "upper: a", "completion": "A"}\n{"prompt": "upper: b", "answer": "B"}\n')
    with pytest.raises(DataError, match=rf"{bad}:2: missing required key 'completion'"):
        train_sft(tiny_model, bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_short_sft_lowers_the_loss_and_raises_reward(tmp_path):
    """Two seconds of SFT (14k-parameter model, 200 steps) on two families: a random model scores r* = 0,
    the trained one has learnt at least the answer format (measured: 0.36-0.38 greedy r*)."""
    world = tmp_path / "world"
    build_world(world, seed=0, n_sft=400, n_train_prefs=10, n_test_prefs=10, n_eval=10, n_mt_bench=2,
                n_lmeval=10, families=["upper", "count"])
    init = build_tiny_model(tmp_path / "init", size="14k", seed=0)
    out = tmp_path / "sft"
    main(["--init", str(init), "--data", str(world / "sft_strong.jsonl"), "--out", str(out),
          "--epochs", "4", "--lr", "3e-2", "--batch-size", "8"])
    metrics = json.loads((out / "sft_metrics.json").read_text())
    curve = [point["loss"] for point in metrics["loss_curve"]]
    assert metrics["n_rows"] == 400 and metrics["steps"] == 200 and curve[-1] < 0.8 * curve[0]
    assert not (tmp_path / "sft.partial").exists()

    records = read_jsonl(world / "sft_strong.jsonl")[:64]
    before = greedy_and_best_of_n(init, records, n=2)
    after = greedy_and_best_of_n(out, records, n=2)
    assert after["greedy"]["mean"] > before["greedy"]["mean"] + 0.2
    assert set(after["greedy"]["per_family"]) == {"upper", "count"}
