"""Unit and property tests of harness/textmetrics.py: the published detectors and the calibrated metrics."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from harness.analysis.textmetrics import (
    CompletionMetrics,
    RepetitionCheck,
    completion_metrics,
    distinct_n,
    longest_run,
    published_collapse,
    published_repetition,
    repeated_ngram_rate,
    token_fraction,
)
from harness.claimkit.registry import get_claim

# The detectors' published constants come from the claims' files (no published number in a test body).
L31 = get_claim("l31_ablation_repetition").protocol
MIN_UNIQUE_WORDS = get_claim("residual_patch_collapse").protocol["collapse_min_unique_words"]


def detect(text: str, rule: str = "complete") -> RepetitionCheck:
    """The published repetition detector with the claim's ratio and the rule's loop phrases."""
    return published_repetition(text, rule, L31["detector_ratio"], L31["loop_phrases"][rule])  # type: ignore[arg-type]


def collapse(text: str) -> bool:
    return published_collapse(text, MIN_UNIQUE_WORDS)

# Strategies at module level: any text with at least one whitespace word, token-id sequences, word lists.
texts_with_a_word = st.text().filter(lambda s: len(s.split()) > 0)
token_ids = st.lists(st.integers(min_value=0, max_value=40), max_size=60)
small_vocab_ids = st.lists(st.integers(min_value=0, max_value=3), max_size=60)
words = st.lists(st.sampled_from(["the", "cat", "sat", "on", "mat", "I"]), max_size=40)
ngram_sizes = st.integers(min_value=1, max_value=4)


# --- published detectors ----------------------------------------------------------------------------------


@given(texts_with_a_word)
@example("a")
@example("Notice the observer observing.")
@example(" \t only-one-word \n")
def test_published_rule_accepts_any_nonempty_text(text: str) -> None:
    """W-A2: complete.py's rule holds for any text with a word: len(w) >= len(set(w)) > 0.8*len(set(w))."""
    check = detect(text, "complete")
    assert check.word_rule_fired
    assert check.fired
    assert "repetition" in check.fired_checks


@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
def test_published_rule_is_silent_without_words(text: str) -> None:
    for rule in ("complete", "corrected"):
        check = detect(text, rule)
        assert not check.fired
        assert check.fired_checks == ()
        assert check.n_words == 0


@given(st.lists(st.text(alphabet="abcdefgh", min_size=1, max_size=6), min_size=1, max_size=20))
def test_corrected_rule_fires_exactly_when_a_word_repeats(word_list: list[str]) -> None:
    check = detect(" ".join(word_list), "corrected")
    assert check.word_rule_fired == (len(set(word_list)) < len(word_list))
    assert (check.n_words, check.n_unique_words) == (len(word_list), len(set(word_list)))


def test_corrected_rule_is_case_sensitive_like_the_source() -> None:
    assert not detect("The cat saw the dog", "corrected").word_rule_fired
    assert detect("the cat saw the dog", "corrected").word_rule_fired


@pytest.mark.parametrize(
    ("text", "rule", "expected"),
    [
        ("so THE ANSWER IS THE ANSWERER, always", "complete", ("answer is the answerer",)),
        ("Das ist bekannt.", "complete", ("bekan",)),
        ("Das ist bekannt.", "corrected", ("bekan", "bekannt")),
        ("the observer is observing", "complete", ()),
        ("the observer is observing", "corrected", ("observer is observing",)),
        ("the knower is the known and the observer is the observed", "complete",
         ("observer is the observed", "knower is the known")),
    ],
)
def test_loop_phrases_are_matched_case_insensitively(text: str, rule: str, expected: tuple[str, ...]) -> None:
    check = detect(text, rule)
    assert check.phrases_found == expected
    assert check.loop_phrase_found == bool(expected)
    assert tuple(name for name in check.fired_checks if name != "repetition") == expected


def test_corrected_phrases_extend_complete_phrases() -> None:
    assert set(L31["loop_phrases"]["complete"]) < set(L31["loop_phrases"]["corrected"])


