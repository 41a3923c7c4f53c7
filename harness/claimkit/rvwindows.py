"""R_V at explicit layers over several windows from one forward pass, and token-matched non-recursive prompts.

The cross-architecture, window-sweep and confound claims (claims-spec A.7.2, A.7.3, A.7.5) measure R_V =
PR(late v) / PR(early v) with layers the claim names per model (early at a fixed index, late counted from the
end: num_layers - 4 in the source's cross-model design) and at several windows. `capture_rows` keeps the last
`size` rows of both sites per prompt once; `WindowRows.at` then takes any window W <= size under one of three
rules (the W-A1 artefact lives in the difference between them):

- `min`: the source's code: the last min(W, T) rows, so a prompt shorter than W is read whole, BOS included,
  and its PR is capped by T instead of W;
- `full`: only prompts of at least W tokens, read over their last W rows (shorter ones excluded and counted);
- `no_bos`: only prompts of at least W + 1 tokens, so the window never holds position 0 (the attention sink).

`matched_spans` builds a token-matched partner for every target prompt: a run of whole words from a sentence
start of a non-recursive passage, with exactly the target's token count under this model's tokenizer and format.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from harness.analysis.metrics import participation_ratio, r_v
from harness.claimkit.context import ModelContext
from harness.claimkit.rv import RVRun
from harness.engine.formatting import RAW, PromptFormat
from harness.engine.models import LoadedModel
from harness.engine.runner import Window, forward_capture, token_counts
from harness.engine.sites import SiteError, map_layer

Rule = Literal["min", "full", "no_bos"]
RULES: tuple[Rule, ...] = ("min", "full", "no_bos")


def layers_from_end(lm: LoadedModel, early: int, late_from_end: int) -> tuple[int, int]:
    """(early, n_layers - late_from_end) on this model; fails naming the model when either is out of range."""
    n = lm.dims.n_layers
    late = n - late_from_end
    if not 0 <= early < late < n:
        raise SiteError(f"early layer {early} and late layer n_layers - {late_from_end} = {late} do not fit "
                        f"{lm.id}'s {n} layers (need 0 <= early < late < {n})")
    return early, late


@dataclass(frozen=True)
class WindowRows:
    """The last `size` rows of each prompt at an early and a late site: (n_prompts, size, width), left-aligned,
    `rows[i]` = min(size, T_i) of them real; `tokens[i]` = T_i (BOS included where the model has one)."""

    prompts: list[str]
    early: torch.Tensor
    late: torch.Tensor
    rows: list[int]
    tokens: list[int]
    size: int

    def at(self, window: int, rule: Rule) -> RVRun:
        """R_V per prompt over a window of `window` rows under `rule` (module docstring); prompts the rule
        excludes and prompts whose PR is not finite are counted in `excluded`, by reason."""
        if not 1 <= window <= self.size:
            raise ValueError(f"window {window} outside 1..{self.size}, the rows captured; capture at least "
                             f"{window} rows")
        if rule not in RULES:
            raise ValueError(f"window rule {rule!r}; allowed: {', '.join(RULES)}")
        need = {"min": 1, "full": window, "no_bos": window + 1}[rule]
        keep = [i for i, t in enumerate(self.tokens) if t >= need]
        excluded: Counter[str] = Counter({f"shorter_than_{need}_tokens": len(self.tokens) - len(keep)})
        if not keep:
            return RVRun([], [], [], [], [], excluded)
        taken = [min(window, self.rows[i]) for i in keep]
        early = _last(self.early[keep], [self.rows[i] for i in keep], taken, window)
        late = _last(self.late[keep], [self.rows[i] for i in keep], taken, window)
        pr_e, pr_l = participation_ratio(early, taken).cpu(), participation_ratio(late, taken).cpu()
        ratio = r_v(pr_l, pr_e)
        finite = [j for j in range(len(keep)) if bool(torch.isfinite(ratio[j]))]
        excluded["nan_pr"] = len(keep) - len(finite)
        return RVRun([self.prompts[keep[j]] for j in finite], [float(ratio[j]) for j in finite],
                     [float(pr_e[j]) for j in finite], [float(pr_l[j]) for j in finite],
                     [self.tokens[keep[j]] for j in finite], excluded)


def _last(rows: torch.Tensor, valid: Sequence[int], taken: Sequence[int], window: int) -> torch.Tensor:
    """(n, size, d) left-aligned rows -> (n, window, d): each prompt's last `taken[i]` valid rows, left-aligned,
    zero beyond (zero rows leave the uncentred PR unchanged)."""
    offsets = torch.arange(window)  # (window,)
    start = torch.tensor([v - t for v, t in zip(valid, taken, strict=True)])[:, None]  # (n, 1)
    count = torch.tensor(list(taken))[:, None]
    index = (start + offsets.clamp(max=count - 1)).to(rows.device)  # (n, window)
    mask = (offsets[None] < count).to(rows.device, rows.dtype)[..., None]  # (n, window, 1)
    return rows.gather(1, index[..., None].expand(-1, -1, rows.shape[-1])) * mask


def capture_rows(lm: LoadedModel, prompts: Sequence[str], early: int, late: int, point: str, size: int,
                 batch_size: int = 32, fmt: PromptFormat = RAW) -> WindowRows:
    """One batched forward: the last `size` rows of `blocks.{early}.{point}` and `blocks.{late}.{point}`."""
    sites = [f"blocks.{early}.{point}", f"blocks.{late}.{point}"]
    cap = forward_capture(lm, prompts, sites, Window(size), batch_size, fmt)
    return WindowRows(list(prompts), cap.windows[sites[0]], cap.windows[sites[1]], cap.rows, cap.lengths, size)


@dataclass(frozen=True)
class Matched:
    """Token-matched partners: `partners[i]` has exactly target i's token count (None: no passage has such a
    span); `reused` counts partners that start where an earlier partner starts (same passage and sentence)."""

    targets: list[str]
    partners: list[str | None]
    tokens: list[int]
    reused: int

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return [(t, p) for t, p in zip(self.targets, self.partners, strict=True) if p is not None]

    @property
    def unmatched(self) -> int:
        return sum(p is None for p in self.partners)


def _starts(passage: str) -> list[list[str]]:
    """The words of `passage` from each sentence start on (one list per start)."""
    words = passage.split()
    starts = [0, *(i + 1 for i, w in enumerate(words[:-1]) if w.endswith((".", "?", "!")))]
    return [words[s:] for s in starts]


class _SpanCounter:
    """Token counts of whole-word spans (the first n words from one sentence start), computed on demand."""

    def __init__(self, lm: LoadedModel, groups: list[list[str]], fmt: PromptFormat) -> None:
        self.lm, self.groups, self.fmt = lm, groups, fmt
        self.known: dict[tuple[int, int], int] = {}

    def text(self, group: int, n: int) -> str:
        return " ".join(self.groups[group][:n])

    def count(self, group: int, n: int) -> int:
        if (group, n) not in self.known:
            self.known[(group, n)] = token_counts(self.lm, [self.text(group, n)], self.fmt)[0]
        return self.known[(group, n)]

    def shortest(self, group: int, tokens: int) -> str | None:
        """The shortest span of `group` with exactly `tokens` tokens (counts grow with n: a binary search)."""
        low, high = 1, len(self.groups[group])
        while low < high:
            mid = (low + high) // 2
            low, high = (mid + 1, high) if self.count(group, mid) < tokens else (low, mid)
        return self.text(group, low) if self.count(group, low) == tokens else None


def matched_spans(lm: LoadedModel, targets: Sequence[str], passages: Sequence[str],
                  fmt: PromptFormat = RAW) -> Matched:
    """For each target, a span of a passage (whole words from a sentence start) with exactly the target's
    token count in `fmt`.

    Target i tries the (passage, sentence start) pairs in turn from pair i (mod their number), pairs not used
    yet first, so that partners spread over the passages; a partner never equals its target.
    """
    if not passages:
        raise ValueError("token matching needs at least one passage to cut spans from; give a passages category")
    spans = _SpanCounter(lm, [group for passage in passages for group in _starts(passage)], fmt)
    wanted = token_counts(lm, targets, fmt)
    used: set[int] = set()
    partners: list[str | None] = []
    reused = 0
    for i, count in enumerate(wanted):
        order = sorted(((i + j) % len(spans.groups) for j in range(len(spans.groups))), key=lambda k: k in used)
        found = next(((k, text) for k in order if (text := spans.shortest(k, count)) not in (None, targets[i])),
                     None)
        if found is None:
            partners.append(None)
            continue
        reused += found[0] in used
        used.add(found[0])
        partners.append(found[1])
    return Matched(list(targets), partners, wanted, reused)


@dataclass(frozen=True)
class TableContext(ModelContext):
    """What an R_V table protocol needs: the claim, the model, its bank, and a cache shared by the protocols of
    one test module (one capture per model and prompt set, whatever number of protocols reads it).

    The claim's [protocol] names `early_layer` and either `late_layer_from_end` (late = n_layers minus it; the
    early layer is then an index on every model) or `late_layer` (both published layers mapped by relative
    depth, as `map_layer` does), `site`, and the prompt format (`chat_template`, `bos`).
    """

    @property
    def layers(self) -> tuple[int, int]:
        p = self.claim.protocol
        if "late_layer_from_end" in p:
            return layers_from_end(self.lm, p["early_layer"], p["late_layer_from_end"])
        n, published = self.lm.dims.n_layers, self.claim.published_n_layers
        return map_layer(p["early_layer"], published, n), map_layer(p["late_layer"], published, n)

    def prompts(self, categories: Sequence[str]) -> list[str]:
        return [prompt for name in categories for prompt in self.bank.category(name)]

    def _key(self, *parts: Any) -> tuple[Any, ...]:
        lm = self.lm
        return (lm.id, lm.weights, lm.resolved_revision, str(lm.model.dtype), self.bank.sha256, *parts)

    def rows(self, prompts: Sequence[str], size: int) -> WindowRows:
        """The last `size` rows of the claim's two sites for `prompts` (cached)."""
        key = self._key("rows", tuple(prompts), size)
        if key not in self.cache:
            early, late = self.layers
            self.cache[key] = capture_rows(self.lm, prompts, early, late, self.claim.protocol["site"], size,
                                           self.batch_size, self.fmt)
        found: WindowRows = self.cache[key]
        return found

    def matched(self, targets: Sequence[str], passage_category: str) -> Matched:
        """Token-matched spans of the bank's passages for `targets` (cached)."""
        key = self._key("matched", tuple(targets), passage_category)
        if key not in self.cache:
            self.cache[key] = matched_spans(self.lm, targets, self.bank.category(passage_category), self.fmt)
        found: Matched = self.cache[key]
        return found


