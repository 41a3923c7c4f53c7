"""Attention entropy from materialised patterns: the model-free reference of claims-spec B.2.

`harness.engine.attention` computes these values inside the forward pass without keeping patterns; its tests and
tests/test_role.py compare against the functions here. `harness.analysis.rfc` aggregates them into RFC/RSI.

Shapes: attention patterns are `(batch, head, q, k)`; an `attention_mask` is `(batch, T)` with 1 for real
tokens (left or right padding both work: positions are counted within each prompt). Inputs may be numpy
arrays or torch tensors; results are float64 numpy arrays.

Definitions
-----------
- Published (B.2): every key of a query row (future keys included) gets EPS = 1e-8, the row is renormalised
  and H_q = -sum p ln p in nats; the head value is the mean over all real queries, q = 0 included.
- Normalised (the W-B1 length control): for each query at position q >= 2, key 0 (BOS where the model has
  one, else the first content token) is dropped and the attention on keys 1..q is renormalised (no EPS);
  G_q = H'_q / ln(q). The head value is the mean of G_q over q = 2 .. T-1; attention mass on key 0 is
  reported separately by `bos_mass`.

  This deviates on purpose from the issue's wording "H_q / ln(q+1) for q >= 1": once BOS is excluded only q
  keys remain, so their largest entropy is ln(q), and dividing by ln(q+1) would leave ln(q)/ln(q+1) for
  uniform attention, which rises with q: the very length trend the control exists to remove. With ln(q),
  uniform attention gives exactly 1 at every q, and q = 1 (a single key, ln 1 = 0) is left out. This is the
  definition `harness.engine.attention` computes; the claims' control descriptions say so too.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

EPS = 1e-8
FIRST_NORMALISED_QUERY = 2  # G_q needs q >= 2 keys after BOS is dropped
Array = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]


def checked(x: object, name: str, dims: str) -> Array:
    """`x` as a float64 array shaped like `dims` ("(layer, head)"), non-empty and finite, or ValueError."""
    if hasattr(x, "detach"):  # torch tensor: no torch import needed here
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x, dtype=np.float64)
    ndim = len([axis for axis in dims.strip("()").split(",") if axis.strip()])
    if arr.ndim != ndim:
        raise ValueError(f"{name} has shape {arr.shape}; expected {ndim} axes {dims}: reshape it to {dims}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}); pass >= 1 entry along every axis of {dims}")
    if not np.isfinite(arr).all():
        where = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
        raise ValueError(f"{name} has the non-finite value {arr[where]} at index {where}; "
                         "drop that entry or recompute it before calling")
    return arr


def _valid_mask(attention_mask: object | None, batch: int, length: int) -> Mask:
    """(batch, T) boolean mask of real tokens; all True when no mask is given."""
    if attention_mask is None:
        return np.ones((batch, length), dtype=bool)
    mask = checked(attention_mask, "attention_mask", "(batch, T)")
    if mask.shape != (batch, length):
        raise ValueError(f"attention_mask has shape {mask.shape} but the pattern needs ({batch}, {length}); "
                         "pass the mask the model was run with")
    if not np.isin(mask, (0.0, 1.0)).all() or not mask.any(axis=1).all():
        raise ValueError("attention_mask must hold 0/1 with at least one 1 per prompt; "
                         "pass the tokenizer's attention_mask")
    return mask.astype(bool)


def _positions(valid: Mask) -> npt.NDArray[np.int64]:
    """(batch, T) position of each token within its prompt (0 = first real token, usually BOS)."""
    return np.cumsum(valid, axis=1, dtype=np.int64) - 1


def _pattern(pattern: object) -> Array:
    arr = checked(pattern, "pattern", "(batch, head, q, k)")
    if arr.shape[-1] != arr.shape[-2] or arr.min() < 0:
        raise ValueError(f"pattern must be a square (q == k) non-negative prefill pattern; got shape "
                         f"{arr.shape}, min {arr.min()}: pass post-softmax probabilities of a full forward")
    return arr


def _renormalised_entropy(weights: Array) -> Array:
    """H = -sum p ln p (nats) of each last-axis row of `weights` after renormalising; 0 for an empty row."""
    total = weights.sum(-1, keepdims=True)
    p = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
    logp = np.log(p, out=np.zeros_like(p), where=p > 0)
    return -(p * logp).sum(-1)


def entropy_from_pattern(pattern: object, attention_mask: object | None = None) -> Array:
    """Per-query entropy exactly as published: (batch, head, q, k) -> (batch, head, q), nats.

    Every key of the row (future keys included) gets EPS = 1e-8, the row is renormalised, H_q = -sum p ln p.
    Padding keys are left out (so a padded prompt gives its unpadded value); padding query rows are NaN.
    """
    A = _pattern(pattern)
    valid = _valid_mask(attention_mask, A.shape[0], A.shape[-1])
    weights = np.where(valid[:, None, None, :], A + EPS, 0.0)  # (batch, head, q, k)
    return np.where(valid[:, None, :], _renormalised_entropy(weights), np.nan)


def normalised_entropy_from_pattern(pattern: object, attention_mask: object | None = None) -> Array:
    """Length-normalised control (W-B1): G_q = H'_q / ln(q) for q >= 2, BOS excluded; (batch, head, q).

    Key 0 of each prompt (BOS, or the first content token for models without BOS) and future keys are
    dropped and the attention on keys 1..q renormalised, without EPS; H'_q is its entropy in nats and ln(q)
    its largest possible value, so G_q lies in [0, 1] and is 1 for uniform attention at every q. q is the
    position within the prompt; rows with q < 2 and padding rows are NaN. Report the dropped mass with
    `bos_mass`. (Why ln(q) and not the issue's ln(q+1): see the module docstring.)
    """
    A = _pattern(pattern)
    valid = _valid_mask(attention_mask, A.shape[0], A.shape[-1])
    pos = _positions(valid)  # (batch, T)
    keys = valid & (pos >= 1)
    causal = pos[:, None, :] <= pos[:, :, None]  # (batch, q, k)
    keep = (keys[:, None, :] & causal)[:, None]  # (batch, 1, q, k)
    entropy = _renormalised_entropy(np.where(keep, A, 0.0))  # (batch, head, q)
    rows = (valid & (pos >= FIRST_NORMALISED_QUERY))[:, None, :]
    denom = np.log(np.maximum(pos, FIRST_NORMALISED_QUERY))[:, None, :]
    return np.where(rows, entropy / denom, np.nan)


def bos_mass(pattern: object, attention_mask: object | None = None) -> Array:
    """Attention mass on key 0 of each prompt (its first real token): (batch, head, q); pad rows NaN."""
    A = _pattern(pattern)
    valid = _valid_mask(attention_mask, A.shape[0], A.shape[-1])
    first = valid.argmax(axis=1)[:, None, None, None]  # (batch, 1, 1, 1)
    mass = np.take_along_axis(A, first, axis=-1)[..., 0]  # (batch, head, q)
    return np.where(valid[:, None, :], mass, np.nan)


def mean_over_queries(per_query: object, attention_mask: object | None = None,
                      first_position: int = 0) -> Array:
    """Mean of a (batch, head, q) value over each prompt's real queries at positions >= first_position.

    first_position=0 is the published head value (q = 0 included); the normalised variant uses 2.
    """
    values = np.asarray(per_query, dtype=np.float64)
    if values.ndim != 3 or values.size == 0:
        raise ValueError(f"per_query has shape {values.shape}; expected a non-empty (batch, head, q) array")
    valid = _valid_mask(attention_mask, values.shape[0], values.shape[-1])
    selected = (valid & (_positions(valid) >= first_position))[:, None, :]  # (batch, 1, q)
    counts = selected.sum(-1)
    if (counts == 0).any():
        raise ValueError(f"prompt {int(np.argmin(counts[:, 0]))} has no query at position >= "
                         f"{first_position}; "
                         "drop prompts that are too short or lower first_position")
    picked = np.where(selected, values, 0.0)
    if not np.isfinite(picked).all():
        raise ValueError("per_query is NaN/inf at a real query position; pass the matching attention_mask")
    return picked.sum(-1) / counts


def published_head_entropy(pattern: object, attention_mask: object | None = None) -> Array:
    """The published head value: mean of `entropy_from_pattern` over all real queries, q = 0 included."""
    return mean_over_queries(entropy_from_pattern(pattern, attention_mask), attention_mask, 0)


def normalised_head_entropy(pattern: object, attention_mask: object | None = None) -> Array:
    """The W-B1 control head value: mean of `normalised_entropy_from_pattern` over real queries q >= 2."""
    return mean_over_queries(normalised_entropy_from_pattern(pattern, attention_mask), attention_mask,
                             FIRST_NORMALISED_QUERY)


def mean_abs_pattern(pattern: object) -> Array:
    """Mean |A| over (q, k) per (batch, head): the source's viz-2 head score; exactly 1/T for causal rows."""
    return np.abs(_pattern(pattern)).mean(axis=(-2, -1))


