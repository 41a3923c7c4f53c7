"""harness/claimkit/rvwindows.py: R_V over any window from one capture, and token-matched passage spans.

A window cut from a wider capture equals a capture at that window (the `min` rule is rv_contraction's); `full`
and `no_bos` exclude and count the prompts too short for them; layers counted from the end fail naming the
model; every token-matched partner has exactly its target's token count and starts at a sentence start.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from harness.analysis.metrics import participation_ratio, r_v
from harness.claimkit.rvwindows import capture_rows, layers_from_end, matched_spans, merge_runs, select_prompts
from harness.engine.models import LoadedModel
from harness.engine.runner import Window, forward_capture, token_counts
from harness.engine.sites import SiteError

PROMPTS = ["Hi", "The capital of France is", "Water boils at a temperature of one hundred degrees at sea level",
           "Describe the old harbour at dawn, when the fishing boats come back with the night's catch."]
PASSAGES = ["The harbour was built long ago. Its walls were raised twice after storms. Boats still fish there today "
            "and sell their catch at a market by the water.",
            "Bees live in colonies. Workers gather nectar and carry it home. The honey is stored in wax combs and "
            "sealed with a thin cap before the winter comes."]


@pytest.mark.parametrize("window", [4, 8])
def test_a_window_cut_from_a_wider_capture_equals_a_capture_at_that_window(tiny_lm: LoadedModel,
                                                                           window: int) -> None:
    early, late = 1, tiny_lm.dims.n_layers - 2
    run = capture_rows(tiny_lm, PROMPTS, early, late, "attn.v", 16).at(window, "min")
    sites = [f"blocks.{early}.attn.v", f"blocks.{late}.attn.v"]
    direct = forward_capture(tiny_lm, PROMPTS, sites, Window(window))
    want = r_v(participation_ratio(direct.windows[sites[1]], direct.rows),
               participation_ratio(direct.windows[sites[0]], direct.rows))
    assert run.prompts == PROMPTS and run.tokens == direct.lengths
    assert torch.allclose(torch.tensor(run.r_v), want, atol=1e-5)


def test_full_and_no_bos_windows_exclude_and_count_short_prompts(tiny_lm: LoadedModel) -> None:
    rows = capture_rows(tiny_lm, PROMPTS, 1, 3, "attn.v", 16)
    window = sorted(rows.tokens)[1]  # the second shortest prompt has exactly `window` tokens
    full, no_bos = rows.at(window, "full"), rows.at(window, "no_bos")
    assert len(full.prompts) == sum(t >= window for t in rows.tokens)
    assert len(no_bos.prompts) == sum(t > window for t in rows.tokens) == len(full.prompts) - 1
    assert full.excluded[f"shorter_than_{window}_tokens"] == 1
    assert no_bos.excluded[f"shorter_than_{window + 1}_tokens"] == 2
    with pytest.raises(ValueError, match=r"window 17 outside 1\.\.16"):
        rows.at(17, "min")


def test_select_and_merge_keep_exclusions_once(tiny_lm: LoadedModel) -> None:
    run = capture_rows(tiny_lm, PROMPTS, 1, 3, "attn.v", 8).at(8, "full")
    part = select_prompts(run, [PROMPTS[3], "not measured"])
    assert part.prompts == [PROMPTS[3]] and part.excluded == Counter()
    assert merge_runs([run, part]).excluded == run.excluded and len(merge_runs([run, part]).r_v) == len(run.r_v) + 1


def test_late_layers_count_from_the_end(tiny_models: dict[str, LoadedModel]) -> None:
    lm = tiny_models["tiny-mistral"]
    assert layers_from_end(lm, 5, 4) == (5, lm.dims.n_layers - 4)
    with pytest.raises(SiteError, match=r"late layer n_layers - 14 = 2 do not fit tiny-mistral's 16 layers"):
        layers_from_end(lm, 5, 14)


def test_every_partner_has_its_targets_token_count(tiny_lm: LoadedModel) -> None:
    targets = PROMPTS[1:]
    matched = matched_spans(tiny_lm, targets, PASSAGES)
    counts = token_counts(tiny_lm, [p for p in matched.partners if p is not None])
    wanted = [t for t, p in zip(matched.tokens, matched.partners, strict=True) if p is not None]
    assert counts == wanted and matched.tokens == token_counts(tiny_lm, targets)
    starts = {sentence.split()[0] for passage in PASSAGES for sentence in passage.split(". ")}
    assert all(p is None or p.split()[0] in starts for p in matched.partners)
    assert matched.unmatched + len(matched.pairs) == len(targets)


def test_a_target_longer_than_every_passage_gets_no_partner(tiny_models: dict[str, LoadedModel]) -> None:
    matched = matched_spans(tiny_models["tiny-mistral"], [" ".join(PASSAGES) * 2], PASSAGES[:1])
    assert matched.partners == [None] and matched.unmatched == 1
    with pytest.raises(ValueError, match="at least one passage"):
        matched_spans(tiny_models["tiny-mistral"], ["x"], [])
