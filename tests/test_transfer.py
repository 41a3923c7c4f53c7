"""harness/claimkit/transfer.py: the n300 arms.

Pairs are drawn as the source drew them (distinct when the lists allow, index pairs plus draws otherwise,
seeded); source v rows are right-aligned; the source's persistent patch writes when it meets a call of at least
W positions and never on one-token calls, so within sampling the transfer, wrong-layer and KV-only arms give
the same tokens (W-A6); the patch made to fire puts the source's rows into the cached values.
"""

from __future__ import annotations

from pathlib import Path

import torch

from harness.claimkit.prompts import bank_for
from harness.claimkit.registry import load_claim
from harness.claimkit.transfer import TransferContext, VRows, draw_pairs, patch_calls, persistent_v, prefill_v
from harness.engine.formatting import RAW
from harness.engine.generation import encode_left
from harness.engine.kvsurgery import layer_kv, output_cache
from harness.engine.models import LoadedModel
from harness.engine.runner import Window, forward_capture

CLAIM = Path(__file__).resolve().parents[1] / "claims" / "behavior_transfer_n300" / "claim.toml"
SOURCES = ["Watch yourself forming this answer and describe the watching as it happens right now.",
           "Observe the observer that reads this sentence, then observe that observing too."]
TARGETS = ["The capital of France is", "Describe the old harbour at dawn when the fishing boats come back home."]


def test_pairs_are_distinct_when_the_lists_allow_and_seeded() -> None:
    pairs = draw_pairs(list("abcdef"), list("uvwxyz"), 4, seed=7)
    assert len({s for s, _ in pairs}) == len({b for _, b in pairs}) == 4
    assert pairs == draw_pairs(list("abcdef"), list("uvwxyz"), 4, seed=7) != draw_pairs(list("abcdef"),
                                                                                       list("uvwxyz"), 4, seed=8)
    many = draw_pairs(list("abc"), list("uv"), 5, seed=7)
    assert many[:2] == [("a", "u"), ("b", "v")] and len(many) == 5  # index pairs first, then draws


def test_v_rows_are_the_last_rows_right_aligned(tiny_lm: LoadedModel) -> None:
    rows = VRows.capture(tiny_lm, ["Hi", SOURCES[0]], 3, 6, 8, RAW)
    full = forward_capture(tiny_lm, ["Hi", SOURCES[0]], ["blocks.3.attn.v"], Window(64))
    short, long = full.rows
    assert torch.allclose(rows.rows[1], full.windows["blocks.3.attn.v"][1, long - 6 : long])
    assert torch.allclose(rows.rows[0, 6 - short :], full.windows["blocks.3.attn.v"][0, :short])
    assert not rows.rows[0, : 6 - short].any() and rows.lengths.tolist() == full.lengths


def _v_after(lm: LoadedModel, layer: int, edit: object, prompts: list[str]) -> tuple[torch.Tensor, dict]:
    """A prefill with `edit` entered: the cached values of `layer` (rows, n_kv, width, head_dim) and the log."""
    batch = encode_left(lm, prompts)
    with torch.no_grad(), edit(batch, torch.arange(len(prompts))) as log:  # type: ignore[operator]
        out = lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=True,
                       position_ids=(batch.attention_mask.cumsum(-1) - 1).clamp(min=0))
    return layer_kv(output_cache(out))[layer][1], log.as_dict()


def _as_heads(lm: LoadedModel, rows: torch.Tensor) -> torch.Tensor:
    """(n, W, n_kv * head_dim) -> (n, n_kv, W, head_dim), the cache's layout."""
    n, w, _ = rows.shape
    return rows.view(n, w, lm.dims.n_kv_heads, lm.dims.head_dim).transpose(1, 2)


def test_the_persistent_patch_writes_on_long_calls_only(tiny_lm: LoadedModel) -> None:
    layer, window = 2, 6
    source = VRows.capture(tiny_lm, SOURCES, layer, window, 8, RAW)
    edit = persistent_v(tiny_lm, layer, source, torch.tensor([0, 1]), window)
    values, log = _v_after(tiny_lm, layer, edit, [TARGETS[1], TARGETS[1]])  # a call of >= W positions
    assert log["edited"] == 1
    assert torch.allclose(values[:, :, -window:], _as_heads(tiny_lm, source.rows), atol=1e-6)


def test_the_fired_patch_puts_the_source_rows_into_the_cache(tiny_lm: LoadedModel) -> None:
    layer, window = 2, 6
    source = VRows.capture(tiny_lm, SOURCES, layer, window, 8, RAW)
    values, log = _v_after(tiny_lm, layer, prefill_v(tiny_lm, layer, source, torch.tensor([0, 1]), window),
                           TARGETS)
    assert log["edited"] == 1
    short = int(encode_left(tiny_lm, TARGETS[:1]).attention_mask.sum())
    m = min(short, window)  # the short target gets only its own length of rows
    assert torch.allclose(values[0, :, -m:], _as_heads(tiny_lm, source.rows)[0, :, -m:], atol=1e-6)
    assert torch.allclose(values[1, :, -window:], _as_heads(tiny_lm, source.rows)[1], atol=1e-6)


def test_within_sampling_the_persistent_patch_never_writes(tiny_models: dict[str, LoadedModel]) -> None:
    """W-A6 on a tiny model: one-token calls only, no write, and the arms that differ only by the patch (or its
    layer) give the same tokens, pair by pair."""
    lm = tiny_models["tiny-mistral"]
    claim = load_claim(CLAIM)
    ctx = TransferContext(claim, lm, bank_for(claim), seed=0, batch_size=8)
    runs = ctx.run(("transfer", "wrong_layer", "kv_only", "random", "baseline"))
    calls = patch_calls(runs["transfer"])
    assert set(calls["by_seq_len"]) == {"1"} and calls["edited"] == 0
    ids = {arm: [g.generated_ids for g in run.run.generations] for arm, run in runs.items()}
    assert ids["transfer"] == ids["wrong_layer"] == ids["kv_only"]
    assert ids["transfer"] != ids["random"]  # the cache transplant does change the text
    assert len(ids["transfer"]) == ctx.params["n_pairs"] == claim.protocol["sizes"]["stand_in"]["n_pairs"]
