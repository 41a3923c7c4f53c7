"""Command-line options of the plugin, checked when given, and the run's Options built when a claim needs them.

Options the user gives are checked at start-up (cheap, no model code imported), so a typo fails before
anything loads. The Options object itself, which needs the model registry and the GPU count, is built only
when a claim is collected: a session that selects no claim pays nothing.
"""

from __future__ import annotations

import difflib
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from harness.engine.specs import ModelSpec

CACHE_PREFIX = "claim-harness-"  # the run's temporary folder (tiny models); removed when the session ends
# As harness.engine.specs.DEFAULT_TOKEN_BUDGET, written out: a guest plugin imports no engine code (test_options)
DEFAULT_TOKEN_BUDGET = 32_768
DEVICE_FORMS = "cpu, cuda (each pytest-xdist worker gets its own GPU), cuda:N (GPU number N), mps"
DEVICE_PATTERN = re.compile(r"cpu|mps|cuda(:\d+)?")
REPORT_DEFAULTS = {"--claims-json": "results/claims.json", "--claims-html": None}


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
    published_dir: Path
    shard_devices: list[str] = field(default_factory=list)
    token_budget: int = DEFAULT_TOKEN_BUDGET
    cache_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix=CACHE_PREFIX)))
    skip_controls: dict[str, tuple[str, ...]] = field(default_factory=dict)  # claim id -> controls skipped on purpose
    null_weights: bool = True  # run the null-weights check (the as-published criterion on a random-weight twin)
    allow_pickle: bool = False
    generalise: frozenset[str] = frozenset()  # selected models that run every compatible claim, not only their own


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("claim-harness", "published-claim verification")
    group.addoption("--models", default=None, help="comma-separated model ids (default: the tiny set; the "
                    "published set under -m gpu; SmolLM2 under -m real; the --model ones when given)")
    group.addoption("--model-path", action="append", default=[], metavar="ID=DIR",
                    help="load registered model ID from local directory DIR (repeatable)")
    group.addoption("--model", action="append", default=[], metavar="NAME=SOURCE",
                    help="run the claims on your own model (repeatable): SOURCE is a directory (config.json + "
                    "safetensors), a .gguf file, or hf:ORG/NAME@REVISION; results are labelled generalisation")
    group.addoption("--model-registry", action="append", default=[], metavar="FILE.toml",
                    help="add the models of a registry file (fixtures/models/registry.toml's format, with "
                    "`source = ...`); select them with --models")
    group.addoption("--pair", action="append", default=[], metavar="INSTRUCT=BASE",
                    help="the base model of an instruct model, for claims that compare the two (repeatable)")
    group.addoption("--allow-pickle", action="store_true", help="load pickle checkpoints (.bin, .pt) of a "
                    "directory that holds no safetensors: they can run code when read, so only for trusted files")
    group.addoption("--weights", choices=("pretrained", "random"), default="pretrained",
                    help="'random' builds the published architecture with seeded random weights")
    group.addoption("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    group.addoption("--prompt-bank", action="append", default=[], metavar="CLAIM=PATH",
                    help="replace a claim's prompt bank with a TOML file of the same format (repeatable)")
    group.addoption("--claims-json", default=REPORT_DEFAULTS["--claims-json"], help="where the JSON claims report goes")
    group.addoption("--claims-html", default=None, metavar="PATH", help="where the HTML claims page goes "
                    "(default: beside the JSON report, as claims.html; 'none' writes no page)")
    group.addoption("--claim-seed", type=int, default=0, help="base seed of every random draw")
    group.addoption("--allow-download", action="store_true", help="let from_pretrained reach the hub")
    group.addoption("--claim-batch-size", type=int, default=128, help="prompts per forward batch (halved on OOM)")
    group.addoption("--claim-token-budget", type=int, default=DEFAULT_TOKEN_BUDGET, metavar="TOKENS",
                    help="padded tokens per forward batch (prompts x longest prompt); bounds memory on long prompts")
    group.addoption("--allow-unverified", action="store_true", help="exit 0 even when claims ran but none was "
                    "verified (every claim test skipped for missing weights): for CI that only checks collection")
    group.addoption("--claims-dir", default=None, help="a directory of claim folders (<id>/claim.toml) whose "
                    "claims may be named by test modules that do not sit beside their claim.toml")
    group.addoption("--published-dir", default=None, help="the sources' data tables for re-derivations (default: "
                    "the tables vendored with the harness)")
    group.addoption("--gpus-per-model", type=int, default=1, help="shard each model across N GPUs; under "
                    "pytest-xdist worker k gets GPUs k*N .. k*N+N-1")
    group.addoption("--skip-control", action="append", default=[], metavar="CLAIM.CONTROL",
                    help="skip a declared control, null or robustness check on purpose (repeatable): it does not "
                    "run and the verdict lists it as skipped on purpose; a control merely deselected (-k) "
                    "leaves the verdict inconclusive")
    group.addoption("--no-null-weights", action="store_true", help="opt out of the null-weights check (each "
                    "claim's as-published criterion on a seeded random-weight twin of its model), e.g. for "
                    "CPU-bound runs of large models; the report says it was not done")


