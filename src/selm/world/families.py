"""Task families of the toy world and their true reward r*(x, y).

Each family knows how to draw a prompt, how to solve it (the gold answer), what its characteristic
*bad habit* is (a plausible mode error a tiny SFT model picks up from imperfect demonstrations), and
how to grade an answer with partial credit.  Everything a grader needs is in the record itself
(``family``, ``prompt``, ``gold``), so any row of any file the world writes can be re-scored.

Whitespace rule: leading and trailing whitespace of an answer (spaces, newlines) is stripped before
grading, because generation artefacts such as a trailing newline are not the policy's "answer";
whitespace inside the answer counts like any other character.

Rewards:
- string families: ``1 - levenshtein(answer, gold) / max(len(answer), len(gold))``, so 1.0 only for
  an exact answer, 0.0 for an empty one, and long rambling answers decay towards 0;
- number families: the answer must be an integer literal (``-?[0-9]+``); reward
  ``1 / (1 + |answer - gold|)``, anything else 0.0.
"""

from __future__ import annotations

import random
import re
import string
from typing import Iterable, Iterator

LOWER = string.ascii_lowercase
DIGITS = string.digits

# Short common words for the formatting family; fixed so the world does not depend on any corpus.
WORDS = (
    "cat dog owl fox bee ant elk yak emu ram hen cow pig bat eel cod "
    "sun sky sea map cup pen ink box key hat jar bag toy bus car van "
    "tree bird fish lamp door milk rain snow wind gold salt rope ship"
).split()
JOIN_SEPARATORS = "-,+|/"
JUNK_SUFFIX = " (done)"
_INT_RE = re.compile(r"-?[0-9]{1,12}")


def levenshtein(a: str, b: str) -> int:
    """Edit distance (unit-cost insert, delete, substitute); two-row dynamic programme."""
    if a == b:
        return 0
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def string_reward(answer: str, gold: str) -> float:
    """1 - normalised edit distance of the stripped answer to gold, in [0, 1]."""
    answer = answer.strip()
    longest = max(len(answer), len(gold))
    if longest == 0:
        return 1.0
    return max(0.0, 1.0 - levenshtein(answer, gold) / longest)


def number_reward(answer: str, gold: str) -> float:
    """1 / (1 + |difference|) for an integer literal answer, else 0."""
    answer = answer.strip()
    if not _INT_RE.fullmatch(answer):
        return 0.0
    return 1.0 / (1.0 + abs(int(answer) - int(gold)))


class Family:
    """Base class: subclasses define ``draw_input``, ``make_prompt``, ``parse``, ``solve``, ``habit``.

    ``kind`` selects the reward ("string" or "number"); ``alphabet`` is the character set the noise
    policy uses for random edits, chosen per family so that noisy answers stay plausible.
    """

    name: str = ""
    kind: str = "string"
    alphabet: str = LOWER
    habit_description: str = ""

    # --- to be provided by subclasses -------------------------------------------------------
    def draw_input(self, rng: random.Random):
        raise NotImplementedError

    def make_prompt(self, args) -> str:
        raise NotImplementedError

    def parse(self, prompt: str):
        raise NotImplementedError

    def solve(self, args) -> str:
        raise NotImplementedError

    def habit(self, args) -> str:
        raise NotImplementedError

    # --- shared behaviour -------------------------------------------------------------------
    def sample(self, rng: random.Random) -> dict:
        """Draw a prompt whose bad-habit answer differs from gold, so every habit is a real error."""
        for _ in range(1000):
            args = self.draw_input(rng)
            gold = self.solve(args)
            if self.habit(args) != gold:
                return {"family": self.name, "prompt": self.make_prompt(args), "gold": gold}
        raise RuntimeError(f"family {self.name!r}: could not draw a prompt with habit != gold")

    def habit_answer(self, record: dict) -> str:
        """The family's bad-habit answer to a record's prompt."""
        return self.habit(self.parse(record["prompt"]))

    def reward(self, record: dict, answer: str) -> float:
        """True reward r* of ``answer`` for ``record`` (see module docstring)."""
        if not isinstance(answer, str):
            raise TypeError(f"answer must be str, got {type(answer).__name__}")
        if self.kind == "number":
            return number_reward(answer, record["gold"])
        return string_reward(answer, record["gold"])


def _word(rng: random.Random, lo: int, hi: int, letters: str = LOWER) -> str:
    return "".join(rng.choice(letters) for _ in range(rng.randint(lo, hi)))


def _after_colon(prompt: str) -> str:
    head, sep, tail = prompt.partition(": ")
    if not sep:
        raise ValueError(f"malformed prompt {prompt!r}")
    return tail


class _OneWordFamily(Family):
    """Families whose prompt is ``"<name>: <word>"``."""

    min_len, max_len, letters = 4, 8, LOWER

    def draw_input(self, rng):
        return _word(rng, self.min_len, self.max_len, self.letters)

    def make_prompt(self, args):
        return f"{self.name}: {args}"

    def parse(self, prompt):
        return _after_colon(prompt)


class Reverse(_OneWordFamily):
    name = "reverse"
    habit_description = "copy the input unchanged"

    def solve(self, word):
        return word[::-1]

    def habit(self, word):
        return word


class Upper(_OneWordFamily):
    name = "upper"
    alphabet = string.ascii_uppercase
    habit_description = "capitalise only the first letter"

    def solve(self, word):
        return word.upper()

    def habit(self, word):
        return word.capitalize()


