"""Options, the one model every benchmark shares, and the session's ratios JSON and terminal table.

`pytest benchmarks/` runs on tiny-mistral on the CPU; the plugin's own options pick another model and device:
`pytest benchmarks/ --models mistral-7b-instruct-v0.2 --weights random --device cuda`. The model is built
once per session (its load time is recorded separately). See benchmarks/README.md.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks.kit import Bench
from benchmarks.measure import synchronize, weight_bytes
from benchmarks.ratios import RatioBook
from harness.engine.models import LoadedModel
from harness.report.document import device_info, package_versions

DEFAULT_MODEL = "tiny-mistral"
book_key = pytest.StashKey[RatioBook]()
# The plugin writes a claims report and addopts a junit file on every run. A benchmark run records no
# claims: unless told otherwise, it writes them beside the claims run's files instead of over them.
_REDIRECTS = {"claims_json": ("results/claims.json", "results/bench-claims.json"),
              "xmlpath": ("results/junit.xml", "results/bench-junit.xml")}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("claim-harness benchmarks")
    group.addoption("--bench-assert-targets", action="store_true",
                    help="fail a benchmark whose ratio misses its issue-5 target (meant for the 7B on a GPU)")
    group.addoption("--bench-ratios-json", default="results/bench-ratios.json",
                    help="where the session's ratios and targets go (default: results/bench-ratios.json)")
    group.addoption("--bench-rounds", type=int, default=None,
                    help="timed rounds per variant (default: 10 on a GPU, 5 on the CPU; heavy variants half "
                    "of them)")
    group.addoption("--bench-threads", type=int, default=None,
                    help="torch CPU threads (default: 1 when benchmarking on the CPU, so that the machine's "
                    "other load does not swing the ratios; untouched on a GPU)")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    for dest, (default, instead) in _REDIRECTS.items():
        if getattr(config.option, dest, None) == default:
            setattr(config.option, dest, instead)
    path = Path(config.getoption("--bench-ratios-json"))
    book = RatioBook(path if path.is_absolute() else Path(config.rootpath) / path)
    book.run.update(started=datetime.now(UTC).isoformat(timespec="seconds"), argv=sys.argv[1:],
                    benchmark_disabled=bool(config.getoption("benchmark_disable", False)),
                    packages=package_versions(), device_info=device_info())
    config.stash[book_key] = book


def _model_id(config: pytest.Config) -> str:
    raw = config.getoption("--models")
    ids = raw.split(",") if raw else [DEFAULT_MODEL]
    if len(ids) != 1:
        raise pytest.UsageError(f"benchmarks run one model at a time; --models gave {ids}: pass one id")
    return ids[0]


@pytest.fixture(scope="session")
def bench_lm(request: pytest.FixtureRequest, model_cache: Any) -> LoadedModel:
    """The benchmarked model, built or loaded once per session; the load time goes into the ratios JSON."""
    model_id = _model_id(request.config)
    start = time.perf_counter()
    lm: LoadedModel = model_cache.get(model_id)
    synchronize(lm.device)
    book = request.config.stash[book_key]
    book.run.update(model=lm.id, weights=lm.weights, dtype=str(lm.model.dtype).removeprefix("torch."),
                    device=str(lm.device), load_s=time.perf_counter() - start, dims=vars(lm.dims),
                    weight_bytes=weight_bytes(lm.model))
    return lm


@pytest.fixture(scope="session")
def bench(request: pytest.FixtureRequest, bench_lm: LoadedModel, harness_options: Any) -> Iterator[Bench]:
    config = request.config
    on_gpu = bench_lm.device.type == "cuda"
    rounds = config.getoption("--bench-rounds") or (10 if on_gpu else 5)
    warmup = 2 if on_gpu else 1
    if rounds < 1:
        raise pytest.UsageError(f"--bench-rounds {rounds}: give 1 or more")
    book = config.stash[book_key]
    threads = config.getoption("--bench-threads") or (None if on_gpu else 1)
    if threads is not None:
        torch.set_num_threads(threads)
    book.run.update(rounds=rounds, warmup=warmup, batch_size=harness_options.batch_size,
                    seed=harness_options.seed, torch_threads=torch.get_num_threads())
    yield Bench(bench_lm, book, rounds, warmup, config.getoption("--bench-assert-targets"),
                harness_options.batch_size, harness_options.seed)
    if on_gpu:
        torch.cuda.empty_cache()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    book = session.config.stash.get(book_key, None)
    if book is None or not (book.groups or book.skipped):
        return
    book.run.update(finished=datetime.now(UTC).isoformat(timespec="seconds"), exitstatus=int(exitstatus))
    book.save()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    book = config.stash.get(book_key, None)
    if book is None or not (book.groups or book.skipped):
        return
    terminalreporter.write_sep("=", "benchmark ratios (variant / group baseline, same session)")
    for line in book.summary():
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"ratios JSON: {book.path}")
