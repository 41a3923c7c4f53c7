"""Where each supported architecture keeps the modules that sites name: one layout per `config.model_type`.

Light on purpose (no torch): the plugin checks a model's architecture at start-up, before any model code is
imported. Paths are attribute paths from the causal LM (`layers`) or from one decoder layer (the rest).

Most decoder-only models that transformers ships share the Llama module layout (`model.layers[i].self_attn.
{q,k,v,o}_proj`, `.mlp`). Three keep q, k and v in one fused projection, and a site then reads a slice of its
output: phi3 and GPT-2 concatenate the three (`blocked`: q over all query heads, then k, then v); GPT-NeoX
interleaves them per head (`per_head`: for each head its q, k and v side by side).

What each site holds where a family differs from Llama:
- qwen3, olmo2: q and k are normalised after their projection; attn.q and attn.k are the projections' outputs,
  before that norm (and before the rotary embedding, as in every family).
- gemma2, olmo2: the attention output is normalised again before the residual add; attn.out is the
  attention module's output, before that norm. granite scales it by `residual_multiplier`, also after attn.out.
- gpt_neox (parallel residual): attention and MLP both read the layer input; attn.out and mlp.out are still
  each module's output before the add.
- mixtral: the Llama layout with a sparse mixture-of-experts block as `mlp` (transformers 5; 4.x named it
  `block_sparse_moe`, where mlp.out does not resolve); mlp.out is the block's output, routing included.
- gemma2 caps attention logits (`attn_logit_softcapping`), which sdpa cannot do: it runs with eager attention,
  and the entropy engine wraps eager attention for it.
"""

from __future__ import annotations

from dataclasses import dataclass

FUSED_LAYOUTS = ("blocked", "per_head")


class UnsupportedArchitecture(ValueError):
    """A model whose `config.model_type` has no layout here; the message names it and the supported list."""


@dataclass(frozen=True)
class Layout:
    """Module paths of one architecture; `qkv` names either three projections or one fused projection."""

    layers: str  # the decoder layer list, from the causal LM
    attention: str  # the attention module, from a decoder layer (attn.out is its output)
    qkv: tuple[str, str, str] | str  # q, k and v projections, or one fused projection
    output: str  # the attention output projection (attn.z is its input)
    mlp: str  # mlp.out is its output
    fused: str | None = None  # "blocked" or "per_head" when `qkv` is one projection
    attn_implementation: str = "sdpa"  # what the loader asks for

    def __post_init__(self) -> None:
        if isinstance(self.qkv, str) != (self.fused in FUSED_LAYOUTS):
            raise ValueError(f"layout {self}: a fused qkv projection needs fused in {FUSED_LAYOUTS}, three "
                             "separate projections need fused=None")


_LLAMA = Layout("model.layers", "self_attn", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                "self_attn.o_proj", "mlp")

LAYOUTS: dict[str, Layout] = {
    **{name: _LLAMA for name in ("llama", "mistral", "qwen2", "qwen3", "gemma", "olmo2", "granite", "mixtral")},
    "gemma2": Layout(_LLAMA.layers, _LLAMA.attention, _LLAMA.qkv, _LLAMA.output, _LLAMA.mlp,
                     attn_implementation="eager"),
    "phi3": Layout("model.layers", "self_attn", "self_attn.qkv_proj", "self_attn.o_proj", "mlp", "blocked"),
    "gpt2": Layout("transformer.h", "attn", "attn.c_attn", "attn.c_proj", "mlp", "blocked"),
    "gpt_neox": Layout("gpt_neox.layers", "attention", "attention.query_key_value", "attention.dense", "mlp",
                       "per_head"),
}
SUPPORTED = tuple(LAYOUTS)


def layout_for(model_type: str | None, where: str = "the model") -> Layout:
    """The layout of `model_type`; an unsupported one fails naming it and every supported model_type."""
    if model_type not in LAYOUTS:
        raise UnsupportedArchitecture(
            f"{where} has model_type {model_type!r}, which claim-harness does not support; supported "
            f"model_types: {', '.join(SUPPORTED)} (decoder-only models with one of these module layouts)")
    return LAYOUTS[model_type]
