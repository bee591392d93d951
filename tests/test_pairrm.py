"""PairRM, natively: a tiny random checkpoint of the real architecture, ranked end to end on CPU."""

import itertools
import shutil

import pytest
import torch
from omegaconf import OmegaConf

from selm.config import compose_config
from selm.pairrm import (CAND1, CAND2, DEBERTA_V3_LARGE, SOURCE, PairRMModel, PairRMRanker, _read_config,
                         build_tiny_pairrm)
from selm.rankers import get_ranker

PROMPT = {"prompt": "reverse: abcd"}
CANDIDATES = ["dcba", "dcb", "abcd efg", "x", "dcba dcba dcba"]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return build_tiny_pairrm(tmp_path_factory.mktemp("pairrm") / "tiny", seed=0)


@pytest.fixture(scope="module")
def ranker(tiny_path):
    # batch_size 4 splits the 20 ordered pairs of 5 candidates unevenly and pads within each batch.
    return PairRMRanker(tiny_path, batch_size=4, source_max_length=32, candidate_max_length=24, device="cpu")


@pytest.mark.parametrize("n", [2, 3, 5])
def test_rank_is_a_permutation(ranker, n):
    assert sorted(ranker.rank(PROMPT, CANDIDATES[:n])) == list(range(n))


def test_rank_does_not_depend_on_candidate_order(ranker):
    order = [CANDIDATES[i] for i in ranker.rank(PROMPT, CANDIDATES)]
    perm = [3, 0, 4, 2, 1]
    shuffled = [CANDIDATES[p] for p in perm]
    assert [shuffled[i] for i in ranker.rank(PROMPT, shuffled)] == order
    scores = ranker.score(PROMPT, CANDIDATES)
    assert ranker.score(PROMPT, shuffled) == pytest.approx([scores[p] for p in perm], abs=1e-6)


def test_score_matches_hand_computed_pair_logits(ranker):
    n = len(CANDIDATES)
    logit = {}
    with torch.no_grad():
        for i, j in itertools.permutations(range(n), 2):  # one ordered pair per forward, no padding
            ids, pos = ranker.encode_pair(PROMPT["prompt"], CANDIDATES[i], CANDIDATES[j])
            out = ranker.model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), torch.tensor([pos]))
            logit[i, j] = out.item()
    # llm-blender's max_logits score: s_i = (1/n) * sum_{j != i} (C[i, j] - C[j, i]).
    expected = [sum(logit[i, j] - logit[j, i] for j in range(n) if j != i) / n for i in range(n)]
    assert ranker.score(PROMPT, CANDIDATES) == pytest.approx(expected, abs=1e-5)
    assert sum(expected) == pytest.approx(0.0, abs=1e-6)  # antisymmetric by construction


def test_ties_go_to_the_earlier_candidate(ranker):
    assert ranker.score(PROMPT, ["same", "same", "same"]) == [0.0, 0.0, 0.0]
    assert ranker.rank(PROMPT, ["same", "same", "same"]) == [0, 1, 2]
    scores = ranker.score(PROMPT, ["other", "same", "same"])
    assert scores[1] == scores[2]
    order = ranker.rank(PROMPT, ["other", "same", "same"])
    assert order.index(1) < order.index(2)


def test_single_and_empty_candidate_lists(ranker):
    assert (ranker.score(PROMPT, ["only"]), ranker.rank(PROMPT, ["only"])) == ([0.0], [0])
    assert (ranker.score(PROMPT, []), ranker.rank(PROMPT, [])) == ([], [])


