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


def covariance_pr(x: torch.Tensor, rows: Sequence[int] | None = None, floor: float = NAN_FLOOR) -> torch.Tensor:
    """PR of the mean-centred covariance of each window, as the source's layer-by-layer diagnostic computed it
    (claims-spec A.6): C = Xc^T Xc / W (d x d), its eigenvalues clamped below at `floor`, PR = (sum)^2 / sum of
    squares over all d of them.

    The nonzero eigenvalues of C are those of the small W x W matrix Xc Xc^T / W, and the other d - W are zero
    (clamped to `floor`), so this is exact without forming C. x: (batch, W, d) windows zero-padded beyond
    `rows[i]`. Returns (batch,) float32; NaN where a window holds a non-finite value. A window of one row has
    only clamped zeros: PR = d, as the source's formula gives.
    """
    if x.ndim != 3:
        raise ValueError(f"covariance_pr expects (batch, window, width); got shape {tuple(x.shape)}")
    batch, size, width = x.shape
    n = torch.tensor(rows if rows is not None else [size] * batch, device=x.device, dtype=torch.float64)
    bad = ~torch.isfinite(x).all(dim=(1, 2))
    centred = _centre(torch.where(bad[:, None, None], torch.zeros_like(x), x.float()), rows).double()
    gram = centred @ centred.transpose(-1, -2) / n.clamp(min=1)[:, None, None]  # (batch, W, W)
    eig = torch.linalg.eigvalsh(gram).flip(-1)[:, : min(size, width)].clamp(min=floor)  # (batch, <= W) descending
    zeros = max(width - size, 0)  # eigenvalues of C that the small matrix does not hold: exactly 0, clamped
    total = eig.sum(-1) + zeros * floor
    squares = eig.pow(2).sum(-1) + zeros * floor**2
    pr = (total.pow(2) / squares).float()
    return torch.where(bad, torch.full_like(pr, float("nan")), pr)
