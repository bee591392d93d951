"""Tiny local models: a char-level tokenizer with a chat template and a small LlamaForCausalLM.

Tests and the toy scale never touch the Hugging Face hub: they build their models here and load
them with `from_pretrained(folder)`. One character is one token, so the tokenisation of a
concatenation is the concatenation of tokenisations (no merges across the prompt/answer border).

Chat template (ours, deliberately): `<bos><|user|>{prompt}<|assistant|>{answer}<eos>`, no system
message, exactly one BOS and one EOS (the authors' Llama-3 runs carried a duplicated BOS and their
Zephyr answers a double EOS; we keep neither).
"""

from __future__ import annotations

import argparse
import json
import string
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = {"pad": "<pad>", "bos": "<bos>", "eos": "<eos>", "unk": "<unk>"}
ROLE_TOKENS = ["<|user|>", "<|assistant|>"]
# Printable ASCII without the rarely useful whitespace variants, plus newline.
CHARS = [c for c in string.printable if c not in "\t\r\x0b\x0c"]

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}<|user|>{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}<|assistant|>{{ message['content'] }}{{ eos_token }}"
    "{% else %}{{ raise_exception('the tiny template knows only user and assistant roles') }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

# Each size is named by its parameter count (tied embeddings, the 102-token vocabulary): 14k (13,600),
# 113k (113,344: the toy bases, conf/sft/toy.yaml), 453k (453,024).
SIZES = {
    "14k": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
    "113k": dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4),
    "453k": dict(hidden_size=96, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4),
}


def build_tokenizer() -> PreTrainedTokenizerFast:
    specials = list(SPECIAL_TOKENS.values()) + ROLE_TOKENS
    vocab = {tok: i for i, tok in enumerate(specials + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk"]))
    # Every character is its own piece; Fuse joins decoded pieces without spaces.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=SPECIAL_TOKENS["pad"],
        bos_token=SPECIAL_TOKENS["bos"],
        eos_token=SPECIAL_TOKENS["eos"],
        unk_token=SPECIAL_TOKENS["unk"],
        additional_special_tokens=ROLE_TOKENS,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(out_dir: str | Path, *, size: str = "113k", seed: int = 0, max_positions: int = 256) -> Path:
    """Write a randomly initialised tiny Llama and its tokenizer to `out_dir`; return the folder."""
    if size not in SIZES:
        raise KeyError(f"unknown tiny size '{size}'; known: {sorted(SIZES)}")
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=max_positions,
        num_key_value_heads=SIZES[size]["num_attention_heads"],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        attention_dropout=0.0,
        **SIZES[size],
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    (out_dir / "tiny.json").write_text(json.dumps({"size": size, "seed": seed, "parameters": n_params}) + "\n")
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--size", default="113k", choices=sorted(SIZES))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = build_tiny_model(args.out_dir, size=args.size, seed=args.seed)
    print(f"tiny model written to {path}")


if __name__ == "__main__":
    main()
