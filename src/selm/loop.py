"""The online SELM loop for one base model, as small stages over files (docs/paper.md section 2).

    for t in iterations:
        D_t    = t-th contiguous slice of train_prefs (no replay)
        y_ref  = pi_{t-1}(x) for each prompt of D_t              -> iter{t}/responses.jsonl
                 (variant.y_ref_samples = k > 1: the ranker's best of k samples, the positive control)
        rank {y_ref, y_w, y_l}: best -> chosen, worst -> rejected -> iter{t}/pairs.jsonl
        pi_t   = train from pi_{t-1} with reference pi_{t-1}      -> iter{t}/model/
        greedy answers of pi_t on the test prompts, true reward  -> iter{t}/eval.json

A base with `offline_dpo_iteration` (Zephyr's role) first runs iteration 0: plain DPO on slice 0
with the ORIGINAL pairs. It depends on neither alpha nor the variant, so it is trained once per
(base, seed, iteration-0 settings) in a shared folder (`paths.shared_runs`) and hard-linked into
every run that starts from it: SELM and DPO then start from the same bytes, also on GPUs whose
kernels are not deterministic (Figure 4 compares their log-probs).

Every output is written atomically and a stage whose output exists is skipped, so a rerun after a
crash picks up where it stopped; but only under the same identity. Each iteration folder records
`identity.json`: the digest of everything its checkpoint depends on (the run's config, the
content of its data slice, the fingerprint of the checkpoint it starts from and of its reference,
the identity of iteration t-1, the code the loop imports, the numeric packages' versions). When
it differs from the one computed now, the folder starts afresh, and so does every later one,
whose identity chains from it. The per-iteration evaluations (eval.json) record theirs in
`eval_identity.json` (checkpoint fingerprint, test prompts, evaluation settings, code); each is
computed once per identity in `paths.shared_runs/evals/` and hard-linked into the runs that ask for
it (selm.evalstore), e.g. the base's, which every run of that base asks for.
"""

from __future__ import annotations

import importlib
import json
import logging
import shutil
from functools import partial
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from selm import console, layout
from selm.generation import backend_from_config
from selm.evalstore import shared_evaluation
from selm.io import (DataError, exclusive, link_copy, read_jsonl, reuse_or_reset, write_json_atomic,
                     write_jsonl_atomic, write_text_atomic)
from selm.provenance import code_fingerprint, digest, result_versions, tree_sha256

log = logging.getLogger(__name__)

# UltraFeedback-binarized schema (the fields the loop reads; others are kept)
PREFS_SCHEMA = {"prompt": (str, True), "prompt_id": (str, True), "chosen": (list, True), "rejected": (list, True)}
RESPONSES_SCHEMA = {"prompt_id": (str, True), "prompt": (str, True), "response": (str, True)}


def last_assistant(messages: list, where: str) -> str:
    if not messages or not isinstance(messages[-1], dict) or messages[-1].get("role") != "assistant":
        raise DataError(f"{where}: expected a message list ending with an assistant turn")
    return messages[-1]["content"]


def prefs_slice(rows: list[dict], index: int, slice_size: int, source: str = "train_prefs") -> list[dict]:
    """The index-th contiguous slice; slices never overlap, so no prompt is reused (no replay)."""
    start, stop = index * slice_size, (index + 1) * slice_size
    if stop > len(rows):
        raise DataError(f"{source}: slice {index} needs rows {start}..{stop - 1} but there are only {len(rows)}")
    return rows[start:stop]


def slice_index(iteration: int, offline_dpo_iteration: bool) -> int:
    """Zephyr: iteration 0 (offline DPO) uses slice 0, SELM t uses slice t. Others: SELM t uses slice t-1."""
    return iteration if offline_dpo_iteration else iteration - 1


