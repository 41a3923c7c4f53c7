"""Row patches and column ablations in a plain forward pass (harness/engine/rowedits.py), the intervention hook
of `forward_capture`, `iter_hidden_states`, and R_V under edits (harness/claimkit/rvpatch.py).

The facts the R_V patching claims rest on are asserted here exactly: a capture at the patched site reads the
source's rows (W-A4), a decoder-output patch leaves every upstream v_proj bit-identical (W-A5), and PR cannot
see the order of the rows it is given.
"""

from __future__ import annotations

import pytest
import torch

from harness.analysis.metrics import participation_ratio
from harness.claimkit.rvpatch import columns_zeroed, full_rows, measure_pr, rows_patched
from harness.engine.hooks import capture, hook_count
from harness.engine.models import LoadedModel
from harness.engine.rowedits import patch_rows, row_plan, zero_columns
from harness.engine.runner import Window, encode, forward_capture, iter_hidden_states

LONG = [
    "The old bridge over the river was rebuilt after the spring flood washed away part of its railing last year.",
    "Most bakeries open before sunrise, mixing dough and heating the ovens so fresh bread is ready for breakfast.",
]
SHORT = ["The capital of France is", "Bees make honey from"]


def test_row_plan_right_aligns_each_source_to_its_prompt() -> None:
    sources = [torch.arange(12.0).view(6, 2), torch.arange(4.0).view(2, 2) + 100]
    values, where, written = row_plan(sources, [4, 3], width=5, window=16)
    assert written == [4, 2]  # min(window, T, T_src)
    assert where[:, :, 0].tolist() == [[True, True, True, True, False], [False, True, True, False, False]]
    assert torch.equal(values[0, :4], sources[0][2:]) and torch.equal(values[1, 1:3], sources[1])
    with pytest.raises(ValueError, match="one source per prompt"):
        row_plan(sources, [4], width=5, window=16)


def test_patch_rows_writes_the_last_rows_of_a_right_padded_batch(tiny_lm: LoadedModel) -> None:
    site = "blocks.1.attn.v"
    prompts = [LONG[0], SHORT[0]]
    rows = full_rows(tiny_lm, LONG, [site])[site]  # two sources, both longer than the targets' windows
    enc = encode(tiny_lm, prompts)
    with torch.no_grad(), patch_rows(tiny_lm.model, site, rows, enc.lengths, 16) as log, \
            capture(tiny_lm.model, [site]) as acts:
        tiny_lm.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, use_cache=False)
    with torch.no_grad(), capture(tiny_lm.model, [site]) as clean:
        tiny_lm.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, use_cache=False)
    out, before = acts[site][0], clean[site][0]
    assert log.edited == 1
    for i, (length, src) in enumerate(zip(enc.lengths, rows, strict=True)):
        w = min(16, length, src.shape[0])
        assert torch.equal(out[i, length - w : length], src[-w:])
        assert torch.equal(out[i, : length - w], before[i, : length - w])  # earlier positions untouched
    assert hook_count(tiny_lm.model) == 0


def test_a_capture_at_the_patched_site_measures_the_source(tiny_lm: LoadedModel) -> None:
    """W-A4: where the patch covers the whole window, PR at the patch site IS the source's PR."""
    site = "blocks.2.attn.v"
    window = Window(16)
    sources = full_rows(tiny_lm, LONG, [site])[site]
    source_pr = measure_pr(tiny_lm, LONG, [site], window).pr[site]
    targets = list(reversed(LONG))  # each target gets the other prompt's rows
    patched = measure_pr(tiny_lm, targets, [site], window, rows_patched(tiny_lm, site, sources, 16))
    assert patched.edited == 1
    assert torch.allclose(patched.pr[site], source_pr, rtol=1e-6, atol=0)
    shuffled = [s[-16:][torch.randperm(16, generator=torch.Generator().manual_seed(0))] for s in sources]
    within = measure_pr(tiny_lm, targets, [site], window, rows_patched(tiny_lm, site, shuffled, 16))
    assert torch.allclose(within.pr[site], patched.pr[site], rtol=1e-6, atol=0)  # PR cannot see row order


