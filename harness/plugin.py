"""The pytest plugin: options, model parametrization, fixtures and the claims report.

Registered through the `pytest11` entry point, so it also works in other repositories that hold claims.
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness.claims import Claim, ClaimError, get_claim, load_claims
from harness.htmlreport import page_path, write_page
from harness.models import ModelSpec, ModelUnavailable, load, load_registry
from harness.prompts import PromptBank, bank_for
from harness.report import RESULT_KEY, Report, peak_memory, summary_rows

ITEM_KEY = "claim_harness.item"
report_key = pytest.StashKey[Report]()
options_key = pytest.StashKey["Options"]()


@dataclass
class Options:
    models: list[str]
    model_paths: dict[str, Path]
    weights: str
    device: str
    prompt_banks: dict[str, Path]
    seed: int
    allow_download: bool
    batch_size: int
    registry: dict[str, ModelSpec]
    claims: dict[str, Claim]
    shard_devices: list[str] = field(default_factory=list)
    cache_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="claim-harness-")))


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("claim-harness", "published-claim verification")
    group.addoption("--models", default=None, help="comma-separated model ids (default: the tiny set, or the "
                    "published set under -m gpu)")
    group.addoption("--model-path", action="append", default=[], metavar="ID=DIR",
                    help="load model ID from local directory DIR (repeatable)")
    group.addoption("--weights", choices=("pretrained", "random"), default="pretrained",
                    help="'random' builds the published architecture with seeded random weights")
    group.addoption("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    group.addoption("--prompt-bank", action="append", default=[], metavar="CLAIM=PATH",
                    help="replace a claim's prompt bank with a TOML file of the same format (repeatable)")
    group.addoption("--claims-json", default="results/claims.json", help="where the JSON claims report goes")
    group.addoption("--claims-html", default=None, metavar="PATH", help="where the HTML claims page goes "
                    "(default: beside the JSON report, as claims.html; 'none' writes no page)")
    group.addoption("--claim-seed", type=int, default=0, help="base seed of every random draw")
    group.addoption("--allow-download", action="store_true", help="let from_pretrained reach the hub")
    group.addoption("--claim-batch-size", type=int, default=128, help="prompts per forward batch (halved on OOM)")
    group.addoption("--claims-dir", default=None, help="directory of claim TOML files (default: the harness's "
                    "fixtures/claims)")
    group.addoption("--published-dir", default=None, help="the sources' data tables for replay tests (default: "
                    "../shared/published beside the checkout)")
    group.addoption("--gpus-per-model", type=int, default=1, help="shard each model across N GPUs; under "
                    "pytest-xdist worker k gets GPUs k*N .. k*N+N-1")


def registered_by_entry_point() -> bool:
    """Whether an installed package registers this plugin (pytest11); then it must not be registered again."""
    from importlib.metadata import entry_points

    return any(ep.value == "harness.plugin" for ep in entry_points(group="pytest11"))


def _pairs(values: list[str], option: str) -> dict[str, Path]:
    pairs: dict[str, Path] = {}
    for value in values:
        key, sep, path = value.partition("=")
        if not sep or not key or not path:
            raise pytest.UsageError(f"{option} {value!r}: expected KEY=PATH, e.g. {option} mistral-7b-v0.1=/models/m")
        pairs[key] = Path(path).expanduser()
    return pairs


def _options(config: pytest.Config) -> Options:
    claims_dir = config.getoption("--claims-dir")
    try:
        registry = load_registry()
        claims = load_claims(Path(claims_dir)) if claims_dir else load_claims()
    except (ClaimError, ValueError) as err:
        raise pytest.UsageError(str(err)) from err
    raw = config.getoption("--models")
    gpu_run = "gpu" in (config.getoption("markexpr") or "") and "not gpu" not in config.getoption("markexpr")
    models = raw.split(",") if raw else [m for m, s in registry.items() if s.tiny != gpu_run]
    unknown = [m for m in models if m not in registry]
    if unknown:
        raise pytest.UsageError(f"--models: unknown model(s) {unknown}; known: {', '.join(registry)}")
    paths = _pairs(config.getoption("--model-path"), "--model-path")
    banks = _pairs(config.getoption("--prompt-bank"), "--prompt-bank")
    for claim_id in banks:
        if claim_id not in claims:
            raise pytest.UsageError(f"--prompt-bank names unknown claim {claim_id!r}; known: {', '.join(claims)}")
    devices = worker_devices(config.getoption("--device"), config.getoption("--gpus-per-model"),
                             _worker_index(config), _gpu_count())
    return Options(models, paths, config.getoption("--weights"), devices[0], banks, config.getoption("--claim-seed"),
                   config.getoption("--allow-download"), config.getoption("--claim-batch-size"), registry, claims,
                   devices if len(devices) > 1 else [])


def _worker_index(config: pytest.Config) -> int:
    worker = getattr(config, "workerinput", {}).get("workerid", "gw0")
    return int(worker.removeprefix("gw"))


def worker_devices(device: str | None, gpus_per_model: int, worker: int, gpu_count: int) -> list[str]:
    """The devices of one pytest(-xdist) worker: GPUs worker*N .. worker*N+N-1 (wrapping), or the CPU."""
    if gpus_per_model < 1:
        raise pytest.UsageError(f"--gpus-per-model {gpus_per_model}: give 1 or more")
    if device is not None and not device.startswith("cuda"):
        return [device]
    if gpu_count == 0:
        if device is not None:
            raise pytest.UsageError(f"--device {device}: no CUDA device is visible; use --device cpu")
        return ["cpu"]
    if gpus_per_model > gpu_count:
        raise pytest.UsageError(f"--gpus-per-model {gpus_per_model}: only {gpu_count} GPU(s) visible")
    first = (worker * gpus_per_model) % gpu_count
    return [f"cuda:{(first + j) % gpu_count}" for j in range(gpus_per_model)]


def _gpu_count() -> int:
    import torch

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device and the published 7-8B models")
    config.addinivalue_line("markers", "slow: takes more than a few seconds on the CPU")
    config.addinivalue_line("markers", "claim(id): a published-claim test; the id names fixtures/claims/<id>.toml")
    config.addinivalue_line("markers", "xdist_group(name): run on one pytest-xdist worker (--dist loadgroup)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    config.stash[options_key] = _options(config)
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist) owns the report
        path = Path(config.getoption("--claims-json"))
        path = path if path.is_absolute() else Path(config.rootpath) / path
        config.stash[report_key] = Report(path, config.getoption("--claim-seed"), sys.argv[1:], config.rootpath)
        config.pluginmanager.register(ReportCollector(config.stash[report_key], config), "claim-harness-report")


def pytest_report_header(config: pytest.Config) -> list[str]:
    opts = config.stash[options_key]
    return [f"claim-harness: seed={opts.seed} weights={opts.weights} device={opts.device} "
            f"models={','.join(opts.models)}", f"claims report: {config.stash[report_key].path}"
            if report_key in config.stash else "claims report: written by the xdist controller"]


def applicable_models(claim: Claim, opts: Options) -> list[str]:
    """Selected models this claim runs on: its published models, plus tiny stand-ins of the same variant."""
    variants = {opts.registry[m].variant for m in claim.models if m in opts.registry}
    chosen = []
    for model_id in opts.models:
        spec = opts.registry[model_id]
        if model_id in claim.models or (spec.tiny and (model_id in claim.tiny_models if claim.tiny_models is not None
                            else spec.variant in variants)):
            chosen.append(model_id)
    return chosen


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "model_id" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("claim")
    if marker is None:
        raise pytest.UsageError(f"{metafunc.definition.nodeid} takes model_id but has no @pytest.mark.claim(id)")
    opts = metafunc.config.stash[options_key]
    claim = get_claim(marker.args[0], opts.claims)
    # xdist_group (for --dist loadgroup): every test of one model runs on one worker, which loads it once. Set
    # on the parameter, so the mark exists before any plugin's collection hook reads it.
    params = [pytest.param(m, marks=(pytest.mark.xdist_group(m),) if opts.registry[m].tiny else
                           (pytest.mark.gpu, pytest.mark.xdist_group(m)), id=m)
              for m in applicable_models(claim, opts)]
    metafunc.parametrize("model_id", params, scope="session", indirect=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        marker = item.get_closest_marker("claim")
        if marker is None:
            continue
        params = getattr(getattr(item, "callspec", None), "params", {})
        protocol = params.get("protocol") or item.originalname.removeprefix("test_")  # type: ignore[attr-defined]
        raw = params.get("model_id", "published-data")
        model = raw if isinstance(raw, str) else "no-model-selected"  # pytest's NOTSET for an empty selection
        item.user_properties.append((ITEM_KEY, {"claim": marker.args[0], "protocol": str(protocol), "model": model}))


class ModelCache:
    """Loaded models, at most `size` at a time (a base and its instruct twin), freed in order of use."""

    def __init__(self, opts: Options, size: int = 2) -> None:
        self.opts, self.size = opts, size
        self._loaded: OrderedDict[str, Any] = OrderedDict()

    def get(self, model_id: str) -> Any:
        if model_id in self._loaded:
            self._loaded.move_to_end(model_id)
            return self._loaded[model_id]
        while len(self._loaded) >= self.size:
            self._loaded.popitem(last=False)
            _free_device_memory()
        opts = self.opts
        try:
            lm = load(opts.registry[model_id], weights=opts.weights, device=opts.device,
                      model_path=opts.model_paths.get(model_id), cache_dir=opts.cache_dir, seed=opts.seed,
                      allow_download=opts.allow_download, shard_devices=opts.shard_devices)
        except ModelUnavailable as err:
            pytest.skip(str(err))
        self._loaded[model_id] = lm
        return lm

    def clear(self) -> None:
        self._loaded.clear()
        _free_device_memory()


def _free_device_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@pytest.fixture(scope="session")
def harness_options(request: pytest.FixtureRequest) -> Options:
    return request.config.stash[options_key]


@pytest.fixture(scope="session")
def model_cache(harness_options: Options) -> Any:
    cache = ModelCache(harness_options)
    yield cache
    cache.clear()


@pytest.fixture(scope="session")
def model_id(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def lm(model_id: str, model_cache: ModelCache) -> Any:
    """The model under test, loaded once per session and model."""
    return model_cache.get(model_id)


@pytest.fixture
def claim(request: pytest.FixtureRequest, harness_options: Options) -> Claim:
    marker = request.node.get_closest_marker("claim")
    if marker is None:
        raise pytest.UsageError(f"{request.node.nodeid} uses the claim fixture without @pytest.mark.claim(id)")
    return get_claim(marker.args[0], harness_options.claims)


@pytest.fixture(scope="session")
def published_dir(request: pytest.FixtureRequest) -> Path:
    """Where the sources' published data tables are; tests that replay them skip when it is absent."""
    given = request.config.getoption("--published-dir")
    return Path(given) if given else request.config.rootpath.parent / "shared" / "published"


