"""PairRM (llm-blender/PairRM), the paper's ranker, natively on transformers 5 (no llm-blender package).

Facts used, read from the public sources (yuchenlin/LLM-Blender; the hub repos llm-blender/PairRM and
llm-blender/PairRM-hf):

* Model (llm_blender/pair_ranker/ranker.py `CrossCompareReranker`, pairrm.py `DebertaV2PairRM`): a
  DeBERTa-v3-large encoder under the attribute `pretrained_model`, and `head_layer = Sequential(
  Dropout(0.05), Linear(2H, H), Tanh, Dropout(0.05), Linear(H, n_tasks))` with n_tasks = 1. The
  encoder's last hidden states at the <|source|>, <|candidate1|> and <|candidate2|> tokens give s, c1,
  c2; logit(cand1 > cand2) = mean_tasks(head([s; c1]) - head([s; c2])). Hence the state-dict keys
  `pretrained_model.*` and `head_layer.{1,4}.{weight,bias}`.
* Input (pair_ranker/collator.py `CrossCompareCollator` + ranker.py `cat_ids`): three segments, each
  tokenised on its own with the tokenizer's specials, [CLS] <|source|> source [SEP] [CLS]
  <|candidate1|> cand1 [SEP] [CLS] <|candidate2|> cand2 [SEP]; "[SEP]" inside texts becomes a space.
  The source is truncated to source_maxlength tokens (specials included), each candidate to
  candidate_maxlength + (source_maxlength - source length) // 2, i.e. candidates get the budget the
  source leaves. PairRM's ranker_config.json: source_maxlength 1224, candidate_maxlength 412 (2048
  in all); 128/128 is the older llm-blender/pair-ranker. Vocabulary 128005 (DeBERTa-v3's 128001 plus
  the four prefix tokens <|source|> 128001, <|candidate1|> 128002, <|candidate2|> 128003,
  <|candidate|> 128004).
* Ranking (blender.py `Blender.rank` -> `_full_predict` + gpt_eval/utils.py `get_scores_from_cmps`):
  every ordered pair (i, j), i != j, fills C[i, j] = logit(i as candidate1, j as candidate2), C[i, i]
  = 0; score_i = mean_j (C[i, j] - C[j, i]) over all n columns (the zero diagonal included), higher
  is better. With fp16=true in ranker_config.json, llm-blender runs the ranker in half precision on
  CUDA and in float32 on CPU; `dtype: auto` does the same.

Where we differ, on purpose: llm-blender computes the candidate budget from the longest source in its
batch of prompts (default 8), so a score depends on the batch; we use each prompt's own source length
(llm-blender with batch_size=1). llm-blender tokenises candidates with <|candidate|> and swaps in
<|candidate1|>/<|candidate2|>; we tokenise with <|candidate1|> and swap in <|candidate2|>, the same ids
since added tokens split the text the same way.

Checkpoint folders: ours and llm-blender/PairRM-hf carry a DeBERTa-v2 config.json (with n_tasks and
drop_out); llm-blender/PairRM carries only its ranker_config.json, for which the DeBERTa-v3-large
architecture is filled in below. A hub id is looked up in the local Hugging Face cache only (fetch it
first, e.g. `huggingface-cli download llm-blender/PairRM`); nothing here downloads.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import AutoTokenizer, DebertaV2Config, DebertaV2Model

SOURCE, CAND1, CAND2 = "<|source|>", "<|candidate1|>", "<|candidate2|>"

# microsoft/deberta-v3-large, as in llm-blender/PairRM-hf's config.json (vocab_size comes from the tokenizer).
DEBERTA_V3_LARGE = dict(
    hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
    hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
    max_position_embeddings=512, type_vocab_size=0, initializer_range=0.02, layer_norm_eps=1e-7,
    relative_attention=True, max_relative_positions=-1, position_buckets=256, norm_rel_ebd="layer_norm",
    share_att_key=True, pos_att_type=["p2c", "c2p"], position_biased_input=False, pad_token_id=0,
    pooler_hidden_size=1024, pooler_dropout=0, pooler_hidden_act="gelu",
)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class PairRMModel(nn.Module):
    """DeBERTa-v2 encoder + PairRM's pairwise head; attribute names match the released state dict."""

    def __init__(self, config: DebertaV2Config, n_tasks: int = 1, dropout: float = 0.05):
        super().__init__()
        self.config = config
        self.pretrained_model = DebertaV2Model(config)
        h = config.hidden_size
        self.head_layer = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(2 * h, h), nn.Tanh(), nn.Dropout(dropout), nn.Linear(h, n_tasks)
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logit that candidate1 beats candidate2, shape [B]; `positions` [B, 3] index the three prefixes."""
        hidden = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        source, cand1, cand2 = (hidden[rows, positions[:, k]] for k in range(3))
        left = self.head_layer(torch.cat([source, cand1], dim=-1))
        right = self.head_layer(torch.cat([source, cand2], dim=-1))
        return (left - right).float().mean(dim=-1)


def resolve_checkpoint(path: str | Path) -> Path:
    """A local folder as is; otherwise a hub id looked up in the local HF cache (never downloaded)."""
    if Path(path).is_dir():
        return Path(path)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(str(path), local_files_only=True))
    except HFValidationError as err:
        raise FileNotFoundError(f"PairRM checkpoint {path!r}: no such folder (and not a hub id)") from err
    except LocalEntryNotFoundError as err:
        raise FileNotFoundError(
            f"PairRM checkpoint {path!r}: not a local folder and not in the local Hugging Face cache; "
            f"fetch it first (huggingface-cli download {path}) or point ranker.path at a folder"
        ) from err


def _read_config(folder: Path, vocab_size: int) -> tuple[DebertaV2Config, int, float]:
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    if config.get("model_type") == "deberta-v2":  # ours, or llm-blender/PairRM-hf
        return DebertaV2Config.from_dict(config), config.get("n_tasks", 1), config.get("drop_out", 0.05)
    # llm-blender/PairRM: the ranker config (ranker_config.json; config.json in older revisions).
    ranker_file = folder / "ranker_config.json"
    ranker = json.loads(ranker_file.read_text()) if ranker_file.exists() else config
    if ranker.get("ranker_type") != "pairranker" or ranker.get("model_name") != "microsoft/deberta-v3-large":
        raise FileNotFoundError(
            f"{folder}: needs a DeBERTa-v2 config.json or llm-blender's ranker_config.json for a "
            f"pairranker on microsoft/deberta-v3-large; found neither"
        )
    return DebertaV2Config(**DEBERTA_V3_LARGE, vocab_size=vocab_size), ranker["n_tasks"], ranker["drop_out"]


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "model.safetensors").exists():
        from safetensors.torch import load_file

        return load_file(folder / "model.safetensors")
    if (folder / "pytorch_model.bin").exists():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{folder}: no model.safetensors or pytorch_model.bin")


def load_pairrm(path: str | Path):
    """(model, tokenizer) from a checkpoint folder or cached hub id; the weights load with strict=True."""
    folder = resolve_checkpoint(path)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config, n_tasks, dropout = _read_config(folder, len(tokenizer))
    model = PairRMModel(config, n_tasks=n_tasks, dropout=dropout)
    state = _read_weights(folder)
    # position_ids is a non-persistent buffer today; checkpoints saved by older transformers carry it.
    state.pop("pretrained_model.embeddings.position_ids", None)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise RuntimeError(f"{folder}: weights do not match the PairRM architecture: {err}") from err
    return model, tokenizer


class PairRMRanker:
    """Ranks candidates for one prompt by PairRM's full pairwise comparison (all ordered pairs).

    `score(record, candidates)` is llm-blender's `rank(..., return_scores=True)` score,
    s_i = (1/n) sum_j (C[i, j] - C[j, i]) with C[i, j] the logit of "i beats j" (i shown first);
    figures use it as the scalar reward. It is a mean logit difference against the other candidates,
    so it is comparable only within one candidate set. `rank` orders by it, best first; equal scores
    keep the input order (so with [y_ref, y_w, y_l] a tie goes to y_ref, as the authors' argmin did).
    """

    def __init__(self, path: str | Path, batch_size: int = 8, source_max_length: int = 1224,
                 candidate_max_length: int = 412, device: str = "auto", dtype: str = "auto"):
        if min(source_max_length, candidate_max_length) < 3:
            raise ValueError("source_max_length and candidate_max_length must be >= 3 ([CLS] prefix [SEP])")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        self.batch_size = batch_size
        self.source_max_length = source_max_length
        self.candidate_max_length = candidate_max_length
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        if dtype == "auto":  # llm-blender's fp16=true: half precision on CUDA, float32 elsewhere
            dtype = "float16" if self.device.type == "cuda" else "float32"
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r}; known: auto, {', '.join(DTYPES)}")
        self.model, self.tokenizer = load_pairrm(path)
        self.model.to(device=self.device, dtype=DTYPES[dtype]).eval()
        self.ids = {tok: self._single_id(tok, path) for tok in (SOURCE, CAND1, CAND2)}
        probe = self.tokenizer(SOURCE + "a")["input_ids"]
        if probe[:2] != [self.tokenizer.cls_token_id, self.ids[SOURCE]] or probe[-1] != self.tokenizer.sep_token_id:
            raise ValueError(f"{path}: tokenizer must wrap each text as [CLS] ... [SEP]; got {probe}")

    def _single_id(self, token: str, path) -> int:
        ids = self.tokenizer(token, add_special_tokens=False)["input_ids"]
        if len(ids) != 1 or ids[0] == self.tokenizer.unk_token_id:
            raise ValueError(f"{path}: tokenizer lacks PairRM's added token {token}")
        return ids[0]

    def _encode(self, prefix: str, text: str, max_length: int) -> list[int]:
        # llm-blender replaces the separator string inside texts, so it cannot fake a segment border.
        text = text.replace(self.tokenizer.sep_token, " ")
        return self.tokenizer(prefix + text, max_length=max_length, truncation=True)["input_ids"]

    def _segments(self, source: str, candidates: Sequence[str]) -> tuple[list[int], list[list[int]]]:
        src = self._encode(SOURCE, source, self.source_max_length)
        budget = self.candidate_max_length + (self.source_max_length - len(src)) // 2
        return src, [self._encode(CAND1, c, budget) for c in candidates]

    def _join(self, src: list[int], first: list[int], second: list[int]) -> tuple[list[int], tuple[int, int, int]]:
        # Segments are [CLS] prefix ...: the prefix sits at offset 1 of each; the second one becomes <|candidate2|>.
        second = [second[0], self.ids[CAND2], *second[2:]]
        return src + first + second, (1, len(src) + 1, len(src) + len(first) + 1)

    def encode_pair(self, source: str, cand1: str, cand2: str) -> tuple[list[int], tuple[int, int, int]]:
        """Token ids of one comparison and the positions of its three prefix tokens."""
        src, (first, second) = self._segments(source, [cand1, cand2])
        return self._join(src, first, second)

    @torch.no_grad()
    def compare_matrix(self, record: dict, candidates: Sequence[str]) -> torch.Tensor:
        """C[i, j] = logit that candidate i (shown first) beats candidate j; zero diagonal."""
        n = len(candidates)
        src, cands = self._segments(record["prompt"], candidates)
        # One forward per distinct (tokens_i, tokens_j): identical candidates then get bit-identical
        # rows and tie exactly (batch position and padding would otherwise perturb the last bits and
        # break the tie-to-the-earlier-candidate rule at random).
        keys = [tuple(c) for c in cands]
        first = {}
        for i, j in itertools.permutations(range(n), 2):
            first.setdefault((keys[i], keys[j]), (i, j))
        pairs = list(first.values())
        logit = {}
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start:start + self.batch_size]
            encoded = [self._join(src, cands[i], cands[j]) for i, j in chunk]
            width = max(len(ids) for ids, _ in encoded)
            input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in encoded], device=self.device)
            mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in encoded], device=self.device)
            positions = torch.tensor([pos for _, pos in encoded], device=self.device)
            for (i, j), value in zip(chunk, self.model(input_ids, mask, positions).double().cpu()):
                logit[keys[i], keys[j]] = value
        matrix = torch.zeros(n, n, dtype=torch.float64)
        for i, j in itertools.permutations(range(n), 2):
            matrix[i, j] = logit[keys[i], keys[j]]
        return matrix

    def score(self, record: dict, candidates: Sequence[str]) -> list[float]:
        matrix = self.compare_matrix(record, candidates)
        if len(candidates) == 0:
            return []
        return (matrix - matrix.T).mean(dim=1).tolist()

    def rank(self, record: dict, candidates: Sequence[str]) -> list[int]:
        """Candidate indices from best to worst; equal scores keep their input order."""
        scores = self.score(record, candidates)
        return sorted(range(len(candidates)), key=lambda i: (-scores[i], i))


def build_tiny_pairrm(path: str | Path, seed: int = 0) -> Path:
    """Write a randomly initialised tiny PairRM (hidden 32, 2 layers, 2 heads) with a char-level
    tokenizer ([PAD] [UNK] [CLS] [SEP], printable ASCII, and the three prefix tokens) to `path`."""
    import string

    from safetensors.torch import save_file
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]  # [PAD] = 0, DeBERTa's padding_idx
    vocab = {tok: i for i, tok in enumerate(specials + [c for c in string.printable if c not in "\t\r\x0b\x0c"])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                        cls_token="[CLS]", sep_token="[SEP]")
    tokenizer.add_tokens([SOURCE, CAND1, CAND2])  # plain added tokens, as llm-blender adds them
    config = DebertaV2Config(**{
        **DEBERTA_V3_LARGE, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "pooler_hidden_size": 32, "position_buckets": 16, "vocab_size": len(tokenizer),
    })
    # PairRM-hf's extra config fields, so the folder reads like the released one.
    config.n_tasks, config.drop_out = 1, 0.05
    config.source_prefix_id, config.cand1_prefix_id, config.cand2_prefix_id = (
        tokenizer.convert_tokens_to_ids(t) for t in (SOURCE, CAND1, CAND2))
    torch.manual_seed(seed)
    model = PairRMModel(config)
    path.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(path)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path / "model.safetensors")
    tokenizer.save_pretrained(path)
    return path


def main(argv: list[str] | None = None) -> None:
    """`python -m selm.pairrm --build-tiny DIR`: a tiny random PairRM (the rehearsal scale's ranker)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m selm.pairrm", description=main.__doc__)
    parser.add_argument("--build-tiny", required=True, metavar="DIR", help="folder to write the checkpoint to")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"tiny random PairRM written to {build_tiny_pairrm(args.build_tiny, seed=args.seed)}")


if __name__ == "__main__":
    from selm import console

    console.setup()  # library bars and info logs off unless SELM_VERBOSE=1
    main()
