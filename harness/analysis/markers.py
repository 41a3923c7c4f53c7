"""Behaviour scores for generated text: the n300 source's marker count as published, and calibrated companions.

- `substring_score` (as published): the number of marker strings found anywhere in the lower-cased text (so
  'self' counts inside 'yourself', 'return' inside 'returned'), plus a bonus when the text has more than
  `min_words` whitespace words of which fewer than `unique_ratio` are distinct (case-sensitive, as the source
  split them).
- `word_markers`: the markers found as whole words or phrases (letters on neither side), lower-cased.
- `novel_markers`: word markers of the text that its source prompt does not contain itself (copying the
  injected prompt's vocabulary does not count).
- `source_overlap`: the share of the text's distinct words that occur in the source prompt.
All thresholds come from the caller (a claim's claim.toml); none is written here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_WORD = re.compile(r"[a-z0-9']+")


def substring_score(text: str, markers: Sequence[str], bonus: int, min_words: int, unique_ratio: float) -> int:
    """The published score: markers present as substrings of the lower-cased text, plus `bonus` for a text of
    more than `min_words` words with fewer than `unique_ratio` of them distinct."""
    lower = text.lower()
    count = sum(1 for marker in markers if marker in lower)
    words = text.split()
    if len(words) > min_words and len(set(words)) < len(words) * unique_ratio:
        count += bonus
    return count


def _pattern(marker: str) -> re.Pattern[str]:
    body = r"\s+".join(re.escape(part) for part in marker.lower().split())
    return re.compile(rf"(?<![a-z]){body}(?![a-z])")


def word_markers(text: str, markers: Sequence[str]) -> set[str]:
    """The markers present as whole words or phrases (no letter on either side), case-insensitive."""
    lower = text.lower()
    return {marker for marker in markers if _pattern(marker).search(lower)}


def novel_markers(text: str, source: str, markers: Sequence[str]) -> int:
    """Word markers of `text` that `source` does not contain as words itself."""
    return len(word_markers(text, markers) - word_markers(source, markers))


def words(text: str) -> list[str]:
    """Lower-cased words (letters, digits, apostrophes)."""
    return _WORD.findall(text.lower())


def source_overlap(text: str, source: str) -> float:
    """The share of `text`'s distinct words that occur in `source`; 0.0 for a text without words."""
    found = set(words(text))
    return len(found & set(words(source))) / len(found) if found else 0.0
