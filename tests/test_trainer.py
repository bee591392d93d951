"""SELMTrainer: parity with trl's DPOTrainer, trajectory invariants, resume, reference cache, bad input."""

import copy
import json
import math
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback, TrainingArguments

from conftest import make_pairs, train_cfg, write_jsonl
from selm.data import PairCollator, PairDataset, tokenize_pairs, without_y_ref
from selm.logps import cached_reference_logps, compute_reference_logps, reference_cache_key
from selm.train import train_iteration
from selm.trainer import SELMTrainer


def losses_of(out_dir) -> list[float]:
    metrics = json.loads((Path(out_dir) / "train_metrics.json").read_text())
    return [h["loss"] for h in metrics["log_history"]]


def test_parity_with_trl_dpo_at_alpha_zero(tiny_model, tmp_path):
    """Same tiny model, same 4 pairs: our loss and gradients equal DPOTrainer's (sigmoid) to 1e-5."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    rows = make_pairs(4, seed=3, with_response=False)
    beta = 0.1

    # trl: conversational pairs, so it renders the same chat template; a separate frozen reference model
    trl_rows = [
        {"prompt": [{"role": "user", "content": r["prompt"]}],
         "chosen": [{"role": "assistant", "content": r["chosen"]}],
         "rejected": [{"role": "assistant", "content": r["rejected"]}]}
        for r in rows
    ]
    trl_policy = copy.deepcopy(base)
    trl_args = DPOConfig(output_dir=str(tmp_path / "trl"), beta=beta, loss_type=["sigmoid"], report_to=[],
                         per_device_train_batch_size=4, max_length=None, use_cpu=True, bf16=False)
    trl_trainer = DPOTrainer(model=trl_policy, ref_model=copy.deepcopy(base), args=trl_args,
                             train_dataset=Dataset.from_list(trl_rows), processing_class=tok)
    trl_batch = trl_trainer._prepare_inputs(trl_trainer.data_collator([trl_trainer.train_dataset[i] for i in range(4)]))
    trl_loss = trl_trainer.compute_loss(trl_policy, trl_batch)
    trl_loss.backward()

    # ours: the same pairs through our tokenisation, reference log-probs and trainer
    ours_policy = copy.deepcopy(base)
    pairs, _ = tokenize_pairs(rows, tok, max_length=512, max_prompt_length=256)
    ref = compute_reference_logps(copy.deepcopy(base), pairs, pad_token_id=tok.pad_token_id, batch_size=4)
    trainer = SELMTrainer(model=ours_policy, args=TrainingArguments(str(tmp_path / "ours"), report_to=[], use_cpu=True),
                          train_dataset=PairDataset(pairs, ref), data_collator=PairCollator(tok.pad_token_id),
                          beta=beta, alpha=0.0)
    batch = PairCollator(tok.pad_token_id)([PairDataset(pairs, ref)[i] for i in range(4)])
    # identical token sequences (trl pads right too; compare the unpadded rows)
    for ours_row, trl_row in zip(batch["input_ids"], trl_batch["input_ids"]):
        assert ours_row[ours_row != tok.pad_token_id].tolist() == trl_row[trl_row != tok.pad_token_id].tolist()
    ours_loss = trainer.compute_loss(ours_policy, batch)
    ours_loss.backward()

    assert ours_loss.item() == pytest.approx(trl_loss.item(), abs=1e-5)
    for (name, p_ours), (_, p_trl) in zip(ours_policy.named_parameters(), trl_policy.named_parameters()):
        assert torch.allclose(p_ours.grad, p_trl.grad, atol=1e-5, rtol=0), name
    assert any(p.grad.abs().sum() > 0 for p in ours_policy.parameters())


def _loss_and_grads(policy, pairs, ref, pad_id, alpha, tmp_path):
    trainer = SELMTrainer(model=policy, args=TrainingArguments(str(tmp_path), report_to=[], use_cpu=True),
                          train_dataset=PairDataset(pairs, ref), data_collator=PairCollator(pad_id),
                          beta=0.1, alpha=alpha)
    batch = PairCollator(pad_id)([PairDataset(pairs, ref)[i] for i in range(len(pairs))])
    loss = trainer.compute_loss(policy, batch)
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in policy.named_parameters()}, batch["input_ids"].shape[0]


def test_alpha_zero_without_y_ref_equals_the_three_sequence_path(tiny_model, tmp_path):
    """DPO on (chosen, rejected) gives the loss, reference log-probs and gradients of the old path
    that also pushed y_ref through both passes. Reference log-probs and loss are bit-equal; the
    weight gradients are sums over all rows of the batch, where the y_ref rows add exact zeros but
    change how the kernel blocks the fp32 sum, so they agree to a few ulps of each tensor's largest
    entry (seen: 2e-8 against 5e-2, about 3 ulps; allowed: 32 ulps)."""
    tok = AutoTokenizer.from_pretrained(tiny_model)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    pairs3, _ = tokenize_pairs(make_pairs(8, seed=5), tok, max_length=64, max_prompt_length=32)
    pairs2 = without_y_ref(pairs3)
    assert [len(p.completions()) for p in pairs2] == [2] * 8 and pairs2[0].chosen_ids == pairs3[0].chosen_ids
    ref3 = compute_reference_logps(base, pairs3, pad_token_id=tok.pad_token_id, batch_size=8)
    ref2 = compute_reference_logps(base, pairs2, pad_token_id=tok.pad_token_id, batch_size=8)
    assert ref3.shape == (8, 3) and ref2.shape == (8, 2)
    assert torch.equal(ref2, ref3[:, :2])

    policy = copy.deepcopy(base)  # a policy that has moved away from the reference: the loss is not log 2
    with torch.no_grad():
        policy.lm_head.weight.add_(0.05 * torch.randn(policy.lm_head.weight.shape, generator=torch.Generator().manual_seed(0)))
    loss3, grads3, rows3 = _loss_and_grads(copy.deepcopy(policy), pairs3, ref3, tok.pad_token_id, 0.0, tmp_path / "3")
    loss2, grads2, rows2 = _loss_and_grads(copy.deepcopy(policy), pairs2, ref2, tok.pad_token_id, 0.0, tmp_path / "2")
    assert (rows3, rows2) == (24, 16)
    assert loss2 == loss3 and abs(loss2 - math.log(2)) > 1e-4
    eps = torch.finfo(torch.float32).eps
    for name, g2 in grads2.items():
        assert (g2 - grads3[name]).abs().max() <= 32 * eps * g2.abs().max(), name
    assert any(g.abs().sum() > 0 for g in grads2.values())


class RowCounter(TrainerCallback):
    """Records the number of rows of every training forward of the policy."""

    def __init__(self):
        self.rows: list[int] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        model.register_forward_pre_hook(lambda module, a, kw: self.rows.append(kw["input_ids"].shape[0]),
                                        with_kwargs=True)


@pytest.mark.parametrize("alpha, kinds", [(0.0, 2), (0.1, 3)])
def test_dpo_trains_on_two_sequences_selm_on_three(tiny_model, tmp_path, alpha, kinds):
    """With y_ref in the pairs file, alpha = 0 pushes only chosen and rejected through the reference
    pass and the training forwards; SELM (alpha > 0) all three."""
    from safetensors.torch import load_file

    pairs = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(8))
    counter = RowCounter()
    out = train_iteration(train_cfg(tiny_model, pairs, tmp_path, f"train.alpha={alpha}"), callbacks=[counter])
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert counter.rows == [kinds * 4] * 2  # 8 pairs, 4 per step
    assert (metrics["with_y_ref"], metrics["sequences_per_pair"]) == (True, kinds)
    cached = load_file(tmp_path / "cache" / f"{metrics['ref_cache_key']}.safetensors")["ref_logps"]
    assert cached.shape == (8, kinds)


def test_batch8_accum1_equals_batch1_accum8(tiny_model, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(40))
    big = train_iteration(train_cfg(tiny_model, pairs, tmp_path / "a",
                                    "train.global_batch_size=8", "train.per_device_batch_size=8"))
    small = train_iteration(train_cfg(tiny_model, pairs, tmp_path / "b",
                                      "train.global_batch_size=8", "train.per_device_batch_size=1"))
    a, b = losses_of(big), losses_of(small)
    assert len(a) == len(b) == 5
    assert a == pytest.approx(b, abs=1e-5)
    assert a[-1] != pytest.approx(a[0], abs=1e-4)  # it trained: the loss moved


def test_same_seed_same_losses_other_seed_differs(tiny_model, tmp_path, pairs_file):
    one = losses_of(train_iteration(train_cfg(tiny_model, pairs_file, tmp_path / "1")))
    two = losses_of(train_iteration(train_cfg(tiny_model, pairs_file, tmp_path / "2")))
    other = losses_of(train_iteration(train_cfg(tiny_model, pairs_file, tmp_path / "3", "train.seed=7")))
    assert one == two
    assert one != other  # data order follows the seed


class StopAfter(TrainerCallback):
    """Simulates a crash (like a killed process) once `step` optimizer steps are done."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"interrupted after step {self.step}")