def select_prompts(run: RVRun, prompts: Sequence[str]) -> RVRun:
    """The part of `run` holding `prompts` (those present, in the order given); no exclusion counts (they stay
    with `run`, so that a group view never counts a prompt twice)."""
    at = {prompt: i for i, prompt in enumerate(run.prompts)}
    idx = [at[p] for p in prompts if p in at]
    return RVRun([run.prompts[i] for i in idx], [run.r_v[i] for i in idx], [run.pr_early[i] for i in idx],
                 [run.pr_late[i] for i in idx], [run.tokens[i] for i in idx], Counter())


def merge_runs(runs: Sequence[RVRun]) -> RVRun:
    """Runs one after another, exclusion counts summed."""
    excluded: Counter[str] = Counter()
    for run in runs:
        excluded.update(run.excluded)
    return RVRun([p for r in runs for p in r.prompts], [v for r in runs for v in r.r_v],
                 [v for r in runs for v in r.pr_early], [v for r in runs for v in r.pr_late],
                 [t for r in runs for t in r.tokens], excluded)


def exclusions(*runs: RVRun) -> dict[str, int]:
    """Prompts dropped over all runs, by reason (reasons with none dropped left out)."""
    total: Counter[str] = Counter()
    for run in runs:
        total.update(run.excluded)
    return {k: v for k, v in total.items() if v}
