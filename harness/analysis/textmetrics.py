"""Metrics over generated text and tokens: the sources' detectors verbatim, and calibrated repetition metrics.

Two families live here, and the difference between them is the point of the generation claims:

- *Published detectors* reproduce the source's rules exactly as described in claims-spec A.3 and A.4.
  `published_repetition` looks at the decoded FULL text (prompt included), as the source did;
  `published_collapse` looks at the stripped completion. They are kept verbatim so that `as_published`
  protocols can be run, and so that the controls can show where they are non-diagnostic (W-A2, W-A3).
- *Calibrated metrics* (`distinct_n`, `repeated_ngram_rate`, `longest_run`, `token_fraction`) are meant for
  the completion only, over whitespace words of decoded text or over token ids.

Edge cases are defined, never divided by zero. Every rate is "count / number of events" and is 0.0 when
there are no events. So with fewer than n units, `distinct_n` and `repeated_ngram_rate` are both 0.0.
`repeated_ngram_rate == 1 - distinct_n` whenever at least one n-gram exists. `longest_run` of nothing is 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import Literal, TypeAlias

PublishedRule: TypeAlias = Literal["complete", "corrected"]
Units: TypeAlias = str | Sequence[int] | Sequence[str]

PUBLISHED_RULES: tuple[PublishedRule, ...] = ("complete", "corrected")
# The detectors' constants (complete.py's word ratio, the loop phrases, the collapse word count) are published
# figures: they live in the claims' claim.toml and are passed in, never written here.

_UNIT_FIX = (
    "pass decoded text as one str, words as a list of str, or token ids as a list of int (ids.tolist())"
)


@dataclass(frozen=True)
class RepetitionCheck:
    """What the published repetition detector saw in one decoded text, and which of its checks fired."""

    rule: PublishedRule
    n_words: int
    n_unique_words: int
    word_rule_fired: bool
    phrases_found: tuple[str, ...]

    @property
    def loop_phrase_found(self) -> bool:
        """Whether a literal loop phrase was found: the only part the spec treats as "naked loop" evidence."""
        return bool(self.phrases_found)

    @property
    def fired(self) -> bool:
        """Whether the source would have counted this text as "detected" (any check fired)."""
        return self.word_rule_fired or self.loop_phrase_found

    @property
    def fired_checks(self) -> tuple[str, ...]:
        """The names of the checks that fired: "repetition" for the word rule, then each phrase found."""
        return (("repetition",) if self.word_rule_fired else ()) + self.phrases_found


@dataclass(frozen=True)
class CompletionMetrics:
    """The calibrated repetition metrics of one completion (over words or token ids)."""

    n_units: int
    distinct_1: float
    distinct_2: float
    repeated_3gram_rate: float
    longest_run: int

    def as_dict(self) -> dict[str, float]:
        return {
            "n_units": float(self.n_units),
            "distinct_1": self.distinct_1,
            "distinct_2": self.distinct_2,
            "repeated_3gram_rate": self.repeated_3gram_rate,
            "longest_run": float(self.longest_run),
        }


def _require_text(value: object, name: str) -> str:
    if isinstance(value, str):
        return value
    hint = " (bytes: decode them first)" if isinstance(value, bytes | bytearray) else ""
    raise TypeError(
        f"{name} must be a str, got {type(value).__name__} {value!r:.60}{hint}; "
        "decode token ids with tokenizer.decode(ids, skip_special_tokens=True) first"
    )


def _require_positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int >= 1, got {type(value).__name__} {value!r}")
    if int(value) < 1:
        raise ValueError(f"{name} must be >= 1, got {value}; use {name}=1 for unigrams")
    return int(value)


def _require_token_id(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or int(value) < 0:
        raise ValueError(
            f"{name} must be a non-negative int token id, got {type(value).__name__} {value!r}; "
            "pass an id from the tokenizer's vocabulary (e.g. int(logits.argmax()))"
        )
    return int(value)


def _units(values: object, name: str = "units") -> tuple[str, ...] | tuple[int, ...]:
    """Whitespace words of a str, or a validated tuple of words or token ids (array-likes via .tolist())."""
    if isinstance(values, str):
        return tuple(values.split())
    if isinstance(values, bytes | bytearray):
        raise TypeError(f"{name} is {type(values).__name__}; decode it to str first, or {_UNIT_FIX}")
    tolist = getattr(values, "tolist", None)
    if callable(tolist):
        values = tolist()
    if not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a str or a sequence, got {type(values).__name__}; {_UNIT_FIX}")
    if all(isinstance(item, str) for item in values):
        return tuple(values)
    ids: list[int] = []
    for index, item in enumerate(values):
        if isinstance(item, bool) or not isinstance(item, Integral) or int(item) < 0:
            raise TypeError(
                f"{name}[{index}] = {item!r} ({type(item).__name__}) is neither a word nor a non-negative "
                f"token id, and words and ids cannot be mixed; {_UNIT_FIX}"
            )
        ids.append(int(item))
    return tuple(ids)


def published_repetition(full_text: str, rule: PublishedRule, ratio: float,
                         phrases: Sequence[str]) -> RepetitionCheck:
    """The source's L31-ablation detector on a decoded full text (prompt included), verbatim (spec A.3).

    The word rule splits `full_text` on whitespace, case preserved: "complete" fires when
    len(words) > ratio * len(set(words)) (the source's ratio is below 1, so this holds for ANY text with at
    least one word); "corrected" fires when any word repeats (`ratio` unused). The rule's loop `phrases` are
    searched in the lower-cased text.
    """
    text = _require_text(full_text, "full_text")
    if rule not in PUBLISHED_RULES:
        raise ValueError(f"unknown published repetition rule {rule!r}; choose one of {PUBLISHED_RULES}")
    words = text.split()
    n_words, n_unique = len(words), len(set(words))
    word_rule = n_words > ratio * n_unique if rule == "complete" else n_words != n_unique
    lowered = text.lower()
    found = tuple(phrase for phrase in phrases if phrase.lower() in lowered)
    return RepetitionCheck(rule, n_words, n_unique, word_rule, found)


def published_collapse(completion: str, min_unique_words: int) -> bool:
    """The source's residual-patch collapse rule, verbatim (spec A.4): fewer than `min_unique_words` unique
    whitespace words in the stripped completion. An empty or all-whitespace completion counts as collapse."""
    text = _require_text(completion, "completion")
    return len(set(text.strip().split())) < _require_positive_int(min_unique_words, "min_unique_words")


def _ngrams(units: Sequence[object], n: int) -> list[tuple[object, ...]]:
    return [tuple(units[i : i + n]) for i in range(len(units) - n + 1)]


def distinct_n(units: Units, n: int = 1) -> float:
    """Unique n-grams / all n-grams of a completion, in [0, 1]; 1.0 means no n-gram repeats.

    A str is split on whitespace; a sequence of ints is read as token ids. 0.0 when there are fewer than n
    units (no n-gram was produced).
    """
    size = _require_positive_int(n, "n")
    grams = _ngrams(_units(units), size)
    return len(set(grams)) / len(grams) if grams else 0.0


def repeated_ngram_rate(units: Units, n: int = 3) -> float:
    """The fraction of n-grams that already occurred earlier in the same completion, in [0, 1).

    0.0 when there are fewer than n units (no n-gram, so none repeated).
    """
    size = _require_positive_int(n, "n")
    grams = _ngrams(_units(units), size)
    seen: set[tuple[object, ...]] = set()
    repeats = 0
    for gram in grams:
        repeats += gram in seen
        seen.add(gram)
    return repeats / len(grams) if grams else 0.0


def longest_run(units: Units) -> int:
    """The length of the longest run of one identical unit (token id, or word of a str); 0 when empty."""
    items = _units(units)
    best = current = 0
    for index, item in enumerate(items):
        current = current + 1 if index and item == items[index - 1] else 1
        best = max(best, current)
    return best


def token_fraction(generated_ids: Sequence[int], token_id: int) -> float:
    """The fraction of generated steps whose token is `token_id`, in [0, 1]; 0.0 when nothing was generated.

    Used with the source prompt's own argmax next token to test W-A3 (the pinned residual repeats that token).
    """
    target = _require_token_id(token_id, "token_id")
    ids = _units(generated_ids, "generated_ids")
    if any(isinstance(item, str) for item in ids):
        raise TypeError(f"generated_ids must be token ids (ints), got words {ids[:3]!r}...; {_UNIT_FIX}")
    return sum(item == target for item in ids) / len(ids) if ids else 0.0


def completion_metrics(units: Units) -> CompletionMetrics:
    """distinct-1, distinct-2, the repeated 3-gram rate and the longest run of one completion."""
    items = _units(units)
    return CompletionMetrics(
        n_units=len(items),
        distinct_1=distinct_n(items, 1),
        distinct_2=distinct_n(items, 2),
        repeated_3gram_rate=repeated_ngram_rate(items, 3),
        longest_run=longest_run(items),
    )
