"""Edits of one site's tensor in a plain forward pass over a right-padded batch: source rows written over each
prompt's last positions, and column slices zeroed.

`patch_rows` is the v_proj patch of the L27 "causal transfer" and the decoder-output patch of the R_V null
(claims-spec A.5, A.7.1): prompt i's last W_i = min(window, T_i, T_src_i) positions receive the last W_i rows
of its source, where T_i is the prompt's true length (right padding keeps real tokens at the front). It is
meant for one forward pass per entry of the block (a `forward_capture` batch, entered through its
`intervene`); a call whose batch shape differs from the lengths it was given fails loudly.

`zero_columns` zeroes a set of columns of a site's output (a mis-indexed "head" of v_proj, W-A7, or a random
column slice) at every call and every position.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from harness.engine.hooks import Call, CallLog, edit_site


def row_plan(rows: Sequence[torch.Tensor], lengths: Sequence[int], width: int,
             window: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(values, where, written): a (batch, width, d) tensor holding each source's last W_i rows at its prompt's
    last W_i positions, the (batch, width, 1) mask of those positions, and W_i per prompt."""
    if len(rows) != len(lengths):
        raise ValueError(f"{len(rows)} patch sources for {len(lengths)} prompts; give one source per prompt")
    if window < 1:
        raise ValueError(f"window={window}; give a positive number of positions to patch")
    d = rows[0].shape[-1]
    values = rows[0].new_zeros(len(rows), width, d)
    where = torch.zeros(len(rows), width, 1, dtype=torch.bool, device=rows[0].device)
    written = []
    for i, (src, length) in enumerate(zip(rows, lengths, strict=True)):
        if src.ndim != 2 or src.shape[-1] != d:
            raise ValueError(f"patch source {i} has shape {tuple(src.shape)}; expected (T_src, {d})")
        w = min(window, length, src.shape[0])
        values[i, length - w : length] = src[src.shape[0] - w :]
        where[i, length - w : length] = True
        written.append(w)
    return values, where, written


@contextmanager
def patch_rows(model: nn.Module, site: str, rows: Sequence[torch.Tensor], lengths: Sequence[int], window: int,
               model_name: str = "model") -> Iterator[CallLog]:
    """Write source rows over each prompt's last min(window, T_i, T_src_i) positions of `site` (right padding).

    `rows[i]` is prompt i's source, (T_src_i, width of the site); `lengths[i]` its true token count.
    """
    plan: dict[str, torch.Tensor] = {}

    def patch(out: torch.Tensor, call: Call) -> torch.Tensor:  # out: (batch, seq, width)
        if out.shape[0] != len(lengths) or out.shape[1] < max(lengths):
            raise ValueError(f"patch_rows at {site}: a call of shape {tuple(out.shape[:2])} for {len(lengths)} "
                             f"prompts of up to {max(lengths)} tokens; enter it once per forward of that batch")
        if "values" not in plan:
            values, where, _ = row_plan([r.to(out.device) for r in rows], lengths, out.shape[1], window)
            plan.update(values=values.to(out.dtype), where=where)
        return torch.where(plan["where"], plan["values"], out)

    with edit_site(model, site, patch, model_name=model_name) as log:
        yield log


@contextmanager
def zero_columns(model: nn.Module, site: str, columns: Sequence[int] | slice,
                 model_name: str = "model") -> Iterator[CallLog]:
    """Zero the given columns of the site's tensor (last dimension) at every call and position."""
    keep: dict[str, torch.Tensor] = {}

    def zero(out: torch.Tensor, _call: Call) -> torch.Tensor:  # out: (batch, seq, width)
        if "mask" not in keep:
            mask = torch.ones(out.shape[-1], dtype=out.dtype, device=out.device)
            mask[columns] = 0
            if bool((mask != 0).all()):
                raise ValueError(f"zero_columns at {site}: {columns!r} selects no column of width {out.shape[-1]}")
            keep["mask"] = mask
        return out * keep["mask"]

    with edit_site(model, site, zero, model_name=model_name) as log:
        yield log
