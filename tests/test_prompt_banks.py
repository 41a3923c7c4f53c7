"""Structural tests of every prompt bank (shared ones in fixtures/prompts/, each claim's own in its folder), and
the constraints the claims rely on.

Every bank is checked for the shared format (any category names allowed). The per-category rules below are
data: one row per (bank, category) that a claim protocol relies on, checked by one routine per property.
"""

from __future__ import annotations

import re
import tomllib
from collections import Counter
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import pytest

ROOT = Path(__file__).resolve().parent.parent
BANK_PATHS = sorted([*(ROOT / "fixtures" / "prompts").glob("*.toml"),
                     *(p for p in (ROOT / "claims").glob("*/*.toml") if p.name != "claim.toml")])

# Words that make a prompt about the addressee, the self or introspection. Recursive categories need at least
# one; non-recursive categories may contain none (so "you" never sneaks into a control prompt).
SELF_MARKERS = frozenset(
    {
        "you", "your", "yours", "yourself", "i", "me", "my", "myself", "self", "itself", "inward", "mind",
        "aware", "awareness", "attention", "attend", "attending", "notice", "noticing", "observe", "observer",
        "observing", "observed", "watch", "watcher", "watching", "witness", "thinker", "thinking", "thought",
        "thoughts", "reflect", "reflecting", "introspect", "introspection", "generate", "generating",
        "processing", "focus", "focuser",
    }
)

Form = Literal["stem", "question", "imperative", "ask"]


@dataclass(frozen=True)
class CategoryRule:
    bank: str
    category: str
    min_count: int
    max_count: int | None = None
    words: tuple[int, int] | None = None
    recursive: bool | None = None
    form: Form | None = None

    def __str__(self) -> str:
        return f"{self.bank}.{self.category}"


RULES = (
    CategoryRule("l31_ablation", "published_style", 3, 3, (3, 6), True, "imperative"),
    CategoryRule("l31_ablation", "recursive", 24, None, (5, 14), True, "ask"),
    CategoryRule("l31_ablation", "non_recursive", 24, None, (5, 14), False, "ask"),
    CategoryRule("residual_patch", "published_source", 1, 1, (8, 12), True, "question"),
    CategoryRule("residual_patch", "published_target", 1, 1, (4, 9), False, "stem"),
    CategoryRule("residual_patch", "recursive_sources", 24, None, (6, 14), True, "ask"),
    CategoryRule("residual_patch", "non_recursive_sources", 24, None, (6, 14), False, "ask"),
    CategoryRule("residual_patch", "targets", 24, None, (4, 9), False, "stem"),
    CategoryRule("rv_contraction", "recursive", 8, 8),
    CategoryRule("rv_contraction", "baseline", 8, 8),
    CategoryRule("rv_contraction", "recursive_extended", 36, None, (6, 14), True, "ask"),
    CategoryRule("rv_contraction", "baseline_extended", 36, None, (5, 9), False, "stem"),
    CategoryRule("rv_contraction", "baseline_pool", 90, None, (4, 22), False),
    CategoryRule("rv_contraction", "question_controls", 36, None, (6, 14), False, "ask"),
    CategoryRule("recursion_phase1", "deep_recursive", 20, 20, (36, 46), True, "ask"),
    CategoryRule("recursion_phase1", "mid_recursive", 20, 20, (14, 18), True, "ask"),
    CategoryRule("recursion_phase1", "factual", 20, 20, (6, 9), False, "stem"),
    CategoryRule("recursion_phase1", "creative", 20, 20, (17, 22), False, "imperative"),
    CategoryRule("recursion_phase1", "champions", 15, 15, (29, 36), True, "ask"),
    CategoryRule("recursion_phase1", "length_matched", 15, 15, (29, 36), False, "ask"),
    CategoryRule("recursion_phase1", "pseudo_recursive", 15, 15, (29, 36), None, "ask"),
    CategoryRule("recursion_phase1", "everyday", 20, None, (6, 16), False, "ask"),
    CategoryRule("recursion_phase1", "passages", 12, None, (100, 130), False),
)
RULED_BANKS = sorted({rule.bank for rule in RULES})


@cache
def banks_by_id() -> dict[str, Path]:
    """Every bank file by the id in its [bank] table."""
    found: dict[str, Path] = {}
    for path in BANK_PATHS:
        with path.open("rb") as handle:
            found[str(tomllib.load(handle)["bank"]["id"])] = path
    return found


