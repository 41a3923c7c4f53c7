"""Single-head ablation ranking at L27 and L25 (claims-spec A.7.7): the source's mis-indexed GQA slice (W-A7) as
published, the GQA-aware ablation measured downstream, and a column-slice null.

As published, "head h" is the h-th of n_heads near-equal column slices of the v_proj output (n_kv_heads *
head_dim columns), zeroed at every position; R_V = PR(v, L27) / PR(v, L5) is read from the same forward, so at
L27 PR is measured on the matrix whose columns were zeroed. The control ablates query heads through their o_proj
input slices and measures R_V at the v_proj of the layers after the ablated one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from harness import api

SCHEMA = api.Schema(
    protocol={"early_layer": int, "late_layer": int, "layers": list[int], "downstream_layers": list[int],
              "site": str, "window": int, "champion_category": str, "n_champions": int, "n_random_slices": int,
              "sizes": dict[str, dict[str, int]], "chat_template": bool, "bos": bool,
              "dtype": Literal["float16", "bfloat16", "float32"], "control_alpha": float},
    controls={"gqa_aware": {}, "random_column_slice": {}},
)


def published_slice(dims: api.Dims, head: int) -> slice:
    """The source's "head": the head-th of n_heads column slices of the v_proj output, whose width is
    n_kv_heads * head_dim (under GQA, head_dim / (n_heads / n_kv_heads) columns each where that divides)."""
    width = dims.n_kv_heads * dims.head_dim
    return slice(head * width // dims.n_heads, (head + 1) * width // dims.n_heads)


def kv_head_of(dims: api.Dims, columns: slice) -> tuple[int, float, list[int]]:
    """The KV head a column slice falls in, the fraction of that KV head it covers, and the query heads that
    share that KV head."""
    kv = columns.start // dims.head_dim
    share = dims.n_heads // dims.n_kv_heads
    return kv, (columns.stop - columns.start) / dims.head_dim, list(range(kv * share, (kv + 1) * share))


class Context(api.ModelContext):
    def site(self, layer: int) -> str:
        return f"blocks.{layer}.{self.claim.protocol['site']}"

    @property
    def champions(self) -> list[str]:
        p = self.params
        return self.bank.category(p["champion_category"])[: p["n_champions"]]

    @property
    def top_head(self) -> int:
        """The published top head, modulo this model's query-head count."""
        return int(self.claim.published["top_heads"][0]) % self.lm.dims.n_heads

    def downstream(self) -> list[str]:
        late = self.layer(self.claim.protocol["late_layer"])
        layers = sorted({self.layer(x) for x in self.claim.protocol["downstream_layers"]} - set(range(late + 1)))
        return [self.site(layer) for layer in layers]

    def r_v(self, edit: api.Edit | None = None, late: list[str] | None = None) -> np.ndarray:
        """R_V per champion prompt with `edit` active: mean PR over `late` (default: v_proj L27) / PR(v, L5)."""
        p = self.claim.protocol
        early = self.site(self.layer(p["early_layer"]))
        late = late or [self.site(self.layer(p["late_layer"]))]
        run = api.measure_pr(self.lm, self.champions, [early, *late], api.Window(p["window"]), edit,
                             self.batch_size, self.fmt)
        return run.ratio(late, early).numpy()


@dataclass(frozen=True)
class Ablations:
    """Mean R_V change over the champion prompts per ablated slice, by published layer."""

    clean: float
    delta: dict[int, list[float]]  # published layer -> one delta per slice
    slices: list[slice]


def slice_deltas(ctx: Context, slices: list[slice], name: str) -> Ablations:
    """Zero each slice of v_proj at each claim layer in turn; R_V (L27 / L5) against the intact run."""
    def build() -> Ablations:
        clean = float(ctx.cached("clean", ctx.r_v).mean())
        delta = {layer: [float(ctx.r_v(api.columns_zeroed(ctx.lm, ctx.site(ctx.layer(layer)), s)).mean()) - clean
                         for s in slices] for layer in ctx.claim.protocol["layers"]}
        return Ablations(clean, delta, slices)
    return ctx.cached(name, build)