def original_pairs(rows: list[dict], source: str) -> list[dict]:
    """The corpus's own chosen/rejected (iteration 0, offline DPO): no y_ref."""
    return [
        {"prompt": r["prompt"], "prompt_id": r["prompt_id"],
         "chosen": last_assistant(r["chosen"], f"{source}:{r['prompt_id']}:chosen"),
         "rejected": last_assistant(r["rejected"], f"{source}:{r['prompt_id']}:rejected")}
        for r in rows
    ]


# How an iteration builds its pairs (conf/variant/*.yaml `pairs`): best vs worst of the ranked
# candidates; y_ref replacing the chosen or the rejected answer after a comparison with y_w; the
# corpus's own pairs.
PAIR_RULES = ("ranked", "replace", "original")


def _candidate_texts(row: dict, by_id: dict[str, str]) -> dict[str, str]:
    """The three candidate answers of one prompt: y_ref (pi_{t-1}'s, from `by_id`: prompt_id ->
    response) and the corpus's chosen y_w and rejected y_l."""
    if row["prompt_id"] not in by_id:
        raise DataError(f"responses: no y_ref for prompt_id {row['prompt_id']}")
    return {"y_ref": by_id[row["prompt_id"]],
            "y_w": last_assistant(row["chosen"], f"train_prefs:{row['prompt_id']}:chosen"),
            "y_l": last_assistant(row["rejected"], f"train_prefs:{row['prompt_id']}:rejected")}


def rank_pairs(rows: list[dict], responses: list[dict], ranker,
               candidates: tuple[str, ...] = ("y_ref", "y_w", "y_l")) -> tuple[list[dict], dict]:
    """Rank the named candidates per prompt (default [y_ref, y_w, y_l]; Figure 6's label-update
    ablation ranks [y_ref, y_w]); best -> chosen, worst -> rejected. Drops pairs whose chosen and
    rejected texts are equal (nothing to learn) and counts every outcome."""
    unknown = set(candidates) - {"y_ref", "y_w", "y_l"}
    if unknown or len(candidates) < 2 or candidates[0] != "y_ref":
        raise ValueError(f"variant.candidates={list(candidates)}: must start with y_ref and name at least two of "
                         "y_ref, y_w, y_l")
    by_id = {r["prompt_id"]: r["response"] for r in responses}
    pairs, stats = [], {"pairs": 0, "dropped_equal": 0, "label_flipped": 0, "y_ref_chosen": 0, "y_ref_rejected": 0}
    for row in rows:
        texts = _candidate_texts(row, by_id)
        order = ranker.rank(row, [texts[name] for name in candidates])
        best, worst = candidates[order[0]], candidates[order[-1]]
        if texts[best] == texts[worst]:
            stats["dropped_equal"] += 1
            continue
        stats["y_ref_chosen"] += best == "y_ref"
        stats["y_ref_rejected"] += worst == "y_ref"
        stats["label_flipped"] += (best, worst) == ("y_l", "y_w")
        pairs.append({
            "prompt": row["prompt"], "prompt_id": row["prompt_id"],
            "chosen": texts[best], "rejected": texts[worst], "response": texts["y_ref"],
            "sources": f"{best}>{worst}",
        })
    stats["pairs"] = len(pairs)
    if not pairs:
        raise DataError("ranking left no pair with distinct chosen and rejected answers")
    return pairs, stats


