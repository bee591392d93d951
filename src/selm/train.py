"""Recipe: train ONE online iteration of SELM (or DPO at alpha = 0) from files.

    init checkpoint (policy = reference = pi_{t-1})  +  pairs JSONL  ->  checkpoint pi_t

Steps: validate inputs; tokenise the pairs (at alpha = 0, DPO, without y_ref: it has no part in
the loss); compute (or load from cache) the reference log-probs of chosen, rejected and y_ref with
the freshly loaded policy, shared by the processes of a launch; train with SELMTrainer; save the
final model into `<output_dir>.partial/` and rename it to `output_dir` only once complete, so an
interrupted run never leaves an output that looks finished. Checkpoints live in the partial folder
and a rerun resumes from the newest one.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments, set_seed
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_utils import get_last_checkpoint

from selm.checkpoints import check_checkpoint
from selm.data import PairCollator, PairDataset, load_pairs, pad_token_id, without_y_ref
from selm.io import write_json_atomic
from selm.logps import compute_reference_logps, load_cached_reference_logps, merge_shards, store_reference_logps
from selm.provenance import provenance
from selm.tracking import init_wandb
from selm.trainer import SELMTrainer

log = logging.getLogger(__name__)


def learning_rate_for(train_cfg: DictConfig, iteration: int) -> float:
    lrs = train_cfg.learning_rates  # indexed by iteration; null where this base runs no such iteration
    if not 0 <= iteration < len(lrs) or lrs[iteration] is None:
        defined = [i for i, lr in enumerate(lrs) if lr is not None]
        raise KeyError(f"train.learning_rates has no entry for iteration {iteration} (it has {defined})")
    return float(lrs[iteration])


def gradient_accumulation_steps(train_cfg: DictConfig, world_size: int) -> int:
    per_step = train_cfg.per_device_batch_size * world_size
    if train_cfg.global_batch_size % per_step:
        raise ValueError(
            f"train.global_batch_size={train_cfg.global_batch_size} is not a multiple of "
            f"train.per_device_batch_size x devices = {train_cfg.per_device_batch_size} x {world_size}"
        )
    return train_cfg.global_batch_size // per_step


def resolve_precision(name: str) -> str:
    if name == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    if name not in ("bf16", "fp32"):
        raise ValueError(f"train.precision must be auto, bf16 or fp32, got {name!r}")
    return name


def training_arguments(cfg: DictConfig, output_dir: Path, precision: str, report_to: list[str]) -> TrainingArguments:
    t = cfg.train
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=t.per_device_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps(t, world_size),
        learning_rate=learning_rate_for(t, cfg.iteration),
        num_train_epochs=t.epochs,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=t.weight_decay,
        adam_beta1=t.adam_beta1,
        adam_beta2=t.adam_beta2,
        adam_epsilon=t.adam_epsilon,
        max_grad_norm=t.max_grad_norm,
        optim="adamw_torch",
        bf16=precision == "bf16",
        activation_checkpointing=t.gradient_checkpointing,
        logging_steps=t.logging_steps,
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        save_total_limit=2,
        seed=t.seed,
        data_seed=t.seed,
        report_to=report_to,
        run_name=cfg.logger.name,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        disable_tqdm=not t.progress_bar,
        use_cpu=not torch.cuda.is_available(),
        ddp_find_unused_parameters=False,  # every parameter gets a gradient: skip the extra graph traversal
    )


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def is_deepspeed_zero3_enabled() -> bool:
    from transformers.integrations import is_deepspeed_zero3_enabled as enabled

    return bool(enabled())


def reference_dir(cfg: DictConfig, init_dir: Path) -> Path:
    """pi_ref: the init checkpoint itself (the paper's loop), or `reference_checkpoint` (offline DPO)."""
    if cfg.get("reference_checkpoint"):
        return check_checkpoint(cfg.reference_checkpoint, "reference_checkpoint")
    return init_dir


def _tokenized_pairs(cfg: DictConfig, init_dir: Path):
    """(tokenizer, the pairs this iteration trains on, truncation stats, whether the file has y_ref).

    At alpha = 0 y_ref is dropped here, so neither the reference pass nor any training step pushes
    it through a model (it would cost a third of the compute for a zero gradient)."""
    t = cfg.train
    tokenizer = AutoTokenizer.from_pretrained(init_dir)
    pairs, trunc = load_pairs(
        Path(cfg.pairs), tokenizer, max_length=t.max_length, max_prompt_length=t.max_prompt_length,
        system_prompt=cfg.model.system_prompt,
    )
    file_has_y_ref = pairs[0].response_ids is not None
    if t.alpha != 0 and not file_has_y_ref:
        raise ValueError(f"{cfg.pairs}: train.alpha={t.alpha} needs y_ref, but the pairs have no 'response' field")
    if t.alpha == 0 and file_has_y_ref:
        pairs = without_y_ref(pairs)
    return tokenizer, pairs, trunc, file_has_y_ref


def reference_logps(cfg: DictConfig, init_dir: Path, pairs, precision: str, tokenizer, policy=None):
    """(logps, cache key, cache hit) of chosen, rejected and y_ref under pi_ref, from the cache or
    computed under no_grad: with `policy` when pi_ref is the init checkpoint, else with pi_ref
    loaded for this pass only. On a GPU the pass runs there, and the model goes back.

    In a launch of several processes (WORLD_SIZE > 1: accelerate launch, torchrun) every process
    computes its share of the batches (`selm.logps.shard_batches`) and receives the others' (the
    process group is started here if the launch has none yet): the same tensor, to the byte, as one
    process computing every batch, in 1/world_size of its time. Rank 0 writes the cache. Every
    process must call this together: they agree on a cache miss, since the cache is written only
    after all of them have computed their share."""
    ref_dir = reference_dir(cfg, init_dir)
    cached, key = load_cached_reference_logps(ref_dir, pairs, cfg.paths.ref_cache_dir, precision)
    if cached is not None:  # no model load at all (a 7B reference costs minutes to load)
        return cached, key, True
    rank, world_size = _process_group()
    ref_model = policy if (policy is not None and ref_dir == init_dir) else None
    if ref_model is None:
        ref_model = AutoModelForCausalLM.from_pretrained(ref_dir, dtype=torch.float32)
    home = next(ref_model.parameters()).device
    if torch.cuda.is_available():
        ref_model.to(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    batch_size = cfg.train.ref_batch_size
    try:
        logps = compute_reference_logps(ref_model, pairs, pad_token_id=pad_token_id(tokenizer), batch_size=batch_size,
                                        autocast_dtype=torch.bfloat16 if precision == "bf16" else None,
                                        rank=rank, world_size=world_size)
    finally:
        ref_model.to(home)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    log.info("reference pass: process %d of %d computed %d of %d pairs", rank, world_size, len(logps), len(pairs))
    if world_size > 1:
        shards = [None] * world_size
        torch.distributed.all_gather_object(shards, logps)
        logps = merge_shards(shards, len(pairs), batch_size)
    if rank == 0:
        store_reference_logps(logps, key, cfg.paths.ref_cache_dir, ref_dir)
    return logps, key, False


def reference_cached(cfg: DictConfig, init_dir: Path, pairs, precision: str) -> bool:
    """Whether the reference cache holds this iteration's log-probs already."""
    ref_dir = reference_dir(cfg, init_dir)
    return load_cached_reference_logps(ref_dir, pairs, cfg.paths.ref_cache_dir, precision)[0] is not None


def _process_group() -> tuple[int, int]:
    """(rank, world size) of this process in its launch; with WORLD_SIZE > 1 the default process
    group is started (gloo on a CPU, nccl on GPUs, from the launcher's MASTER_ADDR/PORT) unless it
    runs already. accelerate and DeepSpeed use a group that runs instead of starting their own."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))  # nccl's objects travel on this GPU
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if dist.get_world_size() != world_size:
        raise RuntimeError(f"WORLD_SIZE={world_size}, but the process group has {dist.get_world_size()} processes")
    return dist.get_rank(), world_size


def precompute_reference(cfg: DictConfig) -> str:
    """Fill the reference cache for one iteration (`--reference-only`; under a launcher every
    process computes its share)."""
    init_dir = check_checkpoint(cfg.init_checkpoint, "init_checkpoint")
    precision = resolve_precision(cfg.train.precision)
    tokenizer, pairs, _, _ = _tokenized_pairs(cfg, init_dir)
    _, key, hit = reference_logps(cfg, init_dir, pairs, precision, tokenizer)
    log.info("reference log-probs %s (key %s)", "already cached" if hit else "computed", key)
    return key


def main(argv: list[str] | None = None) -> None:
    """`python -m selm.train --config ITERATION.yaml [--reference-only]`: one iteration from a
    resolved config file; what `train.launcher` (e.g. accelerate launch) runs on every rank."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--reference-only", action="store_true", help="only fill the reference log-prob cache")
    args = parser.parse_args(argv)
    if not args.config.is_file():
        raise SystemExit(f"--config {args.config}: no such file")
    cfg = OmegaConf.load(args.config)
    if args.reference_only:
        precompute_reference(cfg)
    else:
        train_iteration(cfg)


def train_iteration(cfg: DictConfig, callbacks: list | None = None) -> Path:
    """Run one iteration as configured; return the folder of the trained checkpoint.

    `callbacks` are transformers TrainerCallbacks (tests use one to interrupt a run).
    """
    init_dir = check_checkpoint(cfg.init_checkpoint, "init_checkpoint")
    pairs_path = Path(cfg.pairs)
    output_dir = Path(cfg.output_dir)
    partial_dir = output_dir.with_name(output_dir.name + ".partial")
    if output_dir.exists():
        if not cfg.overwrite:
            raise FileExistsError(f"output_dir={output_dir} already holds a trained model; set overwrite=true")
        shutil.rmtree(output_dir)
        shutil.rmtree(partial_dir, ignore_errors=True)  # a fresh run must not resume someone else's checkpoints
    t = cfg.train
    set_seed(t.seed)
    precision = resolve_precision(t.precision)
    learning_rate_for(t, cfg.iteration)  # fail on a missing learning rate before any work

    tokenizer, pairs, trunc, file_has_y_ref = _tokenized_pairs(cfg, init_dir)
    run = init_wandb(cfg) if is_main_process() else None
    # The reference pass first, on every process of the launch (each its share of the batches), with
    # the whole policy as loaded: a ZeRO-3-sharded model could not run it outside the engine.
    model = None
    if not reference_cached(cfg, init_dir, pairs, precision):
        model = AutoModelForCausalLM.from_pretrained(init_dir, dtype=torch.float32)
    t0 = time.perf_counter()
    ref_logps, cache_key, cache_hit = reference_logps(cfg, init_dir, pairs, precision, tokenizer, policy=model)
    ref_seconds = time.perf_counter() - t0
    log.info("reference log-probs %s (key %s, %.1f s)", "loaded" if cache_hit else "computed", cache_key, ref_seconds)
    # TrainingArguments before the policy for training: under DeepSpeed ZeRO-3 they switch on
    # zero.Init, so that policy is sharded as it is built instead of materialised whole on every rank.
    args = training_arguments(cfg, partial_dir, precision, ["wandb"] if run is not None else [])
    if is_deepspeed_zero3_enabled() or model is None:
        model = None  # the reference pass's whole copy goes before the sharded one is built
        gc.collect()
        model = AutoModelForCausalLM.from_pretrained(init_dir, dtype=torch.float32)

    trainer = SELMTrainer(
        model=model,
        args=args,
        train_dataset=PairDataset(pairs, ref_logps),
        data_collator=PairCollator(pad_token_id(tokenizer)),
        beta=t.beta,
        alpha=t.alpha,
        callbacks=callbacks,
    )
    if not t.progress_bar:
        trainer.remove_callback(PrinterCallback)  # metrics still reach log_history, W&B and train_metrics.json
    resume = get_last_checkpoint(str(partial_dir)) if t.resume and partial_dir.is_dir() else None
    if resume:
        log.info("resuming from %s", resume)
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    train_seconds = time.perf_counter() - t0

    final_tmp = partial_dir / "final"
    trainer.save_model(str(final_tmp))  # collective under ZeRO-3 (gathers the shards); rank 0 writes
    if trainer.is_world_process_zero():  # one rank finishes the folder; the others wait below
        tokenizer.save_pretrained(final_tmp)
        history = [h for h in trainer.state.log_history if "loss" in h]
        config = OmegaConf.to_container(cfg, resolve=True)
        write_json_atomic(
            final_tmp / "train_metrics.json",
            {
                "iteration": cfg.iteration,
                "pairs": str(pairs_path),
                "n_pairs": len(pairs),
                "with_y_ref": file_has_y_ref,  # the pairs file carries y_ref
                "sequences_per_pair": len(pairs[0].completions()),  # 2 at alpha = 0: y_ref is not trained on
                "init_checkpoint": str(init_dir),
                "reference_checkpoint": str(reference_dir(cfg, init_dir)),
                "learning_rate": learning_rate_for(t, cfg.iteration),
                "precision": precision,
                "world_size": trainer.args.world_size,
                "ref_cache_key": cache_key,
                "ref_cache_hit": cache_hit,
                "ref_seconds": ref_seconds,
                "train_seconds": train_seconds,
                "train_loss": result.training_loss,
                "global_steps": trainer.state.global_step,
                "truncated": {"prompts": trunc.prompts_truncated, "answers": trunc.answers_truncated},
                "log_history": history,
                "config": config,
                "provenance": provenance(config),
            },
        )
        os.replace(final_tmp, output_dir)
        shutil.rmtree(partial_dir)
    trainer.accelerator.wait_for_everyone()
    if run is not None:
        run.finish()
    return output_dir


if __name__ == "__main__":
    from selm import console

    console.setup()  # library bars and info logs off unless SELM_VERBOSE=1
    logging.basicConfig(level=logging.INFO)
    main()
