"""The fixtures a claim test module takes: the model under test, its claim, prompt bank, the recorder, and the
two that wire a protocol to them (`claim_context`, `verify_claim`)."""

from __future__ import annotations

import inspect
import os
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import pytest

from harness.plugin.collection import claim_bank, claim_of
from harness.plugin.state import state

if TYPE_CHECKING:
    from harness.claimkit.prompts import PromptBank
    from harness.claimkit.registry import Claim
    from harness.engine.models import LoadedModel
    from harness.engine.specs import ModelSpec
    from harness.plugin.options import Options

RESULT_KEY = "claim_harness.result"  # the user_property that carries one protocol result
C = TypeVar("C")


class ModelCache:
    """Loaded models keyed by (model id, dtype), at most `size` at a time (a base and its instruct model), and
    as many null-weights twins beside them, each freed in order of use."""

    def __init__(self, opts: Options, size: int = 2) -> None:
        self.opts, self.size = opts, size
        self._loaded: OrderedDict[tuple[str, str | None], Any] = OrderedDict()
        self._twins: OrderedDict[tuple[str, str | None], Any] = OrderedDict()
        self.unavailable: dict[str, str] = {}  # model -> why its weights are missing (a skip)
        self.broken: dict[str, str] = {}  # model -> why the directory the user named does not load (an error)

    def get(self, model_id: str, dtype: str | None = None) -> LoadedModel:
        """The model, in `dtype` (a claim protocol's) or the registry's. Missing weights skip the test (the
        summary gives the fix once); a failed load is remembered, so later tests do not try again."""
        if model_id in self.unavailable:
            pytest.skip(self.unavailable[model_id])

        def build() -> LoadedModel:
            lm = self._load(model_id, dtype)
            if lm is None:
                pytest.skip(self.unavailable[model_id])
            lm.token_budget = self.opts.token_budget
            return lm

        if (model_id, dtype) not in self._loaded:
            self._make_room(model_id, dtype)
        return self._cached(self._loaded, (model_id, dtype), build)

    def _make_room(self, model_id: str, dtype: str | None) -> None:
        """On one GPU, free cached twins, then cached models (oldest first), until the model about to load fits
        (a full-size Mixtral beside the previous model and its twin would not)."""
        import torch

        from harness.engine.models import parameter_bytes

        spec, device = self.opts.registry[model_id], self.opts.device
        if spec.tiny or self.opts.shard_devices or not str(device).startswith("cuda") or not torch.cuda.is_available():
            return
        needed = parameter_bytes(spec, dtype)
        while needed is not None and (self._twins or self._loaded) and _free_bytes(device) < needed:
            (self._twins or self._loaded).popitem(last=False)
            free_device_memory()

    def null_twin(self, lm: LoadedModel, dtype: str | None = None) -> LoadedModel:
        """The seeded random-weight twin of `lm` (same architecture, dtype and devices): the null-weights check.
        Skips, saying why and what to do, where the twin cannot fit on the GPU beside the model."""
        from harness.engine.models import random_twin

        def build() -> LoadedModel:
            _twin_fits(lm)
            twin = random_twin(lm, self.opts.seed)
            twin.token_budget = self.opts.token_budget
            return twin

        return self._cached(self._twins, (lm.id, dtype), build)

    def _cached(self, store: OrderedDict[tuple[str, str | None], Any], key: tuple[str, str | None],
                build: Callable[[], LoadedModel]) -> LoadedModel:
        if key in store:
            store.move_to_end(key)
            return store[key]
        while len(store) >= self.size:
            store.popitem(last=False)
            free_device_memory()
        lm = build()
        store[key] = lm
        return lm

    def _load(self, model_id: str, dtype: str | None) -> LoadedModel | None:
        from harness.engine.models import ModelPathError, ModelUnavailable, load

        opts = self.opts
        try:
            return load(opts.registry[model_id], weights=opts.weights, device=opts.device,
                        model_path=opts.model_paths.get(model_id), cache_dir=opts.cache_dir, seed=opts.seed,
                        allow_download=opts.allow_download, shard_devices=opts.shard_devices, dtype=dtype,
                        allow_pickle=opts.allow_pickle)
        except ModelUnavailable as err:
            self.unavailable[model_id] = str(err)
        except ModelPathError as err:
            self.broken[model_id] = str(err)
            raise
        return None

    def clear(self) -> None:
        self._loaded.clear()
        self._twins.clear()
        free_device_memory()