def replace_pairs(rows: list[dict], responses: list[dict], ranker) -> tuple[list[dict], dict]:
    """Figure 6's label-update ablation (docs/paper.md section 4): compare y_ref with y_w only; when
    y_ref wins (a tie goes to y_ref, as in `rank_pairs`) it replaces the chosen answer, giving
    (y_ref, y_l), otherwise it replaces the rejected one, giving (y_w, y_ref). Drops pairs whose
    chosen and rejected texts are equal and counts every outcome as `rank_pairs` does."""
    by_id = {r["prompt_id"]: r["response"] for r in responses}
    pairs, stats = [], {"pairs": 0, "dropped_equal": 0, "label_flipped": 0, "y_ref_chosen": 0, "y_ref_rejected": 0}
    for row in rows:
        texts = _candidate_texts(row, by_id)
        y_ref_wins = ranker.rank(row, [texts["y_ref"], texts["y_w"]])[0] == 0
        best, worst = ("y_ref", "y_l") if y_ref_wins else ("y_w", "y_ref")
        if texts[best] == texts[worst]:
            stats["dropped_equal"] += 1
            continue
        stats["y_ref_chosen" if y_ref_wins else "y_ref_rejected"] += 1
        pairs.append({"prompt": row["prompt"], "prompt_id": row["prompt_id"], "chosen": texts[best],
                      "rejected": texts[worst], "response": texts["y_ref"], "sources": f"{best}>{worst}"})
    stats["pairs"] = len(pairs)
    if not pairs:
        raise DataError("the y_ref-vs-y_w comparison left no pair with distinct chosen and rejected answers")
    return pairs, stats


def select_families(rows: list[dict], families, source: str) -> list[dict]:
    """Rows of the named task families only (data.families; null keeps all): the regime map's
    task-difficulty axis. Order is kept, so slicing stays contiguous within the subset."""
    if not families:
        return rows
    wanted = set(families)
    known = {r.get("family") for r in rows}
    if wanted - known:
        raise DataError(f"{source}: data.families names {sorted(wanted - known)}, which no row has "
                        f"(families present: {sorted(f for f in known if f)})")
    return [r for r in rows if r.get("family") in wanted]


def generate_responses(backend, rows: list[dict], gen: DictConfig, seed: int) -> list[dict]:
    answers = backend.generate(
        [r["prompt"] for r in rows], n=1, do_sample=gen.do_sample, temperature=gen.temperature,
        top_p=gen.top_p, max_new_tokens=gen.max_new_tokens, seed=seed,
    )
    return [{"prompt_id": r["prompt_id"], "prompt": r["prompt"], "response": a[0]} for r, a in zip(rows, answers)]


def best_of_k_responses(backend, rows: list[dict], gen: DictConfig, seed: int, k: int, ranker) -> list[dict]:
    """y_ref = the ranker's best of k answers sampled from pi_{t-1} (at generation.temperature and
    top_p, whatever generation.do_sample says): the positive control's explorer (variant.y_ref_samples
    = k > 1). Each row also records the k candidates, so the choice can be checked."""
    samples = backend.generate([r["prompt"] for r in rows], n=k, do_sample=True, temperature=gen.temperature,
                               top_p=gen.top_p, max_new_tokens=gen.max_new_tokens, seed=seed)
    out = []
    for row, candidates in zip(rows, samples):
        if len(candidates) != k:
            raise ValueError(f"generation returned {len(candidates)} samples for prompt_id {row['prompt_id']}, "
                             f"expected {k}")
        best = ranker.rank(row, list(candidates))[0]
        out.append({"prompt_id": row["prompt_id"], "prompt": row["prompt"], "response": candidates[best],
                    "candidates": list(candidates)})
    return out


# The loop's scorers of its test answers by name (`eval.true_reward`), as "module:function": each
# takes (records, greedy answers, samples or None) and returns (eval_answers rows, metrics). The toy
# world's r* is the one scorer; a scale without a true reward (UltraFeedback) sets null and keeps the
# answers alone, which Figure 3's histograms score with the ranker.
TRUE_REWARDS = {"toy": "selm.world.metrics:score_answers"}


def true_reward_scorer(name: str | None):
    """The scorer registered as `name` (eval.true_reward), or None for null."""
    if name is None:
        return None
    if name not in TRUE_REWARDS:
        raise KeyError(f"eval.true_reward={name!r} is not a known scorer; known: {sorted(TRUE_REWARDS)} or null")
    module, function = TRUE_REWARDS[name].split(":")
    return getattr(importlib.import_module(module), function)