def test_unknown_rule_names_the_value_and_the_choices() -> None:
    with pytest.raises(ValueError, match=r"'strict'.*complete.*corrected"):
        published_repetition("some text", "strict", 0.5, ())  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [b"bytes text", [1, 2, 3], None])
def test_detectors_reject_non_text_with_the_fix(bad: object) -> None:
    with pytest.raises(TypeError, match="decode"):
        detect(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="decode"):
        collapse(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("completion", ["", "   ", "\n\n"])
def test_empty_completion_counts_as_collapse(completion: str) -> None:
    assert collapse(completion)


@pytest.mark.parametrize(
    ("completion", "collapsed"),
    [
        ("I I I I I I I I I I", True),
        ("one two three four", True),
        ("one two three four one two three four", True),
        ("one two three four five", False),
        ("  Paris. It is a city of lights.  ", False),
        ("\n\n\n", True),
    ],
)
def test_published_collapse_known_cases(completion: str, collapsed: bool) -> None:
    assert collapse(completion) is collapsed


@given(words)
def test_published_collapse_counts_unique_words(word_list: list[str]) -> None:
    text = " ".join(word_list)
    assert collapse(text) == (len(set(word_list)) < MIN_UNIQUE_WORDS)


# --- calibrated metrics -----------------------------------------------------------------------------------


@given(token_ids, ngram_sizes)
@example([], 1)
@example([7], 2)
def test_distinct_n_lies_in_unit_interval(ids: list[int], n: int) -> None:
    value = distinct_n(ids, n)
    assert 0.0 <= value <= 1.0
    if len(ids) >= n:
        assert value > 0.0


@given(st.text(), ngram_sizes)
def test_distinct_n_on_text_lies_in_unit_interval(text: str, n: int) -> None:
    assert 0.0 <= distinct_n(text, n) <= 1.0


@pytest.mark.parametrize(
    ("units", "n", "expected"),
    [
        ("a b c d", 1, 1.0),
        ("a a a a", 1, 0.25),
        ("a b a b", 1, 0.5),
        ("a b a b", 2, 2 / 3),
        ([5, 5, 6], 2, 1.0),
        ([1, 2, 1, 2, 1, 2], 2, 2 / 5),
        ("", 1, 0.0),
        ("solo", 2, 0.0),
    ],
)
def test_distinct_n_known_values(units: str | list[int], n: int, expected: float) -> None:
    assert distinct_n(units, n) == pytest.approx(expected)


@given(words, ngram_sizes)
def test_distinct_n_is_invariant_to_relabelling_words_as_ids(word_list: list[str], n: int) -> None:
    vocabulary = {word: index for index, word in enumerate(dict.fromkeys(word_list))}
    ids = [vocabulary[word] for word in word_list]
    assert distinct_n(" ".join(word_list), n) == distinct_n(ids, n) == distinct_n(word_list, n)


@given(small_vocab_ids, ngram_sizes)
@example([1, 1, 1, 1], 3)
def test_repeated_rate_complements_distinct_n(ids: list[int], n: int) -> None:
    rate = repeated_ngram_rate(ids, n)
    assert 0.0 <= rate < 1.0
    if len(ids) >= n:
        assert rate == pytest.approx(1.0 - distinct_n(ids, n))
    else:
        assert rate == 0.0


@pytest.mark.parametrize(
    ("units", "expected"),
    [
        ([1, 2, 3, 1, 2, 3], 1 / 4),  # grams 123 231 312 123: the last one repeats
        ([9, 9, 9, 9, 9], 2 / 3),
        ("the cat sat on the mat", 0.0),
        ("a b", 0.0),
        ([], 0.0),
    ],
)
def test_repeated_3gram_rate_known_values(units: str | list[int], expected: float) -> None:
    assert repeated_ngram_rate(units, 3) == pytest.approx(expected)


@given(token_ids)
@example([])
@example([4])
@example([3, 3, 3, 1, 3])
def test_longest_run_is_bounded_by_length(ids: list[int]) -> None:
    run = longest_run(ids)
    assert (run == 0) == (len(ids) == 0)
    assert run <= len(ids)
    if ids:
        assert any(ids[i : i + run] == [ids[i]] * run for i in range(len(ids) - run + 1))


@pytest.mark.parametrize(
    ("units", "expected"),
    [
        ([], 0),
        ([7], 1),
        ([1, 2, 3], 1),
        ([1, 1, 2, 2, 2, 1], 3),
        ([4, 4, 4, 4, 4, 4], 6),
        ([2, 5, 5, 2, 2], 2),
        ("I I I I am", 4),
        ("", 0),
    ],
)
def test_longest_run_known_cases(units: str | list[int], expected: int) -> None:
    assert longest_run(units) == expected


@given(st.integers(min_value=0, max_value=9), st.integers(min_value=1, max_value=30))
def test_longest_run_of_a_repeated_token_is_its_length(token: int, length: int) -> None:
    assert longest_run([token] * length) == length


@given(token_ids, st.integers(min_value=0, max_value=40))
def test_token_fraction_counts_matching_steps(ids: list[int], token: int) -> None:
    fraction = token_fraction(ids, token)
    assert 0.0 <= fraction <= 1.0
    assert fraction * len(ids) == pytest.approx(ids.count(token))


@pytest.mark.parametrize(
    ("ids", "token", "expected"),
    [([], 3, 0.0), ([3, 3, 3], 3, 1.0), ([3, 1, 3, 2], 3, 0.5), ([1, 2], 3, 0.0)],
)
def test_token_fraction_known_values(ids: list[int], token: int, expected: float) -> None:
    assert token_fraction(ids, token) == expected


def test_array_likes_are_read_through_tolist() -> None:
    ids = np.array([5, 5, 5, 2], dtype=np.int64)
    assert longest_run(ids) == 3  # type: ignore[arg-type]
    assert token_fraction(ids, np.int64(5)) == 0.75  # type: ignore[arg-type]
    assert distinct_n(ids, 1) == 0.5  # type: ignore[arg-type]


def test_completion_metrics_bundles_the_metrics() -> None:
    metrics = completion_metrics([8, 8, 8, 8, 1])
    assert metrics == CompletionMetrics(
        n_units=5, distinct_1=2 / 5, distinct_2=2 / 4, repeated_3gram_rate=1 / 3, longest_run=4
    )
    assert metrics.as_dict()["longest_run"] == 4.0
    assert completion_metrics("").as_dict() == {
        "n_units": 0.0, "distinct_1": 0.0, "distinct_2": 0.0, "repeated_3gram_rate": 0.0, "longest_run": 0.0
    }


# --- validation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, -2])
def test_ngram_size_below_one_is_rejected_with_the_fix(n: int) -> None:
    with pytest.raises(ValueError, match=rf"n must be >= 1, got {n}"):
        distinct_n("a b c", n)
    with pytest.raises(ValueError, match=rf"got {n}"):
        repeated_ngram_rate("a b c", n)


@pytest.mark.parametrize("n", [1.5, True, "2"])
def test_ngram_size_must_be_an_int(n: object) -> None:
    with pytest.raises(TypeError, match="n must be an int"):
        distinct_n("a b c", n)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("units", "culprit"),
    [([1, 2.0], r"units\[1\] = 2\.0"), ([1, "a"], r"units\[1\] = 'a'"), ([3, -1], r"units\[1\] = -1"),
     ([True], r"units\[0\] = True")],
)
def test_bad_units_name_the_element_and_the_fix(units: list[object], culprit: str) -> None:
    with pytest.raises(TypeError, match=rf"{culprit}.*tolist"):
        longest_run(units)  # type: ignore[arg-type]


@pytest.mark.parametrize("units", [{1, 2, 3}, 42, b"a b"])
def test_units_must_be_an_ordered_sequence_or_text(units: object) -> None:
    with pytest.raises(TypeError, match="str"):
        distinct_n(units, 1)  # type: ignore[arg-type]


def test_token_fraction_rejects_words_and_bad_ids() -> None:
    with pytest.raises(TypeError, match="generated_ids must be token ids"):
        token_fraction(["I", "I"], 3)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="token_id must be a non-negative int token id, got int -1"):
        token_fraction([1, 2], -1)
    with pytest.raises(ValueError, match="got str '3'"):
        token_fraction([1, 2], "3")  # type: ignore[arg-type]
