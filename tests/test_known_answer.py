"""Known-answer tests of the whole R_V pipeline (issue 2, section 7).

A planted effect must come out as "reproduced"; with no effect and shuffled labels the published test must
reject at its nominal rate.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from claims.rv_contraction.protocols import PROTOCOLS
from harness.analysis import stats
from harness.claimkit.prompts import bank_for
from harness.claimkit.registry import get_claim
from harness.claimkit.rv import Context, layers_for
from harness.engine.hooks import edit_site, hook_count
from harness.engine.models import load
from harness.engine.specs import get_spec
from harness.report.document import aggregate

ALPHA = 0.05
SHUFFLES = 2000


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load(get_spec("tiny-mistral-instruct"), cache_dir=tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def claim():
    return get_claim("rv_contraction")


@pytest.fixture(scope="module")
def bank(claim):
    return bank_for(claim)


def planted_contraction(lm, claim, bank):
    """For recursive prompts only: full-rank (orthogonal) rows at the early v site and rank-one rows at the
    late v site, so PR_early is near W and PR_late = 1 exactly; every other prompt runs untouched."""
    recursive = {p for name in bank.categories if name.startswith("recursive") for p in bank.category(name)}
    early, late = layers_for(claim, lm)
    point = claim.protocol["site"]

    def full_rank(v: torch.Tensor) -> torch.Tensor:  # (batch, seq, width): row t = |v_t| e_(t mod width)
        eye = torch.eye(v.shape[-1], device=v.device, dtype=v.dtype)
        return eye[torch.arange(v.shape[1]) % v.shape[-1]][None] * v.norm(dim=-1, keepdim=True)

    def rank_one(v: torch.Tensor) -> torch.Tensor:  # every row a multiple of the last row
        scale = torch.linspace(1.0, 2.0, v.shape[1], device=v.device, dtype=v.dtype)[None, :, None]
        return scale * v[:, -1:, :]

    @contextmanager
    def around(prompts: Sequence[str]) -> Iterator[None]:
        flags = torch.tensor([p in recursive for p in prompts])

        def planter(make):
            seen = {"rows": 0}

            def plant(v: torch.Tensor, _call) -> torch.Tensor:
                rows = flags[seen["rows"] : seen["rows"] + v.shape[0]].to(v.device)
                seen["rows"] += v.shape[0]
                return torch.where(rows[:, None, None], make(v), v)
            return plant

        with edit_site(lm.model, f"blocks.{early}.{point}", planter(full_rank)), \
                edit_site(lm.model, f"blocks.{late}.{point}", planter(rank_one)):
            yield

    return around


def test_planted_low_rank_effect_is_reproduced(tiny, claim, bank):
    ctx = Context(claim, tiny, bank, seed=0, batch_size=16,
                  around_run=planted_contraction(tiny, claim, bank))
    results = [{**PROTOCOLS[name](ctx), "outcome": "passed"} for name in PROTOCOLS]
    assert hook_count(tiny.model) == 0
    failed = {r["protocol"]: r["criterion_detail"] for r in results if r["passed"] is not True}
    assert not failed, f"planted effect not recovered by: {failed}"
    (summary,) = aggregate(results)
    assert summary["verdict"] == "reproduced"


def test_null_rejection_rate_is_nominal(tiny, claim, bank):
    """Shuffled labels, no plant: Student one-sided rejects at alpha +- 0.03 over 2000 shuffles."""
    ctx = Context(claim, tiny, bank, seed=0, batch_size=32)
    prompts = [p for name in ("recursive_extended", "baseline_extended") for p in bank.category(name)]
    values = np.asarray(ctx.run(prompts, ctx.window()).r_v)
    n = len(claim.published["recursive_per_prompt"])
    rng = np.random.default_rng(0)
    rejections = 0
    for _ in range(SHUFFLES):
        draw = rng.permutation(values.size)[: 2 * n]
        rejections += stats.student_t(values[draw[:n]], values[draw[n:]]).p_value < ALPHA
    rate = rejections / SHUFFLES
    assert abs(rate - ALPHA) <= 0.03, f"null rejection rate {rate:.3f} outside {ALPHA} +- 0.03"