def evaluate_test_answers(backend, records: list[dict], gen: DictConfig, score=None,
                          coverage_samples: int = 0) -> tuple[dict, list[dict]]:
    """Greedy answers to the test prompts, scored by `score` (true_reward_scorer: the toy world's
    r*) when there is one; else the answers alone (UltraFeedback), for the ranker-reward histograms
    of Figure 3. With `coverage_samples` = k > 0 (needs a scorer) also k samples at T = 1 per
    prompt, which the scorer turns into exploration metrics."""
    if coverage_samples and score is None:
        raise ValueError("eval.coverage_samples > 0 needs a true reward (eval.true_reward): this config has none")
    prompts = [r["prompt"] for r in records]
    answers = backend.generate(prompts, n=1, do_sample=False, temperature=1.0, top_p=1.0,
                               max_new_tokens=gen.max_new_tokens, seed=0)
    samples = (backend.generate(prompts, n=coverage_samples, do_sample=True, temperature=1.0, top_p=1.0,
                                max_new_tokens=gen.max_new_tokens, seed=1) if coverage_samples else None)
    greedy = [a[0] for a in answers]
    metrics = {"n": len(greedy), "mean_length": sum(len(a) for a in greedy) / len(greedy)}
    if score is None:
        return metrics, [{"prompt_id": r["prompt_id"], "answer": a} for r, a in zip(records, greedy)]
    rows, scored = score(records, greedy, samples)
    metrics.update(scored)
    return metrics, rows


def iteration_config(cfg: DictConfig, t: int, init: Path, pairs: Path, out: Path,
                     reference: Path | None = None) -> DictConfig:
    """The `selm-train` config of iteration t: the loop's config with this iteration's files."""
    tcfg = OmegaConf.merge(cfg, {"iteration": t, "init_checkpoint": str(init), "pairs": str(pairs),
                                 "output_dir": str(out), "overwrite": False,
                                 "reference_checkpoint": str(reference) if reference else None})
    OmegaConf.resolve(tcfg)  # W&B names and groups keep the method's alpha, also for iteration 0
    if t == 0:
        tcfg.train.alpha = 0.0  # the offline step is plain DPO on the original pairs
    return tcfg


# What the loop's outputs depend on; changing anything else (judges, evaluation sets, W&B
# names) must not throw finished iterations away.
LOOP_SECTIONS = ("model", "train", "data", "generation", "ranker", "variant", "scale")
# The code of the loop: selm.loop and every selm module it imports or names (training, generation,
# ranking, the scorers of TRUE_REWARDS); see selm.provenance for why modules and not the whole package.
LOOP_MODULES = ("selm.loop",)


def run_identity(cfg: DictConfig) -> dict:
    """The run's config (runs/.../config.json, which the analyses read)."""
    config = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in LOOP_SECTIONS}
    config["eval"] = {"n_prompts": cfg.eval.n_prompts, "coverage_samples": cfg.eval.coverage_samples}
    return config


def named_files(value) -> dict[str, str]:
    """Content hashes of the existing files and folders a config section names by path (a string
    with a '/', or one word of it: `train.launcher` names an accelerate config), e.g. PairRM's
    folder; the data files and the base model are hashed more precisely elsewhere."""
    found = {}
    if isinstance(value, dict):
        for v in value.values():
            found.update(named_files(v))
    elif isinstance(value, list):
        for v in value:
            found.update(named_files(v))
    elif isinstance(value, str):
        for word in value.split():
            if "/" in word and Path(word).exists():
                found[word] = tree_sha256(word)
    return found


def iteration_identity(cfg: DictConfig, t: int, previous: dict, init_fp: str, reference_fp: str,
                       rows: list[dict], code: str) -> dict:
    """What iteration t's checkpoint depends on. `previous` is iteration t-1's identity (or the
    base's), so a change anywhere upstream reaches every later iteration."""
    config = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in LOOP_SECTIONS}
    sections = {k: v for k, v in config.items() if k not in ("model", "data")}
    return {"iteration": t, "previous": digest(previous), "init_checkpoint": init_fp,
            "reference_checkpoint": reference_fp, "config": config, "slice": digest(rows),
            "files": named_files(sections), "code": code, "versions": result_versions()}