def test_resume_from_checkpoint_continues_identically(tiny_model, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(24))
    overrides = ("train.save_steps=2",)
    straight = losses_of(train_iteration(train_cfg(tiny_model, pairs, tmp_path / "straight", *overrides)))

    cfg = train_cfg(tiny_model, pairs, tmp_path / "resumed", *overrides)
    with pytest.raises(KeyboardInterrupt):
        train_iteration(cfg, callbacks=[StopAfter(3)])
    out = Path(cfg.output_dir)
    assert not out.exists()  # nothing that looks complete
    assert (out.parent / "out.partial" / "checkpoint-2").is_dir()
    resumed = losses_of(train_iteration(cfg))
    assert len(straight) == 6
    assert resumed == pytest.approx(straight, abs=1e-6)


def test_reference_cache_equals_fresh_and_keys_on_inputs(tiny_model, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    rows = make_pairs(6)
    pairs, _ = tokenize_pairs(rows, tok, max_length=64, max_prompt_length=32)
    kwargs = dict(cache_dir=tmp_path, pad_token_id=tok.pad_token_id, batch_size=4)
    first, key, hit = cached_reference_logps(model, tiny_model, pairs, **kwargs)
    again, key2, hit2 = cached_reference_logps(model, tiny_model, pairs, **kwargs)
    fresh = compute_reference_logps(model, pairs, pad_token_id=tok.pad_token_id, batch_size=1)
    assert (hit, hit2, key) == (False, True, key2)
    assert torch.equal(first, again)
    assert torch.allclose(first, fresh, atol=1e-5)
    assert first.shape == (6, 3)

    # hand check of one entry: sum of log-softmax of the answer tokens, computed without the library code
    ids_prompt, ids_answer = pairs[0].prompt_ids, pairs[0].chosen_ids
    with torch.no_grad():
        logits = model(torch.tensor([ids_prompt + ids_answer])).logits[0]
    logprobs = torch.log_softmax(logits, dim=-1)
    manual = sum(logprobs[len(ids_prompt) - 1 + j, tok_id].item() for j, tok_id in enumerate(ids_answer))
    assert first[0, 0].item() == pytest.approx(manual, abs=1e-4)

    # anything that changes the log-probs changes the key
    changed_data = [dict(r) for r in rows]
    changed_data[2]["chosen"] += "z"
    pairs_changed, _ = tokenize_pairs(changed_data, tok, max_length=64, max_prompt_length=32)
    pairs_shorter, _ = tokenize_pairs(rows, tok, max_length=10, max_prompt_length=8)
    assert reference_cache_key(tiny_model, pairs_changed, "fp32") != key
    assert reference_cache_key(tiny_model, pairs_shorter, "fp32") != key
    assert reference_cache_key(tiny_model, pairs, "bf16") != key
    other_model = tmp_path / "other"
    model2 = copy.deepcopy(model)
    with torch.no_grad():
        model2.lm_head.weight[0, 0] += 1.0
    model2.save_pretrained(other_model)
    assert reference_cache_key(other_model, pairs, "fp32") != key


def test_second_run_reuses_cached_reference(tiny_model, tmp_path, pairs_file):
    cfg = train_cfg(tiny_model, pairs_file, tmp_path)
    first = json.loads((train_iteration(cfg) / "train_metrics.json").read_text())
    cfg.overwrite = True
    second = json.loads((train_iteration(cfg) / "train_metrics.json").read_text())
    assert (first["ref_cache_hit"], second["ref_cache_hit"]) == (False, True)
    assert first["ref_cache_key"] == second["ref_cache_key"]
    assert first["train_loss"] == second["train_loss"]


def test_y_ref_is_pushed_down_when_alpha_is_large(tiny_model, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(32))
    out = train_iteration(train_cfg(tiny_model, pairs, tmp_path, "train.alpha=10", "train.beta=0.1",
                                    "train.learning_rates.1=3e-3"))
    last = json.loads((out / "train_metrics.json").read_text())["log_history"][-1]
    assert last["logps/pi_response"] < last["logps/ref_response"]
    assert last["loss/optimism"] < 0


def test_missing_checkpoint_and_bad_lr_key(tiny_model, tmp_path, pairs_file):
    with pytest.raises(FileNotFoundError, match="init_checkpoint=.*nowhere"):
        train_iteration(train_cfg(tiny_model, pairs_file, tmp_path, f"init_checkpoint={tmp_path}/nowhere"))
    from selm.config import ConfigError

    # refused where the config is composed, naming the key, before any work
    with pytest.raises(ConfigError, match=r"train.learning_rates: iteration 7 runs but learning_rates\[7\] is missing"):
        train_iteration(train_cfg(tiny_model, pairs_file, tmp_path, "iteration=7"))
    with pytest.raises(ConfigError, match=r"train.global_batch_size: must be a multiple of train.per_device_batch_size \(4\), got 6"):
        train_iteration(train_cfg(tiny_model, pairs_file, tmp_path, "train.global_batch_size=6"))


def test_alpha_without_y_ref_is_refused(tiny_model, tmp_path):
    pairs = write_jsonl(tmp_path / "p.jsonl", make_pairs(4, with_response=False))
    with pytest.raises(ValueError, match="needs y_ref"):
        train_iteration(train_cfg(tiny_model, pairs, tmp_path, "train.alpha=0.1"))
    out = train_iteration(train_cfg(tiny_model, pairs, tmp_path, "train.alpha=0"))
    assert json.loads((out / "train_metrics.json").read_text())["with_y_ref"] is False


def test_finished_output_is_not_overwritten(tiny_model, tmp_path, pairs_file):
    cfg = train_cfg(tiny_model, pairs_file, tmp_path)
    train_iteration(cfg)
    with pytest.raises(FileExistsError, match="overwrite=true"):
        train_iteration(cfg)


@pytest.mark.slow
def test_wandb_offline_run_carries_metrics_and_config(tiny_model, tmp_path, pairs_file, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = train_cfg(tiny_model, pairs_file, tmp_path, "logger=wandb", f"logger.dir={tmp_path}",
                    "logger.name=unit/alpha0.001/iter1")
    train_iteration(cfg)
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    keys = (b"rewards/chosen", b"rewards/margins", b"loss/optimism", b"logps/pi_response", b"logps/ref_response",
            b"unit/alpha0.001/iter1", b"learning_rates")
    # W&B's service process may still be flushing the record stream when finish() returns on a loaded
    # machine (seen: only the 7-byte header at first read): wait for it, up to five minutes (a bound, not a speed).
    deadline = time.monotonic() + 300
    while True:
        blob = runs[0].read_bytes()  # the offline record stream stores keys and strings verbatim
        missing = [key for key in keys if key not in blob]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not missing, f"{missing} not in {runs[0]} ({len(blob)} bytes)"
    # no pip list per run (seconds each, hundreds of runs); the versions are in train_metrics.json
    assert not list((tmp_path / "wandb").glob("offline-run-*/files/requirements.txt"))


def test_gradient_checkpointing_gives_the_same_losses(tiny_model, tmp_path, pairs_file):
    plain = losses_of(train_iteration(train_cfg(tiny_model, pairs_file, tmp_path / "a")))
    ckpt = losses_of(train_iteration(train_cfg(tiny_model, pairs_file, tmp_path / "b",
                                               "train.gradient_checkpointing=true")))
    assert ckpt == pytest.approx(plain, abs=1e-6)


@pytest.mark.slow
def test_two_ranks_equal_one_process_with_the_global_batch(tiny_model, tmp_path):
    """DDP over 2 CPU processes (gloo) with 4 pairs each trains and LOGS exactly like one process
    with batch 8: gradients are averaged over ranks, and so are the per-step metrics."""
    import os
    import subprocess
    import sys

    from omegaconf import OmegaConf

    pairs = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(32))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {}
    for name, per_device in (("one", 8), ("two", 4)):
        cfg = train_cfg(tiny_model, pairs, tmp_path / name, "train.global_batch_size=8", "train.alpha=0.1",
                        f"train.per_device_batch_size={per_device}", f"paths.ref_cache_dir={tmp_path}/cache")
        config = tmp_path / f"{name}.yaml"
        config.write_text(OmegaConf.to_yaml(cfg, resolve=True))
        prefix = [sys.executable] if name == "one" else [sys.executable, "-m", "torch.distributed.run",
                                                         "--nproc_per_node", "2"]
        done = subprocess.run([*prefix, "-m", "selm.train", "--config", str(config)], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = json.loads((tmp_path / name / "out" / "train_metrics.json").read_text())
    assert runs["two"]["world_size"] == 2 and runs["one"]["world_size"] == 1
    one, two = runs["one"]["log_history"], runs["two"]["log_history"]
    assert len(one) == len(two) == 4
    for a, b in zip(one, two):
        for key in ("loss", "rewards/chosen", "rewards/margins", "logps/pi_response", "loss/optimism"):
            assert b[key] == pytest.approx(a[key], abs=1e-5), key
