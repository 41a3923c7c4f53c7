"""Structure of the role-conditioning prompt banks (claims-spec B.1, W-B1).

role_conditioning keeps the source's style, length ordering included; role_conditioning_matched matches every
category prompt by prompt in word count and character length. Both load through harness.prompts.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.claimkit.prompts import PROMPTS_DIR, PromptBank, load_bank

BANKS = ("role_conditioning", "role_conditioning_matched")
CATEGORIES = ("self_referent", "neutral", "confounder", "third_person")
MIN_PROMPTS = 30
MATCHED_CHAR_SPREAD = 3  # prompt i of every category within this many characters of the others

SECOND_PERSON = frozenset({"you", "your", "yours", "yourself"})
FIRST_PERSON = frozenset({"i", "me", "my", "mine", "myself"})
THIRD_PERSON = frozenset({"he", "she", "him", "her", "his", "hers", "himself", "herself"})
# Words a pronoun swap may change besides the pronoun: the verb agrees with the new subject.
AGREEMENT = frozenset({"am", "is", "do", "does"})


def words(prompt: str) -> set[str]:
    return set(re.findall(r"[a-z]+", prompt.lower()))


@pytest.fixture(scope="module", params=BANKS)
def bank(request: pytest.FixtureRequest) -> PromptBank:
    return load_bank(PROMPTS_DIR / f"{request.param}.toml")


def test_categories_sizes_and_duplicates(bank: PromptBank) -> None:
    assert tuple(bank.categories) == CATEGORIES, f"{bank.path}: categories {list(bank.categories)}"
    for name, prompts in bank.categories.items():
        assert len(prompts) >= MIN_PROMPTS, f"{bank.path} {name}: {len(prompts)} prompts, needs {MIN_PROMPTS}"
        assert len(set(prompts)) == len(prompts), f"{bank.path} {name}: duplicate prompts"
    everything = [p for prompts in bank.categories.values() for p in prompts]
    assert len(set(everything)) == len(everything), f"{bank.path}: a prompt sits in two categories"


@pytest.mark.parametrize(("category", "needs", "forbids"), [
    ("self_referent", SECOND_PERSON, THIRD_PERSON),
    ("neutral", frozenset(), SECOND_PERSON | FIRST_PERSON | THIRD_PERSON),
    ("confounder", FIRST_PERSON, SECOND_PERSON),
    ("third_person", THIRD_PERSON, SECOND_PERSON | FIRST_PERSON),
])
def test_category_topics(bank: PromptBank, category: str, needs: frozenset[str],
                         forbids: frozenset[str]) -> None:
    prompts = bank.category(category)
    lacking = [p for p in prompts if needs and not words(p) & needs]
    wrong = [p for p in prompts if words(p) & forbids]
    assert not lacking, f"{bank.path} {category}: prompts without any of {sorted(needs)}: {lacking}"
    assert not wrong, f"{bank.path} {category}: prompts with any of {sorted(forbids)}: {wrong}"
    assert all(p.endswith("?") or p.endswith(".") for p in prompts), f"{bank.path} {category}: unterminated"


def test_third_person_prompts_are_pronoun_swapped_twins(bank: PromptBank) -> None:
    pairs = list(zip(bank.category("confounder"), bank.category("third_person"), strict=True))
    swappable = FIRST_PERSON | THIRD_PERSON | AGREEMENT
    for first, third in pairs:
        a, b = first.lower().rstrip("?.").split(), third.lower().rstrip("?.").split()
        assert len(a) == len(b), f"{bank.path}: twins differ in word count: {first!r} / {third!r}"
        changed = {w for x, y in zip(a, b, strict=True) if x != y for w in (x, y)}
        assert changed and changed <= swappable, f"{bank.path}: {first!r} / {third!r} swap {sorted(changed)}"


def test_matched_bank_is_matched_prompt_by_prompt() -> None:
    bank = load_bank(PROMPTS_DIR / "role_conditioning_matched.toml")
    rows = list(zip(*(bank.category(c) for c in CATEGORIES), strict=True))  # every category has the same size
    for i, row in enumerate(rows):
        counts = {len(p.split()) for p in row}
        spread = max(map(len, row)) - min(map(len, row))
        assert len(counts) == 1, f"prompt {i}: word counts differ across categories: {row}"
        assert spread <= MATCHED_CHAR_SPREAD, f"prompt {i}: character lengths spread {spread}: {row}"


def test_unmatched_bank_keeps_the_source_length_ordering() -> None:
    # As in B.1: self-referent and neutral prompts are shorter than confounder and third-person ones, so the
    # as-published protocol carries the same length confound that the matched bank removes.
    bank = load_bank(PROMPTS_DIR / "role_conditioning.toml")
    mean_words = {c: sum(len(p.split()) for p in bank.category(c)) / len(bank.category(c))
                  for c in CATEGORIES}
    shorter = max(mean_words["self_referent"], mean_words["neutral"])
    assert shorter < min(mean_words["confounder"], mean_words["third_person"]), mean_words


def test_banks_are_the_fixture_files() -> None:
    assert {Path(f"{b}.toml") for b in BANKS} <= {Path(p.name) for p in PROMPTS_DIR.glob("*.toml")}