@cache
def load_bank(bank_id: str) -> dict[str, Any]:
    with banks_by_id()[bank_id].open("rb") as handle:
        return tomllib.load(handle)


def prompts(stem: str, category: str) -> list[str]:
    categories = load_bank(stem)["categories"]
    assert category in categories, f"{stem}.toml has no category {category!r}; it has {sorted(categories)}"
    return list(categories[category])


def word_count(prompt: str) -> int:
    return len(prompt.split())


def form_of(prompt: str) -> Form:
    if prompt.endswith("?"):
        return "question"
    return "imperative" if prompt.endswith((".", "!")) else "stem"


def fits_form(prompt: str, form: Form) -> bool:
    return form_of(prompt) in ("question", "imperative") if form == "ask" else form_of(prompt) == form


def is_self_referential(prompt: str) -> bool:
    return not SELF_MARKERS.isdisjoint(re.findall(r"[a-z]+", prompt.lower()))


# --- every bank: the shared format -------------------------------------------------------------------------


def bank_label(path: Path) -> str:
    return path.stem if path.parent.name == "prompts" else f"{path.parent.name}/{path.stem}"


def test_the_claim_banks_exist() -> None:
    ids = set(banks_by_id())
    assert set(RULED_BANKS) <= ids, f"missing banks {set(RULED_BANKS) - ids} among {BANK_PATHS}"


@pytest.mark.parametrize("path", BANK_PATHS, ids=bank_label)
def test_bank_table_names_the_bank(path: Path) -> None:
    """A shared bank's id is its file name; a claim's own bank may be called prompts.toml, but its id is unique."""
    with path.open("rb") as handle:
        bank = tomllib.load(handle).get("bank")
    assert isinstance(bank, dict), f"{path.name}: needs a [bank] table with id, version and description"
    bank_id = bank.get("id")
    expected = path.stem if path.parent.name == "prompts" else bank_id
    assert bank_id == expected, f"{path.name}: [bank] id is {bank_id!r}, expected the stem {path.stem!r}"
    assert banks_by_id()[str(bank_id)] == path, f"{path}: bank id {bank_id!r} is used by another bank too"
    version = bank.get("version")
    assert isinstance(version, int) and not isinstance(version, bool) and version >= 1, (
        f"{path.name}: [bank] version must be an int >= 1, got {version!r}"
    )
    description = bank.get("description")
    assert isinstance(description, str) and description.strip(), f"{path.name}: [bank] needs a description"


@pytest.mark.parametrize("path", BANK_PATHS, ids=bank_label)
def test_categories_are_lists_of_unique_clean_prompts(path: Path) -> None:
    categories = tomllib.loads(path.read_text(encoding="utf-8")).get("categories")
    assert isinstance(categories, dict) and categories, f"{path.name}: needs a non-empty [categories] table"
    for name, items in categories.items():
        where = f"{path.name} [categories] {name}"
        assert isinstance(items, list) and items, f"{where}: must be a non-empty list of prompts"
        for item in items:
            assert isinstance(item, str) and item, f"{where}: {item!r} is not a non-empty string"
            assert item == item.strip(), f"{where}: {item!r} has surrounding whitespace"
            bad = set(item) & set('"\\\n\t')
            assert not bad, f"{where}: {item!r} contains a quote, backslash, tab or newline: {sorted(bad)}"
        repeated = [item for item, count in Counter(items).items() if count > 1]
        assert not repeated, f"{where}: duplicate prompts {repeated}"


@pytest.mark.parametrize("path", BANK_PATHS, ids=bank_label)
def test_every_prompt_sits_on_its_own_quoted_line(path: Path) -> None:
    """The offline tokenizer trains on every double-quoted line: those must be exactly the bank's prompts."""
    quoted: Counter[str] = Counter()
    for raw in path.read_text(encoding="utf-8").splitlines():
        text = raw.strip().rstrip(",")
        if len(text) >= 2 and text.startswith('"') and text.endswith('"'):
            quoted[text[1:-1]] += 1
    categories = tomllib.loads(path.read_text(encoding="utf-8"))["categories"]
    bank_prompts = Counter(item for items in categories.values() for item in items)
    assert quoted == bank_prompts, f"{path.name}: write one prompt per line as  \"prompt\","


# --- the banks the claims use: counts, lengths, topic and form --------------------------------------------


