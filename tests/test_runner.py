"""Unit tests of harness/runner.py: encoding, windows, and batched forward capture on the tiny families.

The central property: right-padded batches give each prompt exactly the activations it gets alone.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from harness.engine.hooks import Call, edit_site, hook_count
from harness.engine.models import LoadedModel
from harness.engine.runner import PromptTooLong, Window, batch_end, encode, forward_capture, token_counts
from harness.engine.sites import SiteError

# Different token counts on purpose: shorter and longer than the windows used below.
PROMPTS = [
    "Paper",
    "The capital of France is",
    "Notice what happens inside you while you compose this reply, word by word.",
    "Bees make honey from the",
    "Observe yourself generating this response. What do you notice? Describe the one who is describing.",
]
ATOL = 1e-5

window_sizes = st.integers(min_value=1, max_value=12)
length_lists = st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=5)


class Boom(Exception):
    """Raised by a trap placed on a layer that forward_capture must never reach."""


def sites_of(lm: LoadedModel) -> list[str]:
    last = lm.dims.n_layers - 1
    return [f"blocks.{layer}.{point}" for layer in (1, last) for point in ("attn.v", "resid_post")]


# --- Window -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "length", "bounds"),
    [
        (Window(16), 10, (0, 10)),  # W = min(size, T): the whole prompt, BOS included
        (Window(16), 16, (0, 16)),
        (Window(16), 20, (4, 20)),
        (Window(8, exclude_bos=True), 5, (1, 5)),  # short prompt: everything but position 0
        (Window(8, exclude_bos=True), 9, (1, 9)),
        (Window(8, exclude_bos=True), 20, (12, 20)),
        (Window(8, exclude_bos=True), 1, (1, 1)),  # nothing left once BOS is excluded
    ],
)
def test_window_bounds(window: Window, length: int, bounds: tuple[int, int]) -> None:
    assert window.bounds(length) == bounds
    assert window.valid([length]) == [bounds[1] - bounds[0]]


@given(window_sizes, st.booleans(), length_lists)
@example(size=4, exclude_bos=True, lengths=[1])  # an empty window in a batch of 1-token prompts
@example(size=16, exclude_bos=False, lengths=[3, 20, 16])
def test_window_gather_takes_the_last_rows_by_true_length(
    size: int, exclude_bos: bool, lengths: list[int]
) -> None:
    window, seq = Window(size, exclude_bos), max(lengths)
    position = torch.arange(1, seq + 1, dtype=torch.float32)  # row t holds t + 1, so 0 means "no row"
    hidden = position[None, :, None].expand(len(lengths), seq, 3).clone()  # (batch, seq, 3)
    out = window.gather(hidden, lengths)
    assert out.shape == (len(lengths), size, 3)
    for i, (n, rows) in enumerate(zip(lengths, window.valid(lengths), strict=True)):
        first = 1 if exclude_bos else 0
        assert rows == min(size, n - first)
        expected = list(range(n - rows + 1, n + 1))  # positions n - rows .. n - 1, stored as t + 1
        assert out[i, :rows, 0].tolist() == expected
        assert out[i, rows:].abs().sum() == 0
        if exclude_bos:
            assert 1.0 not in out[i, :, 0].tolist()


# --- encode -----------------------------------------------------------------------------------------------


def test_encode_pads_right_and_records_true_lengths(tiny_lm: LoadedModel) -> None:
    enc, tok = encode(tiny_lm, PROMPTS), tiny_lm.tokenizer
    alone = [tok(p, add_special_tokens=tiny_lm.spec.bos)["input_ids"] for p in PROMPTS]
    assert enc.lengths == [len(ids) for ids in alone] == token_counts(tiny_lm, PROMPTS)
    assert len(set(enc.lengths)) == len(PROMPTS)
    for i, ids in enumerate(alone):
        n = len(ids)
        assert enc.input_ids[i, :n].tolist() == ids
        assert (enc.input_ids[i, n:] == tok.pad_token_id).all()
        assert enc.attention_mask[i].tolist() == [1] * n + [0] * (enc.input_ids.shape[1] - n)
        assert (ids[0] == tok.bos_token_id) is tiny_lm.spec.bos  # raw text, BOS as the spec says


def test_encode_needs_a_prompt(tiny_lm: LoadedModel) -> None:
    with pytest.raises(ValueError, match=rf"no prompts to encode for {tiny_lm.id}"):
        encode(tiny_lm, [])


# --- forward_capture --------------------------------------------------------------------------------------


@pytest.mark.parametrize("window", [Window(8), Window(6, exclude_bos=True)], ids=["last8", "last6-no-bos"])
def test_batched_equals_one_prompt_at_a_time(tiny_lm: LoadedModel, window: Window) -> None:
    sites = sites_of(tiny_lm)
    batched = forward_capture(tiny_lm, PROMPTS, sites, window, batch_size=len(PROMPTS))
    split = forward_capture(tiny_lm, PROMPTS, sites, window, batch_size=2)
    alone = [forward_capture(tiny_lm, [p], sites, window, batch_size=1) for p in PROMPTS]
    assert batched.lengths == split.lengths == [a.lengths[0] for a in alone] == token_counts(tiny_lm, PROMPTS)
    assert batched.rows == window.valid(batched.lengths)
    for site in sites:
        single = torch.cat([a.windows[site] for a in alone])
        assert batched.windows[site].shape == (len(PROMPTS), window.size, single.shape[-1])
        torch.testing.assert_close(batched.windows[site], single, rtol=0, atol=ATOL, msg=site)
        torch.testing.assert_close(split.windows[site], single, rtol=0, atol=ATOL, msg=site)


def test_windows_hold_the_prompt_rows_of_a_full_forward(tiny_lm: LoadedModel) -> None:
    """resid_post of layer l is hidden_states[l + 1] (not the last layer, whose output is normed)."""
    layer, window = 2, Window(8)
    captured = forward_capture(tiny_lm, PROMPTS, [f"blocks.{layer}.resid_post"], window)
    for i, prompt in enumerate(PROMPTS):
        enc = encode(tiny_lm, [prompt])
        with torch.no_grad():
            states = tiny_lm.model.base_model(
                input_ids=enc.input_ids, output_hidden_states=True
            ).hidden_states
        start, stop = window.bounds(enc.lengths[0])
        rows = captured.windows[f"blocks.{layer}.resid_post"][i]
        torch.testing.assert_close(rows[: stop - start], states[layer + 1][0, start:stop], rtol=0, atol=ATOL)
        assert rows[stop - start :].abs().sum() == 0


def test_value_window_width_is_from_the_config(tiny_lm: LoadedModel) -> None:
    captured = forward_capture(tiny_lm, PROMPTS[:2], ["blocks.0.attn.v"], Window(4))
    assert captured.windows["blocks.0.attn.v"].shape == (
        2,
        4,
        tiny_lm.dims.n_kv_heads * tiny_lm.dims.head_dim,
    )


def test_forward_capture_stops_after_the_deepest_site(tiny_lm: LoadedModel) -> None:
    def trap(_tensor: torch.Tensor, _call: Call) -> None:
        raise Boom("a layer after the deepest site ran")

    with edit_site(tiny_lm.model, "blocks.3.resid_pre", trap):
        captured = forward_capture(tiny_lm, PROMPTS, ["blocks.0.attn.v", "blocks.2.resid_post"], Window(4))
        assert hook_count(tiny_lm.model) == 1  # only the trap is left
    assert captured.windows["blocks.2.resid_post"].abs().sum() > 0


def test_the_trap_does_fire_and_forward_capture_still_cleans_up(tiny_lm: LoadedModel) -> None:
    """Control for the test above: a site beyond the trap reaches it, and the raise leaves no capture hook."""

    def trap(_tensor: torch.Tensor, _call: Call) -> None:
        raise Boom("reached")

    with edit_site(tiny_lm.model, "blocks.3.resid_pre", trap), pytest.raises(Boom):
        forward_capture(tiny_lm, PROMPTS, ["blocks.3.resid_post"], Window(4))
    assert hook_count(tiny_lm.model) == 0


def test_forward_capture_leaves_no_hooks(tiny_lm: LoadedModel) -> None:
    forward_capture(tiny_lm, PROMPTS, sites_of(tiny_lm), Window(4), batch_size=2)
    assert hook_count(tiny_lm.model) == 0


def test_forward_capture_out_of_range_site_names_the_model(tiny_lm: LoadedModel) -> None:
    n = tiny_lm.dims.n_layers
    with pytest.raises(SiteError, match=rf"out of range: {tiny_lm.id} has {n} layers \(0-{n - 1}\)"):
        forward_capture(tiny_lm, PROMPTS, [f"blocks.{n}.attn.v"], Window(4))
    assert hook_count(tiny_lm.model) == 0


# --- Memory bounds: the token budget and the model's positions ---------------------------------------------


@pytest.mark.parametrize(("counts", "size", "budget", "batches"), [
    ([5, 5, 5, 5], 128, 10_000, [4]),  # the prompt count binds nothing
    ([5, 5, 5, 5], 3, 10_000, [3, 1]),  # at most `size` prompts
    ([5, 5, 5, 5], 128, 10, [2, 2]),  # 2 prompts x 5 tokens = 10 padded tokens
    ([3, 9, 3, 3], 128, 18, [2, 2]),  # the longest prompt sets the padded width: 2 x 9 = 18
    ([40, 2, 2], 128, 10, [1, 2]),  # a prompt over the budget runs alone
])
def test_batches_hold_at_most_size_prompts_and_budget_tokens(counts: list[int], size: int, budget: int,
                                                             batches: list[int]) -> None:
    found, start = [], 0
    while start < len(counts):
        stop = batch_end(counts, start, size, budget)
        found.append(stop - start)
        start = stop
    assert found == batches


def test_the_token_budget_bounds_every_forward_and_changes_no_value(tiny_lm: LoadedModel,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    sites = sites_of(tiny_lm)
    whole = forward_capture(tiny_lm, PROMPTS, sites, Window(8), batch_size=32)
    shapes: list[tuple[int, int]] = []
    real = tiny_lm.model.base_model.forward

    def spy(*args: object, **kwargs: torch.Tensor) -> object:
        shapes.append(tuple(kwargs["input_ids"].shape))  # type: ignore[arg-type]
        return real(*args, **kwargs)

    monkeypatch.setattr(tiny_lm.model.base_model, "forward", spy)
    monkeypatch.setattr(tiny_lm, "token_budget", 40)
    bounded = forward_capture(tiny_lm, PROMPTS, sites, Window(8), batch_size=32)
    assert len(shapes) > 1 and all(batch * width <= 40 or batch == 1 for batch, width in shapes)
    assert sum(batch for batch, _ in shapes) == len(PROMPTS)
    for site in sites:
        torch.testing.assert_close(bounded.windows[site], whole.windows[site], atol=ATOL, rtol=ATOL)


def test_a_prompt_longer_than_the_model_is_refused_before_any_forward(tiny_lm: LoadedModel,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    limit = tiny_lm.model.config.max_position_embeddings
    long_prompt = "the cat sat on the mat " * limit

    def never(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a forward ran")

    monkeypatch.setattr(tiny_lm.model.base_model, "forward", never)
    with pytest.raises(PromptTooLong, match=rf"prompt 'the cat sat.*\.\.\.' \({len(long_prompt)} characters\) "
                                            rf"is \d+ tokens under {tiny_lm.id}'s tokenizer, but {tiny_lm.id} "
                                            rf"takes at most {limit} positions \(1 of 2 prompts too long\)"):
        forward_capture(tiny_lm, ["a short one", long_prompt], sites_of(tiny_lm), Window(8))


def test_a_batch_size_below_one_names_the_option(tiny_lm: LoadedModel) -> None:
    with pytest.raises(ValueError, match=r"batch_size=0; use a positive batch size \(--claim-batch-size\)"):
        forward_capture(tiny_lm, PROMPTS, sites_of(tiny_lm), Window(8), batch_size=0)