EXAMPLES = {"KEY=PATH": "mistral-7b-v0.1=/models/m", "NAME=SOURCE": "my=/models/SmolLM2.gguf",
            "INSTRUCT=BASE": "my-instruct=my-base"}


def pairs(values: list[str], option: str) -> dict[str, Path]:
    return {key: Path(value).expanduser() for key, value in assignments(values, option, "KEY=PATH").items()}


def assignments(values: list[str], option: str, form: str) -> dict[str, str]:
    """KEY=VALUE option values, in order; a malformed one fails naming the option, the value and the form."""
    found: dict[str, str] = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key or not rest:
            raise pytest.UsageError(f"{option} {value!r}: expected {form}, e.g. {option} {EXAMPLES[form]}")
        found[key] = rest
    return found


def skipped_controls(values: list[str]) -> dict[str, tuple[str, ...]]:
    """--skip-control CLAIM.CONTROL values by claim id (the names are checked against each claim at collection)."""
    found: dict[str, list[str]] = {}
    for value in values:
        claim, sep, control = value.partition(".")
        if not sep or not claim or not control:
            raise pytest.UsageError(f"--skip-control {value!r}: expected CLAIM.CONTROL, e.g. "
                                    "--skip-control rv_contraction.chat_template")
        found.setdefault(claim, []).append(control)
    return {claim: tuple(dict.fromkeys(names)) for claim, names in found.items()}


def check_given(config: pytest.Config) -> None:
    """Fail at start-up on an option the user gave with a bad value (the defaults are always valid)."""
    check_model_dirs(pairs(config.getoption("--model-path"), "--model-path"))
    skipped_controls(config.getoption("--skip-control"))
    pairs(config.getoption("--prompt-bank"), "--prompt-bank")
    assignments(config.getoption("--model"), "--model", "NAME=SOURCE")
    assignments(config.getoption("--pair"), "--pair", "INSTRUCT=BASE")
    for path in config.getoption("--model-registry"):
        if not Path(path).expanduser().is_file():
            raise pytest.UsageError(f"--model-registry {path}: no such file; give a TOML file in the format of "
                                    "fixtures/models/registry.toml")
    if config.getoption("--model") or config.getoption("--model-registry") or config.getoption("--pair"):
        from harness.plugin.usermodels import registry_with_user_models

        registry_with_user_models(config)  # a user's model that cannot be used fails here, once
    for option, unit in (("--gpus-per-model", "GPUs"), ("--claim-batch-size", "prompts"),
                         ("--claim-token-budget", "tokens")):
        if config.getoption(option) < 1:
            raise pytest.UsageError(f"{option} {config.getoption(option)}: give a whole number of {unit}, 1 or more")
    device = config.getoption("--device")
    if device is not None and not DEVICE_PATTERN.fullmatch(device):
        raise pytest.UsageError(f"--device {device!r} is not a device; valid forms: {DEVICE_FORMS}")
    given = [o for o, default in REPORT_DEFAULTS.items() if config.getoption(o) != default]
    if given:  # the defaults are checked once a claim is collected (a session without claims writes nothing)
        check_report_paths(config, given)
    if config.getoption("--claims-dir"):
        from harness.claimkit.registry import ClaimError, load_claims

        try:
            load_claims(Path(config.getoption("--claims-dir")))
        except ClaimError as err:
            raise pytest.UsageError(f"--claims-dir: {err}") from err