def test_a_decoder_output_patch_leaves_every_upstream_v_proj_bit_identical(tiny_lm: LoadedModel) -> None:
    """W-A5: layer L's v_proj reads layer L's input; overwriting layer L's output cannot reach it."""
    n = tiny_lm.dims.n_layers
    late, early = n - 2, 1
    sites = [f"blocks.{early}.attn.v", f"blocks.{late}.attn.v", f"blocks.{late + 1}.attn.v"]
    source = full_rows(tiny_lm, LONG[:1], [f"blocks.{late}.resid_post"])[f"blocks.{late}.resid_post"][0]
    noise = torch.randn(source.shape, generator=torch.Generator().manual_seed(1)) * 50
    clean = measure_pr(tiny_lm, SHORT, sites, Window(16))
    for rows in (source, noise):
        edit = rows_patched(tiny_lm, f"blocks.{late}.resid_post", [rows] * len(SHORT), 16)
        patched = measure_pr(tiny_lm, SHORT, sites, Window(16), edit)
        assert patched.edited == 1
        assert torch.equal(patched.ratio(sites[1:2], sites[0]), clean.ratio(sites[1:2], sites[0]))
        assert not torch.equal(patched.pr[sites[2]], clean.pr[sites[2]]), "the patch must act downstream"


def test_zero_columns_zeroes_exactly_those_columns(tiny_lm: LoadedModel) -> None:
    site = "blocks.0.attn.v"
    enc = encode(tiny_lm, SHORT)
    with torch.no_grad(), zero_columns(tiny_lm.model, site, slice(1, 3)), capture(tiny_lm.model, [site]) as acts:
        tiny_lm.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, use_cache=False)
    out = acts[site][0]
    assert torch.count_nonzero(out[..., 1:3]) == 0 and torch.count_nonzero(out[..., 3:]) > 0
    with pytest.raises(ValueError, match="selects no column"), \
            zero_columns(tiny_lm.model, site, slice(0, 0)), torch.no_grad():
        tiny_lm.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, use_cache=False)
    assert hook_count(tiny_lm.model) == 0


def test_columns_zeroed_changes_pr_at_its_own_site(tiny_lm: LoadedModel) -> None:
    """W-A7: zeroing columns of the measured matrix changes its PR mechanically."""
    site = "blocks.1.attn.v"
    clean = measure_pr(tiny_lm, LONG, [site], Window(16)).pr[site]
    ablated = measure_pr(tiny_lm, LONG, [site], Window(16), columns_zeroed(tiny_lm, site, slice(0, 2))).pr[site]
    assert not torch.allclose(clean, ablated)


def test_forward_capture_intervene_sees_each_batch_and_its_first_index(tiny_lm: LoadedModel) -> None:
    seen: list[tuple[list[int], int]] = []

    class Recorder:
        def __call__(self, enc, first):  # type: ignore[no-untyped-def]
            seen.append((enc.lengths, first))
            return zero_columns(tiny_lm.model, "blocks.0.attn.v", slice(0, 1))

    cap = forward_capture(tiny_lm, LONG + SHORT, ["blocks.0.attn.v"], Window(4), batch_size=3, intervene=Recorder())
    assert [first for _, first in seen] == [0, 3] and len(seen[0][0]) == 3 and len(seen[1][0]) == 1
    assert torch.count_nonzero(cap.windows["blocks.0.attn.v"][..., 0]) == 0


def test_iter_hidden_states_gives_every_layer_and_the_post_norm_state(tiny_lm: LoadedModel) -> None:
    n = tiny_lm.dims.n_layers
    ((enc, hidden),) = list(iter_hidden_states(tiny_lm, SHORT))
    assert len(hidden) == n + 1 and hidden[0].shape[:2] == enc.input_ids.shape
    with torch.no_grad(), capture(tiny_lm.model, [f"blocks.{n - 1}.resid_post", "blocks.0.resid_post"]) as acts:
        tiny_lm.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, use_cache=False)
    assert torch.allclose(hidden[1], acts["blocks.0.resid_post"][0], atol=1e-6)
    last = acts[f"blocks.{n - 1}.resid_post"][0]
    assert not torch.allclose(hidden[n], last), "the last hidden state comes after the final norm"


def test_measure_pr_equals_pr_of_the_captured_window(tiny_lm: LoadedModel) -> None:
    site = "blocks.1.attn.v"
    cap = forward_capture(tiny_lm, SHORT, [site], Window(16))
    run = measure_pr(tiny_lm, SHORT, [site], Window(16))
    assert torch.equal(run.pr[site], participation_ratio(cap.windows[site], cap.rows).cpu())
    assert run.lengths == cap.lengths and run.edited == 0
