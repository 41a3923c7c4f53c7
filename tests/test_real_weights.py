"""Known answers on real weights: SmolLM2-135M-Instruct (the `smollm2` fixture, loaded once per session).

Random tiny models cannot give these: real text, and real attention whose patterns are far from uniform.
- the greedy completion of "The capital of France is" is " Paris." (and the tokenizer adds no BOS);
- every captured site equals a computation without hooks: the model's own `output_hidden_states`, the layer's
  modules applied to them directly, and the eager attention patterns (`output_attentions`) times the values;
- the in-forward attention entropy equals the entropy of the eager patterns, every layer and head;
- a batch equals one prompt at a time, for captured windows and for greedy generation;
- generation with a residual patch that is installed but disabled equals transformers' own `generate`, and
  the same patch enabled changes it.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from harness.engine.attention import attention_entropy
from harness.engine.generation import encode_left, generate
from harness.engine.hooks import capture, hook_count
from harness.engine.interventions import PatchSource, patch_residual
from harness.engine.models import LoadedModel
from harness.engine.runner import Window, encode, forward_capture

# Test data: the known greedy answer of SmolLM2-135M-Instruct (checked with transformers' own generate).
KNOWN = {"prompt": "The capital of France is", "completion": " Paris."}
PROMPTS = (
    "The capital of France is",
    "Water boils at a temperature of",
    "Write one short sentence about the sea and the wind.",
    "Watch yourself forming this very answer. What stands out?",
)
RTOL = 1e-4  # float32 throughout; sdpa and eager attention differ by rounding only


def close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """Equal within RTOL of the tensor's largest magnitude (real models have a few very large activations)."""
    scale = max(1.0, float(want.abs().max()))
    torch.testing.assert_close(got, want, rtol=0, atol=RTOL * scale, msg=lambda m: f"{what}: {m}")


@pytest.fixture(scope="module")
def reference(smollm2: LoadedModel) -> dict[str, Any]:
    """One forward without hooks, eager attention: hidden states and attention patterns of every layer."""
    enc = encode(smollm2, PROMPTS)
    smollm2.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = smollm2.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                                output_hidden_states=True, output_attentions=True)
    finally:
        smollm2.model.set_attn_implementation("sdpa")
    return {"enc": enc, "hidden": out.hidden_states, "attentions": out.attentions}


def test_greedy_completion_is_the_known_answer(smollm2: LoadedModel) -> None:
    ids = smollm2.tokenizer(KNOWN["prompt"])["input_ids"]
    assert smollm2.spec.bos is False and ids[0] != smollm2.tokenizer.bos_token_id  # SmolLM2 adds no BOS
    run = generate(smollm2, [KNOWN["prompt"]], max_new_tokens=2)
    assert run.completions == [KNOWN["completion"]]
    assert smollm2.describe()["format"] == "gguf" and smollm2.weights == "pretrained"