def _published_slices(ctx: Context) -> list[slice]:
    return [published_slice(ctx.lm.dims, h) for h in range(ctx.lm.dims.n_heads)]


def _criterion_figures(ab: Ablations) -> dict[str, float]:
    """max delta per ablated layer, named by the published layer (max_delta_l27, max_delta_l25); NaN where any
    R_V was not finite (np.max propagates it, so the criterion reads inconclusive)."""
    return {**{f"max_delta_l{layer}": float(np.max(values)) for layer, values in ab.delta.items()},
            "champion_r_v": ab.clean}


def as_published(ctx: Context) -> dict[str, Any]:
    ab = slice_deltas(ctx, _published_slices(ctx), "published")
    late = ctx.claim.protocol["late_layer"]
    ranking = sorted(range(len(ab.slices)), key=lambda h: -ab.delta[late][h])
    columns = published_slice(ctx.lm.dims, ctx.top_head)
    kv, fraction, sharing = kv_head_of(ctx.lm.dims, columns)
    observed = {**_criterion_figures(ab), "published_top_head_rank": ranking.index(ctx.top_head) + 1,
                "top_head_l27": ranking[0], "top_head_delta": ab.delta[late][ctx.top_head],
                "slice_width": columns.stop - columns.start, "top_slice_first_column": columns.start,
                "top_slice_kv_head": kv, "top_slice_fraction_of_kv_head": fraction}
    notes = (f"published head {ctx.claim.published['top_heads'][0]} is head {ctx.top_head} here (modulo "
             f"{ctx.lm.dims.n_heads}); its slice, columns {columns.start}-{columns.stop - 1} of "
             f"{ctx.lm.dims.n_kv_heads * ctx.lm.dims.head_dim}, is {fraction:.3g} of KV head {kv}, which query "
             f"heads {sharing[0]}-{sharing[-1]} share (W-A7)",)
    data = {"heads": [{"head": h, "columns": f"{s.start}-{s.stop - 1}", **{f"delta_L{layer}": ab.delta[layer][h]
                                                                           for layer in ab.delta}}
                      for h, s in enumerate(ab.slices)]}
    return _result(ctx, "as_published", "as_published", ctx.claim.criteria["as_published"], observed, notes, data)


