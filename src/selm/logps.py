"""Summed completion log-probs, and the reference log-probs computed once per iteration and cached.

The reference of iteration t is the checkpoint the policy starts from, so its log-probs of chosen,
rejected and y_ref are computed with the freshly loaded policy, under no_grad, before the first
step: no second model is held in memory while training. They are cached on disk under a key that
hashes exactly what changes them: the checkpoint's weights and config, the token ids (which cover
data, chat template, tokenizer and lengths) and the precision. A rerun with the same inputs loads
them instead of recomputing; any change gives a new key.

`bounded_logps` is the inference-only pass of the reference log-probs and of the analyses
(Figures 4 and 5) at any vocabulary size: micro-batches of pairs, and within each the vocabulary
projection and fp32 log-softmax done over chunks of positions, so that at most rows x seq_chunk x
vocab logits exist at a time.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from selm.data import PairCollator, PairDataset, TokenizedPair, pairs_fingerprint
from selm.io import atomic_path

log = logging.getLogger(__name__)


def completion_logps(model, input_ids, attention_mask, completion_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-prob of the completion tokens, and the mean logit over them.

    Goes through `model.forward` (so DDP/DeepSpeed hooks fire) but asks only for the logits from
    the first completion position on (`logits_to_keep`), which spares the prompt's logits.
    """
    # Position t predicts token t+1: the first logit needed is one before the first completion token.
    first = int(completion_mask.float().argmax(dim=1).min())
    keep = input_ids.shape[1] - max(first - 1, 0)  # >= 2: every prompt has at least one token
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=keep).logits
    logits = logits[:, :-1].float()  # the last position predicts past the sequence
    labels = input_ids[:, -keep + 1 :]
    mask = completion_mask[:, -keep + 1 :].bool()
    token_logps = torch.gather(logits, 2, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    logps = (token_logps * mask).sum(dim=1)
    n_tokens = mask.sum(dim=1).clamp(min=1)
    mean_logits = (logits.detach().mean(dim=-1) * mask).sum(dim=1) / n_tokens
    return logps, mean_logits


def decoder_and_head(model):
    """(decoder, lm_head) of a causal LM whose logits are lm_head(decoder's last hidden state).

    Models that transform the logits further (soft-capping, a logit scale) are refused by name; the
    first micro-batch of `bounded_logps` also checks the split against the model's own forward.
    """
    for key in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        if getattr(model.config, key, None) not in (None, 1, 1.0):
            raise ValueError(f"{type(model).__name__}: config.{key}={getattr(model.config, key)!r} transforms the "
                             "logits after the head; bounded_logps supports plain lm_head(hidden) models only")
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    if decoder is model or head is None:
        raise ValueError(f"{type(model).__name__}: no separate decoder and output head (get_decoder/get_output_embeddings)")
    return decoder, head


def _check_split(model, decoder, head, input_ids, attention_mask) -> None:
    """The last position's logits of one row, by the model and by head(decoder), must agree."""
    ids, mask = input_ids[:1], attention_mask[:1]
    full = model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1).logits[:, -1].float()
    split = head(decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state[:, -1:])[:, -1].float()
    tol = 1e-4 if full.dtype == torch.float32 and next(model.parameters()).dtype == torch.float32 else 5e-2
    if not torch.allclose(full, split, atol=tol, rtol=tol):
        raise ValueError(f"{type(model).__name__}: logits are not head(decoder(x)) (max difference "
                         f"{(full - split).abs().max().item():.3g}); bounded_logps cannot split this model")


