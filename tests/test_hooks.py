"""Unit tests of harness/hooks.py: capture, edit_site and stop_after on the tiny families.

Every manager must remove its hooks however its block ends; the `tiny_lm` fixture also fails any test that
leaves a hook on the shared model.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from harness.engine.hooks import MODES, Call, CallLog, StopForward, capture, edit_site, hook_count, stop_after
from harness.engine.models import LoadedModel
from harness.engine.runner import Encoded, encode
from harness.engine.sites import SiteError

PROMPT = "Observe yourself generating this response. What do you notice?"
NEW_TOKENS = 3


class Boom(Exception):
    """Raised inside a block to check that the hooks still go."""


def forward(lm: LoadedModel, enc: Encoded) -> torch.Tensor:
    with torch.no_grad():
        return lm.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits


def greedy(lm: LoadedModel, enc: Encoded) -> torch.Tensor:
    return lm.model.generate(
        enc.input_ids,
        attention_mask=enc.attention_mask,
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        do_sample=False,
        pad_token_id=lm.tokenizer.pad_token_id,
    )


# --- Call and CallLog -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("index", "seq_len", "is_decode"),
    [(0, 9, False), (0, 1, False), (1, 1, True), (2, 1, True), (1, 9, False)],
)
def test_call_is_decode_only_after_the_first_call_with_one_token(
    index: int, seq_len: int, is_decode: bool
) -> None:
    assert Call("blocks.0.attn.v", index, seq_len).is_decode is is_decode


def test_call_log_as_dict_sorts_by_seq_len() -> None:
    log = CallLog()
    log.by_seq_len.update({9: 1, 1: 2})
    log.edited = 3
    assert log.as_dict() == {"by_seq_len": {"1": 2, "9": 1}, "edited": 3}


# --- capture ----------------------------------------------------------------------------------------------


def test_capture_keeps_one_tensor_per_call(tiny_lm: LoadedModel) -> None:
    enc = encode(tiny_lm, ["The capital of France is", "Light travels at a speed of"])
    sites = ["blocks.0.attn.v", "blocks.1.resid_post"]
    with capture(tiny_lm.model, sites, model_name=tiny_lm.id) as acts:
        assert hook_count(tiny_lm.model) == len(sites)
        forward(tiny_lm, enc)
        forward(tiny_lm, enc)
    assert [len(acts[s]) for s in sites] == [2, 2]
    assert acts["blocks.0.attn.v"][0].shape == (
        2,
        enc.input_ids.shape[1],
        tiny_lm.dims.n_kv_heads * tiny_lm.dims.head_dim,
    )
    assert torch.equal(acts["blocks.1.resid_post"][0], acts["blocks.1.resid_post"][1])


def test_capture_keeps_clones(tiny_lm: LoadedModel) -> None:
    """A later in-place change to the module's output tensor must not reach what capture kept."""
    enc, site = encode(tiny_lm, [PROMPT]), "blocks.1.resid_post"
    with capture(tiny_lm.model, [site]) as reference:
        forward(tiny_lm, enc)

    def zero_in_place(tensor: torch.Tensor, _call: Call) -> None:
        tensor.zero_()

    with capture(tiny_lm.model, [site]) as acts, edit_site(tiny_lm.model, site, zero_in_place):
        forward(tiny_lm, enc)
    kept = acts[site][0]
    assert kept.abs().sum() > 0
    assert torch.equal(kept, reference[site][0])


def test_capture_applies_the_reducer(tiny_lm: LoadedModel) -> None:
    enc, site = encode(tiny_lm, [PROMPT]), "blocks.0.resid_post"
    with (
        capture(tiny_lm.model, [site]) as full,
        capture(tiny_lm.model, [site], reduce=lambda t: t[:, -2:]) as last,
    ):
        forward(tiny_lm, enc)
    assert last[site][0].shape == (1, 2, tiny_lm.dims.d_model)
    assert torch.equal(last[site][0], full[site][0][:, -2:])


# --- hooks always go --------------------------------------------------------------------------------------


def test_raise_inside_capture_leaves_no_hook(tiny_lm: LoadedModel) -> None:
    with (
        pytest.raises(Boom),
        capture(tiny_lm.model, ["blocks.0.attn.v", "blocks.1.attn.z", "blocks.1.resid_pre"]),
    ):
        assert hook_count(tiny_lm.model) == 3
        raise Boom
    assert hook_count(tiny_lm.model) == 0


def test_raise_inside_edit_site_leaves_no_hook(tiny_lm: LoadedModel) -> None:
    with pytest.raises(Boom), edit_site(tiny_lm.model, "blocks.0.mlp.out", lambda t, c: None):
        assert hook_count(tiny_lm.model) == 1
        raise Boom
    assert hook_count(tiny_lm.model) == 0


def test_raise_inside_stop_after_leaves_no_hook(tiny_lm: LoadedModel) -> None:
    with pytest.raises(Boom), stop_after(tiny_lm.model, 1, tiny_lm.id):
        assert hook_count(tiny_lm.model) == 1
        raise Boom
    assert hook_count(tiny_lm.model) == 0


def test_raise_from_a_hook_during_forward_leaves_no_hook(tiny_lm: LoadedModel) -> None:
    def explode(_tensor: torch.Tensor, _call: Call) -> None:
        raise Boom

    enc = encode(tiny_lm, [PROMPT])
    with (
        pytest.raises(Boom),
        capture(tiny_lm.model, ["blocks.0.attn.v"]),
        edit_site(tiny_lm.model, "blocks.1.attn.q", explode),
    ):
        forward(tiny_lm, enc)
    assert hook_count(tiny_lm.model) == 0