def _result(ctx: Context, protocol: str, kind: str, criterion: dict[str, Any], observed: dict[str, Any],
            notes: tuple[str, ...] = (), data: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    pub = ctx.claim.published
    published = {k: v for k, v in pub.items() if isinstance(v, int | float)}
    published.update(top_head_delta=pub["top_heads_delta"][0], max_delta_l27=pub["top_heads_delta"][0],
                     max_delta_l25=pub["l25_largest_delta"])  # beside the observed figures of the same name
    layers = {layer: ctx.layer(layer) for layer in ctx.claim.protocol["layers"]}
    return api.protocol_result(ctx.claim, protocol, kind, criterion, observed, lm=ctx.lm, banks=(ctx.bank,),
                               n={"prompts": len(ctx.champions)}, published=published, data=data or {},
                               notes=(*notes, f"ablated layers (published -> model): {layers}", *ctx.size_notes()),
                               **extra)


def gqa_aware(ctx: Context) -> dict[str, Any]:
    """Query heads of L27 zeroed through the o_proj input, R_V read at the v_proj of the layers after it."""
    name, criterion = "control:gqa_aware", ctx.claim.control("gqa_aware")["criterion"]
    down = ctx.downstream()
    if not down:
        observed = {m: float("nan") for m in criterion}
        return _result(ctx, name, "control", criterion, observed,
                       ("inconclusive: no layer after the ablated one on this model",))
    layer = ctx.layer(ctx.claim.protocol["late_layer"])
    clean = ctx.cached("clean_downstream", lambda: ctx.r_v(late=down))
    ablated = [ctx.r_v(api.heads_zeroed(ctx.lm, layer, [h]), down) for h in range(ctx.lm.dims.n_heads)]
    means = [float((a - clean).mean()) for a in ablated]
    ranking = sorted(range(len(means)), key=lambda h: -means[h])
    stated = api.paired_effect(api.EffectSpec.of(ctx.claim, "gqa_aware"), ablated[ctx.top_head].tolist(),
                               clean.tolist())
    observed = {**stated.observed, "top_head_rank": ranking.index(ctx.top_head) + 1, "top_head_gqa": ranking[0],
                "max_delta": float(np.max(means)), "mean_abs_delta": float(np.mean(np.abs(means))),
                "r_v_downstream_clean": float(clean.mean())}
    data = {"query_heads": [{"head": h, "kv_head": h // (ctx.lm.dims.n_heads // ctx.lm.dims.n_kv_heads),
                             "delta": means[h]} for h in range(len(means))]}
    notes = (f"query head {ctx.top_head} of layer {layer} zeroed through its o_proj input slice; R_V read at "
             f"{', '.join(down)} over v_proj at layer {ctx.layer(ctx.claim.protocol['early_layer'])}",)
    return _result(ctx, name, "control", criterion, observed, notes, data, effect=stated.effect,
                   n_needed=stated.n_needed)


def random_slices(width: int, size: int, n: int, seed: int) -> list[slice]:
    """n column slices of `size` at uniformly drawn offsets in [0, width - size] (seeded)."""
    starts = np.random.default_rng(seed).integers(0, width - size + 1, size=n)
    return [slice(int(a), int(a) + size) for a in starts]


def random_column_slice(ctx: Context) -> dict[str, Any]:
    """The published criterion on column slices of a "head"'s width at random offsets: no head at all."""
    dims = ctx.lm.dims
    width = dims.n_kv_heads * dims.head_dim
    size = max(width // dims.n_heads, 1)
    ab = slice_deltas(ctx, random_slices(width, size, ctx.params["n_random_slices"], ctx.seed), "random")
    published = slice_deltas(ctx, _published_slices(ctx), "published")
    late = ctx.claim.protocol["late_layer"]
    top = published.delta[late][ctx.top_head]
    observed = {**_criterion_figures(ab), "mean_abs_delta_l27": float(np.mean(np.abs(ab.delta[late]))),
                "published_top_head_delta": top,
                "fraction_random_at_least_top_head": float(np.mean([d >= top for d in ab.delta[late]]))}
    data = {"slices": [{"columns": f"{s.start}-{s.stop - 1}", **{f"delta_L{layer}": ab.delta[layer][i]
                                                                 for layer in ab.delta}}
                       for i, s in enumerate(ab.slices)]}
    criterion = ctx.claim.control("random_column_slice")["criterion"]
    return _result(ctx, "null:random_column_slice", "null", criterion, observed,
                   (f"{len(ab.slices)} slices of {size} columns of {width} (seed {ctx.seed})",), data)


def rederive(claim: api.Claim) -> dict[str, Any]:
    """The published figures against each other: deltas, the L25 bound and the 86.5% transfer."""
    pub = claim.published
    deltas = [r - pub["champion_r_v"] for r in pub["top_heads_r_v"]]
    transfer = ((pub["transfer_base_r_v"] - pub["transfer_patched_r_v"])
                / (pub["transfer_base_r_v"] - pub["champion_r_v"]))
    observed = {"delta_max_abs_error": max(abs(a - b) for a, b in zip(deltas, pub["top_heads_delta"], strict=True)),
                "l25_under_bound": float(pub["l25_largest_delta"] < pub["l25_bound"]),
                "transfer": transfer, "transfer_abs_error": abs(transfer - pub["transfer"]),
                **{f"delta_head_{h}": d for h, d in zip(pub["top_heads"], deltas, strict=True)}}
    return api.protocol_result(claim, "rederive", "rederive", claim.criteria["rederive"], observed,
                               published={k: v for k, v in pub.items() if isinstance(v, int | float)},
                               n={"heads": len(pub["top_heads"])})


Protocol = Callable[[Context], dict[str, Any]]
PROTOCOLS: dict[str, Protocol] = {
    "as_published": as_published,
    "control:gqa_aware": gqa_aware,
    "null:random_column_slice": random_column_slice,
}
