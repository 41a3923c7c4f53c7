"""No published number in the code (issue 10 §1, §4): the sources' figures, thresholds and detector constants
live in the claims' claim.toml and are read from there.

Three checks over the source of harness/ and claims/ (tokens, not text, so comments and docstrings may cite):
- no distinctive published number (three or more significant digits) is written anywhere;
- no published loop phrase is written anywhere;
- the modules that implement the R_V and generation claims hold no numeric literal beyond 0, 1, 2 and -1 and
  indices, except the few listed below with their reason: every threshold there comes from the claim.
Before this issue these found complete.py's 0.8 word ratio, the 5-word collapse rule and the loop phrases in
textmetrics.py, the 0.25 separation target in rv.py and the 0.5 pinning cut-off in residual_patch.py.
"""

from __future__ import annotations

import ast
import io
import tokenize
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from harness.claimkit.registry import load_claims

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(ROOT / "harness").rglob("*.py"), *(ROOT / "claims").rglob("*.py")])
CLAIM_LOGIC = ["harness/analysis/textmetrics.py", "harness/claimkit/rv.py", "harness/claimkit/gen.py",
               "harness/claimkit/effects.py", "harness/claimkit/declare.py", "harness/claimkit/results.py",
               "claims/rv_contraction/protocols.py", "claims/l31_ablation_repetition/protocols.py",
               "claims/residual_patch_collapse/protocols.py", "harness/claimkit/rvpatch.py",
               "claims/layer_pr_profile/protocols.py", "claims/residual_patch_rv_null/protocols.py",
               "claims/rv_l27_patch_transfer_n45/protocols.py", "claims/l27_critical_heads/protocols.py",
               "harness/claimkit/rvwindows.py", "harness/claimkit/transfer.py", "harness/analysis/markers.py",
               "claims/cross_arch_rv_table/protocols.py", "claims/rv_window_robustness/protocols.py",
               "claims/rv_confound_validation/protocols.py", "claims/behavior_transfer_n300/protocols.py",
               "harness/claimkit/context.py"]
STRUCTURAL = {"0", "1", "2", "-1", "0.0", "1.0", "2.0"}
ALLOWED = {  # (module, literal): why it is not a published figure
    ("harness/analysis/textmetrics.py", "3"): "the calibrated repeated-n-gram metric's default n, this project's",
    ("harness/claimkit/rv.py", "32"): "a batch size default",
    ("harness/claimkit/gen.py", "1024"): "a generation batch size default",
    ("harness/claimkit/rvpatch.py", "32"): "a batch size default",
    ("harness/claimkit/context.py", "32"): "a batch size default",
    ("claims/layer_pr_profile/protocols.py", "32"): "a batch size default",
    ("harness/claimkit/rvwindows.py", "32"): "a batch size default",
    ("claims/cross_arch_rv_table/protocols.py", "100"): "a fraction written as a percentage, as the source states it",
    ("claims/rv_window_robustness/protocols.py", "100"): "a fraction written as a percentage, as the source states it",
    ("claims/rv_confound_validation/protocols.py", "3"): "the fewest values a correlation is computed from",
    ("claims/rv_confound_validation/protocols.py", "1e4"): "the upper end of the df search bracket",
}


def numbers(path: Path) -> Iterator[tuple[int, str]]:
    """(line, literal) of every numeric token that is not a subscript (x[3]) or a negative sign's operand."""
    tokens = list(tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline))
    for i, token in enumerate(tokens):
        if token.type == tokenize.NUMBER and not (i and tokens[i - 1].string == "["):
            yield token.start[0], token.string


def leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for item in value.values():
            yield from leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from leaves(item)
    else:
        yield value


def claim_numbers() -> set[Decimal]:
    found = set()
    for claim in load_claims().values():
        for table in (claim.published, claim.protocol, claim.criteria, claim.controls):
            found |= {Decimal(repr(v)) for v in leaves(table) if isinstance(v, int | float)
                      and not isinstance(v, bool)}
    return found


def as_decimal(literal: str) -> Decimal | None:
    """A numeric literal's value (hex, underscores, exponents), None for complex ones."""
    value = ast.literal_eval(literal)
    return Decimal(repr(value)) if isinstance(value, int | float) else None


def significant_digits(value: Decimal) -> int:
    return len(value.normalize().as_tuple().digits)


def test_no_distinctive_published_number_is_written_in_code() -> None:
    distinctive = {abs(v) for v in claim_numbers() if significant_digits(v) >= 3}
    assert len(distinctive) > 30, "the claims' published tables should give many distinctive numbers"
    hits = [f"{path.relative_to(ROOT)}:{line}: {literal}" for path in SOURCES for line, literal in numbers(path)
            if as_decimal(literal) in distinctive]
    assert hits == []


def test_no_published_loop_phrase_is_written_in_code() -> None:
    phrases = {p for c in load_claims().values() for rule in c.protocol.get("loop_phrases", {}).values() for p in rule}
    assert phrases, "l31_ablation_repetition's [protocol.loop_phrases] should list the source's phrases"
    hits = [f"{path.relative_to(ROOT)}: {phrase!r}" for path in SOURCES for phrase in phrases
            if phrase in path.read_text(encoding="utf-8")]
    assert hits == []


@pytest.mark.parametrize("module", CLAIM_LOGIC)
def test_claim_logic_reads_its_thresholds_from_the_claim(module: str) -> None:
    found = {(module, literal) for _, literal in numbers(ROOT / module) if literal not in STRUCTURAL}
    assert found - set(ALLOWED) == set(), f"numeric literals in {module}: state them in claim.toml"


def test_every_allowed_literal_is_still_there() -> None:
    """An allowance that no longer matches anything is stale: drop it."""
    present = {(m, literal) for m in CLAIM_LOGIC for _, literal in numbers(ROOT / m)}
    assert set(ALLOWED) <= present