def test_residual_sites_equal_the_hidden_states(smollm2: LoadedModel, reference: dict[str, Any]) -> None:
    n, enc, hidden = smollm2.dims.n_layers, reference["enc"], reference["hidden"]
    sites = [f"blocks.{layer}.{point}" for layer in range(n) for point in ("resid_pre", "resid_post")]
    with torch.no_grad(), capture(smollm2.model, sites) as acts:
        smollm2.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
    valid = enc.attention_mask.bool()[..., None]  # (batch, seq, 1): padded rows are not compared
    for layer in range(n):
        close(acts[f"blocks.{layer}.resid_pre"][0] * valid, hidden[layer] * valid, f"resid_pre {layer}")
        post = acts[f"blocks.{layer}.resid_post"][0]
        if layer == n - 1:  # the model returns its last hidden state after the final norm
            post = smollm2.model.model.norm(post)
        close(post * valid, hidden[layer + 1] * valid, f"resid_post {layer}")


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_attention_sites_equal_patterns_times_values(smollm2: LoadedModel, reference: dict[str, Any],
                                                     depth: float) -> None:
    dims, enc = smollm2.dims, reference["enc"]
    layer = round(depth * (dims.n_layers - 1))
    block = smollm2.model.model.layers[layer]
    names = {p: f"blocks.{layer}.{p}" for p in ("attn.v", "attn.z", "attn.out", "mlp.out")}
    with torch.no_grad(), capture(smollm2.model, list(names.values())) as acts:
        smollm2.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
    with torch.no_grad():
        x = reference["hidden"][layer]  # (batch, seq, d_model)
        v = block.self_attn.v_proj(block.input_layernorm(x))  # (batch, seq, kv * head_dim)
        values = v.view(*v.shape[:2], dims.n_kv_heads, dims.head_dim).transpose(1, 2)  # (batch, kv, seq, hd)
        values = values.repeat_interleave(dims.n_heads // dims.n_kv_heads, dim=1)  # head h reads kv h // groups
        z = (reference["attentions"][layer] @ values).transpose(1, 2).flatten(2)  # (batch, seq, heads * hd)
        out = block.self_attn.o_proj(z)
        mlp = block.mlp(block.post_attention_layernorm(x + out))
    for row, length in enumerate(enc.lengths):
        for name, want in (("attn.v", v), ("attn.z", z), ("attn.out", out), ("mlp.out", mlp)):
            close(acts[names[name]][0][row, :length], want[row, :length], f"{name} at layer {layer}, prompt {row}")


def test_entropy_engine_equals_the_eager_patterns(smollm2: LoadedModel, reference: dict[str, Any]) -> None:
    enc = reference["enc"]
    with torch.no_grad(), attention_entropy(smollm2.model) as engine:
        smollm2.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
        result = engine.pop().cpu()
    assert result.published is not None and result.published.shape == (smollm2.dims.n_layers, len(PROMPTS),
                                                                        smollm2.dims.n_heads)
    for layer, pattern in enumerate(reference["attentions"]):
        for row, n in enumerate(enc.lengths):
            p = pattern[row, :, :n, :n].double() + 1e-8  # (head, q, k), smoothed as published
            p = p / p.sum(-1, keepdim=True)
            want = (-(p * p.log()).sum(-1)).mean(-1)  # (head,)
            torch.testing.assert_close(result.published[layer, row].double(), want, rtol=0, atol=1e-4)
            torch.testing.assert_close(result.bos_mass[layer, row].double(), pattern[row, :, :n, 0].double().mean(-1),
                                       rtol=0, atol=1e-5)
    assert float(result.published.std()) > 0.1, "real heads should differ; the comparison would not discriminate"


def test_a_batch_equals_one_prompt_at_a_time(smollm2: LoadedModel) -> None:
    sites = ["blocks.9.attn.v", f"blocks.{smollm2.dims.n_layers - 1}.resid_post"]
    together = forward_capture(smollm2, PROMPTS, sites, Window(8), batch_size=len(PROMPTS))
    alone = forward_capture(smollm2, PROMPTS, sites, Window(8), batch_size=1)
    assert len(set(together.lengths)) >= 3  # prompts of different lengths: the batch is padded
    for site in sites:
        close(together.windows[site], alone.windows[site], site)
    batched = generate(smollm2, PROMPTS, max_new_tokens=6, batch_size=len(PROMPTS))
    single = generate(smollm2, PROMPTS, max_new_tokens=6, batch_size=1)
    assert [g.generated_ids for g in batched.generations] == [g.generated_ids for g in single.generations]


def plain_generate(lm: LoadedModel, prompt: str, max_new_tokens: int) -> tuple[int, ...]:
    """transformers' own greedy generate on one prompt, no harness code in the way."""
    ids = lm.tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = lm.model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=lm.tokenizer.pad_token_id)
    return tuple(out[0, ids["input_ids"].shape[1]:].tolist())


def test_a_disabled_patch_equals_plain_generate_and_an_enabled_one_does_not(smollm2: LoadedModel) -> None:
    layer, new = smollm2.dims.n_layers // 2, 8
    source_ids = encode(smollm2, [PROMPTS[3]])
    with torch.no_grad(), capture(smollm2.model, [f"blocks.{layer}.resid_post"]) as acts:
        smollm2.model(input_ids=source_ids.input_ids)
    source = PatchSource.from_rows(acts[f"blocks.{layer}.resid_post"][0][0], window=16)

    def patched(enabled: bool) -> Any:
        def intervention(batch: Any) -> Any:
            rows = torch.full((len(batch.prompts),), enabled)
            return patch_residual(smollm2.model, layer, source, prompt_mask=batch.attention_mask, rows=rows)
        return intervention

    off = generate(smollm2, PROMPTS[:3], new, intervention=patched(False))
    on = generate(smollm2, PROMPTS[:3], new, intervention=patched(True))
    assert [g.generated_ids for g in off.generations] == [plain_generate(smollm2, p, new) for p in PROMPTS[:3]]
    assert off.calls[0]["by_seq_len"].get("1", 0) >= new - 1, "the disabled patch's hook did not fire when decoding"
    assert [g.generated_ids for g in on.generations] != [g.generated_ids for g in off.generations]
    assert encode_left(smollm2, PROMPTS[:3]).input_ids.shape[0] == 3 and hook_count(smollm2.model) == 0
