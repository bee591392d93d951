"""AlpacaEval 2.0's data for the paper scale: the 805 instructions with GPT-4 Turbo's reference
outputs, and the table that alpaca_eval's length-controlled GLM needs (df_gamed.csv).

    python -m selm.benchmarks.alpaca_data --out data/alpaca_eval [--source tatsu-lab/alpaca_eval|LOCAL_DIR] [--revision REV]

Names as alpaca_eval 0.6.6 uses them: its AlpacaEval 2.0 reference outputs
(`constants.ALPACAEVAL_REFERENCE_OUTPUTS_2` = `get_alpaca_eval_data()`) are the hub dataset
tatsu-lab/alpaca_eval, config `alpaca_eval_gpt4_baseline`, split `eval` (generator gpt4_1106_preview,
i.e. GPT-4 Turbo); its GLM (`metrics/glm_winrate.py`) reads `df_gamed.csv` from the same repository.
That config is a file of the repository, `alpaca_eval_gpt4_baseline.json`, read by a loading script
that `datasets` 4+ no longer runs: we fetch the file itself (`hf_hub_download`) and load it with
`datasets`' JSON builder. A local folder holding the two files works the same, offline.

Why export at all: evaluation reads `eval.alpaca_eval.data` (JSONL: instruction, output = the
reference, generator, dataset), validated, in the dataset's order, which must be kept because the
GLM looks instruction difficulty up by position. `eval.alpaca_eval.glm_data` points at the exported
df_gamed.csv; `glm_data()` turns that key into the GLM's data, so the LC win rate is
alpaca_eval's `length_controlled_v1` with the official instruction difficulties and gamed baselines
(alpaca_eval's precomputed GLM weights are not needed: they only serve `baseline=`, i.e. predicting
against another reference, and `save_weights_dir=None` keeps site-packages untouched).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from selm.io import DataError, validate_record, write_bytes_atomic, write_json_atomic, write_jsonl_atomic

from .lc_glm import GLMData, check_lookup

REPO = "tatsu-lab/alpaca_eval"
CONFIG = "alpaca_eval_gpt4_baseline"    # alpaca_eval.constants.get_alpaca_eval_data's default: AlpacaEval 2.0
REFERENCE_FILE = f"{CONFIG}.json"        # the file the repository's loading script reads for that config
GLM_FILE = "df_gamed.csv"                # what glm_winrate._get_featurized_data downloads
N_INSTRUCTIONS = 805
FIELDS = ("instruction", "output", "generator", "dataset")
ROW_SCHEMA = {key: (str, True) for key in FIELDS}


def fetch(source: str, filename: str, revision: str | None) -> Path:
    """`filename` from a local folder, or from the hub dataset repo `source` (cached by huggingface_hub)."""
    from selm.artifacts import check_source

    check_source(source)  # a local folder that is missing is named, not sent to the hub
    if Path(source).is_dir():
        path = Path(source) / filename
        if not path.is_file():
            raise FileNotFoundError(f"{source}: no {filename} in this folder")
        return path
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id=source, filename=filename, repo_type="dataset", revision=revision))


def load_reference(path: Path, cache_dir: str | None = None) -> list[dict]:
    """The reference rows, validated, in file order; an error names the file, row and key."""
    import datasets

    rows = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=cache_dir)
    out = []
    for index, row in enumerate(rows):
        row = validate_record(row, ROW_SCHEMA, f"{path} row {index}")
        if not row["instruction"].strip():
            raise DataError(f"{path} row {index}: key 'instruction' is empty")
        out.append({key: row[key] for key in FIELDS})
    return out


def check_glm_table(path: Path, n: int) -> GLMData:
    """df_gamed.csv must cover instructions 0..n-1, the first row of instruction i being row i."""
    data = GLMData.from_csv(path)
    indices = set(data.frame["index"])
    if indices != set(range(n)):
        raise DataError(f"{path}: instruction indices {min(indices)}..{max(indices)} ({len(indices)} distinct) "
                        f"do not match the {n} reference instructions")
    try:
        check_lookup(data.frame, range(n))
    except ValueError as e:
        raise DataError(f"{path}: {e}") from None
    return data


def export(out: str | os.PathLike, source: str = REPO, *, revision: str | None = None,
           cache_dir: str | None = None) -> dict:
    """Write out/alpaca_eval.jsonl, out/df_gamed.csv and out/manifest.json; return the manifest.
    From the hub repo the 805 instructions are checked; a local folder may hold any number."""
    from selm.provenance import file_sha256
    from selm.artifacts import resolve_revision

    out = Path(out)
    commit = resolve_revision(source, revision)
    reference_path = fetch(source, REFERENCE_FILE, commit or revision)
    rows = load_reference(reference_path, cache_dir)
    if source == REPO and len(rows) != N_INSTRUCTIONS:
        raise DataError(f"{reference_path}: {len(rows)} instructions, expected {N_INSTRUCTIONS}")
    glm_path = fetch(source, GLM_FILE, commit or revision)
    check_glm_table(glm_path, len(rows))
    write_jsonl_atomic(out / "alpaca_eval.jsonl", rows)
    write_bytes_atomic(out / GLM_FILE, glm_path.read_bytes())
    manifest = {
        "source": source, "config": CONFIG, "revision_requested": revision, "revision": commit,
        "files": {
            "alpaca_eval.jsonl": {"from": REFERENCE_FILE, "rows": len(rows),
                                  "sha256": file_sha256(out / "alpaca_eval.jsonl")},
            GLM_FILE: {"from": GLM_FILE, "sha256": file_sha256(out / GLM_FILE)},
        },
        "generators": sorted({r["generator"] for r in rows}),
    }
    write_json_atomic(out / "manifest.json", manifest)
    return manifest


def glm_data(alpaca_cfg) -> GLMData | None:
    """The GLM data `eval.alpaca_eval.glm_data` names (a df_gamed.csv), or None when the key is null
    or absent: then the LC win rate uses neutral difficulties (the toy and evalcheck scales)."""
    path = alpaca_cfg.get("glm_data")
    if path is None:
        return None
    if not Path(path).is_file():
        raise FileNotFoundError(f"eval.alpaca_eval.glm_data={path}: no such file "
                                "(`python -m selm.benchmarks.alpaca_data` writes it)")
    return GLMData.from_csv(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m selm.benchmarks.alpaca_data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for alpaca_eval.jsonl, df_gamed.csv, manifest.json")
    parser.add_argument("--source", default=REPO, help="hub dataset id or a local folder with the two files")
    parser.add_argument("--revision", default=None, help="hub branch, tag or commit (default: main)")
    parser.add_argument("--cache-dir", default=None, help="datasets' Arrow cache (default: its own)")
    args = parser.parse_args(argv)
    try:
        manifest = export(args.out, args.source, revision=args.revision, cache_dir=args.cache_dir)
    except (DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    n = manifest["files"]["alpaca_eval.jsonl"]["rows"]
    print(f"AlpacaEval 2.0: {n} instructions (references by {', '.join(manifest['generators'])}) -> {args.out}")
    return 0


if __name__ == "__main__":
    from selm import console

    console.setup()  # library bars and info logs off unless SELM_VERBOSE=1
    sys.exit(main())
