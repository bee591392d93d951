"""Where the Hydra config tree lives, composition outside a `@hydra.main` app (tests, the loop), and
the validation of the values a user sweeps.

`validate_config` checks the hyperparameters (beta, alpha, learning rates, batch sizes, lengths,
iterations, decoding) once, where a config is composed, so that a nonsense value (alpha < 0, beta 0,
max_prompt_length >= max_length, batch size 0, a string where a number goes) fails there with the
key named, not deep in training. A section a config does not have is not checked (`selm-train`'s
config has no `generation`, the loop's has).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, ListConfig, OmegaConf

# conf/ and eval/ sit at the repository root (the package is installed editable from it): conf/ the
# Hydra config tree, eval/ what the evaluations read (lm-eval suites and local task YAMLs).
REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = REPO_ROOT / "conf"
EVAL_DIR = REPO_ROOT / "eval"


class ConfigError(ValueError):
    """A config value that cannot be right; the message names the key."""


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# key -> (kind, predicate on the value, what the predicate demands)
Rule = tuple[str, Callable[[float], bool], str]
POSITIVE: Rule = ("number", lambda v: v > 0, "> 0")
NON_NEGATIVE: Rule = ("number", lambda v: v >= 0, ">= 0")
FRACTION: Rule = ("number", lambda v: 0 <= v < 1, "in [0, 1)")
PROBABILITY: Rule = ("number", lambda v: 0 < v <= 1, "in (0, 1]")
COUNT: Rule = ("int", lambda v: v >= 1, ">= 1")
COUNT0: Rule = ("int", lambda v: v >= 0, ">= 0")
ANY_INT: Rule = ("int", lambda v: True, "an integer")

RULES: dict[str, Rule] = {
    "train.beta": POSITIVE, "train.alpha": NON_NEGATIVE, "train.epochs": POSITIVE,
    "train.global_batch_size": COUNT, "train.per_device_batch_size": COUNT, "train.ref_batch_size": COUNT,
    "train.warmup_ratio": FRACTION, "train.weight_decay": NON_NEGATIVE, "train.adam_beta1": FRACTION,
    "train.adam_beta2": FRACTION, "train.adam_epsilon": POSITIVE, "train.max_grad_norm": POSITIVE,
    "train.max_length": ("int", lambda v: v >= 2, ">= 2"), "train.max_prompt_length": COUNT, "train.seed": ANY_INT,
    "train.logging_steps": COUNT, "train.save_steps": COUNT0,
    "generation.temperature": POSITIVE, "generation.top_p": PROBABILITY, "generation.max_new_tokens": COUNT,
    "generation.batch_size": COUNT, "scale.max_new_tokens": COUNT,
    "data.slice_size": COUNT, "eval.n_prompts": COUNT0, "eval.coverage_samples": COUNT0,
    "ranker.noise": NON_NEGATIVE,
    "sft.epochs": POSITIVE, "sft.lr": POSITIVE, "sft.batch_size": COUNT, "sft.warmup_ratio": FRACTION,
    "sft.max_length": ("int", lambda v: v >= 2, ">= 2"), "sft.seed": ANY_INT, "sft.init_seed": ANY_INT,
    "sft.headroom_prompts": COUNT, "sft.headroom_n": COUNT,
    "iteration": COUNT0,
}


def _check(key: str, value, rule: Rule) -> None:
    kind, ok, demand = rule
    if kind == "int" and not _integer(value):
        raise ConfigError(f"config key {key}: must be an integer, got {value!r} ({type(value).__name__})")
    if kind == "number" and not _number(value):
        raise ConfigError(f"config key {key}: must be a finite number, got {value!r} ({type(value).__name__})")
    if not ok(value):
        raise ConfigError(f"config key {key}: must be {demand}, got {value!r}")


def _select(cfg: DictConfig, key: str):
    """The value at `key`, or a sentinel when the config has no such key (a section it lacks)."""
    missing = object()
    value = OmegaConf.select(cfg, key, default=missing, throw_on_missing=False)
    return None if value is missing else (value,)


def validate_config(cfg: DictConfig) -> DictConfig:
    """Check every swept hyperparameter present in `cfg` (RULES) and the relations between them;
    raise ConfigError naming the first bad key. Returns cfg."""
    for key, rule in RULES.items():
        found = _select(cfg, key)
        if found is not None and found[0] is not None:
            _check(key, found[0], rule)
    train = cfg.get("train")
    if train is not None and "max_prompt_length" in train and "max_length" in train:
        if train.max_prompt_length >= train.max_length:
            raise ConfigError(f"config key train.max_prompt_length: must be < train.max_length ({train.max_length}), "
                              f"got {train.max_prompt_length}: no room is left for the answer")
    if train is not None and "global_batch_size" in train and "per_device_batch_size" in train:
        if train.global_batch_size % train.per_device_batch_size:
            raise ConfigError(f"config key train.global_batch_size: must be a multiple of train.per_device_batch_size "
                              f"({train.per_device_batch_size}), got {train.global_batch_size}")
    if train is not None and "learning_rates" in train:
        lrs = train.learning_rates
        if not isinstance(lrs, ListConfig) or not lrs:
            raise ConfigError(f"config key train.learning_rates: must be a non-empty list (one per iteration), got {lrs!r}")
        for i, lr in enumerate(lrs):
            if lr is not None:  # null: an iteration this base never runs (Llama-3 has no iteration 0)
                _check(f"train.learning_rates[{i}]", lr, POSITIVE)
        iterations = list(OmegaConf.select(cfg, "model.iterations", default=None) or [])
        if OmegaConf.select(cfg, "model.offline_dpo_iteration", default=False):
            iterations.append(0)
        if _integer(cfg.get("iteration")):
            iterations.append(cfg.iteration)
        for t in iterations:
            if not _integer(t) or t < 0:
                raise ConfigError(f"config key model.iterations: must be integers >= 0, got {t!r}")
            if t >= len(lrs) or lrs[t] is None:
                raise ConfigError(f"config key train.learning_rates: iteration {t} runs but learning_rates[{t}] is "
                                  f"{'missing' if t >= len(lrs) else 'null'} ({list(lrs)})")
    return cfg


def compose_config(config_name: str = "train", overrides: list[str] | None = None) -> DictConfig:
    """Compose conf/<config_name>.yaml with Hydra overrides, e.g. ["train.alpha=0", "preset=paper_zephyr"],
    and validate it (ConfigError names the bad key)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return validate_config(compose(config_name=config_name, overrides=overrides or []))
