"""Batched greedy generation with hooks active, as the sources generated (claims-spec A.0).

Prompts are padded on the LEFT so that every row's next token sits in the last column. transformers derives
`position_ids` from the attention mask (cumsum - 1) when none are given, so a left-padded row sees exactly the
positions it sees alone: batched output equals one-prompt-at-a-time (tests/test_generation.py proves it).

An intervention is a factory `intervention(batch) -> context manager`: it is entered around the `generate`
call of each batch and sees the batch's layout (left padding, which prompts it holds), which is what a
position-exact patch needs. Whatever the manager yields (a `CallLog`) is kept per batch.

`generate_conditions` runs several conditions (unedited, ablated, patched at several layers) as rows of one
batched generation: rows do not see each other, so this equals running each condition alone, in fewer
sequential `generate` calls (on a GPU a decode step costs about the same for 3 rows as for 300).

Paths (`path=`, or the environment variable HARNESS_GENERATION_PATH; default `auto`): `eager` is transformers'
`generate`; `graph` is `harness.engine.decode`'s static-cache loop with every decode step replayed from a CUDA
graph, interventions included; `static` is that loop run step by step (what the CPU tests compare with
`eager`). `auto` takes `graph` wherever it can run (a CUDA device, one device per model, sdpa or eager
attention, graph-safe hooks only) and `eager` elsewhere. Each batch records the path that ran and why it is not
`graph` (`GenerationRun.paths`). On the decode loop's paths a batch is padded to its bucket size with copies of
its last prompt: `batch.input_ids` may have more rows than `batch.prompts`, and an intervention sizes its
per-row tensors from `batch.input_ids`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import torch

from harness.engine import decode
from harness.engine.formatting import RAW, PromptFormat
from harness.engine.hooks import CallLog
from harness.engine.models import LoadedModel
from harness.engine.validation import routed

PATHS = ("auto", "eager", "static", "graph")
PATH_VARIABLE = "HARNESS_GENERATION_PATH"


@dataclass(frozen=True)
class PromptBatch:
    """One left-padded batch of prompts and where it sits in the full prompt list. `input_ids` may hold more
    rows than `prompts` (copies of the last prompt, up to a bucket size); their outputs are dropped."""

    prompts: tuple[str, ...]
    input_ids: torch.Tensor  # (rows, width), left padded; rows >= len(prompts)
    attention_mask: torch.Tensor  # (batch, width), 0 on the padding
    lengths: tuple[int, ...]  # true token count of each prompt, BOS included where the model has one
    start: int = 0  # index of this batch's first prompt in the full list
    fmt: PromptFormat = RAW  # how the prompts were turned into text (raw, or a chat template)

    @property
    def rows(self) -> slice:
        """This batch's rows in the full prompt list (to select per-prompt sources)."""
        return slice(self.start, self.start + len(self.prompts))

    @property
    def width(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def n_rows(self) -> int:
        """Rows of the padded batch (the model's batch dimension)."""
        return int(self.input_ids.shape[0])

    def padded(self, rows: int) -> PromptBatch:
        """The batch with `rows` rows: the last prompt repeated (its outputs are dropped)."""
        extra = rows - self.n_rows
        if extra <= 0:
            return self
        return replace(self, input_ids=torch.cat([self.input_ids, self.input_ids[-1:].expand(extra, -1)]),
                       attention_mask=torch.cat([self.attention_mask, self.attention_mask[-1:].expand(extra, -1)]))


Intervention = Callable[[PromptBatch], AbstractContextManager[Any]]


@dataclass(frozen=True)
class Generation:
    """One prompt's greedy continuation, decoded as the source decoded it (skip_special_tokens=True)."""

    prompt: str
    prompt_ids: tuple[int, ...]
    generated_ids: tuple[int, ...]  # the generated tokens, up to and including the first end-of-sequence one
    completion: str  # the generated tokens alone, decoded
    full_text: str  # prompt + generated tokens, decoded together: what the source's detectors read
    cut: int | None = None  # where the completion starts in full_text when the prompt was templated

    @property
    def source_completion(self) -> str:
        """The completion as the source cut it: the decoded full text after len(prompt) characters (after the
        decoded templated prompt, where a chat template wrapped it)."""
        return self.full_text[len(self.prompt) if self.cut is None else self.cut :]


@dataclass(frozen=True)
class GenerationRun:
    generations: list[Generation]
    calls: list[Any]  # what the intervention yielded for each batch (e.g. CallLog.as_dict()), in batch order
    paths: list[dict[str, Any]] = field(default_factory=list)  # decode.PathRecord.as_dict() of each batch

    @property
    def full_texts(self) -> list[str]:
        return [g.full_text for g in self.generations]

    @property
    def completions(self) -> list[str]:
        return [g.completion for g in self.generations]


def encode_left(lm: LoadedModel, prompts: Sequence[str], start: int = 0, fmt: PromptFormat = RAW) -> PromptBatch:
    """Tokenise prompts in `fmt` (default: raw text as the sources did, BOS per the model spec), padded on the
    left. The padding side is set for this call only; the shared tokenizer keeps its right-padding default.
    """
    if not prompts:
        raise ValueError(f"no prompts to generate from for {lm.id}; give at least one")
    texts, special = fmt.texts(lm.tokenizer, prompts, lm.spec.bos)
    enc = lm.tokenizer(texts, add_special_tokens=special, padding=True, padding_side="left", return_tensors="pt")
    mask = enc["attention_mask"]
    return PromptBatch(tuple(prompts), enc["input_ids"].to(lm.device), mask.to(lm.device),
                       tuple(int(n) for n in mask.sum(1)), start, fmt)


def eos_ids(lm: LoadedModel) -> frozenset[int]:
    """Every token id that ends a generation: the generation config's eos ids and the tokenizer's."""
    configured = getattr(lm.model.generation_config, "eos_token_id", None)
    ids = set(configured if isinstance(configured, list) else [configured])
    ids.add(lm.tokenizer.eos_token_id)
    return frozenset(int(i) for i in ids if i is not None)


def _greedy(lm: LoadedModel, batch: PromptBatch, max_new_tokens: int, use_cache: bool) -> torch.Tensor:
    """(batch, width + new) token ids; rows that finished early are filled with the pad id."""
    with torch.no_grad():
        return lm.model.generate(  # type: ignore[operator]
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=max_new_tokens,
            do_sample=False, num_beams=1, pad_token_id=lm.tokenizer.pad_token_id, use_cache=use_cache)


def _truncate(ids: list[int], stop: frozenset[int]) -> tuple[int, ...]:
    """The tokens up to and including the first end-of-sequence token."""
    for index, token in enumerate(ids):
        if token in stop:
            return tuple(ids[: index + 1])
    return tuple(ids)


def _decode(lm: LoadedModel, batch: PromptBatch, out: torch.Tensor) -> list[Generation]:
    rows = out.tolist()  # one host transfer per batch
    stop = eos_ids(lm)
    decode = lm.tokenizer.decode
    generations = []
    for prompt, length, row in zip(batch.prompts, batch.lengths, rows[: len(batch.prompts)], strict=True):
        prompt_ids = tuple(row[batch.width - length : batch.width])
        generated = _truncate(row[batch.width :], stop)
        completion = decode(generated, skip_special_tokens=True)
        full_text = decode(prompt_ids + generated, skip_special_tokens=True)
        cut = len(decode(prompt_ids, skip_special_tokens=True)) if batch.fmt.chat_template else None
        generations.append(Generation(prompt, prompt_ids, generated, completion, full_text, cut))
    return generations


def _record(yielded: Any) -> Any:
    """What an intervention yielded, with every CallLog (also inside a dict or list) as its dict."""
    if isinstance(yielded, CallLog):
        return yielded.as_dict()
    if isinstance(yielded, dict):
        return {key: _record(value) for key, value in yielded.items()}
    if isinstance(yielded, list | tuple):
        return [_record(value) for value in yielded]
    return yielded


def resolve_path(path: str | None) -> str:
    """The generation path asked for: `path`, else HARNESS_GENERATION_PATH, else `auto`."""
    chosen = path if path is not None else os.environ.get(PATH_VARIABLE, "auto")
    if chosen not in PATHS:
        where = "path=" if path is not None else f"the environment variable {PATH_VARIABLE}="
        raise ValueError(f"generation path {chosen!r} (from {where}{chosen}); allowed: {', '.join(PATHS)}")
    return chosen


def _plan(lm: LoadedModel, batch: PromptBatch, max_new_tokens: int, use_cache: bool,
          path: str) -> tuple[str, str | None]:
    """(path, why not graph) for one batch, before its intervention is entered."""
    if path == "eager":
        return "eager", "eager path asked for"
    why = decode.unsupported(lm, use_cache, batch.width, max_new_tokens)
    if why is not None:
        return "eager", why
    if path == "static":
        return "static", "static path asked for"
    if lm.device.type != "cuda":
        return "eager", f"CUDA graphs need a CUDA device; the model is on {lm.device.type}"
    if routed(lm):
        return "static", ("a mixture-of-experts model: its routing is not recorded into a CUDA graph (the attempt "
                          "fails, and a failed recording left the CUDA generator unusable for the rest of the "
                          "process: Mixtral-8x7B on an H200, 2026-12-01)")
    return "graph", None


def _run_batch(lm: LoadedModel, batch: PromptBatch, max_new_tokens: int, use_cache: bool, planned: str,
               why: str | None) -> tuple[torch.Tensor, decode.PathRecord]:
    """The batch's tokens on the planned path; hooks that cannot be recorded send it to the eager path."""
    unsafe = decode.unsafe_hooks(lm.model) if planned != "eager" else None
    if planned == "eager" or unsafe is not None:
        record = decode.PathRecord("eager", why if unsafe is None else unsafe, batch.n_rows)
        return _greedy(lm, batch, max_new_tokens, use_cache), record
    out, record = decode.greedy(lm, batch.input_ids, batch.attention_mask, max_new_tokens, eos_ids(lm),
                                int(lm.tokenizer.pad_token_id), capture=planned == "graph")
    return out, record if planned == "graph" else replace(record, reason=why)


def generate(lm: LoadedModel, prompts: Sequence[str], max_new_tokens: int, *,
             intervention: Intervention | None = None, use_cache: bool = True,
             batch_size: int = 32, path: str | None = None, fmt: PromptFormat = RAW) -> GenerationRun:
    """Greedy continuations of `prompts` (do_sample=False, KV cache on unless `use_cache=False`), batched.

    `intervention(batch)` is entered around each batch's generation and always left, also on error. `path`:
    see the module docstring; every batch's `PathRecord` is in the run's `paths`.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}; generate at least 1 token")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; use a positive batch size, e.g. 32")
    asked = resolve_path(path)
    generations: list[Generation] = []
    calls: list[Any] = []
    paths: list[dict[str, Any]] = []
    for start in range(0, len(prompts), batch_size):
        batch = encode_left(lm, prompts[start : start + batch_size], start, fmt)
        planned, why = _plan(lm, batch, max_new_tokens, use_cache, asked)
        if planned != "eager":
            batch = batch.padded(decode.batch_bucket(batch.n_rows))
        with intervention(batch) if intervention is not None else nullcontext() as yielded:
            out, record = _run_batch(lm, batch, max_new_tokens, use_cache, planned, why)
        calls.append(_record(yielded))
        paths.append(record.as_dict())
        generations.extend(_decode(lm, batch, out))
    if not generations:
        raise ValueError(f"no prompts to generate from for {lm.id}; give at least one")
    return GenerationRun(generations, calls, paths)


RowEdit = Callable[[PromptBatch, torch.Tensor], AbstractContextManager[Any]]
"""edit(batch, index): a context manager for one batch; `index` (batch,) is each row's prompt index within the
condition, -1 for rows of other conditions (which the edit must leave alone)."""


@dataclass(frozen=True)
class Condition:
    """Prompts generated under one edit (None: unedited)."""

    name: str
    prompts: Sequence[str]
    edit: RowEdit | None = None


@contextmanager
def _edits(conditions: Sequence[Condition], owner: torch.Tensor, local: torch.Tensor,
           batch: PromptBatch) -> Iterator[dict[str, Any]]:
    """Every condition present in this batch enters its edit, told which rows are its own."""
    extra = batch.n_rows - len(batch.prompts)  # bucket rows: no condition's
    mine = torch.cat([owner[batch.rows], owner.new_full((extra,), -1)])
    mine_local = torch.cat([local[batch.rows], local.new_full((extra,), -1)])
    with ExitStack() as stack:
        logs: dict[str, Any] = {}
        for i, condition in enumerate(conditions):
            present = mine == i
            if condition.edit is not None and bool(present.any()):
                index = torch.where(present, mine_local, -1)
                logs[condition.name] = stack.enter_context(condition.edit(batch, index))
        yield logs


def generate_conditions(lm: LoadedModel, conditions: Sequence[Condition], max_new_tokens: int, *,
                        use_cache: bool = True, batch_size: int = 32,
                        path: str | None = None, fmt: PromptFormat = RAW) -> dict[str, GenerationRun]:
    """Greedy generations of every condition as rows of one batched run; each condition's run by name."""
    names = [c.name for c in conditions]
    if len(set(names)) != len(names):
        raise ValueError(f"condition names must be unique, got {names}; name each condition once")
    owner = torch.tensor([i for i, c in enumerate(conditions) for _ in c.prompts], dtype=torch.long)
    local = torch.tensor([j for c in conditions for j in range(len(c.prompts))], dtype=torch.long)
    run = generate(lm, [p for c in conditions for p in c.prompts], max_new_tokens, use_cache=use_cache,
                   intervention=partial(_edits, conditions, owner, local), batch_size=batch_size, path=path,
                   fmt=fmt)
    owners = owner.tolist()
    batches = [set(owners[start : start + batch_size]) for start in range(0, len(owners), batch_size)]
    return {c.name: GenerationRun([g for g, o in zip(run.generations, owners, strict=True) if o == i],
                                  [calls[c.name] for calls in run.calls if c.name in calls],
                                  [p for p, held in zip(run.paths, batches, strict=True) if i in held])
            for i, c in enumerate(conditions)}
