"""Activation-geometry metrics: participation ratio (as the source computed it, and centred) and R_V."""

from __future__ import annotations

from collections.abc import Sequence

import torch

NAN_FLOOR = 1e-10  # the source returns NaN when the summed eigenvalues fall below this


def participation_ratio(x: torch.Tensor, rows: Sequence[int] | None = None, centred: bool = False) -> torch.Tensor:
    """PR = (sum lambda)^2 / sum lambda^2 with lambda = s^2, the squared singular values of each window
    (computed from the window's Gram matrix, which has the same nonzero eigenvalues).

    x: (batch, W, d) windows, rows beyond `rows[i]` are zero padding (zero rows leave the singular values of
    the uncentred matrix unchanged). Returns (batch,) float32; NaN where sum lambda < 1e-10, as published,
    and where the window holds a non-finite value.
    Uncentred PR lies in [1, min(W, d)].
    """
    if x.ndim != 3:
        raise ValueError(f"participation_ratio expects (batch, window, width); got shape {tuple(x.shape)}")
    x = x.float()
    bad = ~torch.isfinite(x).all(dim=(1, 2))  # a window with inf/NaN (e.g. fp16 overflow) gets PR = NaN
    x = torch.where(bad[:, None, None], torch.zeros_like(x), x)
    if centred:
        x = _centre(x, rows)
    # lambda = s^2 are the eigenvalues of the small Gram matrix G = X X^T (W x W), so sum lambda = trace(G)
    # and sum lambda^2 = ||G||_F^2: exact, batched, and no SVD (float64 keeps the fourth powers accurate).
    x64 = x.double()
    gram = x64 @ x64.transpose(-1, -2)  # (batch, W, W)
    total = gram.diagonal(dim1=-2, dim2=-1).sum(-1)
    pr = (total.pow(2) / gram.pow(2).sum((-2, -1))).float()
    total = total.float()
    return torch.where((total < NAN_FLOOR) | bad, torch.full_like(pr, float("nan")), pr)


def _centre(x: torch.Tensor, rows: Sequence[int] | None) -> torch.Tensor:
    n = torch.tensor(rows if rows is not None else [x.shape[1]] * x.shape[0], device=x.device)
    mask = (torch.arange(x.shape[1], device=x.device)[None, :] < n[:, None]).unsqueeze(-1)  # (batch, W, 1)
    mean = (x * mask).sum(1, keepdim=True) / n.clamp(min=1)[:, None, None]
    return (x - mean) * mask


def r_v(pr_late: torch.Tensor, pr_early: torch.Tensor) -> torch.Tensor:
    """R_V = PR_late / PR_early, per prompt."""
    if pr_late.shape != pr_early.shape:
        raise ValueError(f"PR shapes differ: late {tuple(pr_late.shape)} vs early {tuple(pr_early.shape)}")
    return pr_late / pr_early