@pytest.mark.parametrize("stem", RULED_BANKS)
def test_no_prompt_repeats_within_a_claim_bank(stem: str) -> None:
    everything = Counter(item for items in load_bank(stem)["categories"].values() for item in items)
    repeated = [item for item, count in everything.items() if count > 1]
    assert not repeated, f"{stem}.toml: prompts in more than one category: {repeated}"


@pytest.mark.parametrize("rule", RULES, ids=str)
def test_category_size(rule: CategoryRule) -> None:
    size = len(prompts(rule.bank, rule.category))
    assert size >= rule.min_count, f"{rule}: {size} prompts, needs at least {rule.min_count}"
    if rule.max_count is not None:
        assert size <= rule.max_count, f"{rule}: {size} prompts, allows at most {rule.max_count}"


@pytest.mark.parametrize("rule", [rule for rule in RULES if rule.words], ids=str)
def test_category_word_counts(rule: CategoryRule) -> None:
    assert rule.words is not None
    low, high = rule.words
    outside = [p for p in prompts(rule.bank, rule.category) if not low <= word_count(p) <= high]
    assert not outside, f"{rule}: prompts outside {low}-{high} words: {outside}"


@pytest.mark.parametrize("rule", [rule for rule in RULES if rule.recursive is not None], ids=str)
def test_category_topic(rule: CategoryRule) -> None:
    wrong = [p for p in prompts(rule.bank, rule.category) if is_self_referential(p) != rule.recursive]
    kind = "lack a self-reference marker" if rule.recursive else "refer to the self or the model"
    assert not wrong, f"{rule}: prompts that {kind} ({sorted(SELF_MARKERS)}): {wrong}"


@pytest.mark.parametrize("rule", [rule for rule in RULES if rule.form], ids=str)
def test_category_form(rule: CategoryRule) -> None:
    assert rule.form is not None
    wrong = [p for p in prompts(rule.bank, rule.category) if not fits_form(p, rule.form)]
    assert not wrong, f"{rule}: prompts that are not of form {rule.form!r}: {wrong}"


def test_residual_patch_sources_are_length_matched_index_by_index() -> None:
    recursive = prompts("residual_patch", "recursive_sources")
    control = prompts("residual_patch", "non_recursive_sources")
    assert len(recursive) == len(control), f"{len(recursive)} recursive vs {len(control)} non-recursive"
    unmatched = [
        (index, word_count(a), word_count(b), a, b)
        for index, (a, b) in enumerate(zip(recursive, control, strict=True))
        if word_count(a) != word_count(b) or form_of(a) != form_of(b)
    ]
    assert not unmatched, f"pairs with different word counts or forms (index, words, words, ...): {unmatched}"


def test_baseline_pool_spans_4_to_22_words_in_every_form() -> None:
    pool = prompts("rv_contraction", "baseline_pool")
    per_length = Counter(word_count(p) for p in pool)
    thin = {length: per_length[length] for length in range(4, 23) if per_length[length] < 3}
    assert not thin, f"baseline_pool needs >= 3 prompts of every length 4-22; thin lengths: {thin}"
    per_form = Counter(form_of(p) for p in pool)
    assert all(per_form[form] >= 15 for form in ("stem", "question", "imperative")), per_form


def test_baseline_pool_has_length_partners_for_every_recursive_prompt() -> None:
    pool_lengths = Counter(word_count(p) for p in prompts("rv_contraction", "baseline_pool"))
    recursive = prompts("rv_contraction", "recursive") + prompts("rv_contraction", "recursive_extended")
    lonely = [p for p in recursive if pool_lengths[word_count(p)] < 3]
    assert not lonely, f"recursive prompts with fewer than 3 same-length pool prompts: {lonely}"


def test_the_confound_controls_match_the_champions_word_for_word() -> None:
    """rv_confound_validation: the i-th length-matched and pseudo-recursive prompts have the i-th champion's
    word count, and no pseudo-recursive prompt addresses the reader."""
    champions = [word_count(p) for p in prompts("recursion_phase1", "champions")]
    for category in ("length_matched", "pseudo_recursive"):
        assert [word_count(p) for p in prompts("recursion_phase1", category)] == champions, category
    addressed = [p for p in prompts("recursion_phase1", "pseudo_recursive")
                 if {"you", "your", "yourself"} & set(re.findall(r"[a-z]+", p.lower()))]
    assert not addressed
