"""The reference pass shared by the processes of a launch: each process computes its share of the
batches, the shares are merged into the whole pass's tensor, and the cache holds the same bytes as
one process computing every batch."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import make_pairs, train_cfg, write_jsonl
from selm.data import tokenize_pairs
from selm.logps import compute_reference_logps, merge_shards, shard_batches

ROOT = Path(__file__).resolve().parents[1]


def test_shares_cover_every_batch_once():
    # 13 pairs in batches of 4: batches 0..3 (the last holds 1 pair), dealt to 2 or 3 processes in turn
    assert [shard_batches(13, 4, r, 2) for r in range(2)] == [[0, 2], [1, 3]]
    assert [shard_batches(13, 4, r, 3) for r in range(3)] == [[0, 3], [1], [2]]
    assert [shard_batches(3, 4, r, 2) for r in range(2)] == [[0], []]  # more processes than batches
    with pytest.raises(ValueError, match="rank 2 is not one of 2 processes"):
        shard_batches(13, 4, 2, 2)


def test_merge_puts_the_shares_back_in_pair_order():
    whole = torch.arange(26, dtype=torch.float32).view(13, 2)  # row i holds (2i, 2i+1)
    shards = [torch.cat([whole[0:4], whole[8:12]]), torch.cat([whole[4:8], whole[12:13]])]
    assert torch.equal(merge_shards(shards, 13, 4), whole)
    with pytest.raises(ValueError, match="shard of rank 1 has 4 rows; its batches \\[1, 3\\] hold 5 pairs"):
        merge_shards([shards[0], whole[4:8]], 13, 4)


@pytest.mark.parametrize("world_size", [2, 3, 5])
def test_shares_are_the_whole_pass_to_the_byte(tiny_model, world_size):
    """Uneven pair lengths, so batches pad differently: each share is computed batch for batch as
    in the whole pass, and the merged tensor equals it bit for bit."""
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    pairs, _ = tokenize_pairs(make_pairs(13, seed=4), tok, max_length=64, max_prompt_length=32)
    settings = dict(pad_token_id=tok.pad_token_id, batch_size=4)
    whole = compute_reference_logps(model, pairs, **settings)
    shards = [compute_reference_logps(model, pairs, **settings, rank=r, world_size=world_size)
              for r in range(world_size)]
    # batches of 4, 4, 4 and 1 pairs, dealt in turn
    assert [len(s) for s in shards] == {2: [8, 5], 3: [5, 4, 4], 5: [4, 4, 4, 1, 0]}[world_size]
    merged = merge_shards(shards, len(pairs), 4)
    assert merged.shape == (13, 3) and merged.dtype == torch.float32
    assert merged.numpy().tobytes() == whole.numpy().tobytes()


@pytest.mark.slow
def test_two_launched_processes_fill_the_cache_with_one_process_bytes(tiny_model, tmp_path):
    """`accelerate launch` with the rehearsal's 2-process CPU config runs `selm.train --reference-only`:
    both processes compute their share and rank 0 writes the cache file, whose tensor is byte-identical
    to the one a single process writes."""
    pairs = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(13, seed=4))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    caches = {}
    for name in ("one", "two"):
        cfg = train_cfg(tiny_model, pairs, tmp_path / name, "train.ref_batch_size=4", "train.alpha=0.1",
                        "train.global_batch_size=4", "train.per_device_batch_size=2")
        config = tmp_path / f"{name}.yaml"
        config.write_text(OmegaConf.to_yaml(cfg, resolve=True))
        prefix = [sys.executable] if name == "one" else [
            sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(ROOT / "conf" / "accelerate" / "cpu_2proc.yaml")]
        done = subprocess.run([*prefix, "-m", "selm.train", "--config", str(config), "--reference-only"], env=env,
                              capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-3000:]
        shares = re.findall(r"reference pass: process (\d) of (\d) computed (\d+) of 13 pairs", done.stderr)
        assert sorted(shares) == ([("0", "1", "13")] if name == "one" else [("0", "2", "8"), ("1", "2", "5")])
        files = sorted((tmp_path / name / "cache").glob("*.safetensors"))
        assert len(files) == 1, files
        caches[name] = files[0]
    assert caches["one"].name == caches["two"].name  # the same key
    # the tensor's bytes and the metadata; not the file's (safetensors writes its metadata from a hash
    # map, whose order differs between any two processes)
    (one, one_meta), (two, two_meta) = (_read(caches[name]) for name in ("one", "two"))
    assert two.numpy().tobytes() == one.numpy().tobytes() and two.shape == (13, 3)
    assert two_meta == one_meta == {"model_dir": str(tiny_model), "n": "13"}


def _read(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.get_tensor("ref_logps"), f.metadata()