def iteration0_train(cfg: DictConfig) -> dict:
    """The training settings the offline-DPO iteration 0 uses: the train section without alpha (the
    step is plain DPO) and with its own learning rate, learning_rates[0], in place of the list, whose
    later entries only later iterations read. Runs that differ only there share one iteration 0."""
    train = OmegaConf.to_container(cfg.train, resolve=True)
    train.pop("alpha")
    rates = train.pop("learning_rates")
    train["learning_rate"] = rates[0] if rates else None
    return train


def iteration0_identity(cfg: DictConfig, base_fp: str, rows: list[dict], code: str) -> dict:
    """What the offline-DPO iteration 0 depends on: the base, its slice of the corpus, the training
    settings it uses (iteration0_train), the code. Not the variant, the ranker, the generation
    settings or the later iterations' learning rates, which only later iterations use."""
    train = iteration0_train(cfg)
    return {"iteration": 0, "step": "offline DPO on the original pairs", "base": base_fp,
            "system_prompt": cfg.model.system_prompt, "train": train, "slice": digest(rows),
            "files": named_files(train), "code": code, "versions": result_versions()}


def eval_identity(cfg: DictConfig, model_fp: str, test: list[dict], code: str) -> dict:
    """What a loop evaluation (eval.json) depends on."""
    return {"checkpoint": model_fp, "test": digest(test),
            "eval": {"n_prompts": cfg.eval.n_prompts, "coverage_samples": cfg.eval.coverage_samples,
                     "true_reward": cfg.eval.true_reward},
            "generation": OmegaConf.to_container(cfg.generation, resolve=True),
            "scale": OmegaConf.to_container(cfg.scale, resolve=True), "system_prompt": cfg.model.system_prompt,
            "code": code, "versions": result_versions()}


def run_loop(cfg: DictConfig) -> Path:
    """Run (or resume) every iteration of one base x method x seed; return the run folder."""
    from selm.logps import model_fingerprint
    from selm.checkpoints import check_checkpoint

    run_dir = Path(cfg.run_dir)
    base = check_checkpoint(cfg.model.path, "model.path")
    variant = cfg.variant
    if variant.pairs not in PAIR_RULES or variant.reference not in ("previous", "base"):
        raise ValueError(f"variant={variant.name}: pairs must be one of {'|'.join(PAIR_RULES)} and reference "
                         "previous|base")
    if y_ref_samples(variant) > 1 and variant.pairs == "original":
        raise ValueError(f"variant={variant.name}: variant.y_ref_samples > 1 picks a y_ref, which pairs=original never uses")
    if variant.pairs == "original" and cfg.train.alpha != 0:
        raise ValueError(f"variant={variant.name} keeps the original pairs, which have no y_ref: "
                         f"train.alpha={cfg.train.alpha} needs y_ref (use alpha 0)")
    prefs = select_families(read_jsonl(cfg.data.train_prefs, PREFS_SCHEMA), cfg.data.families, str(cfg.data.train_prefs))
    test = select_families(read_jsonl(cfg.data.test_prefs, PREFS_SCHEMA), cfg.data.families,
                           str(cfg.data.test_prefs))[: cfg.eval.n_prompts]
    iterations = ([0] if cfg.model.offline_dpo_iteration else []) + list(cfg.model.iterations)
    code = code_fingerprint(*LOOP_MODULES)
    fingerprint = partial(model_fingerprint, memo_dir=cfg.paths.ref_cache_dir)  # hashed once per file set
    base_fp = fingerprint(base)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / layout.RUN_CONFIG
    if not config_path.exists() or json.loads(config_path.read_text()) != run_identity(cfg):
        write_json_atomic(config_path, run_identity(cfg))
    for t, stale in layout.iteration_dirs(run_dir).items():  # iterations this config no longer runs
        if t not in iterations:
            shutil.rmtree(stale)

    summary = {layout.BASE: _evaluate(cfg, base, base_fp, test, run_dir / layout.BASE, code)}
    previous, previous_id, ranker = base, {"base": base_fp}, None
    for t in console.track(iterations, f"loop {run_dir}", "iterations"):
        it_dir = layout.iteration_dir(run_dir, t)
        rows = prefs_slice(prefs, slice_index(t, cfg.model.offline_dpo_iteration), cfg.data.slice_size,
                           str(cfg.data.train_prefs))
        if t == 0:
            identity = _shared_iteration0(cfg, base, base_fp, rows, code, it_dir)
        else:
            reference_fp = base_fp if variant.reference == "base" else "init_checkpoint"
            identity = iteration_identity(cfg, t, previous_id, fingerprint(previous), reference_fp, rows, code)
            reuse_or_reset(it_dir, identity, record=layout.IDENTITY)
            ranker = _train_online_iteration(cfg, t, rows, previous, base, it_dir, ranker)
        model_dir = layout.model_dir(it_dir)
        summary[layout.iteration_name(t)] = _evaluate(cfg, model_dir, fingerprint(model_dir), test, it_dir, code)
        previous, previous_id = model_dir, identity
    write_json_atomic(run_dir / layout.SUMMARY, summary)
    return run_dir