def test_pair_layout_and_truncation(ranker):
    tok, s_max, c_max = ranker.tokenizer, ranker.source_max_length, ranker.candidate_max_length
    cls, sep = tok.cls_token_id, tok.sep_token_id
    # A long source fills its budget, so each long candidate gets exactly candidate_max_length tokens.
    ids, pos = ranker.encode_pair("p" * 500, "a" * 500, "b" * 500)
    assert len(ids) == s_max + 2 * c_max
    assert pos == (1, s_max + 1, s_max + c_max + 1)
    assert [ids[p] for p in pos] == [tok.convert_tokens_to_ids(t) for t in (SOURCE, CAND1, CAND2)]
    assert [ids[p - 1] for p in pos] == [cls] * 3 and ids[-1] == sep and ids[pos[1] - 1 - 1] == sep
    # A short source leaves room: candidates get candidate_max_length + half of the unused source budget.
    ids, pos = ranker.encode_pair("hi", "a" * 500, "b")
    src_len = pos[1] - 1
    assert src_len == 5  # [CLS] <|source|> h i [SEP]
    assert pos[2] - pos[1] == c_max + (s_max - src_len) // 2
    assert len(ids) <= s_max + 2 * c_max
    # The separator string inside a text is neutralised, so it cannot open a fake segment.
    ids, _ = ranker.encode_pair("a[SEP]b", "c", "d")
    assert ids.count(sep) == 3


def test_get_ranker_builds_pairrm_from_composed_config(tiny_path):
    cfg = compose_config("loop", ["ranker=pairrm", f"ranker.path={tiny_path}", "ranker.device=cpu"])
    assert set(cfg.ranker) == {"name", "path", "batch_size", "source_max_length", "candidate_max_length",
                               "device", "dtype"}
    assert (cfg.ranker.source_max_length, cfg.ranker.candidate_max_length) == (1224, 412)
    ranker = get_ranker(cfg.ranker)
    assert isinstance(ranker, PairRMRanker)
    assert ranker.device.type == "cpu" and next(ranker.model.parameters()).dtype == torch.float32
    assert ranker.rank(PROMPT, ["x", "y"]) in ([0, 1], [1, 0])


def test_unknown_ranker_lists_known_names():
    with pytest.raises(KeyError, match=r"ranker.name='pairm' is not a known ranker; known: \['oracle', 'pairrm'\]"):
        get_ranker(OmegaConf.create({"name": "pairm"}))


def test_missing_checkpoint_files_are_named(tiny_path, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        PairRMRanker(tmp_path / "absent", device="cpu")
    broken = shutil.copytree(tiny_path, tmp_path / "broken")
    (broken / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=f"{broken}: no model.safetensors or pytorch_model.bin"):
        PairRMRanker(broken, device="cpu")
    (broken / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=f"{broken}: needs a DeBERTa-v2 config.json"):
        PairRMRanker(broken, device="cpu")


def test_paper_scale_layout_matches_the_release(tmp_path):
    """llm-blender/PairRM ships ranker_config.json, no DeBERTa config: we fill in DeBERTa-v3-large.
    Built on the meta device (no memory): 435M parameters = the release's 1.74 GB of float32."""
    (tmp_path / "ranker_config.json").write_text(
        '{"ranker_type": "pairranker", "model_name": "microsoft/deberta-v3-large", "n_tasks": 1, "drop_out": 0.05}')
    config, n_tasks, dropout = _read_config(tmp_path, vocab_size=128005)
    assert (config.hidden_size, config.num_hidden_layers, n_tasks, dropout) == (1024, 24, 1, 0.05)
    assert config.to_dict()["pos_att_type"] == DEBERTA_V3_LARGE["pos_att_type"]
    with torch.device("meta"):
        model = PairRMModel(config, n_tasks, dropout)
    keys = set(model.state_dict())
    assert {"head_layer.1.weight", "head_layer.1.bias", "head_layer.4.weight", "head_layer.4.bias",
            "pretrained_model.embeddings.word_embeddings.weight",
            "pretrained_model.encoder.rel_embeddings.weight"} <= keys
    assert all(k.startswith(("pretrained_model.", "head_layer.")) for k in keys)
    n_params = sum(p.numel() for p in model.parameters())
    assert 4 * n_params == pytest.approx(1.74e9, rel=0.01)
