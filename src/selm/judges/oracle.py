"""The toy world's judge (GPT-4's place at the toy and evalcheck scales) behind the judge interface.

The oracle grades against the gold answer, which the judge interface does not carry: like a real
judge it sees only the instruction and the outputs. So the oracle is built with the world's eval
sets and finds each record by its instruction (AlpacaEval rows: `instruction`, `family`, `gold`) or
by its turns (MT-Bench rows: `turns`, `reference`, `families`). An instruction the world did not
write raises KeyError: the oracle only understands the toy world, and must never fake a grade.

Judge runs: run 0 uses the configured salt, run r > 0 the salt 'salt/run{r}', i.e. independent
noise, as a second GPT-4 run gives a slightly different grade.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

from selm.io import read_jsonl
from selm.world import OracleJudge, mt_bench_records

from .base import Annotation, Judge, Rating, SingleItem


def _rows(source: str | os.PathLike | Iterable[dict] | None) -> list[dict]:
    if source is None:
        return []
    if isinstance(source, (str, os.PathLike)):
        return read_jsonl(source)
    return list(source)


class OracleJudgeAdapter(Judge):
    name = "oracle"
    durable_cache = False  # free and deterministic: a judgment lost in a crash is simply asked again

    def __init__(
        self,
        *,
        alpaca_eval: str | os.PathLike | Iterable[dict] | None = None,
        mt_bench: str | os.PathLike | Iterable[dict] | None = None,
        noise: float = 0.05,
        length_coef: float = 0.05,
        temperature: float = 0.1,
        salt: str = "judge",
        **base,
    ):
        super().__init__(**base)
        self.params = dict(noise=noise, length_coef=length_coef, temperature=temperature)
        self.salt = salt
        self._by_instruction: dict[str, dict] = {}
        for row in _rows(alpaca_eval):
            record = {"family": row["family"], "prompt": row["instruction"], "gold": row["gold"]}
            known = self._by_instruction.setdefault(row["instruction"], record)
            if known != record:
                raise ValueError(f"instruction {row['instruction']!r} appears with two different gold answers")
        self._by_turns = {tuple(q["turns"]): mt_bench_records(q) for q in _rows(mt_bench)}
        self._by_first = {turns[:1]: records for turns, records in self._by_turns.items()}
        self._judges: dict[int, OracleJudge] = {}

    def identity(self, kind: str) -> str:
        return f"oracle|world|{json.dumps(self.params, sort_keys=True)}|salt={self.salt}"

    def judge_for_run(self, run: int) -> OracleJudge:
        if run not in self._judges:
            salt = self.salt if run == 0 else f"{self.salt}/run{run}"
            self._judges[run] = OracleJudge(salt=salt, **self.params)
        return self._judges[run]

    def _pairwise(self, instruction: str, output_1: str, output_2: str) -> Annotation:
        record = self._by_instruction.get(instruction)
        if record is None:
            raise KeyError(
                f"the oracle judge does not know the instruction {instruction[:80]!r}: it only grades the "
                f"toy world's AlpacaEval set ({len(self._by_instruction)} instructions loaded)"
            )
        p1 = self.judge_for_run(0).prefers(record, output_1, output_2)
        return Annotation(2.0 - p1, raw=f"P(output_1 wins) = {p1:.6f}")

    def _single(self, item: SingleItem) -> Rating:
        # Turn 1 is found by its first turn alone (the same prompt always has the same gold answer).
        table = self._by_first if item.turn == 1 else self._by_turns
        records = table.get(tuple(item.question_turns[: item.turn]))
        if records is None:
            raise KeyError(
                f"the oracle judge does not know the MT-Bench question {list(item.question_turns)!r}: it only "
                f"grades the toy world's two-turn set ({len(self._by_turns)} questions loaded)"
            )
        score = self.judge_for_run(item.run).score(records[item.turn - 1], item.answer_turns[item.turn - 1])
        return Rating(score, raw=f"oracle grade {score:.4f}")
