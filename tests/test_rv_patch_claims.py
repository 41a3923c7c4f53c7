"""The four R_V patching and profile claims (claims/layer_pr_profile, residual_patch_rv_null,
rv_l27_patch_transfer_n45, l27_critical_heads) run directly on the tiny models, and their re-derivations.

The artefacts each claim exposes are structural, so they are asserted exactly here: the L27 patch measures its
own source (W-A4) and a shuffle inside the window changes nothing; the residual patch cannot reach R_V (W-A5);
the source's "head 11" is a quarter of a KV head (W-A7); the published PR table satisfies its own conclusion
only at a tolerance of 0.2 and its extremes sit at the ends.
"""

from __future__ import annotations

import itertools
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from claims.l27_critical_heads import protocols as heads
from claims.layer_pr_profile import protocols as profile
from claims.residual_patch_rv_null import protocols as null_patch
from claims.rv_l27_patch_transfer_n45 import protocols as transfer
from harness.analysis.metrics import covariance_pr
from harness.analysis.stats import ratio_of_means_ci
from harness.claimkit.prompts import bank_for
from harness.claimkit.registry import get_claim
from harness.claimkit.results import check
from harness.engine.models import Dims, LoadedModel
from harness.report.document import aggregate
from harness.resources import models_dir

# What the published summaries give (claims-spec A.7.1, A.7.7, A.6), recomputed by hand.
EXPECTED = {
    "t_from_summary": -0.234 / 0.066 * math.sqrt(45),  # -23.78, published -23.87 (inside the rounding range)
    "d_from_summary": -0.234 / 0.066,
    "wrong_layer_p_two_sided": 0.0012,  # t = 3.47 at df = 44, published beside p = 0.49
    "head_transfer": (0.7074 - 0.5356) / (0.7074 - 0.5088),
    "profile_margin": ((0.2 - 0.16) + (0.2 - 0.06)) / 2,  # the bos_excluded control's published effect
    "mistral_head_11": (352, 384, 2, 0.25, [8, 9, 10, 11]),  # W-A7: columns, KV head, fraction, sharing heads
}


@pytest.fixture
def small_lm(tiny_models: dict[str, LoadedModel]) -> LoadedModel:
    """One tiny family for the whole-claim tests (the claim modules run every tiny stand-in already)."""
    return tiny_models["tiny-llama"]


def _ctx(module, claim_id: str, lm: LoadedModel, **extra):  # type: ignore[no-untyped-def]
    claim = get_claim(claim_id)
    return module.Context(claim, lm, bank_for(claim), **extra)


# --- re-derivations (no model) ---------------------------------------------------------------------------------


def test_the_transfer_summary_rederives_t_and_d_and_flags_the_wrong_layer_figures() -> None:
    res = transfer.rederive(get_claim("rv_l27_patch_transfer_n45"))
    check(res)
    obs = res["observed"]
    assert res["passed"] is True
    assert obs["t"] == pytest.approx(EXPECTED["t_from_summary"]) and obs["cohens_d"] == pytest.approx(
        EXPECTED["d_from_summary"])
    assert obs["t_range_low"] < res["published"]["t"] < obs["t_range_high"]
    assert obs["wrong_layer_p_from_t_two_sided"] == pytest.approx(EXPECTED["wrong_layer_p_two_sided"], abs=1e-4)
    assert any("disagree" in note for note in res["notes"])


def test_the_head_figures_rederive() -> None:
    res = heads.rederive(get_claim("l27_critical_heads"))
    check(res)
    assert res["passed"] is True and res["observed"]["transfer"] == pytest.approx(EXPECTED["head_transfer"])


def test_the_profile_table_holds_its_conclusion_only_loosely_and_peaks_at_the_ends() -> None:
    claim = get_claim("layer_pr_profile")
    res = profile.rederive(claim)
    check(res)
    obs = res["observed"]
    assert res["passed"] is True and obs["extremes_at_ends"] == 1.0
    assert obs["middle_fraction_within_strict"] < 1.0, "at +-0.05 the table fails its own conclusion"
    assert obs["margin"] == pytest.approx(EXPECTED["profile_margin"])
    assert claim.control("bos_excluded")["published_effect"] == pytest.approx(obs["margin"])


