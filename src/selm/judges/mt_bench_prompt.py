"""MT-Bench single-answer grading as FastChat does it: its judge prompts, prompt choice and parser.

- Prompts: FastChat's four single-answer prompts, vendored as data in prompts/ (the fschat wheel
  does not ship them; see prompts/README.md for source and license).
- Choice (FastChat's gen_judgment.make_judge_single): turn 1 'single-v1', turn 2
  'single-v1-multi-turn'; with a reference answer (categories in FastChat's NEED_REF_CATS) the
  'single-math-v1' variants. The caller decides whether to pass a reference.
- Messages (FastChat's run_judge_single with the 'gpt-4' conversation): the prompt's system
  message, then the filled template as the user message; temperature 0, max_tokens 2048.
- Parsing: FastChat's `one_score_pattern` ("[[8]]", "[[8.5]]"), falling back to
  `one_score_pattern_backup` ("[8]"), value read with ast.literal_eval. The patterns are taken
  from the installed fschat source (`fastchat/llm_judge/common.py`), read as text and evaluated by
  `ast`, because importing that module needs `anthropic` and openai<1, which the pinned stack lacks.
  Where FastChat would record -1 for an unparsable judgment, we return an explicit error; a rating
  outside 1..10 is an error too (FastChat would average it in).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import re
import threading
from functools import lru_cache
from pathlib import Path

PROMPTS_FILE = Path(__file__).parent / "prompts" / "mt_bench_single.jsonl"
DECODING = {"temperature": 0, "max_tokens": 2048, "n": 1}  # FastChat's judge call
# Judgments are parsed in the judge's worker threads, and CPython 3.11's ast.parse (literal_eval's
# too) is not safe in several threads at once: when the garbage collector runs a finalizer that lets
# another thread in while a tree is being built, both share one recursion counter and one raises
# "SystemError: AST constructor recursion depth mismatch" (CPython issue 106905; seen here when three
# workers read the FastChat constants at once). Every use of ast in this module holds this lock.
_AST_LOCK = threading.Lock()


@lru_cache(maxsize=1)
def load_prompts() -> dict[str, dict]:
    prompts = {}
    for line in PROMPTS_FILE.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            prompts[record["name"]] = record
    return prompts


def prompts_version() -> str:
    return "fastchat-single-v1:" + hashlib.sha256(PROMPTS_FILE.read_bytes()).hexdigest()[:12]


@lru_cache(maxsize=1)
def fastchat_constants() -> dict:
    """`one_score_pattern`, `one_score_pattern_backup` (compiled) and `NEED_REF_CATS` from fschat."""
    spec = importlib.util.find_spec("fastchat")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("fschat is not installed: MT-Bench grading reads its rating patterns")
    source_path = Path(next(iter(spec.submodule_search_locations))) / "llm_judge" / "common.py"
    with _AST_LOCK:
        return _read_constants(source_path)


def _read_constants(source_path: Path) -> dict:
    tree = ast.parse(source_path.read_text(encoding="utf-8"), filename=str(source_path))
    wanted = {"one_score_pattern", "one_score_pattern_backup", "NEED_REF_CATS"}
    found: dict = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name not in wanted:
                continue
            value = node.value
            if isinstance(value, ast.Call):  # re.compile("<literal>")
                found[name] = re.compile(ast.literal_eval(value.args[0]))
            else:
                found[name] = ast.literal_eval(value)
    missing = wanted - set(found)
    if missing:
        raise ImportError(f"{source_path} no longer defines {sorted(missing)}")
    return found


def needs_reference(category: str | None) -> bool:
    return category in fastchat_constants()["NEED_REF_CATS"]


def prompt_name(turn: int, with_reference: bool) -> str:
    return ("single-math-v1" if with_reference else "single-v1") + ("-multi-turn" if turn == 2 else "")


def build_messages(question_turns, answer_turns, reference=None, turn: int = 1) -> tuple[str, list[dict]]:
    """(prompt name, chat messages) for grading answer `turn`, filled as FastChat fills them."""
    name = prompt_name(turn, reference is not None)
    prompt = load_prompts()[name]
    kwargs = {}
    if reference is not None:
        kwargs["ref_answer_1"] = reference[0]
        if turn == 2:
            kwargs["ref_answer_2"] = reference[1]
    if turn == 2:
        user = prompt["prompt_template"].format(
            question_1=question_turns[0], question_2=question_turns[1],
            answer_1=answer_turns[0], answer_2=answer_turns[1], **kwargs,
        )
    else:
        user = prompt["prompt_template"].format(question=question_turns[0], answer=answer_turns[0], **kwargs)
    return name, [{"role": "system", "content": prompt["system_prompt"]}, {"role": "user", "content": user}]


def parse_rating(judgment: str) -> tuple[float | None, str | None]:
    """(rating, None) or (None, why not)."""
    constants = fastchat_constants()
    match = constants["one_score_pattern"].search(judgment) or constants["one_score_pattern_backup"].search(judgment)
    if not match:
        return None, f"no [[rating]] in the judgment: {judgment[-200:]!r}"
    with _AST_LOCK:
        rating = ast.literal_eval(match.groups()[0])
    if not 1 <= rating <= 10:
        return None, f"rating {rating} is outside 1..10"
    return float(rating), None