def _free_bytes(device: Any) -> int:
    """Free memory of a CUDA device, counting what torch's caching allocator holds unused."""
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def _twin_fits(lm: LoadedModel) -> None:
    """Skip the null-weights check where a single-GPU model's twin (as many bytes again) exceeds the free memory."""
    if lm.device.type != "cuda" or len(set(getattr(lm.model, "hf_device_map", {}).values())) > 1:
        return
    needed = sum(p.numel() * p.element_size() for p in lm.model.parameters())
    free = _free_bytes(lm.device)
    if needed > free:
        pytest.skip(f"the null-weights twin of {lm.id} needs {needed / 2**30:.1f} GiB beside the model and "
                    f"{lm.device} has {free / 2**30:.1f} GiB free: shard it with --gpus-per-model 2 (the twin "
                    f"shards too), or opt out with --no-null-weights")


def free_device_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@pytest.fixture(scope="session")
def harness_options(request: pytest.FixtureRequest) -> Options:
    return state(request.config).options()


@pytest.fixture(scope="session")
def model_cache(harness_options: Options) -> Iterator[ModelCache]:
    cache = ModelCache(harness_options)
    yield cache
    cache.clear()


@pytest.fixture(scope="session")
def model_id(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def lm(request: pytest.FixtureRequest, model_id: str, model_cache: ModelCache, claim: Claim,
       harness_options: Options) -> LoadedModel:
    """The model under test in its claim's protocol dtype, loaded once per session, model and dtype. A model
    that fails to load from a path the user gave is an error, given in full once per run."""
    from harness.engine.models import ModelPathError

    if model_id not in model_cache.broken:
        try:
            return model_cache.get(model_id, protocol_dtype(claim, harness_options.registry[model_id]))
        except ModelPathError:
            pass  # remembered in model_cache.broken; failed below, outside this handler (no chained traceback)
    fail_once(request, ("load", model_id), model_cache.broken[model_id], f"{model_id} did not load")


def fail_once(request: pytest.FixtureRequest, key: tuple[str, ...], message: str, short: str) -> NoReturn:
    """Fail the test with `message` the first time `key` fails in this run; later tests point to that one."""
    first = state(request.config).failures.setdefault(key, request.node.nodeid)
    if first == request.node.nodeid:
        pytest.fail(message, pytrace=False)
    pytest.fail(f"{short}; the error is given once per run, at {first}", pytrace=False)


@pytest.fixture
def null_lm(lm: LoadedModel, model_cache: ModelCache, claim: Claim) -> LoadedModel:
    """The null-weights check's model: a seeded random-weight twin of `lm` (see harness.engine.models)."""
    return model_cache.null_twin(lm, protocol_dtype(claim, lm.spec))


def protocol_dtype(claim: Claim, spec: ModelSpec) -> str | None:
    """The dtype a claim's protocol names (the source's), or None for the registry's. Tiny stand-ins keep the
    registry's float32: they check that a protocol runs, and float16 matmuls are emulated on the CPU."""
    value = claim.protocol.get("dtype")
    return str(value) if value is not None and not spec.tiny else None


@pytest.fixture
def claim(request: pytest.FixtureRequest) -> Claim:
    """The claim this test module verifies (its `@pytest.mark.claim(id)`), from claim.toml beside the module."""
    marker = request.node.get_closest_marker("claim")
    if marker is None:
        raise pytest.UsageError(f"{request.node.nodeid} uses the claim fixture without @pytest.mark.claim(id)")
    return claim_of(request.config, marker.args[0], getattr(request.module, "__file__", None))


@pytest.fixture(scope="session")
def published_dir(harness_options: Options) -> Path:
    """Where the sources' published data tables are: the vendored copies, or --published-dir."""
    return harness_options.published_dir


@pytest.fixture
def published_data(claim: Claim, published_dir: Path) -> Path:
    """The folder holding the claim's published table, checked against the manifest where one is kept.

    A table that is missing or altered fails the test: a re-derivation that cannot run verifies nothing.
    """
    from harness.claimkit.published import verified_table

    name = claim.published.get("data_file")
    if name is None:
        raise pytest.UsageError(f"{claim.path}: [published].data_file is not set, but a test asks for the "
                                "published table; name the table file there")
    verified_table(published_dir, str(name))
    return published_dir


@pytest.fixture
def prompt_bank(request: pytest.FixtureRequest, claim: Claim) -> PromptBank:
    """The claim's bank (checked at collection); with a model under test, every prompt must fit the model."""
    bank = claim_bank(request.config, claim)
    if "lm" in request.fixturenames:
        fits(request, bank, claim, request.getfixturevalue("lm"))
    return bank


def fits(request: pytest.FixtureRequest, bank: PromptBank, claim: Claim, lm: LoadedModel) -> None:
    """Before any forward: no prompt (plus the claim's generated tokens) may exceed the model's positions."""
    from harness.engine.runner import PromptTooLong, check_lengths, token_counts

    key = ("length", bank.sha256, lm.id)
    if key in state(request.config).fitted:
        return
    if key in state(request.config).failures:
        fail_once(request, key, "", f"prompt bank {bank.id!r} does not fit {lm.id}")
    new_tokens = claim.protocol.get("max_new_tokens", 0)
    reserve = new_tokens if isinstance(new_tokens, int) else 0
    problem = None
    for category, prompts in bank.categories.items():
        try:
            check_lengths(lm, prompts, token_counts(lm, prompts), reserve)
        except PromptTooLong as err:
            problem = f"prompt bank {bank.id!r} ({bank.path}), category {category!r}: {err}"
            break
    if problem is not None:  # failed outside the handler: one message, no chained traceback
        fail_once(request, key, problem, f"prompt bank {bank.id!r} does not fit {lm.id}")
    state(request.config).fitted.add(key)


@pytest.fixture
def record_claim(request: pytest.FixtureRequest, record_property: Any) -> Callable[[dict[str, Any]], None]:
    """record_claim(result_dict): hand one protocol result to the report and its scalars to junit."""
    from harness.report.document import jsonable, peak_memory

    def record(result: dict[str, Any]) -> None:
        # plain types only: under xdist the result crosses to the controller, whose serialiser refuses numpy
        result = jsonable({**result, "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
                           "resources": peak_memory()})
        for key, value in result.get("observed", {}).items():
            if isinstance(value, int | float | str | bool):
                record_property(f"{result['protocol']}.{key}", value)
        request.node.user_properties.append((RESULT_KEY, result))
    return record


@pytest.fixture(scope="module")
def claim_cache() -> dict[Hashable, Any]:
    """What one claim module's protocols share on a model (captures, generations), so that each runs once per
    model: the `cache` that `claim_context` hands to a context that takes one."""
    return {}


@pytest.fixture
def claim_context(lm: LoadedModel, claim: Claim, prompt_bank: PromptBank, harness_options: Options,
                  claim_cache: dict[Hashable, Any]) -> Callable[..., Any]:
    """claim_context(Context) builds `Context(claim, lm, prompt_bank, seed, batch_size)` for this test, with
    `cache=claim_cache` where the class takes a `cache` (api.ModelContext and its subclasses do).
    claim_context(Context, null_lm) builds it on another model, the null-weights twin, with a cache of its own:
    a twin shares its model's id, so it must never be handed the model's measurements."""
    def build(cls: Callable[..., C], model: LoadedModel | None = None) -> C:
        takes_cache = "cache" in inspect.signature(cls).parameters
        cache = {} if model is not None and model is not lm else claim_cache
        return cls(claim, model or lm, prompt_bank, harness_options.seed, harness_options.batch_size,
                   **({"cache": cache} if takes_cache else {}))
    return build


@pytest.fixture
def verify_claim(record_claim: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    """verify_claim(result): how a claim test ends. The result goes to the report (`record_claim`); a control
    the claim dropped on this model (it would repeat as_published there; `result["dropped"]` says why) is
    skipped, recorded as dropped and never counted; any other result is checked with `api.check`: well formed
    everywhere, and on the published model its criterion holds."""
    from harness.claimkit.results import check

    def verify(result: dict[str, Any]) -> None:
        __tracebackhide__ = True  # a skip or a failed check is reported at the claim test's line
        record_claim(result)
        if result.get("dropped"):
            pytest.skip(f"{result['protocol']} dropped on {result['model']}: {result['dropped']}")
        check(result)
    return verify
