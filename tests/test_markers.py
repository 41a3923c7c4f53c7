"""harness/analysis/markers.py: the n300 behaviour score as published and its calibrated companions.

The published score counts substrings ('self' inside 'yourself', 'return' inside 'returned') and adds its
bonus for a long repetitive text; the word-boundary count does not; novel markers discount the source's own
words; overlap is the share of a text's distinct words found in the source.
"""

from __future__ import annotations

import pytest

from harness.analysis.markers import novel_markers, source_overlap, substring_score, word_markers

MARKERS = ("self", "return", "loop", "fixed point", "answer is")


def score(text: str) -> int:
    return substring_score(text, MARKERS, bonus=5, min_words=10, unique_ratio=0.6)


@pytest.mark.parametrize(("text", "published", "words"), [
    ("You should look at yourself.", 1, set()),                       # 'self' inside 'yourself'
    ("The function returned early.", 1, set()),                       # 'return' inside 'returned'
    ("A loop returns to itself.", 3, {"loop"}),                        # self, return, loop as substrings
    ("The answer  is a FIXED\npoint of the loop.", 1, {"answer is", "fixed point", "loop"}),  # phrases over whitespace
    ("Nothing to see here.", 0, set()),
])
def test_substrings_count_where_words_do_not(text: str, published: int, words: set[str]) -> None:
    assert score(text) == published
    assert word_markers(text, MARKERS) == words


def test_the_bonus_needs_more_than_min_words_with_few_distinct() -> None:
    assert score("go go go go go go go go go go go") == 5  # 11 words, 1 distinct
    assert score("go go go go go go go go go go") == 0  # 10 words: not more than min_words
    assert score("one two three four five six seven eight nine ten eleven") == 0  # all distinct
    assert score("Go go go go go go go go go go go") == 5  # case-sensitive split, as the source's


def test_novel_markers_discount_the_sources_own_words() -> None:
    source = "Watch the loop that returns to the self."
    text = "The loop is a fixed point; the self answers."
    assert word_markers(text, MARKERS) == {"loop", "fixed point", "self"}
    assert novel_markers(text, source, MARKERS) == 1  # only 'fixed point' is not the source's


def test_overlap_is_the_share_of_distinct_words_found_in_the_source() -> None:
    assert source_overlap("the cat sat", "The cat ran") == pytest.approx(2 / 3)
    assert source_overlap("cat cat cat", "a cat") == 1.0
    assert source_overlap("", "anything") == 0.0
