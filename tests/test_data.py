"""Pairs files: validation errors that name the place, tokenisation and truncation, batch layout."""

import json

import pytest
import torch
from transformers import AutoTokenizer

from selm.data import (PairCollator, PairDataset, encode_prompt, encode_prompt_answer, load_pairs, pad_token_id,
                       tokenize_pairs)
from selm.io import PAIRS_SCHEMA, DataError, read_jsonl, write_jsonl_atomic


@pytest.fixture(scope="module")
def tok(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


def test_tiny_template_has_one_bos_and_one_eos(tok):
    prompt_ids, answer_ids = encode_prompt_answer(tok, "reverse: abc", "cba")
    assert tok.convert_ids_to_tokens(prompt_ids) == ["<bos>", "<|user|>", *"reverse: abc", "<|assistant|>"]
    assert tok.convert_ids_to_tokens(answer_ids) == ["c", "b", "a", "<eos>"]
    assert tok.decode(prompt_ids + answer_ids) == "<bos><|user|>reverse: abc<|assistant|>cba<eos>"


def test_generation_prompt_is_the_training_prompt(tok):
    prompt_ids, _ = encode_prompt_answer(tok, "reverse: abc", "cba")
    assert encode_prompt(tok, "reverse: abc") == prompt_ids


def test_collator_without_pad_token_pads_with_eos_and_masks_it(tok):
    import copy

    no_pad = copy.deepcopy(tok)
    no_pad.pad_token = None
    assert no_pad.pad_token_id is None and pad_token_id(no_pad) == tok.eos_token_id
    pairs, _ = tokenize_pairs([{"prompt": "ab", "chosen": "c", "rejected": "dddd"}], no_pad, max_length=32, max_prompt_length=16)
    batch = PairCollator(pad_token_id(no_pad))([PairDataset(pairs)[0]])
    # chosen row: <bos><|user|>ab<|assistant|>c<eos> then 3 pads (EOS ids) outside every mask
    assert batch["input_ids"][0, -4:].tolist() == [tok.eos_token_id] * 4
    assert batch["attention_mask"][0].tolist() == [1] * 7 + [0] * 3
    assert batch["completion_mask"][0].tolist() == [0] * 5 + [1] * 2 + [0] * 3
    with pytest.raises(ValueError, match="PairCollator needs a pad id"):
        PairCollator(no_pad.pad_token_id)


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "malformed JSON"),
        ('{"prompt": "p", "chosen": "a"}', "missing required key 'rejected'"),
        ('{"prompt": "p", "chosen": 3, "rejected": "b"}', "key 'chosen' must be str, got int"),
        ('{"prompt": "  ", "chosen": "a", "rejected": "b"}', "key 'prompt' is empty"),
        ('["a", "b"]', "expected a JSON object"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n\n' + line + "\n")
    with pytest.raises(DataError) as err:
        read_jsonl(path, PAIRS_SCHEMA)
    assert f"{path}:3:" in str(err.value) and message in str(err.value)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no records"):
        read_jsonl(tmp_path / "empty.jsonl", PAIRS_SCHEMA)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_response_must_be_all_or_nothing(tok):
    rows = [{"prompt": "a", "chosen": "b", "rejected": "c", "response": "d"}, {"prompt": "a", "chosen": "b", "rejected": "c"}]
    with pytest.raises(DataError, match="record 1: 'response'"):
        tokenize_pairs(rows, tok, max_length=64, max_prompt_length=32)


def test_prompt_truncated_from_the_left_answers_from_the_right(tok):
    rows = [{"prompt": "0123456789", "chosen": "abcdefgh", "rejected": "xy"}]
    pairs, stats = tokenize_pairs(rows, tok, max_length=12, max_prompt_length=6)
    # templated prompt: <bos><|user|>0123456789<|assistant|> (13 tokens) -> its last 6: 6789<|assistant|>... keep end
    assert tok.convert_ids_to_tokens(pairs[0].prompt_ids) == ["5", "6", "7", "8", "9", "<|assistant|>"]
    assert tok.convert_ids_to_tokens(pairs[0].chosen_ids) == list("abcdef")  # 12 - 6 = 6 tokens kept, EOS cut
    assert tok.convert_ids_to_tokens(pairs[0].rejected_ids) == ["x", "y", "<eos>"]
    assert (stats.prompts_truncated, stats.answers_truncated) == (1, 1)


def test_collator_stacks_chosen_rejected_response_rows(tok, tmp_path):
    path = tmp_path / "p.jsonl"
    write_jsonl_atomic(path, [
        {"prompt": "ab", "chosen": "c", "rejected": "dd", "response": "eee"},
        {"prompt": "abc", "chosen": "f", "rejected": "g", "response": "h"},
    ])
    pairs, _ = load_pairs(path, tok, max_length=64, max_prompt_length=32)
    batch = PairCollator(tok.pad_token_id)([PairDataset(pairs)[i] for i in range(2)])
    # widest row: <bos><|user|>ab<|assistant|> (5 tokens) + eee<eos> (4 tokens)
    assert batch["input_ids"].shape == (6, 9)
    rows = [tok.decode([i for i in r.tolist() if i != tok.pad_token_id]) for r in batch["input_ids"]]
    tail = [r.split("<|assistant|>")[1] for r in rows]
    assert tail == ["c<eos>", "f<eos>", "dd<eos>", "g<eos>", "eee<eos>", "h<eos>"]
    # completion_mask covers exactly the answer tokens
    assert batch["completion_mask"].sum(dim=1).tolist() == [2, 2, 3, 2, 4, 2]
    assert torch.equal(batch["attention_mask"].sum(dim=1), (batch["input_ids"] != tok.pad_token_id).sum(dim=1))


def test_atomic_writer_leaves_nothing_on_failure(tmp_path):
    def rows():
        yield {"a": 1}
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        write_jsonl_atomic(tmp_path / "out.jsonl", rows())
    assert list(tmp_path.iterdir()) == []
    write_jsonl_atomic(tmp_path / "out.jsonl", [{"a": 1}])
    assert json.loads((tmp_path / "out.jsonl").read_text()) == {"a": 1}


def test_reuse_or_reset_keeps_only_outputs_of_the_same_identity(tmp_path):
    from selm.io import reuse_or_reset

    out = tmp_path / "run"
    out.mkdir()
    (out / "stale.json").write_text("{}")  # made before any identity was recorded: not trusted
    (out / "cache.jsonl").write_text("paid\n")
    assert reuse_or_reset(out, {"a": 1}, record="id.json", keep=("cache.jsonl",)) is True
    assert sorted(p.name for p in out.iterdir()) == ["cache.jsonl", "id.json"]
    (out / "result.json").write_text("{}")
    assert reuse_or_reset(out, {"a": 1}, record="id.json", keep=("cache.jsonl",)) is False
    assert (out / "result.json").exists()  # same identity: finished work is reused
    assert reuse_or_reset(out, {"a": 2}, record="id.json", keep=("cache.jsonl",)) is True
    assert sorted(p.name for p in out.iterdir()) == ["cache.jsonl", "id.json"]
    assert json.loads((out / "id.json").read_text()) == {"a": 2}
