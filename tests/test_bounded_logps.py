"""selm.logps.bounded_logps, the analyses' memory-bounded log-prob pass: the same numbers as the
all-at-once pass for any micro-batch and chunk size, and never more than one micro-batch-chunk of
vocabulary logits at a time (counted on every tensor the ops allocate)."""

import random

import pytest
import torch
from alloc_tracker import AllocationTracker
from transformers import LlamaConfig, LlamaForCausalLM

from selm.data import PairCollator, PairDataset, TokenizedPair
from selm.logps import REF_SEQ_CHUNK, bounded_logps, completion_logps, compute_reference_logps

VOCAB = 4096
PAD = 0


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is faster and steady


def random_llama(vocab: int = VOCAB, dtype=torch.float32, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                         pad_token_id=PAD, tie_word_embeddings=False)
    return LlamaForCausalLM(config).to(dtype).eval()


def random_pairs(n: int, seed: int = 0, with_response: bool = True, vocab: int = VOCAB) -> list[TokenizedPair]:
    rng = random.Random(seed)

    def ids(lo, hi):
        return [rng.randrange(1, vocab) for _ in range(rng.randint(lo, hi))]

    return [TokenizedPair(ids(3, 20), ids(1, 30), ids(1, 30), ids(1, 30) if with_response else None) for _ in range(n)]


def reference_by_hand(model, pairs) -> torch.Tensor:
    """Each completion alone (no padding, no batching): full fp32 logits, log-softmax, summed over
    the completion tokens."""
    rows = []
    for p in pairs:
        row = []
        for completion in p.completions().values():
            ids = torch.tensor([p.prompt_ids + completion])
            with torch.no_grad():
                logprobs = model(input_ids=ids).logits[0].float().log_softmax(-1)
            positions = range(len(p.prompt_ids) - 1, ids.shape[1] - 1)  # position t predicts token t+1
            row.append(sum(logprobs[t, ids[0, t + 1]].item() for t in positions))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


@torch.no_grad()
def all_at_once(model, pairs) -> torch.Tensor:
    """The reference pass as it was: every pair in one batch, the training forward's full logits
    from the first completion position on (selm.logps.completion_logps)."""
    batch = PairCollator(PAD)([PairDataset(pairs)[i] for i in range(len(pairs))])
    logps, _ = completion_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    return logps.view(len(pairs[0].completions()), -1).T


@pytest.fixture(scope="module")
def ten_pairs():
    model, pairs = random_llama(), random_pairs(10)
    return model, pairs, reference_by_hand(model, pairs)


@pytest.mark.parametrize("batch_size,seq_chunk", [(1, 1), (3, 7), (4, 1024), (10, 5), (128, 16)])
def test_bounded_logps_equal_the_all_at_once_pass(ten_pairs, batch_size, seq_chunk):
    model, pairs, expected = ten_pairs
    old = all_at_once(model, pairs)
    got = bounded_logps(model, pairs, pad_token_id=PAD, batch_size=batch_size, seq_chunk=seq_chunk)
    assert got.shape == (10, 3) and got.dtype == torch.float32
    assert torch.allclose(got.double(), expected, atol=2e-4, rtol=1e-5)
    assert torch.allclose(got, old, atol=2e-4, rtol=1e-5)
    assert not model.training


def test_bounded_logps_of_plain_pairs_and_bad_sizes():
    model, pairs = random_llama(), random_pairs(5, seed=1, with_response=False)
    got = bounded_logps(model, pairs, pad_token_id=PAD, batch_size=2, seq_chunk=3)
    assert got.shape == (5, 2)
    assert torch.allclose(got.double(), reference_by_hand(model, pairs), atol=2e-4, rtol=1e-5)
    for bad in ({"batch_size": 0, "seq_chunk": 4}, {"batch_size": 2, "seq_chunk": 1.5}):
        with pytest.raises(ValueError, match=f"{next(k for k, v in bad.items() if v in (0, 1.5))} must be a positive integer"):
            bounded_logps(model, pairs, pad_token_id=PAD, **bad)