def check_model_dirs(paths: dict[str, Path]) -> None:
    """Every --model-path directory must look loadable: the user named it, so a bad one is an error."""
    if not paths:
        return
    from harness.engine.modeldir import HOW, problem

    for model_id, path in paths.items():
        found = problem(path)
        if found:
            raise pytest.UsageError(f"--model-path {model_id}={path}: the path {found}; give {HOW}")


def report_paths(config: pytest.Config) -> dict[str, Path]:
    """Where the JSON report and the page go, by option (relative paths are taken from the rootdir)."""
    from harness.report.html import page_path

    root = Path(config.rootpath)
    given = Path(config.getoption("--claims-json")).expanduser()
    found = {"--claims-json": given if given.is_absolute() else root / given}
    page = page_path(config.getoption("--claims-html"), found["--claims-json"], root)
    return found if page is None else {**found, "--claims-html": page}


def unwritable(path: Path) -> str | None:
    """Why a report could not be written at `path`, or None: checked before anything runs."""
    if path.is_dir():
        return "is a directory"
    if path.exists():
        return None if os.access(path, os.W_OK) else "is a file this user may not write"
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot be created: {parent} is a file, not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot be created: this user may not write in {parent}"
    return None


def check_report_paths(config: pytest.Config, options: list[str] | None = None) -> None:
    """A usage error naming the option when the report or the page could not be written there."""
    for option, path in report_paths(config).items():
        why = unwritable(path) if options is None or option in options else None
        if why:
            raise pytest.UsageError(f"{option} {path}: the report {why}; give a path in a writable directory, "
                                    f"e.g. {option} results/{path.name}")


def build(config: pytest.Config) -> Options:
    """The run's options, with the model registry and the devices of this worker."""
    if not config.getoption("--allow-download"):  # before transformers is imported: nothing is downloaded
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from harness.plugin.usermodels import registry_with_user_models, selected_models
    from harness.resources import published_dir

    registry = registry_with_user_models(config)
    models, generalise = selected_models(config, registry)
    model_paths = pairs(config.getoption("--model-path"), "--model-path")
    for model_id in model_paths:
        if model_id not in registry:
            close = difflib.get_close_matches(model_id, registry, 1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise pytest.UsageError(f"--model-path {model_id}=...: unknown model {model_id!r}{hint}; known: "
                                    f"{', '.join(registry)}")
    devices = worker_devices(config.getoption("--device"), config.getoption("--gpus-per-model"),
                             worker_index(config), _gpu_count())
    given = config.getoption("--published-dir")
    return Options(models, model_paths, config.getoption("--weights"),
                   devices[0], pairs(config.getoption("--prompt-bank"), "--prompt-bank"),
                   config.getoption("--claim-seed"), config.getoption("--allow-download"),
                   config.getoption("--claim-batch-size"), registry,
                   Path(given).expanduser() if given else published_dir(), devices if len(devices) > 1 else [],
                   token_budget=config.getoption("--claim-token-budget"),
                   skip_controls=skipped_controls(config.getoption("--skip-control")),
                   null_weights=not config.getoption("--no-null-weights"),
                   allow_pickle=config.getoption("--allow-pickle"), generalise=generalise)


def unused_model_paths(opts: Options) -> list[str]:
    """One line per --model-path whose model this run did not select (the path was not used)."""
    return [f"--model-path {m}={p} was not used: {m} is not among this run's models ({', '.join(opts.models)}); "
            f"select it with --models {m} (or -m gpu for the published set), or drop the option"
            for m, p in opts.model_paths.items() if m not in opts.models]


def worker_index(config: pytest.Config) -> int:
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
    if device is not None and ":" in device:  # one GPU named by number: every worker uses it
        index = int(device.partition(":")[2])
        if index >= gpu_count or gpus_per_model > 1:
            raise pytest.UsageError(f"--device {device}: {gpu_count} GPU(s) visible (cuda:0-cuda:{gpu_count - 1}), "
                                    f"--gpus-per-model {gpus_per_model}; name a visible GPU, or give --device cuda "
                                    "to spread workers over all of them")
        return [device]
    if gpus_per_model > gpu_count:
        raise pytest.UsageError(f"--gpus-per-model {gpus_per_model}: only {gpu_count} GPU(s) visible")
    first = (worker * gpus_per_model) % gpu_count
    return [f"cuda:{(first + j) % gpu_count}" for j in range(gpus_per_model)]


def _gpu_count() -> int:
    import torch

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