def test_hook_count_sees_a_raw_hook_but_not_the_library_output_recorders(tiny_lm: LoadedModel) -> None:
    """transformers 5 keeps inactive output-recording hooks after output_hidden_states=True: no leak."""
    with torch.no_grad():
        tiny_lm.model(input_ids=encode(tiny_lm, [PROMPT]).input_ids, output_hidden_states=True)
    assert hook_count(tiny_lm.model) == 0
    handle = tiny_lm.model.model.layers[0].register_forward_hook(lambda _m, _a, _o: None)
    try:
        assert hook_count(tiny_lm.model) == 1
    finally:
        handle.remove()


def test_a_bad_site_in_a_capture_list_removes_the_hooks_already_placed(tiny_lm: LoadedModel) -> None:
    too_deep = f"blocks.{tiny_lm.dims.n_layers}.attn.v"
    with (
        pytest.raises(SiteError, match=rf"'{too_deep}' out of range: {tiny_lm.id}"),
        capture(tiny_lm.model, ["blocks.0.attn.v", "blocks.1.attn.v", too_deep], model_name=tiny_lm.id),
    ):
        pytest.fail("the block must not run")
    assert hook_count(tiny_lm.model) == 0


def test_invalid_mode_lists_the_modes_and_places_no_hook(tiny_lm: LoadedModel) -> None:
    with (
        pytest.raises(
            ValueError, match=r"patch mode 'always'; allowed: all_calls, prefill_only, decode_only"
        ),
        edit_site(tiny_lm.model, "blocks.0.attn.v", lambda t, c: None, mode="always"),
    ):
        pytest.fail("the block must not run")
    assert hook_count(tiny_lm.model) == 0


# --- stop_after -------------------------------------------------------------------------------------------


def test_stop_after_ends_the_forward_after_the_layer(tiny_lm: LoadedModel) -> None:
    enc = encode(tiny_lm, [PROMPT])
    with (
        capture(tiny_lm.model, ["blocks.1.resid_post", "blocks.2.resid_pre", "blocks.2.attn.q"]) as acts,
        stop_after(tiny_lm.model, 1),
        pytest.raises(StopForward),
    ):
        forward(tiny_lm, enc)
    assert len(acts["blocks.1.resid_post"]) == 1
    assert acts["blocks.2.resid_pre"] == [] and acts["blocks.2.attn.q"] == []


# --- edits ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "site",
    ["blocks.0.resid_pre", "blocks.1.attn.v", "blocks.1.attn.z", "blocks.0.resid_post", "blocks.1.attn.out"],
)
def test_an_edit_returning_a_tensor_changes_the_logits(tiny_lm: LoadedModel, site: str) -> None:
    enc = encode(tiny_lm, [PROMPT])
    clean = forward(tiny_lm, enc)
    with edit_site(tiny_lm.model, site, lambda t, c: t * 0.0 + 0.5) as log:
        edited = forward(tiny_lm, enc)
    assert log.edited == 1
    assert (edited - clean).abs().max() > 1e-3


@pytest.mark.parametrize("edit", [lambda t, c: None, lambda t, c: t.clone()], ids=["none", "same-values"])
def test_an_edit_that_changes_nothing_leaves_the_logits(tiny_lm: LoadedModel, edit: Callable) -> None:
    enc = encode(tiny_lm, [PROMPT])
    clean = forward(tiny_lm, enc)
    with (
        edit_site(tiny_lm.model, "blocks.0.resid_pre", edit),
        edit_site(tiny_lm.model, "blocks.1.attn.v", edit),
    ):
        same = forward(tiny_lm, enc)
    assert torch.equal(same, clean)


EXPECTED_EDITED_CALLS = {
    "all_calls": [0, 1, 2],  # prefill and every cached decode step (the published behaviour)
    "prefill_only": [0],
    "decode_only": [1, 2],
}


@pytest.mark.parametrize("mode", MODES)
def test_edit_modes_fire_on_the_right_generate_calls(tiny_lm: LoadedModel, mode: str) -> None:
    enc = encode(tiny_lm, [PROMPT])
    prompt_len = enc.lengths[0]
    plain = greedy(tiny_lm, enc)
    seen: list[Call] = []

    def record(tensor: torch.Tensor, call: Call) -> torch.Tensor:
        seen.append(call)
        return tensor.clone()

    with edit_site(tiny_lm.model, "blocks.1.attn.v", record, mode=mode) as log:
        tokens = greedy(tiny_lm, enc)
    assert tokens.shape[1] == prompt_len + NEW_TOKENS
    assert torch.equal(tokens, plain)  # an identity edit does not change greedy output
    assert dict(log.by_seq_len) == {prompt_len: 1, 1: NEW_TOKENS - 1}  # every call counted, edited or not
    assert [c.index for c in seen] == EXPECTED_EDITED_CALLS[mode]
    assert [c.seq_len for c in seen] == [prompt_len if c.index == 0 else 1 for c in seen]
    assert log.edited == len(EXPECTED_EDITED_CALLS[mode])


def test_decode_only_edit_leaves_the_first_generated_token(tiny_lm: LoadedModel) -> None:
    """Zeroing the residual only at decode steps cannot change the token chosen from the prefill logits."""
    enc = encode(tiny_lm, [PROMPT])
    plain, prompt_len = greedy(tiny_lm, enc), enc.lengths[0]
    last = f"blocks.{tiny_lm.dims.n_layers - 1}.resid_post"
    with edit_site(tiny_lm.model, last, lambda t, c: torch.zeros_like(t) + 3.0, mode="decode_only") as log:
        edited = greedy(tiny_lm, enc)
    assert log.edited == NEW_TOKENS - 1
    assert torch.equal(edited[:, : prompt_len + 1], plain[:, : prompt_len + 1])
