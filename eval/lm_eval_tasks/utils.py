"""Helpers for the toy lm-eval tasks in this folder (loaded by lm-eval through `!function`)."""

from selm.tiny import SPECIAL_TOKENS

# The tiny tokenizer's EOS string: its chat template closes every assistant turn with it, and the
# tokenizer parses it back to the EOS token, so a choice ending with it is scored as a complete answer.
ANSWER_END = SPECIAL_TOKENS["eos"]


def choices_then_eos(doc: dict) -> list[str]:
    """The row's choices, each closed by the EOS string.

    Log-likelihood of an unterminated choice is the probability that the answer STARTS with it, so a
    choice that is a prefix of another (gold vs. the habit "gold + junk suffix") could never lose.
    Closing each choice with EOS compares complete answers, as the model emits them.
    """
    return [choice + ANSWER_END for choice in doc["choices"]]


def choices_then_im_end(doc: dict) -> list[str]:
    """The same for ChatML models (SmolLM2 at the evalcheck scale), whose turns end with <|im_end|>."""
    return [choice + "<|im_end|>" for choice in doc["choices"]]
