"""harness/engine/sampling.py: seeded per-row sampling.

The noise is a splitmix64 hash of (row seed, step, token id) (checked against a plain-Python splitmix64); the
Gumbel-max draw follows softmax(logits / T), with top_k honoured (chi-square against the exact probabilities);
near zero temperature the loop gives `generate`'s greedy tokens on every tiny family (positions, masks and the
cache are right); a row draws the same tokens whatever batch it sits in; refeeding reads the last prompt token
again at position T; rows of one condition never see another condition's edits.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from scipy import stats as sps

from harness.engine.generation import PromptBatch, generate
from harness.engine.hooks import CallLog, edit_site
from harness.engine.models import LoadedModel
from harness.engine.runner import encode
from harness.engine.sampling import SampledCondition, choose, sample_conditions, uniform

PROMPTS = ("The capital of France is", "Water boils at a temperature of one hundred degrees", "Hi")
MASK = (1 << 64) - 1


def splitmix_final(x: int) -> int:
    x &= MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def reference_uniform(seed: int, step: int, token: int) -> float:
    golden = 0x9E3779B97F4A7C15
    key = splitmix_final(seed * golden + golden)
    row = splitmix_final(key + (step + 1) * golden)
    bits = splitmix_final(row + (token + 1) * golden) >> 11
    return (bits + 0.5) / float(1 << 53)


def test_uniform_is_splitmix64_of_seed_step_and_token() -> None:
    seeds = torch.tensor([0, 1, 42, -7, 2**40 + 3])
    got = uniform(seeds, 5, 9)
    want = [[reference_uniform(s, 5, t) for t in range(9)] for s in seeds.tolist()]
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), rtol=0, atol=0)
    assert bool(((got > 0) & (got < 1)).all())


def test_uniform_depends_on_the_seed_and_the_step_only() -> None:
    seeds = torch.tensor([3, 3, 4])
    first, again, later = uniform(seeds, 0, 64), uniform(seeds, 0, 64), uniform(seeds, 1, 64)
    assert torch.equal(first, again) and torch.equal(first[0], first[1])
    assert not torch.equal(first[0], first[2]) and not torch.equal(first[0], later[0])
    # neighbouring seeds are not shifted copies of one stream (seed s at step 1 is not seed s + 1 at step 0)
    assert not torch.equal(uniform(torch.tensor([3]), 1, 64), uniform(torch.tensor([4]), 0, 64))


def _frequencies(logits: list[float], temperature: float, top_k: int, draws: int = 20_000) -> np.ndarray:
    rows = torch.tensor([logits] * draws)
    picked = choose(rows, temperature, torch.full((draws,), top_k), torch.arange(draws), 3)
    return np.bincount(picked.numpy(), minlength=len(logits))


def _expected(scaled: np.ndarray, total: int) -> np.ndarray:
    weights = np.exp(scaled - scaled.max())
    return weights / weights.sum() * total


def test_gumbel_max_draws_follow_the_tempered_softmax() -> None:
    logits = [1.0, 0.2, -0.5, 2.0, 0.0, -1.5]
    counts = _frequencies(logits, 0.8, 0)
    assert sps.chisquare(counts, _expected(np.array(logits) / 0.8, counts.sum())).pvalue > 1e-3
    hot = _frequencies(logits, 5.0, 0)  # a higher temperature flattens the draws
    assert hot.max() < counts.max()


def test_top_k_keeps_only_the_k_largest_logits_renormalised() -> None:
    logits = [1.0, 0.2, -0.5, 2.0, 0.0, -1.5]
    counts = _frequencies(logits, 0.8, 2)
    assert set(np.flatnonzero(counts)) == {0, 3}
    kept = np.array([logits[0], logits[3]]) / 0.8
    assert sps.chisquare(counts[[0, 3]], _expected(kept, counts.sum())).pvalue > 1e-3


def test_near_zero_temperature_gives_generates_greedy_tokens(tiny_lm: LoadedModel) -> None:
    runs = sample_conditions(tiny_lm, [SampledCondition("cold", PROMPTS, [1, 2, 3])], 12, 1e-6, batch_size=2)
    greedy = generate(tiny_lm, PROMPTS, 12, path="eager")
    assert [g.generated_ids for g in runs["cold"].run.generations] == [g.generated_ids for g in greedy.generations]
    assert runs["cold"].run.paths[0]["path"] == "eager-sampled"


def test_a_row_draws_the_same_tokens_in_any_batch_and_order(tiny_lm: LoadedModel) -> None:
    alone = sample_conditions(tiny_lm, [SampledCondition("a", PROMPTS, [5, 6, 7])], 10, 0.8, batch_size=1)
    mixed = sample_conditions(tiny_lm, [SampledCondition("a", PROMPTS[::-1], [7, 6, 5]),
                                        SampledCondition("b", PROMPTS, [9, 9, 9])], 10, 0.8, batch_size=4)
    assert [g.generated_ids for g in alone["a"].run.generations] == \
        [g.generated_ids for g in mixed["a"].run.generations[::-1]]
    other = sample_conditions(tiny_lm, [SampledCondition("a", PROMPTS, [15, 16, 17])], 10, 0.8)
    drawn = [g.generated_ids for g in alone["a"].run.generations]
    assert [g.generated_ids for g in other["a"].run.generations] != drawn


def test_refeeding_reads_the_last_prompt_token_again_at_position_t(tiny_lm: LoadedModel) -> None:
    prompt = PROMPTS[1]
    runs = sample_conditions(tiny_lm, [SampledCondition("again", [prompt], [0], refeed_last=True)], 1, 1e-6)
    ids = encode(tiny_lm, [prompt]).input_ids  # (1, T)
    doubled = torch.cat([ids, ids[:, -1:]], dim=1)  # the last token once more, at position T
    with torch.no_grad():
        logits = tiny_lm.model(input_ids=doubled).logits[0, -1]
    assert runs["again"].run.generations[0].generated_ids[0] == int(logits.argmax())


@contextmanager
def _zero_late_attention(lm: LoadedModel, batch: PromptBatch, index: torch.Tensor) -> Iterator[CallLog]:
    rows = (index >= 0)[:, None, None]
    with edit_site(lm.model, f"blocks.{lm.dims.n_layers - 1}.attn.out",
                   lambda out, _call: out.masked_fill(rows.to(out.device), 0.0)) as log:
        yield log


def test_a_conditions_edits_touch_its_own_rows_only(tiny_lm: LoadedModel) -> None:
    plain = SampledCondition("plain", PROMPTS, [1, 2, 3])
    edited = SampledCondition("edited", PROMPTS, [1, 2, 3],
                              decode_edit=lambda batch, index: _zero_late_attention(tiny_lm, batch, index),
                              prefill_edit=lambda batch, index: _zero_late_attention(tiny_lm, batch, index))
    both = sample_conditions(tiny_lm, [plain, edited], 8, 0.05)  # cold: the logits, not the noise, decide
    alone = sample_conditions(tiny_lm, [plain], 8, 0.05)
    assert [g.generated_ids for g in both["plain"].run.generations] == \
        [g.generated_ids for g in alone["plain"].run.generations]
    assert [g.generated_ids for g in both["edited"].run.generations] != \
        [g.generated_ids for g in alone["plain"].run.generations]
    record = both["edited"].records[0]
    assert record["prefill"]["by_seq_len"] and record["decode"]["edited"] > 0


@pytest.mark.parametrize(("seeds", "temperature", "message"), [
    ([1], 0.8, "1 seeds for 3 prompts"), ([1, 2, 3], 0.0, "positive temperature")])
def test_bad_input_names_the_value(tiny_models: dict[str, LoadedModel], seeds: list[int], temperature: float,
                                   message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sample_conditions(tiny_models["tiny-mistral"], [SampledCondition("a", PROMPTS, seeds)], 4, temperature)