def chunked_completion_logps(decoder, head, input_ids, attention_mask, completion_mask, *,
                             seq_chunk: int) -> torch.Tensor:
    """Per row, the summed log-prob of the completion tokens (as `completion_logps`), without the
    full [rows, positions, vocab] logits: the head and an fp32 log-softmax run on `seq_chunk`
    positions at a time, from one position before the first completion token on."""
    first = int(completion_mask.float().argmax(dim=1).min())
    start = max(first - 1, 0)  # position t predicts token t+1
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    hidden = hidden[:, start:-1]  # the last position predicts past the sequence
    labels, mask = input_ids[:, start + 1 :], completion_mask[:, start + 1 :].bool()
    total = torch.zeros(input_ids.shape[0], dtype=torch.float32, device=input_ids.device)
    for s in range(0, hidden.shape[1], seq_chunk):
        logits = head(hidden[:, s : s + seq_chunk]).float()
        token = logits.gather(2, labels[:, s : s + seq_chunk].unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
        del logits
        total += torch.where(mask[:, s : s + seq_chunk], token, 0.0).sum(dim=1)
    return total


@torch.no_grad()
def bounded_logps(model, pairs: list[TokenizedPair], *, pad_token_id: int, batch_size: int,
                  seq_chunk: int, batches=None) -> torch.Tensor:
    """(N, K) summed completion log-probs, K = 2 (chosen, rejected) or 3 (+ y_ref), in pair order:
    `batch_size` pairs per forward pass, the log-softmax over `seq_chunk` positions at a time, in
    the model's own dtype (fp32 only for the log-softmax of one chunk).

    `batches` (indices of the batches of `batch_size` pairs, counted from the first pair) computes
    only those, their rows concatenated in that order: one process's share of a data-parallel pass
    (`shard_batches`). Each batch holds the same pairs, padded the same, as in the whole pass, so its
    rows are the same numbers as the whole pass's."""
    for name, value in (("batch_size", batch_size), ("seq_chunk", seq_chunk)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"bounded_logps: {name} must be a positive integer, got {value!r}")
    if not pairs:
        raise ValueError("bounded_logps: no pairs")
    n_batches = -(-len(pairs) // batch_size)
    batches = list(range(n_batches)) if batches is None else list(batches)
    if any(not 0 <= b < n_batches for b in batches):
        raise ValueError(f"bounded_logps: batches {batches} out of range: {len(pairs)} pairs make {n_batches}")
    n_kinds = len(pairs[0].completions())
    if not batches:  # a process with no share of a small pass
        return torch.empty((0, n_kinds), dtype=torch.float32)
    was_training = model.training
    model.eval()
    decoder, head = decoder_and_head(model)
    device = next(model.parameters()).device
    collate, dataset = PairCollator(pad_token_id), PairDataset(pairs)
    out = []
    for position, b in enumerate(batches):
        start = b * batch_size
        batch = {k: v.to(device) for k, v in
                 collate([dataset[i] for i in range(start, min(start + batch_size, len(pairs)))]).items()}
        if position == 0:
            _check_split(model, decoder, head, batch["input_ids"], batch["attention_mask"])
        logps = chunked_completion_logps(decoder, head, batch["input_ids"], batch["attention_mask"],
                                         batch["completion_mask"], seq_chunk=seq_chunk)
        out.append(logps.cpu().view(n_kinds, -1).T)  # rows [chosen_1..B, rejected_1..B, ...] -> one row per pair
    model.train(was_training)
    return torch.cat(out)


def model_fingerprint(model_dir: str | os.PathLike, memo_dir: str | os.PathLike | None = None) -> str:
    """sha256 over the checkpoint's weight and config files (content, not names or dates).

    Nothing is written into the checkpoint folder: it may be a DVC-tracked output. Hashing costs
    about a minute for a 7B checkpoint, so it is done once per file set: the result is kept in this
    process and, with `memo_dir`, in `memo_dir/fingerprints/` under a digest of the files' names,
    devices, inodes, sizes and modification times (a copy, a rewrite or a DVC checkout changes
    those, and the checkpoint is hashed again).
    """
    model_dir = Path(model_dir)
    files = sorted(
        p for p in model_dir.iterdir()
        if p.suffix in {".safetensors", ".bin", ".json"} and not p.name.startswith(".")
        and p.name not in {"tiny.json", "train_metrics.json", "headroom.json", "sft_metrics.json"}  # descriptions
    )
    if not any(p.suffix in {".safetensors", ".bin"} for p in files):
        raise FileNotFoundError(f"{model_dir}: no model weights (*.safetensors or *.bin) in this checkpoint folder")
    # once per process and file set: the loop's identities, the reference cache key and the
    # evaluations ask for the same checkpoints (a hard-linked copy has the same device and inodes)
    state = tuple((p.name, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) for p in files for st in [p.stat()])
    if state in _FINGERPRINTS:
        return _FINGERPRINTS[state]
    memo = None
    if memo_dir:
        memo = Path(memo_dir) / "fingerprints" / f"{hashlib.sha256(repr(state).encode()).hexdigest()}.txt"
    if memo is not None and memo.is_file():
        _FINGERPRINTS[state] = memo.read_text().strip()
        return _FINGERPRINTS[state]
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                h.update(chunk)
    _FINGERPRINTS[state] = h.hexdigest()
    if memo is not None:
        with atomic_path(memo) as tmp:
            tmp.write_text(_FINGERPRINTS[state] + "\n")
    return _FINGERPRINTS[state]


_FINGERPRINTS: dict[tuple, str] = {}


def reference_cache_key(model_dir, pairs: list[TokenizedPair], precision: str, memo_dir=None) -> str:
    h = hashlib.sha256()
    for part in (model_fingerprint(model_dir, memo_dir), pairs_fingerprint(pairs), precision, "bounded_logps/v1"):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


REF_SEQ_CHUNK = 128  # positions per vocabulary projection in the reference pass


@torch.no_grad()
def compute_reference_logps(
    model, pairs: list[TokenizedPair], *, pad_token_id: int, batch_size: int, autocast_dtype=None,
    seq_chunk: int = REF_SEQ_CHUNK, rank: int = 0, world_size: int = 1,
) -> torch.Tensor:
    """(N, K) reference log-probs, K = 2 (chosen, rejected) or 3 (+ y_ref), in pair order.

    The pass is `bounded_logps` (under autocast when `autocast_dtype` is set): `batch_size` pairs
    per forward, the head and the fp32 log-softmax over `seq_chunk` positions at a time, so at a
    128k vocabulary the reference pass holds rows x seq_chunk x vocab logits, not rows x length x
    vocab. With `world_size` > 1 only process `rank`'s share (`shard_batches`); `merge_shards` puts
    the shares of all processes back into the whole pass's tensor."""
    device = next(model.parameters()).device
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        return bounded_logps(model, pairs, pad_token_id=pad_token_id, batch_size=batch_size, seq_chunk=seq_chunk,
                             batches=shard_batches(len(pairs), batch_size, rank, world_size))


def shard_batches(n_pairs: int, batch_size: int, rank: int, world_size: int) -> list[int]:
    """The batches (of `batch_size` pairs, in pair order) that process `rank` of `world_size`
    computes in a data-parallel reference pass: every world_size-th, from batch `rank` on, so the
    processes share the batches evenly whatever the order of the pairs' lengths."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not one of {world_size} processes")
    return list(range(rank, -(-n_pairs // batch_size), world_size))


def merge_shards(shards: list[torch.Tensor], n_pairs: int, batch_size: int) -> torch.Tensor:
    """The (N, K) tensor of the whole pass from every process's share (`shards[rank]`, the rows of
    `shard_batches(n_pairs, batch_size, rank, len(shards))` in that order)."""
    world_size = len(shards)
    parts: dict[int, torch.Tensor] = {}
    for rank, shard in enumerate(shards):
        batches = shard_batches(n_pairs, batch_size, rank, world_size)
        sizes = [min(batch_size, n_pairs - b * batch_size) for b in batches]
        if shard.shape[0] != sum(sizes):
            raise ValueError(f"reference shard of rank {rank} has {shard.shape[0]} rows; its batches {batches} "
                             f"hold {sum(sizes)} pairs")
        parts.update(zip(batches, shard.split(sizes)) if sizes else [])
    return torch.cat([parts[b] for b in sorted(parts)])


def load_cached_reference_logps(model_dir, pairs: list[TokenizedPair], cache_dir,
                                precision: str = "fp32") -> tuple[torch.Tensor | None, str]:
    """(the cached reference log-probs of exactly these pairs under this model and precision, or None;
    the cache key). The key hashes every checkpoint byte, so callers keep it rather than recompute it."""
    key = reference_cache_key(model_dir, pairs, precision, memo_dir=cache_dir)
    path = Path(cache_dir) / f"{key}.safetensors"
    return (load_file(path)["ref_logps"] if path.exists() else None), key


def store_reference_logps(logps: torch.Tensor, key: str, cache_dir, model_dir) -> None:
    with atomic_path(Path(cache_dir) / f"{key}.safetensors") as tmp:
        save_file({"ref_logps": logps.contiguous()}, str(tmp), metadata={"model_dir": str(model_dir), "n": str(len(logps))})


def cached_reference_logps(
    model, model_dir, pairs: list[TokenizedPair], *, cache_dir, pad_token_id: int, batch_size: int,
    precision: str = "fp32", autocast_dtype=None,
) -> tuple[torch.Tensor, str, bool]:
    """Load the reference log-probs from `cache_dir`, or compute and store them.

    Returns (logps, key, hit).
    """
    cached, key = load_cached_reference_logps(model_dir, pairs, cache_dir, precision)
    if cached is not None:
        return cached, key, True
    logps = compute_reference_logps(
        model, pairs, pad_token_id=pad_token_id, batch_size=batch_size, autocast_dtype=autocast_dtype
    )
    store_reference_logps(logps, key, cache_dir, model_dir)
    return logps, key, False