def test_the_published_head_11_is_a_quarter_of_kv_head_2_on_mistral() -> None:
    config = json.loads((models_dir() / "mistral-7b-instruct-v0.2.json").read_text(encoding="utf-8"))
    dims = Dims.from_config(SimpleNamespace(**config))
    columns = heads.published_slice(dims, 11)
    kv, fraction, sharing = heads.kv_head_of(dims, columns)
    assert (columns.start, columns.stop, kv, fraction, sharing) == EXPECTED["mistral_head_11"]


@given(st.integers(1, 16), st.integers(1, 8), st.sampled_from([4, 8, 12, 64]))
def test_published_slices_partition_the_v_width(n_kv: int, group: int, head_dim: int) -> None:
    dims = Dims(n_layers=2, n_heads=n_kv * group, n_kv_heads=n_kv, head_dim=head_dim, d_model=8)
    slices = [heads.published_slice(dims, h) for h in range(dims.n_heads)]
    assert slices[0].start == 0 and slices[-1].stop == n_kv * head_dim
    assert all(a.stop == b.start for a, b in itertools.pairwise(slices))


# --- metrics the claims add ------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 20), st.integers(2, 40), st.integers(0, 10_000), st.floats(1.0, 300.0))
def test_covariance_pr_is_the_source_formula(rows: int, width: int, seed: int, sink: float) -> None:
    """PR of the d x d centred covariance / W with eigvalsh clamped at 1e-10, computed directly in numpy."""
    import torch

    x = np.random.default_rng(seed).normal(size=(rows, width))
    x[0] *= sink
    centred = x - x.mean(0)
    eig = np.clip(np.linalg.eigvalsh(centred.T @ centred / rows), 1e-10, None)
    expected = eig.sum() ** 2 / (eig**2).sum()
    got = float(covariance_pr(torch.tensor(x, dtype=torch.float32)[None])[0])
    assert got == pytest.approx(expected, rel=1e-4)


def test_a_massive_first_row_makes_the_centred_pr_about_one() -> None:
    """W-A8 in miniature: one huge row dominates the centred covariance; without it PR is large."""
    import torch

    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    x[0] *= 100
    assert float(covariance_pr(x[None])[0]) < 1.05 and float(covariance_pr(x[None, 1:])[0]) > 5


def test_the_ratio_interval_is_unbounded_when_the_gap_can_be_zero() -> None:
    rng = np.random.default_rng(0)
    num, den = rng.normal(-0.2, 0.05, 45), rng.normal(-0.2, 0.05, 45)
    bounded = ratio_of_means_ci(num, den, 0.9, 2000, 0, clusters=[i % 15 for i in range(45)])
    assert bounded.low < bounded.estimate < bounded.high and bounded.estimate == pytest.approx(num.sum() / den.sum())
    iid = ratio_of_means_ci(num, den, 0.9, 2000, 0)
    assert bounded.high - bounded.low > 0 and iid.df == 44 and bounded.df == 14
    open_ = ratio_of_means_ci(num, rng.normal(0.0, 0.05, 45), 0.9, 2000, 0)
    assert math.isinf(open_.low) and math.isinf(open_.high)


# --- the claims on the tiny models -----------------------------------------------------------------------------