def _train_online_iteration(cfg: DictConfig, t: int, rows: list[dict], previous: Path, base: Path, it_dir: Path,
                            ranker):
    """Pairs of iteration t (ranked y_ref of pi_{t-1}, or the original ones), then pi_t; each step
    skipped when its output exists. Returns the ranker (built once per run, when first needed)."""
    variant = cfg.variant
    pairs_path = it_dir / layout.PAIRS
    if not pairs_path.exists():
        if variant.pairs == "original":
            write_jsonl_atomic(pairs_path, original_pairs(rows, str(cfg.data.train_prefs)))
        else:
            responses_path = it_dir / layout.RESPONSES
            k = y_ref_samples(variant)
            if not responses_path.exists():
                with backend_from_config(cfg, previous) as backend:  # closed (vLLM: engine shut down) on exit
                    if k > 1:
                        ranker = ranker or _make_ranker(cfg)
                        responses = best_of_k_responses(backend, rows, cfg.generation, cfg.train.seed + t, k,
                                                        ranker)
                    else:
                        responses = generate_responses(backend, rows, cfg.generation, cfg.train.seed + t)
                write_jsonl_atomic(responses_path, responses)
                _release_accelerator_memory()  # the generation engine is gone; training needs the memory
            responses = read_jsonl(responses_path, RESPONSES_SCHEMA)
            ranker = ranker or _make_ranker(cfg)
            if variant.pairs == "replace":
                pairs, stats = replace_pairs(rows, responses, ranker)
            else:
                pairs, stats = rank_pairs(rows, responses, ranker, tuple(variant.candidates))
            write_json_atomic(it_dir / layout.RANKING_STATS, stats)
            write_jsonl_atomic(pairs_path, pairs)
    model_dir = layout.model_dir(it_dir)
    if not layout.is_trained(it_dir):
        reference = base if variant.reference == "base" else None
        _train(iteration_config(cfg, t, previous, pairs_path, model_dir, reference), it_dir)
    return ranker


def _train(tcfg: DictConfig, it_dir: Path) -> None:
    from selm.train import train_iteration

    if tcfg.train.get("launcher"):
        launch_training(tcfg, it_dir)
    else:
        train_iteration(tcfg)