class Sort(_OneWordFamily):
    name = "sort"
    habit_description = "sort in descending order"

    def solve(self, word):
        return "".join(sorted(word))

    def habit(self, word):
        return "".join(sorted(word, reverse=True))


class Rotate(_OneWordFamily):
    name = "rotate"
    habit_description = "rotate the wrong way (right instead of left)"

    def solve(self, word):
        return word[1:] + word[:1]

    def habit(self, word):
        return word[-1:] + word[:-1]


class Dedup(_OneWordFamily):
    """Small alphabet and longer words, so repeated letters are common."""

    name = "dedup"
    min_len, max_len, letters = 5, 8, "abcdefg"
    habit_description = "copy the input unchanged"

    def solve(self, word):
        return "".join(dict.fromkeys(word))

    def habit(self, word):
        return word


class Count(Family):
    name = "count"
    kind = "number"
    alphabet = DIGITS
    habit_description = "answer the length of the word"

    def draw_input(self, rng):
        word = _word(rng, 4, 8, "abcdef")
        return rng.choice(word), word

    def make_prompt(self, args):
        letter, word = args
        return f"count {letter}: {word}"

    def parse(self, prompt):
        head, _, word = prompt.partition(": ")
        return head.removeprefix("count "), word

    def solve(self, args):
        letter, word = args
        return str(word.count(letter))

    def habit(self, args):
        return str(len(args[1]))


class Add(Family):
    name = "add"
    kind = "number"
    alphabet = DIGITS
    habit_description = "add digit by digit and drop the carries"

    def draw_input(self, rng):
        return rng.randint(10, 99), rng.randint(10, 99)

    def make_prompt(self, args):
        return f"add: {args[0]}+{args[1]}"

    def parse(self, prompt):
        a, b = _after_colon(prompt).split("+")
        return int(a), int(b)

    def solve(self, args):
        return str(args[0] + args[1])

    def habit(self, args):
        a, b = str(args[0]), str(args[1])
        width = max(len(a), len(b))
        a, b = a.zfill(width), b.zfill(width)
        digits = "".join(str((int(x) + int(y)) % 10) for x, y in zip(a, b))
        return str(int(digits))


class Join(Family):
    """Formatting: join words with a separator.  Its habit appends junk, which the length-biased
    judge mildly likes, so the length-controlled win rate has something to correct."""

    name = "join"
    alphabet = LOWER + JOIN_SEPARATORS
    habit_description = f"gold plus the junk suffix {JUNK_SUFFIX!r}"

    def draw_input(self, rng):
        return rng.choice(JOIN_SEPARATORS), [rng.choice(WORDS) for _ in range(rng.randint(2, 4))]

    def make_prompt(self, args):
        sep, words = args
        return f"join {sep}: {' '.join(words)}"

    def parse(self, prompt):
        head, _, tail = prompt.partition(": ")
        return head.removeprefix("join "), tail.split(" ")

    def solve(self, args):
        sep, words = args
        return sep.join(words)

    def habit(self, args):
        return self.solve(args) + JUNK_SUFFIX


class _Registry(dict):
    """dict whose failed lookups name the known keys."""

    def __missing__(self, key):
        raise KeyError(f"unknown family {key!r}; known families: {sorted(self)}")


FAMILIES: dict[str, Family] = _Registry(
    (f.name, f) for f in (Reverse(), Upper(), Sort(), Rotate(), Dedup(), Count(), Add(), Join())
)


def get_family(name: str) -> Family:
    return FAMILIES[name]


def true_reward(record: dict, answer: str) -> float:
    """r*(x, y): dispatch on ``record['family']``."""
    return FAMILIES[record["family"]].reward(record, answer)


def draw_new(family: Family, rng: random.Random, seen: set[str]) -> dict:
    """A record of ``family`` whose prompt is not in ``seen`` (retrying within the family, so a
    family with a small prompt space is not under-represented).  Raises RuntimeError when the
    family's prompt space looks exhausted instead of looping forever."""
    for _ in range(10_000):
        record = family.sample(rng)
        if record["prompt"] not in seen:
            return record
    raise RuntimeError(f"prompt space of family {family.name!r} exhausted ({len(seen)} prompts used)")


def iter_records(
    rng: random.Random,
    families: Iterable[str] | None = None,
    exclude: set[str] | None = None,
    unique: bool = True,
) -> Iterator[dict]:
    """Endless stream of records, each from a family drawn uniformly at random.

    Prompts in ``exclude`` are never yielded (this is how splits are kept disjoint); with ``unique``
    no prompt is yielded twice.  ``exclude`` itself is not modified.
    """
    names = sorted(families) if families is not None else sorted(FAMILIES)
    fams = [FAMILIES[name] for name in names]
    seen = set(exclude or ())
    while True:
        record = draw_new(rng.choice(fams), rng, seen)
        if unique:
            seen.add(record["prompt"])
        yield record


def sample_records(
    n: int,
    rng: random.Random,
    families: Iterable[str] | None = None,
    exclude: set[str] | None = None,
    unique: bool = True,
) -> list[dict]:
    """``n`` records from ``iter_records`` (same arguments)."""
    stream = iter_records(rng, families=families, exclude=exclude, unique=unique)
    return [next(stream) for _ in range(n)]