def test_the_pairing_follows_the_source(tiny_lm: LoadedModel) -> None:
    ctx = _ctx(transfer, "rv_l27_patch_transfer_n45", tiny_lm)
    pairs, excluded, candidates = transfer.build_pairs(ctx)
    p = ctx.claim.protocol
    assert len(pairs) == min(candidates, p["max_pairs"])
    assert excluded["beyond_max_pairs"] == max(candidates - p["max_pairs"], 0)
    sizes = [min(len(ctx.bank.category(r)), len(ctx.bank.category(b)))
             for r in p["recursive_groups"] for b in p["baseline_groups"]]
    assert candidates + excluded["baseline_shorter_than_min_tokens"] == sum(sizes)
    legacy, _ = transfer.candidate_pairs(ctx)
    np.random.seed(p["pair_seed"])  # the source's own two lines, on the global legacy generator
    np.random.shuffle(legacy)  # type: ignore[arg-type]
    assert pairs == legacy[: p["max_pairs"]]
    assert len({x.baseline for x in pairs}) < len(pairs), "baselines are reused"


def test_the_l27_patch_is_circular_and_the_window_shuffle_is_the_main_effect(small_lm: LoadedModel) -> None:
    ctx = _ctx(transfer, "rv_l27_patch_transfer_n45", small_lm, cache={})
    main = transfer.as_published(ctx)
    check(main)
    assert main["observed"]["pairs_window_fully_patched"] > 0
    assert main["observed"]["circular_pr_max_abs_diff"] <= 1e-6 * main["observed"]["rv_recursive_mean"] + 1e-7
    assert main["observed"]["pr5_patch_run_max_abs_diff"] == 0.0, "L5 is upstream of the L27 patch"
    shuffled = transfer.shuffle_within_window(ctx)
    check(shuffled)
    assert shuffled["observed"]["max_abs_main_minus_shuffled_within"] <= 1e-6
    assert shuffled["decision"] == "fail" and shuffled["passed"] is False
    down = transfer.downstream(ctx)
    check(down)
    assert down["kind"] == "control" and down["effect"]["name"] == "transfer_efficiency"


def test_the_residual_patch_null_is_non_diagnostic(tiny_lm: LoadedModel) -> None:
    ctx = _ctx(null_patch, "residual_patch_rv_null", tiny_lm, cache={})
    results = [null_patch.PROTOCOLS[name](ctx) for name in null_patch.PROTOCOLS]
    for res in results:
        check(res)
    published, null = results[0], results[1]
    for res in (published, null):
        assert res["observed"]["r_v_bit_identical"] == 1.0 and res["observed"]["hook_edits"] == 1
        assert res["passed"] is True
    (summary,) = aggregate(results)
    assert summary["verdict"] == "non_diagnostic"


def test_head_ablation_runs_all_three_ablations(small_lm: LoadedModel) -> None:
    ctx = _ctx(heads, "l27_critical_heads", small_lm, cache={})
    published = heads.as_published(ctx)
    check(published)
    rows = published["data"]["heads"]
    assert len(rows) == small_lm.dims.n_heads and 1 <= published["observed"]["published_top_head_rank"] <= len(rows)
    assert published["observed"]["slice_width"] >= 1
    null = heads.random_column_slice(ctx)
    check(null)
    assert null["kind"] == "null" and len(null["data"]["slices"]) == ctx.claim.protocol["n_random_slices"]
    gqa = heads.gqa_aware(ctx)
    check(gqa)
    assert len(gqa["data"].get("query_heads", [])) in (0, small_lm.dims.n_heads)


def test_the_profile_control_drops_position_0(tiny_lm: LoadedModel) -> None:
    ctx = _ctx(profile, "layer_pr_profile", tiny_lm)
    window = ctx.claim.protocol["window"]
    assert profile.last_rows(window, first=1)(window + 5) == list(range(5, window + 5))
    assert profile.last_rows(window, first=1)(4) == [1, 2, 3]
    assert profile.sink_and_last(window)(window + 5) == [0, *range(6, window + 5)]
    assert profile.state_of(32, 32, tiny_lm.dims.n_layers) == tiny_lm.dims.n_layers
    res = profile.bos_excluded(ctx)
    check(res)
    assert res["kind"] == "control" and res["effect"]["published"] == ctx.claim.control("bos_excluded")[
        "published_effect"]
    assert all(row["tokens"] >= window + 1 for row in res["data"]["prompts"])