def _shared_iteration0(cfg: DictConfig, base: Path, base_fp: str, rows: list[dict], code: str, it_dir: Path) -> dict:
    """The run's iteration 0: trained once in `paths.shared_runs/<base>/iter0-seed<seed>-<identity>/`
    (under a lock, so parallel runs wait for the first), then hard-linked into `it_dir` (pairs and
    checkpoint). Returns the run's iteration-0 identity: the shared one's digest."""
    shared_id = iteration0_identity(cfg, base_fp, rows, code)
    identity = {"iteration": 0, "shared": digest(shared_id)}
    reuse_or_reset(it_dir, identity, record=layout.IDENTITY)
    if layout.is_trained(it_dir):
        return identity
    shared = layout.shared_iteration0_dir(cfg.paths.shared_runs, cfg.model.name, cfg.train.seed, identity["shared"])
    with exclusive(shared.with_name(shared.name + ".lock")):
        reuse_or_reset(shared, shared_id, record=layout.IDENTITY)
        pairs_path, model_dir = shared / layout.PAIRS, layout.model_dir(shared)
        if not pairs_path.exists():
            write_jsonl_atomic(pairs_path, original_pairs(rows, str(cfg.data.train_prefs)))
        if not layout.is_trained(shared):
            neutral = OmegaConf.merge(cfg, {"train": {"alpha": 0.0}, "run_dir": str(shared), "run": {
                "experiment": "shared", "cell": f"{cfg.model.name}/offline_dpo", "method": "offline_dpo"}})
            _train(iteration_config(neutral, 0, base, pairs_path, model_dir), shared)
    link_copy(pairs_path, it_dir / layout.PAIRS)
    link_copy(model_dir, layout.model_dir(it_dir))
    return identity


def y_ref_samples(variant: DictConfig) -> int:
    """variant.y_ref_samples: 1 (absent) is the paper's y_ref, one answer of pi_{t-1}; k > 1 is the
    ranker's best of k samples (the positive control, conf/variant/best_of_k.yaml)."""
    k = variant.get("y_ref_samples", 1)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"variant={variant.name}: variant.y_ref_samples must be an integer >= 1, got {k!r}")
    return k


def _release_accelerator_memory() -> None:
    import gc

    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def launch_training(tcfg: DictConfig, it_dir: Path) -> None:
    """Train one iteration in other processes (`train.launcher`, e.g. accelerate launch with the
    DeepSpeed ZeRO-3 config on 8 GPUs): the loop writes the iteration's resolved config, then runs
    `<launcher> -m selm.train --config <file>` (whose processes share the reference pass before
    training) and checks its exit status."""
    import shlex
    import subprocess

    path = it_dir / layout.TRAIN_CONFIG
    write_text_atomic(path, OmegaConf.to_yaml(tcfg, resolve=True))
    command = [*shlex.split(tcfg.train.launcher), "-m", "selm.train", "--config", str(path)]
    log.info("launching: %s", " ".join(command))
    done = subprocess.run(command, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"training iteration {tcfg.iteration} failed (exit {done.returncode}): {' '.join(command)}")


def _make_ranker(cfg: DictConfig):
    from selm.rankers import get_ranker

    return get_ranker(cfg.ranker)


def _evaluate(cfg: DictConfig, model_dir: Path, model_fp: str, test: list[dict], out_dir: Path, code: str) -> dict:
    """The checkpoint's loop evaluation in `out_dir` (eval.json, its answers and identity): kept when
    made under the same identity, else computed once per identity in the shared store
    (selm.evalstore) and linked here."""
    path = out_dir / layout.LOOP_EVAL
    if not test:  # eval.n_prompts = 0: no true reward outside the toy world (paper scale)
        return {}
    identity, record = eval_identity(cfg, model_fp, test, code), out_dir / layout.EVAL_IDENTITY
    if record.exists() and json.loads(record.read_text()) == identity and path.exists():
        return json.loads(path.read_text())

    def compute() -> tuple[dict, list[dict]]:
        with backend_from_config(cfg, model_dir) as backend:
            return evaluate_test_answers(backend, test, cfg.generation, true_reward_scorer(cfg.eval.true_reward),
                                         cfg.eval.coverage_samples)

    return shared_evaluation(cfg.paths.shared_runs, identity, out_dir, compute)
