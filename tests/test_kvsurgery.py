"""harness/engine/kvsurgery.py: other prompts' keys and values written into a prefilled cache.

Replacing a batch's cache with its own prompts' changes nothing; after a transplant the last
min(T_target, T_source) positions hold exactly the source's keys and values and nothing else moved, with the
RoPE offset and whole-prompt replacement reported; a full transplant between prompts of equal length continues
exactly as the source prompt followed by the target's last token would.
"""

from __future__ import annotations

import pytest
import torch

from harness.engine.generation import encode_left
from harness.engine.kvsurgery import KVRows, layer_kv, output_cache, replace_last
from harness.engine.models import LoadedModel
from harness.engine.runner import encode

TARGETS = ("Hi", "The capital of France is")
SOURCES = ("Water boils at a temperature of one hundred degrees at sea level", "Rain")


def prefill(lm: LoadedModel, prompts: tuple[str, ...]) -> tuple[object, torch.Tensor]:
    batch = encode_left(lm, list(prompts))
    mask = batch.attention_mask
    with torch.no_grad():
        out = lm.model(input_ids=batch.input_ids, attention_mask=mask, use_cache=True,
                       position_ids=(mask.long().cumsum(-1) - 1).clamp(min=0))
    return output_cache(out), mask


def test_replacing_a_cache_with_its_own_prompts_changes_nothing(tiny_lm: LoadedModel) -> None:
    cache, mask = prefill(tiny_lm, TARGETS)
    before = [(k.clone(), v.clone()) for k, v in layer_kv(cache)]
    done = replace_last(cache, mask, KVRows.capture(tiny_lm, TARGETS), torch.tensor([0, 1]))
    real = mask.bool()[:, None, :, None]
    for (k0, v0), (k1, v1) in zip(before, layer_kv(cache), strict=True):
        assert torch.allclose(k0 * real, k1 * real, atol=1e-5) and torch.allclose(v0 * real, v1 * real, atol=1e-5)
    assert done["rope_offset"] == [0, 0] and done["whole_prompt_replaced"] == [True, True]


def test_a_transplant_writes_the_sources_last_positions_and_nothing_else(tiny_lm: LoadedModel) -> None:
    cache, mask = prefill(tiny_lm, TARGETS)
    before = [k.clone() for k, _ in layer_kv(cache)]
    source = KVRows.capture(tiny_lm, SOURCES)
    done = replace_last(cache, mask, source, torch.tensor([0, -1]))
    t_target, t_source = int(mask[0].sum()), int(source.lengths[0])
    m = min(t_target, t_source)
    for layer, (keys, _) in enumerate(layer_kv(cache)):
        assert torch.equal(keys[0, :, -m:], source.keys[layer][0, :, -m:])  # row 0: its source's last m
        assert torch.equal(keys[0, :, :-m], before[layer][0, :, :-m])  # the rest of row 0 untouched
        assert torch.equal(keys[1], before[layer][1])  # row 1 has no source (-1): left alone
    assert done["positions_written"] == [m, 0] and done["rope_offset"] == [t_target - t_source, 0]
    assert done["whole_prompt_replaced"] == [t_target <= t_source, False]


def test_a_full_transplant_between_equal_lengths_continues_as_the_source_would(tiny_lm: LoadedModel) -> None:
    """With T_target = T_source every position is the source's and no RoPE offset remains: feeding the target's
    last token after the edited cache equals a plain forward of source + that token."""
    target = "The old bridge was rebuilt"
    source = _same_length(tiny_lm, target)
    cache, mask = prefill(tiny_lm, (target,))
    replace_last(cache, mask, KVRows.capture(tiny_lm, (source,)), torch.tensor([0]))
    last = encode(tiny_lm, [target]).input_ids[:, -1:]
    length = int(mask.sum())
    with torch.no_grad():
        edited = tiny_lm.model(input_ids=last, attention_mask=torch.ones(1, length + 1, dtype=torch.long),
                               position_ids=torch.tensor([[length]]), use_cache=True,
                               **{_cache_keyword(tiny_lm): cache}).logits[0, -1]
        plain = tiny_lm.model(input_ids=torch.cat([encode(tiny_lm, [source]).input_ids, last], 1)).logits[0, -1]
    assert torch.allclose(edited, plain, atol=1e-4)


def _same_length(lm: LoadedModel, target: str) -> str:
    """A different prompt of exactly the target's token count: one word of it swapped."""
    words = target.split()
    candidates = [" ".join([*words[:i], new, *words[i + 1:]]) for i in range(len(words))
                  for new in ("new", "tower", "painted", "river", "house", "is", "a", "stone")]
    counts = encode(lm, [target, *candidates]).lengths
    found = [c for c, n in zip(candidates, counts[1:], strict=True) if n == counts[0] and c != target]
    assert found, f"no one-word swap of {target!r} keeps its {counts[0]} tokens"
    return found[0]


def _cache_keyword(lm: LoadedModel) -> str:
    from harness.engine.sampling import cache_argument

    return cache_argument(lm.model)


def test_a_source_from_another_model_depth_is_refused(tiny_models: dict[str, LoadedModel]) -> None:
    cache, mask = prefill(tiny_models["tiny-mistral"], TARGETS)
    other = KVRows.capture(tiny_models["tiny-llama"], SOURCES)
    with pytest.raises(ValueError, match="the cache has 16 layers, the source 12"):
        replace_last(cache, mask, other, torch.tensor([0, 1]))
