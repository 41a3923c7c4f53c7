"""Every supported architecture (harness/engine/architectures.py) on a tiny random model built from its config.

Each is saved with save_pretrained and loaded back as a user's model (`--model NAME=DIR`), so the loader's
validation runs on it. Odd head counts everywhere; GQA (9 query heads over 3 KV heads) where the family has
it; head_dim differs from d_model / n_heads where the family allows it. q and k are sharpened so that
attention is far from uniform. Beyond the validation, each test checks a site against an independent
computation: z from the eager patterns times v, q and k from the patterns where no rotary embedding is in
the way, v patches against zeroed weights, and phi3's fused projection against Llama with the same weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from claims.rv_contraction.protocols import PROTOCOLS
from harness.claimkit.prompts import bank_for
from harness.claimkit.registry import get_claim
from harness.claimkit.results import check
from harness.claimkit.rv import Context
from harness.engine.architectures import SUPPORTED, UnsupportedArchitecture, layout_for
from harness.engine.hooks import capture, edit_site, hook_count
from harness.engine.models import LoadedModel, load
from harness.engine.runner import encode
from harness.engine.sites import POINTS, site_width
from harness.engine.specs import user_spec
from harness.engine.tokenizer import build_offline_tokenizer, corpus_lines

pytestmark = pytest.mark.tiny

GQA = {"hidden_size": 63, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 8, "intermediate_size": 64}
MHA = {"hidden_size": 56, "num_attention_heads": 7, "intermediate_size": 64}
CONFIGS: dict[str, dict[str, Any]] = {
    "llama": GQA, "mistral": GQA, "qwen2": GQA, "qwen3": GQA, "gemma": GQA, "olmo2": GQA, "phi3": GQA,
    # grouped expert matmuls need 16-byte row strides: d_model 64 (not 63) in float32
    "mixtral": {**GQA, "hidden_size": 64, "num_local_experts": 3, "num_experts_per_tok": 2},
    "gemma2": {**GQA, "query_pre_attn_scalar": 8, "sliding_window": 4, "attn_logit_softcapping": 2.0},
    "granite": {**GQA, "attention_multiplier": 0.3, "residual_multiplier": 0.5, "embedding_multiplier": 2.0,
                "logits_scaling": 2.0},
    "gpt2": {"n_embd": 56, "n_head": 7, "n_positions": 128},
    "gpt_neox": {**MHA, "rotary_pct": 0.0},  # no rotary: q and k are checked against the patterns directly
}
NO_ROTARY = ("gpt2", "gpt_neox")
PROMPTS = ("The capital of France is", "Water boils at a temperature of one hundred degrees", "Hi")
SHARPEN = 8.0
ATOL = 2e-5


def build(model_type: str, directory: Path, extra: dict[str, Any] | None = None) -> Path:
    """A tiny seeded model of `model_type` with the offline tokenizer, saved to `directory`."""
    tokenizer = build_offline_tokenizer(corpus_lines())
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), num_hidden_layers=5,
                                  max_position_embeddings=128, **special, **CONFIGS[model_type], **(extra or {}))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(key in name for key in ("q_proj", "k_proj", "qkv_proj", "c_attn", "query_key_value")):
                param.mul_(SHARPEN)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module", params=SUPPORTED)
def arch(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    directory = build(request.param, tmp_path_factory.mktemp(request.param))
    return load(user_spec(f"tiny-{request.param}", str(directory)))


def eager_patterns(lm: LoadedModel, enc: Any) -> tuple[torch.Tensor, ...]:
    saved = lm.model.config._attn_implementation
    lm.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return tuple(lm.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                                  output_attentions=True).attentions)
    finally:
        lm.model.set_attn_implementation(saved)


def test_every_supported_architecture_has_a_tiny_config() -> None:
    assert set(CONFIGS) == set(SUPPORTED)


def test_loads_validated_with_its_family_and_format(arch: LoadedModel) -> None:
    info = arch.describe()
    assert info["family"] == arch.model.config.model_type and info["format"] == "safetensors"
    assert info["registered_in"] == "--model" and info["resolved_revision"].startswith("sha256:")
    checks = info["validation"]
    assert checks["sites_checked"] >= len(POINTS) * 2
    assert checks["entropy_max_abs_error"] < 1e-4 and checks["batched_max_rel_error"] < 1e-4
    assert checks["hidden_states_max_rel_error"] < 1e-4
    routed = arch.model.config.model_type == "mixtral"  # the entropy check stops before the first router
    assert checks["entropy_layers_checked"] == (1 if routed else arch.dims.n_layers)


def test_dims_come_from_the_config(arch: LoadedModel) -> None:
    dims, model_type = arch.dims, arch.model.config.model_type
    assert dims.n_layers == 5 and dims.n_heads % 2 == 1
    if model_type in NO_ROTARY:
        assert dims.n_kv_heads == dims.n_heads and dims.head_dim * dims.n_heads == dims.d_model
    else:
        width = CONFIGS[model_type]["hidden_size"]
        assert (dims.n_heads, dims.n_kv_heads, dims.head_dim, dims.d_model) == (9, 3, 8, width)


def test_every_site_has_the_width_of_the_config(arch: LoadedModel) -> None:
    enc = encode(arch, PROMPTS)
    sites = [f"blocks.{layer}.{point}" for layer in range(arch.dims.n_layers) for point in POINTS]
    with torch.no_grad(), capture(arch.model, sites, model_name=arch.id) as acts:
        arch.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
    for name in sites:
        (tensor,) = acts[name]
        assert tensor.shape == (*enc.input_ids.shape, site_width(name.split(".", 2)[2], arch.dims)), name


def test_z_is_the_eager_patterns_times_v(arch: LoadedModel) -> None:
    dims, enc, layer = arch.dims, encode(arch, PROMPTS), 2
    names = [f"blocks.{layer}.attn.v", f"blocks.{layer}.attn.z"]
    with torch.no_grad(), capture(arch.model, names) as acts:
        arch.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
    v, z = acts[names[0]][0], acts[names[1]][0]
    values = v.view(*v.shape[:2], dims.n_kv_heads, dims.head_dim).transpose(1, 2)  # (batch, kv, seq, hd)
    values = values.repeat_interleave(dims.n_heads // dims.n_kv_heads, dim=1)  # head h reads kv head h // g
    want = (eager_patterns(arch, enc)[layer] @ values).transpose(1, 2).flatten(2)  # (batch, seq, heads * hd)
    for row, length in enumerate(enc.lengths):
        torch.testing.assert_close(z[row, :length], want[row, :length], atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("model_type", NO_ROTARY)
def test_q_and_k_reproduce_the_patterns_without_rotary(model_type: str, tmp_path: Path) -> None:
    lm = load(user_spec(model_type, str(build(model_type, tmp_path))))
    dims, enc, layer = lm.dims, encode(lm, PROMPTS), 3
    names = [f"blocks.{layer}.attn.q", f"blocks.{layer}.attn.k"]
    with torch.no_grad(), capture(lm.model, names) as acts:
        lm.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
    q, k = (acts[n][0].view(*acts[n][0].shape[:2], dims.n_heads, dims.head_dim).transpose(1, 2) for n in names)
    scores = q @ k.transpose(-1, -2) * dims.head_dim ** -0.5  # (batch, head, q, k)
    length = scores.shape[-1]
    scores = scores.masked_fill(torch.ones(length, length, dtype=torch.bool).triu(1), float("-inf"))
    patterns = eager_patterns(lm, enc)[layer]
    for row, n in enumerate(enc.lengths):
        want = torch.softmax(scores[row, :, :n, :n], dim=-1)
        torch.testing.assert_close(patterns[row, :, :n, :n], want, atol=1e-5, rtol=1e-4)


def zero_v_weights(lm: LoadedModel, layer: int) -> None:
    """Zero the weights (and bias) that produce v at `layer`, written out per layout, independently of sites."""
    dims, model_type = lm.dims, lm.model.config.model_type
    block = lm.model.get_submodule(layout_for(model_type).layers)[layer]
    q, kv = dims.n_heads * dims.head_dim, dims.n_kv_heads * dims.head_dim
    with torch.no_grad():
        if model_type == "phi3":  # Linear (out, in): rows q | k | v
            block.self_attn.qkv_proj.weight[q + kv :] = 0
        elif model_type == "gpt2":  # Conv1D (in, out): columns q | k | v
            block.attn.c_attn.weight[:, q + kv :] = 0
            block.attn.c_attn.bias[q + kv :] = 0
        elif model_type == "gpt_neox":  # Linear rows per head: q, k, v of head 0, then head 1, ...
            rows = torch.arange(dims.n_heads * 3 * dims.head_dim).view(dims.n_heads, 3, dims.head_dim)[:, 2]
            block.attention.query_key_value.weight[rows.flatten()] = 0
            block.attention.query_key_value.bias[rows.flatten()] = 0
        else:
            block.self_attn.v_proj.weight.zero_()
            if block.self_attn.v_proj.bias is not None:
                block.self_attn.v_proj.bias.zero_()


def test_a_v_patch_equals_zeroed_v_weights(arch: LoadedModel, tmp_path: Path) -> None:
    enc, layer = encode(arch, PROMPTS), 1
    with torch.no_grad():
        clean = arch.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
        with edit_site(arch.model, f"blocks.{layer}.attn.v", lambda v, _call: torch.zeros_like(v)) as log:
            patched = arch.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
    assert log.edited == 1 and hook_count(arch.model) == 0
    twin = load(user_spec("twin", str(arch.source)), validate=False)
    zero_v_weights(twin, layer)
    with torch.no_grad():
        want = twin.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
    assert not torch.allclose(patched, clean, atol=1e-3)
    torch.testing.assert_close(patched, want, atol=ATOL, rtol=1e-4)


def test_phi3_fused_sites_equal_llama_with_the_same_weights(tmp_path: Path) -> None:
    same = {"rms_norm_eps": 1e-6, "rope_theta": 10000.0}  # the families' defaults differ
    llama = load(user_spec("llama", str(build("llama", tmp_path / "llama", same))))
    phi3 = load(user_spec("phi3", str(build("phi3", tmp_path / "phi3", same))), validate=False)
    with torch.no_grad():
        for mine, theirs in zip(llama.model.model.layers, phi3.model.model.layers, strict=True):
            a, m = mine.self_attn, mine.mlp
            theirs.self_attn.qkv_proj.weight.copy_(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]))
            theirs.self_attn.o_proj.weight.copy_(a.o_proj.weight)
            theirs.mlp.gate_up_proj.weight.copy_(torch.cat([m.gate_proj.weight, m.up_proj.weight]))
            theirs.mlp.down_proj.weight.copy_(m.down_proj.weight)
            theirs.input_layernorm.weight.copy_(mine.input_layernorm.weight)
            theirs.post_attention_layernorm.weight.copy_(mine.post_attention_layernorm.weight)
        for name in ("embed_tokens", "norm"):
            getattr(phi3.model.model, name).weight.copy_(getattr(llama.model.model, name).weight)
        phi3.model.lm_head.weight.copy_(llama.model.lm_head.weight)
    enc = encode(llama, PROMPTS)
    sites = [f"blocks.3.attn.{p}" for p in ("q", "k", "v", "z")]
    runs = []
    for lm in (llama, phi3):
        with torch.no_grad(), capture(lm.model, sites) as acts:
            logits = lm.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
        runs.append((acts, logits))
    torch.testing.assert_close(runs[1][1], runs[0][1], atol=ATOL, rtol=1e-4)  # the same function
    for site in sites:
        torch.testing.assert_close(runs[1][0][site][0], runs[0][0][site][0], atol=ATOL, rtol=1e-4, msg=site)


def test_gemma2_logits_are_really_capped(tmp_path: Path) -> None:
    """The entropy check on gemma2 discriminates only if the soft cap changes the scores."""
    lm = load(user_spec("gemma2", str(build("gemma2", tmp_path))), validate=False)
    enc = encode(lm, PROMPTS[:1])
    with torch.no_grad(), capture(lm.model, ["blocks.0.attn.q", "blocks.0.attn.k"]) as acts:
        lm.model(input_ids=enc.input_ids)
    d = lm.dims
    q = acts["blocks.0.attn.q"][0].view(1, -1, d.n_heads, d.head_dim)
    k = acts["blocks.0.attn.k"][0].view(1, -1, d.n_kv_heads, d.head_dim)
    scaled = torch.einsum("bqhd,bkhd->bhqk", q[:, :, :: d.n_heads // d.n_kv_heads], k) * 8 ** -0.5
    assert float(scaled.abs().max()) > 2 * lm.model.config.attn_logit_softcapping
    assert lm.model.config._attn_implementation == "eager"


def test_claims_run_on_every_architecture_with_the_layer_map_recorded(arch: LoadedModel) -> None:
    claim = get_claim("rv_contraction")
    result = PROTOCOLS["as_published"](Context(claim, arch, bank_for(claim), batch_size=8))
    check(result)
    assert result["scope"] == "generalisation" and result["model_info"]["family"] == arch.model.config.model_type
    assert result["layer_map"]["map"][claim.protocol["late_layer"]] == 4 and len(result["layer_map"]["map"]) == 32
    assert result["n"]["recursive"] > 0


def test_an_unsupported_architecture_fails_naming_it_and_the_supported_list(tmp_path: Path) -> None:
    directory = build("llama", tmp_path)
    config = (directory / "config.json").read_text(encoding="utf-8")
    (directory / "config.json").write_text(config.replace('"model_type": "llama"', '"model_type": "bloom"'),
                                           encoding="utf-8")
    with pytest.raises(UnsupportedArchitecture, match=r"model 'odd' \(.*\) has model_type 'bloom', which "
                       r"claim-harness does not support; supported model_types: llama, mistral, .*gpt_neox"):
        load(user_spec("odd", str(directory)))


def test_a_mixture_of_experts_model_is_checked_batched_before_its_first_router(arch: LoadedModel) -> None:
    """In half precision a batch's rounding can tip a router's near-tie, so on Mixtral the batched check reads
    layer 0's attention and says so; every other family keeps the mid-layer v and last residual."""
    checks = arch.describe()["validation"]
    if arch.model.config.model_type == "mixtral":
        assert checks["batched_sites"] == ["blocks.0.attn.z", "blocks.0.attn.out"]
    else:
        assert "batched_sites" not in checks