def test_bounded_logps_hold_one_chunk_of_vocabulary_logits_at_a_time():
    model, pairs = random_llama(), random_pairs(16, seed=2)
    batch_size, seq_chunk, kinds = 2, 8, 3
    with AllocationTracker(VOCAB) as bounded:
        bounded_logps(model, pairs, pad_token_id=PAD, batch_size=batch_size, seq_chunk=seq_chunk)
    with AllocationTracker(VOCAB) as whole:
        all_at_once(model, pairs)
    assert bounded.largest_vocab_numel <= batch_size * kinds * seq_chunk * VOCAB
    longest = max(len(p.prompt_ids) + max(map(len, p.completions().values())) for p in pairs)
    assert whole.largest_vocab_numel >= len(pairs) * kinds * (longest - 20) * VOCAB  # what the bound rules out
    assert bounded.peak * 4 < whole.peak


def test_bf16_model_keeps_its_dtype_and_upcasts_one_chunk():
    model, pairs = random_llama(dtype=torch.bfloat16), random_pairs(6, seed=3)
    with AllocationTracker(VOCAB) as tracker:
        got = bounded_logps(model, pairs, pad_token_id=PAD, batch_size=2, seq_chunk=4)
    assert tracker.vocab_dtypes == {torch.bfloat16, torch.float32}  # head output in bf16, its chunk's log-softmax in fp32
    assert tracker.largest_vocab_numel <= 2 * 3 * 4 * VOCAB
    fp32 = bounded_logps(model.float(), pairs, pad_token_id=PAD, batch_size=6, seq_chunk=64)
    assert torch.allclose(got, fp32, rtol=0.05, atol=0.5)  # bf16 weights: close, not equal


def test_a_model_whose_logits_are_not_head_of_decoder_is_refused():
    model, pairs = random_llama(), random_pairs(2)
    model.config.logit_scale = 0.5
    with pytest.raises(ValueError, match="config.logit_scale=0.5"):
        bounded_logps(model, pairs, pad_token_id=PAD, batch_size=1, seq_chunk=4)


LLAMA3_VOCAB = 128256


def test_reference_pass_at_llama3_vocabulary_is_bounded_and_unchanged():
    """compute_reference_logps (the training iteration's reference pass) goes through bounded_logps:
    at Llama-3's vocabulary its values equal the old all-logits pass and the hand computation, and
    its largest vocabulary-sized tensor is one micro-batch x REF_SEQ_CHUNK positions, not the batch's
    full length (4 pairs x 3 kinds x up to 230 positions here)."""
    model = random_llama(vocab=LLAMA3_VOCAB, seed=4)
    pairs = random_pairs(8, seed=4, vocab=LLAMA3_VOCAB)
    pairs = [TokenizedPair(p.prompt_ids, p.chosen_ids * 7, p.rejected_ids * 7, p.response_ids * 7) for p in pairs]
    batch_size, kinds = 4, 3
    with AllocationTracker(LLAMA3_VOCAB) as new:
        got = compute_reference_logps(model, pairs, pad_token_id=PAD, batch_size=batch_size)
    with AllocationTracker(LLAMA3_VOCAB) as old_pass:
        old = all_at_once(model, pairs[:batch_size])  # the old pass, over one micro-batch of the same size
    assert torch.allclose(got[:batch_size], old, atol=2e-4, rtol=1e-5)
    assert torch.allclose(got.double(), reference_by_hand(model, pairs), atol=5e-4, rtol=1e-5)
    assert new.largest_vocab_numel <= batch_size * kinds * REF_SEQ_CHUNK * LLAMA3_VOCAB
    longest = max(len(p.prompt_ids) + max(map(len, p.completions().values())) for p in pairs[:batch_size])
    assert longest > REF_SEQ_CHUNK + 20  # the chunking bites on these lengths
    assert old_pass.largest_vocab_numel >= batch_size * kinds * (longest - 20) * LLAMA3_VOCAB
    assert new.largest_vocab_numel < old_pass.largest_vocab_numel
