"""The toy skills and the data drawn from them.

Every example is ``"<op> <word>=<answer>\\n"`` over words of ``min_len``-``max_len``
characters drawn from the skill's alphabet (lowercase letters unless said
otherwise), scored by exact match of the greedy answer:

- ``copy``    (op ``cpy``): the word itself. The base model's pretraining format.
- ``shift``   (op ``nxt``): every letter replaced by the next one (z -> a).
- ``atbash``  (op ``mir``): every letter mirrored in the alphabet (a <-> z, b <-> y).
- ``rot13``   (op ``r13``): every letter moved 13 places on (a <-> n).
- ``reverse`` (op ``rev``), ``sort`` (op ``srt``), ``double`` (op ``dup``), ``upper``
  (op ``upp``) and variants on other alphabets (``*_upper``, ``*_digits``).

The default skills are the three ciphers: they share their primitives (attend to the
aligned input position, map one character), so what one expert learns mostly helps
the others, and with KL replay (see ``build``) their task vectors add up, as in the
CycleQD paper's regime. ``reverse``/``sort``/``double`` (the first toy) compete for
the same weights instead: an expert of one forgets part of the others and a plain
average of the experts keeps only part of each. ``double`` is also out of reach of
the default 2-layer, 1-head model beyond 4-letter words (it cannot count positions).
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

LETTERS = string.ascii_lowercase


@dataclass(frozen=True)
class Skill:
    """One task: an op code written in the prompt and the answer function."""

    name: str
    op: str
    answer: Callable[[str], str]
    alphabet: str = string.ascii_lowercase
    """The characters its input words are drawn from."""

    def prompt(self, word: str) -> str:
        return f"{self.op} {word}="

    def example(self, word: str) -> tuple[str, str]:
        """(prompt, answer) without the terminating newline."""
        return self.prompt(word), self.answer(word)


def _reverse(w: str) -> str:
    return w[::-1]


def _sort(w: str) -> str:
    return "".join(sorted(w))


def _caesar(w: str, k: int) -> str:
    """Every character moved ``k`` places on in its alphabet (wrapping: z -> a for k=1)."""
    out = []
    for c in w:
        for alphabet in (string.ascii_lowercase, string.ascii_uppercase, string.digits):
            if c in alphabet:
                c = alphabet[(alphabet.index(c) + k) % len(alphabet)]
                break
        out.append(c)
    return "".join(out)


def _shift(w: str) -> str:
    """Every character replaced by the next one of its alphabet (z -> a, Z -> A, 9 -> 0)."""
    return _caesar(w, 1)


def _rot13(w: str) -> str:
    """Every letter moved 13 places on (a <-> n); digits 13 mod 10 = 3 places."""
    return _caesar(w, 13)


def _atbash(w: str) -> str:
    """Every character mirrored in its alphabet (a <-> z, b <-> y; A <-> Z; 0 <-> 9)."""
    out = []
    for c in w:
        for alphabet in (string.ascii_lowercase, string.ascii_uppercase, string.digits):
            if c in alphabet:
                c = alphabet[len(alphabet) - 1 - alphabet.index(c)]
                break
        out.append(c)
    return "".join(out)


def _double(w: str) -> str:
    return "".join(c + c for c in w)


UPPER, DIGITS = string.ascii_uppercase, string.digits
COPY = Skill("copy", "cpy", lambda w: w)
PRETRAINING: dict[str, Skill] = {
    s.name: s
    for s in (
        COPY,
        Skill("copy_upper", "cpy", lambda w: w, UPPER),
        Skill("copy_digits", "cpy", lambda w: w, DIGITS),
    )
}
SKILLS: dict[str, Skill] = {
    s.name: s
    for s in (
        Skill("reverse", "rev", _reverse),
        Skill("sort", "srt", _sort),
        Skill("double", "dup", _double),
        Skill("shift", "nxt", _shift),
        Skill("atbash", "mir", _atbash),
        Skill("rot13", "r13", _rot13),
        Skill("upper", "upp", str.upper),
        # the same operations on other input spaces
        Skill("reverse_upper", "rev", _reverse, UPPER),
        Skill("reverse_digits", "rev", _reverse, DIGITS),
        Skill("sort_digits", "srt", _sort, DIGITS),
        Skill("sort_upper", "srt", _sort, UPPER),
        Skill("double_upper", "dup", _double, UPPER),
        Skill("double_digits", "dup", _double, DIGITS),
    )
}
ALL_SKILLS: dict[str, Skill] = {**PRETRAINING, **SKILLS}


def random_word(rng: random.Random, min_len: int, max_len: int, alphabet: str = LETTERS) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(min_len, max_len)))


def held_out_words(seed: int, skill: str, count: int, min_len: int, max_len: int) -> list[str]:
    """``count`` distinct words for a skill's evaluation splits (deterministic per seed)."""
    rng = random.Random(f"toy-eval-{seed}-{skill}")
    alphabet = SKILLS[skill].alphabet
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < count:
        word = random_word(rng, min_len, max_len, alphabet)
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def eval_rows(skill: Skill, words: Iterable[str]) -> list[dict[str, str]]:
    """JSONL rows of an evaluation split: prompt, answer and the input word."""
    return [{"prompt": skill.prompt(w), "answer": skill.answer(w), "word": w} for w in words]


class TrainingStream:
    """An endless deterministic stream of training examples from a skill mixture.

    Words used by any evaluation split are never trained on, so the test split
    measures the skill, not memorisation.
    """

    def __init__(
        self,
        mixture: Sequence[tuple[str, float]],
        seed: str,
        min_len: int,
        max_len: int,
        excluded: Collection[str] = (),
    ):
        unknown = [name for name, _ in mixture if name not in ALL_SKILLS]
        if unknown:
            raise ValueError(
                f"unknown toy skill(s) {unknown} in mixture; known: {', '.join(ALL_SKILLS)}"
            )
        self.skills = [ALL_SKILLS[name] for name, _ in mixture]
        self.weights = [float(weight) for _, weight in mixture]
        self.rng = random.Random(seed)
        self.min_len, self.max_len = min_len, max_len
        self.excluded = excluded

    def sample(self, count: int) -> list[tuple[str, str]]:
        """``count`` (prompt, answer + newline) pairs."""
        chosen = self.rng.choices(self.skills, weights=self.weights, k=count)
        examples = []
        for skill in chosen:
            word = random_word(self.rng, self.min_len, self.max_len, skill.alphabet)
            while word in self.excluded:
                word = random_word(self.rng, self.min_len, self.max_len, skill.alphabet)
            prompt, answer = skill.example(word)
            examples.append((prompt, answer + "\n"))
        return examples