@pytest.fixture
def published_data(claim: Claim, published_dir: Path) -> Path:
    """The claim's published data folder, or a skip that says what is missing and how to provide it."""
    name = claim.published.get("data_file")
    if name is None:
        pytest.skip(f"{claim.id} names no published table ([published].data_file)")
    if not (published_dir / name).exists():
        pytest.skip(f"published table {name} not found in {published_dir}; put ../shared/published beside the "
                    "checkout or pass --published-dir")
    return published_dir


@pytest.fixture
def prompt_bank(claim: Claim, harness_options: Options) -> PromptBank:
    return bank_for(claim.prompt_bank, harness_options.prompt_banks, claim.id)


@pytest.fixture
def record_claim(request: pytest.FixtureRequest, record_property: Any) -> Any:
    """record_claim(result_dict): hand one protocol result to the report and its scalars to junit."""
    def record(result: dict[str, Any]) -> None:
        result = {**result, "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"), "resources": peak_memory()}
        for key, value in result.get("observed", {}).items():
            if isinstance(value, int | float | str | bool):
                record_property(f"{result['protocol']}.{key}", value)
        request.node.user_properties.append((RESULT_KEY, result))
    return record


class ReportCollector:
    """Registered on the controller only: turns test reports into claims-report entries as they arrive."""

    def __init__(self, report: Report, config: pytest.Config) -> None:
        self.report, self.config = report, config
        self._seen: set[tuple[str, str]] = set()
        self.page: Path | None = None  # the HTML claims page, once written

    def _progress(self, result: dict[str, Any]) -> None:
        """One line per (claim, model) as it starts, with the elapsed time, through pytest's reporter."""
        key = (result["claim"], result["model"])
        terminal = self.config.pluginmanager.get_plugin("terminalreporter")
        if key in self._seen or terminal is None:
            return
        self._seen.add(key)
        terminal.ensure_newline()
        terminal.write_line(f"claim-harness [{time.time() - self.report.started:7.1f}s] {key[0]} on {key[1]}")

    def add(self, result: dict[str, Any]) -> None:
        self._progress(result)
        self.report.add(result)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        results: list[dict[str, Any]] = [v for k, v in report.user_properties if k == RESULT_KEY]  # type: ignore[misc]
        ident: dict[str, str] | None = next(  # type: ignore[assignment]
            (v for k, v in report.user_properties if k == ITEM_KEY), None)
        report.user_properties = [(k, v) for k, v in report.user_properties if k not in (RESULT_KEY, ITEM_KEY)]
        if report.when == "call":
            for res in results:
                self.add({**res, "outcome": report.outcome, "duration_s": report.duration, "nodeid": report.nodeid})
            if not results and ident is not None and report.outcome != "passed":
                self.add(_placeholder(ident, report, "error" if report.failed else "skipped"))
        elif report.when == "setup" and ident is not None and not report.passed:
            self.add(_placeholder(ident, report, "skipped" if report.skipped else "error"))

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.report.finish({2: "interrupted", 3: "error"}.get(int(exitstatus), "complete"))
        self.page = page_path(session.config.getoption("--claims-html"), self.report.path,
                              session.config.rootpath)
        if self.page is not None:
            write_page(self.report.document(), self.page)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        rows = summary_rows(self.report.document()["verdicts"])
        if rows:
            terminalreporter.write_sep("=", "claim verdicts")
            for line in rows:
                terminalreporter.write_line(line)
        terminalreporter.write_line(f"claims report: {self.report.path}  "
                                    f"(rerun: pytest {shlex.join(self.report.argv)})")
        if self.page is not None:
            terminalreporter.write_line(f"claims page: {self.page}")


def _placeholder(ident: dict[str, str], report: pytest.TestReport, outcome: str) -> dict[str, Any]:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longreprtext)[-2000:]
    kind = "control" if ident["protocol"].startswith("control") else "as_published"
    return {**ident, "kind": kind, "passed": None, "outcome": outcome, "reason": reason, "nodeid": report.nodeid,
            "duration_s": report.duration, "weights": None}
