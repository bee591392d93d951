"""Preference pairs: chat-template rendering, tokenisation, truncation and batch collation.

Template decisions (docs/paper.md section 2 lists the authors' quirks; we fix them on purpose):
- no system message unless `system_prompt` is set;
- BOS exactly once: a rendered text is tokenised without the tokenizer's own special tokens, and
  BOS is put in front only when the template did not write it (Llama-3's does, Zephyr's does not)
  and the tokenizer itself adds BOS (Mistral's and Llama's do; ChatML and GPT-2 style ones do not);
- the answer's ids are the rest of the ids of the FULL conversation tokenised at once, never the
  answer tokenised alone (a SentencePiece tokenizer would start it with a prefix-space piece that
  the model never produces after `<|assistant|>\n`), so prompt + answer is exactly the sequence
  the model sees and generation (`encode_prompt`) starts from the same prompt ids;
- the answer ends at the template's end-of-turn EOS (Zephyr's template writes "</s>\n": the
  newline is dropped); EOS is appended only when the template writes none, so every answer ends in
  exactly one EOS (not Zephyr's double EOS);
- a long prompt is truncated from the left to `max_prompt_length`, then the answer from the right
  so that prompt + answer fit `max_length` (the authors' settings).

A batch of B pairs is one tensor of 2B rows (chosen, rejected) or 3B rows (chosen, rejected,
y_ref), so the policy needs ONE forward per step for all three sequences. At alpha = 0 (DPO) y_ref
has no part in the loss: `without_y_ref` drops it before the reference pass and training.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from selm.io import PAIRS_SCHEMA, DataError, read_jsonl

SEQUENCE_KINDS = ("chosen", "rejected", "response")


def render_prompt(tokenizer, prompt: str, system_prompt: str | None = None) -> tuple[list[dict], str]:
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": prompt}
    ]
    return messages, tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def tokenizer_adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts BOS in front of a text when asked for its special tokens."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of a rendered chat text, with BOS exactly once: the template's, or else the
    tokenizer's own when it adds one (Zephyr's template writes none, Mistral's tokenizer adds it)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and ids[:1] != [bos] and tokenizer_adds_bos(tokenizer):
        ids = [bos] + ids
    return ids


def encode_prompt(tokenizer, prompt: str, system_prompt: str | None = None) -> list[int]:
    """Token ids of the templated prompt, ready for generation: the same ids training puts in front
    of every answer (`encode_prompt_answer`)."""
    _, text = render_prompt(tokenizer, prompt, system_prompt)
    return encode_text(tokenizer, text)


def encode_prompt_answer(tokenizer, prompt: str, answer: str, system_prompt: str | None = None):
    """Token ids of the templated prompt and of the answer that follows it (ending in one EOS).

    prompt ids + answer ids == the ids of the whole conversation (up to the answer's EOS) tokenised
    at once, and the prompt ids are `encode_prompt`'s. Only when a token of the conversation would
    straddle the prompt/answer border is the answer tokenised on its own after the prompt ids.
    """
    messages, prompt_text = render_prompt(tokenizer, prompt, system_prompt)
    full_text = tokenizer.apply_chat_template(
        messages + [{"role": "assistant", "content": answer}], tokenize=False
    )
    if not full_text.startswith(prompt_text):
        raise ValueError(
            "the chat template renders the prompt differently alone and inside the full conversation; "
            f"prompt alone: {prompt_text[-80:]!r}"
        )
    answer_text = full_text[len(prompt_text) :]
    eos = tokenizer.eos_token
    if eos and eos in answer_text:
        # Some templates (Zephyr's) write "</s>\n" after a turn: the answer ends at its EOS.
        answer_text = answer_text[: answer_text.rindex(eos) + len(eos)]
    prompt_ids = encode_text(tokenizer, prompt_text)
    full_ids = encode_text(tokenizer, prompt_text + answer_text)
    if full_ids[: len(prompt_ids)] == prompt_ids:
        answer_ids = full_ids[len(prompt_ids) :]
    else:
        # A token of the conversation straddles the border (e.g. byte-level BPE merging the prompt's
        # "\n" with an answer that starts with "\n"): a model that was given the prompt's ids cannot
        # produce it, so the answer is tokenised on its own after the prompt, as generation makes it.
        answer_ids = tokenizer(answer_text, add_special_tokens=False)["input_ids"]
    if not answer_ids or answer_ids[-1] != tokenizer.eos_token_id:
        answer_ids = answer_ids + [tokenizer.eos_token_id]
    return prompt_ids, answer_ids


@dataclass
class TokenizedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    response_ids: list[int] | None  # y_ref; None for plain DPO pairs

    def completions(self) -> dict[str, list[int]]:
        out = {"chosen": self.chosen_ids, "rejected": self.rejected_ids}
        if self.response_ids is not None:
            out["response"] = self.response_ids
        return out


def without_y_ref(pairs: list[TokenizedPair]) -> list[TokenizedPair]:
    """The same pairs with y_ref dropped: what DPO (alpha = 0) trains on. The optimism term is
    alpha * beta * (...), so at alpha = 0 y_ref changes neither the loss nor any gradient, and
    carrying it would only add a third of the policy's and the reference pass's compute."""
    return [TokenizedPair(p.prompt_ids, p.chosen_ids, p.rejected_ids, None) for p in pairs]


@dataclass
class TruncationStats:
    prompts_truncated: int = 0
    answers_truncated: int = 0


def tokenize_pairs(
    records: list[dict],
    tokenizer,
    *,
    max_length: int,
    max_prompt_length: int,
    system_prompt: str | None = None,
) -> tuple[list[TokenizedPair], TruncationStats]:
    if max_prompt_length >= max_length:
        raise ValueError(f"max_prompt_length ({max_prompt_length}) must be below max_length ({max_length})")
    with_response = "response" in records[0]
    stats = TruncationStats()
    pairs = []
    for i, record in enumerate(records):
        if ("response" in record) != with_response:
            raise DataError(f"record {i}: 'response' (y_ref) must be present in all pairs or in none")
        prompt_ids = None
        completions = {}
        for kind in SEQUENCE_KINDS:
            if kind not in record:
                continue
            p_ids, a_ids = encode_prompt_answer(tokenizer, record["prompt"], record[kind], system_prompt)
            prompt_ids = p_ids
            completions[kind] = a_ids
        if len(prompt_ids) > max_prompt_length:
            prompt_ids = prompt_ids[-max_prompt_length:]
            stats.prompts_truncated += 1
        budget = max_length - len(prompt_ids)
        for kind, ids in completions.items():
            if len(ids) > budget:
                completions[kind] = ids[:budget]
                stats.answers_truncated += 1
        pairs.append(TokenizedPair(prompt_ids, completions["chosen"], completions["rejected"], completions.get("response")))
    return pairs, stats


def load_pairs(path, tokenizer, **kwargs) -> tuple[list[TokenizedPair], TruncationStats]:
    return tokenize_pairs(read_jsonl(path, PAIRS_SCHEMA), tokenizer, **kwargs)


def pairs_fingerprint(pairs: list[TokenizedPair]) -> str:
    """sha256 of exactly the token ids a model sees: covers data, template, tokenizer and lengths."""
    h = hashlib.sha256()
    for p in pairs:
        for ids in (p.prompt_ids, p.chosen_ids, p.rejected_ids, p.response_ids or []):
            h.update(len(ids).to_bytes(4, "little"))
            h.update(torch.tensor(ids, dtype=torch.int64).numpy().tobytes())
    return h.hexdigest()


class PairDataset(torch.utils.data.Dataset):
    """Tokenised pairs plus, once computed, their reference log-probs (a row of `ref_logps`)."""

    def __init__(self, pairs: list[TokenizedPair], ref_logps: torch.Tensor | None = None):
        self.pairs = pairs
        self.ref_logps = ref_logps  # (N, 2 or 3): chosen, rejected[, response]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        item = {"pair": self.pairs[i]}
        if self.ref_logps is not None:
            item["ref_logps"] = self.ref_logps[i]
        return item


def pad_token_id(tokenizer) -> int:
    """The id to pad batches with: the pad token, else EOS (Llama-3 has no pad token). Padded
    positions are masked out of attention and of every loss, so the choice never changes a result."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    raise ValueError(f"the tokenizer {type(tokenizer).__name__} has neither a pad nor an EOS token: nothing to pad with")


@dataclass
class PairCollator:
    """Stacks B pairs into rows [chosen_1..B, rejected_1..B(, response_1..B)], right-padded."""

    pad_token_id: int

    def __post_init__(self):
        if not isinstance(self.pad_token_id, int):
            raise ValueError(f"PairCollator needs a pad id (an int), got {self.pad_token_id!r}: "
                             "pass selm.data.pad_token_id(tokenizer), which falls back to EOS")

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        pairs = [item["pair"] for item in items]
        kinds = list(pairs[0].completions())
        rows, masks = [], []
        for kind in kinds:
            for p in pairs:
                completion = p.completions()[kind]
                rows.append(p.prompt_ids + completion)
                masks.append([0] * len(p.prompt_ids) + [1] * len(completion))
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        completion_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (r, m) in enumerate(zip(rows, masks)):
            input_ids[i, : len(r)] = torch.tensor(r)
            attention_mask[i, : len(r)] = 1
            completion_mask[i, : len(m)] = torch.tensor(m)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}
        if "ref_logps" in items[0]:
            batch["ref_logps"] = torch.stack([item["ref_logps"] for item in items])
        return batch
