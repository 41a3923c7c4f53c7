"""R_V under interventions: the participation ratio of named sites over each prompt's last-W window, in forward
passes where another site is patched or ablated (claims-spec A.5, A.7.1, A.7.7).

Shared by the claims that patch or ablate while measuring R_V (residual_patch_rv_null, rv_l27_patch_transfer_n45,
l27_critical_heads). An `Edit` wraps one intervention for `forward_capture` and keeps the CallLog of every batch
it ran in, so a result can show that the hook fired. Where a measured site sits at or downstream of the edited
one the measurement can see the edit; a site upstream of it cannot (W-A5), and a site that IS the edited
tensor measures the edit itself (W-A4, W-A7).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

import torch

from harness.analysis.metrics import participation_ratio
from harness.engine.formatting import RAW, PromptFormat
from harness.engine.hooks import CallLog
from harness.engine.interventions import scale_heads
from harness.engine.models import LoadedModel
from harness.engine.rowedits import patch_rows, zero_columns
from harness.engine.runner import Encoded, Window, forward_capture, token_counts
from harness.engine.sites import map_layer


def site(layer: int, point: str) -> str:
    return f"blocks.{layer}.{point}"


def mapped(layer: int, published_n_layers: int, lm: LoadedModel) -> int:
    """A published layer index on this model, by relative depth."""
    return map_layer(layer, published_n_layers, lm.dims.n_layers)


@dataclass
class Edit:
    """One intervention as `forward_capture`'s `intervene`: `make(batch, first)` enters the hooks for one batch.
    The CallLog of every batch is kept: `edited` counts the calls that changed the tensor."""

    name: str
    make: Callable[[Encoded, int], AbstractContextManager[CallLog]]
    logs: list[CallLog] = field(default_factory=list)

    @contextmanager
    def __call__(self, enc: Encoded, first: int) -> Iterator[CallLog]:
        with self.make(enc, first) as log:
            yield log
        self.logs.append(log)

    @property
    def edited(self) -> int:
        return sum(log.edited for log in self.logs)


def rows_patched(lm: LoadedModel, at: str, sources: Sequence[torch.Tensor], window: int) -> Edit:
    """Prompt i's last min(window, T_i, T_src_i) positions at `at` receive the last rows of `sources[i]`."""
    def make(enc: Encoded, first: int) -> AbstractContextManager[CallLog]:
        chunk = sources[first : first + len(enc.lengths)]
        return patch_rows(lm.model, at, chunk, enc.lengths, window, lm.id)
    return Edit(f"rows patched at {at}", make)


def columns_zeroed(lm: LoadedModel, at: str, columns: slice) -> Edit:
    return Edit(f"columns {columns.start}-{columns.stop - 1} of {at} zeroed",
                lambda _enc, _first: zero_columns(lm.model, at, columns, lm.id))


def heads_zeroed(lm: LoadedModel, layer: int, heads: Sequence[int]) -> Edit:
    """Query heads ablated through their o_proj input slices (GQA-aware, `interventions.scale_heads`)."""
    return Edit(f"query heads {list(heads)} of layer {layer} zeroed",
                lambda _enc, _first: scale_heads(lm.model, layer, heads, 0.0))


@dataclass(frozen=True)
class PRRun:
    """PR per prompt at each site (over the last-W window), with each prompt's token count."""

    pr: dict[str, torch.Tensor]  # site -> (n_prompts,) float32 on the CPU
    lengths: list[int]
    edited: int = 0  # calls the run's edit changed (0 without one)

    def ratio(self, late: Sequence[str], early: str) -> torch.Tensor:
        """mean PR over `late` sites / PR at `early`, per prompt (R_V; several late sites: their mean)."""
        return torch.stack([self.pr[s] for s in late]).mean(0) / self.pr[early]


def measure_pr(lm: LoadedModel, prompts: Sequence[str], sites: Sequence[str], window: Window,
               edit: Edit | None = None, batch_size: int = 32, fmt: PromptFormat = RAW) -> PRRun:
    """Uncentred PR (as the source computed it) of each site's window, with `edit` active."""
    cap = forward_capture(lm, prompts, sites, window, batch_size, fmt, intervene=edit)
    pr = {s: participation_ratio(cap.windows[s], cap.rows).cpu() for s in sites}
    return PRRun(pr, cap.lengths, edit.edited if edit is not None else 0)


def full_rows(lm: LoadedModel, prompts: Sequence[str], sites: Sequence[str], batch_size: int = 32,
              fmt: PromptFormat = RAW) -> dict[str, list[torch.Tensor]]:
    """Every row of each site for each prompt: site -> one (T_i, width) tensor per prompt."""
    lengths = token_counts(lm, prompts, fmt)
    cap = forward_capture(lm, prompts, sites, Window(max(lengths)), batch_size, fmt)
    return {s: [cap.windows[s][i, :n] for i, n in enumerate(cap.rows)] for s in sites}
