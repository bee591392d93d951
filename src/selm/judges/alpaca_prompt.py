"""alpaca_eval's `weighted_alpaca_eval_gpt4_turbo` annotator, read from the installed package.

Nothing of the annotator is retyped here: the prompt template, the model name, the decoding
settings and the logprob parser's arguments come from alpaca_eval's own evaluators_configs/, and the
prompt is filled, turned into chat messages and parsed by alpaca_eval's own functions
(`utils.make_prompts`, `utils.prompt_to_chatml`, `completion_parsers.logprob_parser`). What this
module adds is the part alpaca_eval does inside its annotator classes, which cannot be called
without its own API client:
- the random order of the two outputs, seeded by the instruction as alpaca_eval seeds it
  (`RandomSwitchTwoColumnsProcessor`, seed 0 as `alpaca_eval evaluate` uses), undone afterwards
  with preference -> 3 - preference;
- the request arguments alpaca_eval's OpenAI helper sends (top_p 1.0 is its default);
- an explicit error instead of NaN when the answer has no usable logprobs.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from functools import lru_cache

import pandas as pd

SUPPORTED_KEYS = {"model_name", "max_tokens", "temperature", "logprobs", "top_logprobs"}


@dataclass(frozen=True)
class AlpacaAnnotator:
    name: str
    template: str
    model_name: str
    request: dict  # chat-completions arguments besides model and messages
    parser_kwargs: dict  # logprob_parser's numerator/denominator tokens, is_binarize
    version: str  # alpaca_eval version + hash of template and settings: part of the cache key


@lru_cache(maxsize=4)
def load_annotator(name: str = "weighted_alpaca_eval_gpt4_turbo") -> AlpacaAnnotator:
    import alpaca_eval
    from alpaca_eval import constants, utils

    config_path = constants.EVALUATORS_CONFIG_DIR / name / "configs.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"alpaca_eval has no annotator config {config_path}")
    cfg = utils.load_configs(config_path)[name]
    if cfg.get("fn_completion_parser") != "logprob_parser" or cfg.get("batch_size", 1) != 1:
        raise ValueError(f"{name}: only single-example logprob annotators are supported, got {cfg}")
    kwargs = dict(cfg["completions_kwargs"])
    unknown = set(kwargs) - SUPPORTED_KEYS
    if unknown:
        raise ValueError(f"{name}: completions_kwargs {sorted(unknown)} are not reproduced by this client")
    template = utils.read_or_return(cfg["prompt_template"], relative_to=constants.EVALUATORS_CONFIG_DIR)
    model_name = kwargs.pop("model_name")
    request = {"top_p": 1.0, **kwargs}  # alpaca_eval's _openai_completion_helper default top_p
    digest = hashlib.sha256((template + json.dumps(cfg, sort_keys=True)).encode()).hexdigest()[:12]
    return AlpacaAnnotator(
        name=name,
        template=template,
        model_name=model_name,
        request=request,
        parser_kwargs=dict(cfg.get("completion_parser_kwargs", {})),
        version=f"{name}@alpaca_eval-{alpaca_eval.__version__}:{digest}",
    )


def is_switched(instruction: str, seed: int = 0) -> bool:
    """Whether alpaca_eval shows output_2 first for this instruction (its seeded coin flip)."""
    from alpaca_eval import utils

    return utils.random_seeded_choice(seed="is_switched_outputs" + instruction + str(seed), choices=[False, True])


def messages(annotator: AlpacaAnnotator, instruction: str, output_1: str, output_2: str) -> list[dict]:
    """The chat messages alpaca_eval sends for outputs shown in this order."""
    from alpaca_eval import utils

    df = pd.DataFrame([{"instruction": instruction, "output_1": output_1, "output_2": output_2}])
    prompts, _ = utils.make_prompts(df, annotator.template, batch_size=1)
    return utils.prompt_to_chatml(prompts[0].strip())


def parse_preference(choice: dict, annotator: AlpacaAnnotator) -> tuple[float | None, str | None]:
    """(preference in [1, 2] for the outputs as shown, None) or (None, why it is unreadable)."""
    from alpaca_eval.completion_parsers import logprob_parser

    tokens = sorted({annotator.parser_kwargs["numerator_token"], *annotator.parser_kwargs["denominator_tokens"]})
    logprobs = choice.get("logprobs") or {}
    if not logprobs.get("content"):
        return None, "the judge's answer carries no logprobs (the server ignored logprobs=True?)"
    try:
        values = logprob_parser(choice, **annotator.parser_kwargs)
    except (AssertionError, KeyError, TypeError, IndexError) as e:
        return None, f"malformed logprobs in the judge's answer: {type(e).__name__}: {e}"
    if len(values) != 1:
        return None, f"expected the logprobs of 1 answer token, got {len(values)}"
    value = values[0]
    if value is None or math.isnan(value):
        seen = [t.get("token") for t in logprobs["content"][0].get("top_logprobs", [])]
        return None, f"none of the tokens {tokens} among the judge's top logprobs {seen}"
    return float(value), None
