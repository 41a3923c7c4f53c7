"""The R_V null after a residual patch (claims-spec A.5) and why it is structural (W-A5).

As published: the recursive source's layer-27 decoder output is written over each baseline's last
min(16, T, T_src) positions (right-aligned), and R_V(5, 27) is measured in that same forward pass. Layer 27's
v_proj reads layer 27's input, so both measured sites are upstream of the patch and R_V is bit-identical with
and without it; the result records that, and a v_proj after the patch shows that the patch did act. The null
patches a norm-matched random vector instead (the same "no change"); the robustness check patches one layer up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from harness import api

SCHEMA = api.Schema(
    protocol={"early_layer": int, "late_layer": int, "patch_layer": int, "downstream_layer": int, "site": str,
              "window": int, "source_category": str, "target_category": str, "chat_template": bool, "bos": bool,
              "dtype": Literal["float16", "bfloat16", "float32"]},
    controls={"random_vector_source": {}, "upstream_patch": {"patch_layer": int}},
)


class Context(api.ModelContext):
    def v_site(self, published: int) -> str:
        return f"blocks.{self.layer(published)}.{self.claim.protocol['site']}"

    def measured_sites(self) -> list[str]:
        """R_V's two v_proj sites, and the v_proj after the patched layer where the model has one."""
        p = self.claim.protocol
        down = self.layer(p["downstream_layer"])
        after = [self.v_site(p["downstream_layer"])] if down > self.layer(p["patch_layer"]) else []
        return [self.v_site(p["early_layer"]), self.v_site(p["late_layer"]), *after]


def source_rows(ctx: Context, layer: int) -> torch.Tensor:
    """The published source prompt's decoder-layer output at model layer `layer`, every row: (T_src, d_model)."""
    source = ctx.bank.category(ctx.claim.protocol["source_category"])[:1]
    at = f"blocks.{layer}.resid_post"
    return ctx.cached(f"source_{layer}", lambda: api.full_rows(ctx.lm, source, [at], ctx.batch_size,
                                                               ctx.fmt)[at][0])


def norm_matched_random(rows: torch.Tensor, seed: int) -> torch.Tensor:
    """Gaussian rows with each row's norm equal to the source row's (seeded, CPU generator)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn(rows.shape, generator=gen, dtype=torch.float32)
    scaled = noise / noise.norm(dim=-1, keepdim=True) * rows.float().norm(dim=-1, keepdim=True).cpu()
    return scaled.to(rows.device, rows.dtype)


@dataclass(frozen=True)
class Comparison:
    """R_V per target with and without one patch, and what the patch's hook did."""

    targets: list[str]
    unpatched: api.PRRun
    patched: api.PRRun
    patch_layer: int  # the model layer whose output was overwritten


def compare(ctx: Context, rows: torch.Tensor, layer: int) -> Comparison:
    p = ctx.claim.protocol
    targets = ctx.bank.category(p["target_category"])
    sites, window = ctx.measured_sites(), api.Window(p["window"])
    unpatched = ctx.cached("unpatched", lambda: api.measure_pr(ctx.lm, targets, sites, window,
                                                               batch_size=ctx.batch_size, fmt=ctx.fmt))
    edit = api.rows_patched(ctx.lm, f"blocks.{layer}.resid_post", [rows] * len(targets), p["window"])
    patched = api.measure_pr(ctx.lm, targets, sites, window, edit, ctx.batch_size, ctx.fmt)
    return Comparison(targets, unpatched, patched, layer)


def observe(ctx: Context, c: Comparison) -> dict[str, Any]:
    sites = ctx.measured_sites()
    before, after = c.unpatched.ratio([sites[1]], sites[0]), c.patched.ratio([sites[1]], sites[0])
    delta = after - before
    observed: dict[str, Any] = {
        "max_abs_delta_rv": float(delta.abs().max()), "mean_delta_rv": float(delta.mean()),
        "r_v_bit_identical": float(torch.equal(before, after)), "hook_edits": c.patched.edited,
        "r_v_unpatched_mean": float(before.mean()), "patched_layer": c.patch_layer,
        "late_v_layer": int(sites[1].split(".")[1])}
    if len(sites) > 2:  # the patch acted: the v_proj after it sees a different residual
        observed["downstream_max_abs_delta_pr"] = float((c.patched.pr[sites[2]] - c.unpatched.pr[sites[2]])
                                                        .abs().max())
    return observed


def _rows(c: Comparison, sites: list[str]) -> list[dict[str, Any]]:
    before, after = c.unpatched.ratio([sites[1]], sites[0]), c.patched.ratio([sites[1]], sites[0])
    return [{"prompt": t, "tokens": n, "r_v": float(b), "r_v_patched": float(a)}
            for t, n, b, a in zip(c.targets, c.unpatched.lengths, before, after, strict=True)]


def _result(ctx: Context, protocol: str, kind: str, criterion: dict[str, Any], c: Comparison,
            notes: tuple[str, ...] = ()) -> dict[str, Any]:
    published = {k: v for k, v in ctx.claim.published.items() if isinstance(v, int | float)}
    where = (f"patched: decoder layer {c.patch_layer}'s output; measured: v_proj at "
             f"{', '.join(ctx.measured_sites())} (layer {ctx.layer(ctx.claim.protocol['late_layer'])}'s v_proj "
             f"reads layer {ctx.layer(ctx.claim.protocol['late_layer'])}'s input)")
    return api.protocol_result(ctx.claim, protocol, kind, criterion, observe(ctx, c), lm=ctx.lm, banks=(ctx.bank,),
                               n={"targets": len(c.targets), "sources": 1}, published=published,
                               notes=(where, *notes), data={"targets": _rows(c, ctx.measured_sites())})


def as_published(ctx: Context) -> dict[str, Any]:
    layer = ctx.layer(ctx.claim.protocol["patch_layer"])
    c = compare(ctx, source_rows(ctx, layer), layer)
    return _result(ctx, "as_published", "as_published", ctx.claim.criteria["as_published"], c)


def random_vector_source(ctx: Context) -> dict[str, Any]:
    layer = ctx.layer(ctx.claim.protocol["patch_layer"])
    c = compare(ctx, norm_matched_random(source_rows(ctx, layer), ctx.seed), layer)
    criterion = ctx.claim.control("random_vector_source")["criterion"]
    return _result(ctx, "null:random_vector_source", "null", criterion, c)


def upstream_patch(ctx: Context) -> dict[str, Any]:
    """The recursive residual one layer up: where layer 27's v_proj reads it (kept above the late v_proj's
    layer on a shallow model, where the published layers map onto one)."""
    table = ctx.claim.control("upstream_patch")
    late = ctx.layer(ctx.claim.protocol["late_layer"])
    layer = min(ctx.layer(table["patch_layer"]), late - 1)
    c = compare(ctx, source_rows(ctx, layer), layer)
    note = f"published layer {table['patch_layer']} maps to {ctx.layer(table['patch_layer'])}; patched {layer}"
    return _result(ctx, "robustness:upstream_patch", "robustness", table["criterion"], c, (note,))


Protocol = Callable[[Context], dict[str, Any]]
PROTOCOLS: dict[str, Protocol] = {
    "as_published": as_published,
    "null:random_vector_source": random_vector_source,
    "robustness:upstream_patch": upstream_patch,
}
