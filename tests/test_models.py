"""Unit tests of harness/models.py: the registry, architecture files, loading, tiny and random-weight builds.

No test downloads anything: missing weights must fail with ModelUnavailable naming the model, its revision
and the fix; tiny models are built from config, saved and loaded back through the same loader.
"""

from __future__ import annotations

import re
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

from harness.engine.models import (
    DTYPES,
    Dims,
    LoadedModel,
    ModelPathError,
    ModelUnavailable,
    _config_from,
    _load_random,
    architecture,
    load,
    model_seed,
    null_seed,
    random_twin,
)
from harness.engine.specs import FAMILIES, MODELS_DIR, get_spec, load_registry

PUBLISHED = (
    "mistral-7b-instruct-v0.2",
    "mistral-7b-v0.1",
    "mistral-7b-instruct-v0.1",
    "qwen2.5-7b",
    "qwen2.5-7b-instruct",
    "llama-3.1-8b",
    "llama-3.1-8b-instruct",
    "qwen1.5-7b-chat",
    "llama-3-8b-instruct",
    "gemma-7b-it",
    "phi-3-medium-4k-instruct",
    "mixtral-8x7b-instruct-v0.1",
)
TINY = (
    "tiny-mistral",
    "tiny-mistral-instruct",
    "tiny-qwen2",
    "tiny-qwen2-instruct",
    "tiny-llama",
    "tiny-llama-instruct",
    "tiny-phi3",
    "tiny-gemma",
)
# The published architectures (model cards): layers, query heads, kv heads, head dim, d_model.
_MISTRAL = Dims(n_layers=32, n_heads=32, n_kv_heads=8, head_dim=128, d_model=4096)
_QWEN25 = Dims(n_layers=28, n_heads=28, n_kv_heads=4, head_dim=128, d_model=3584)
PUBLISHED_DIMS = {
    "mistral-7b-instruct-v0.2": _MISTRAL, "mistral-7b-v0.1": _MISTRAL, "mistral-7b-instruct-v0.1": _MISTRAL,
    "qwen2.5-7b": _QWEN25, "qwen2.5-7b-instruct": _QWEN25,
    "llama-3.1-8b": _MISTRAL, "llama-3.1-8b-instruct": _MISTRAL, "llama-3-8b-instruct": _MISTRAL,
    "qwen1.5-7b-chat": Dims(n_layers=32, n_heads=32, n_kv_heads=32, head_dim=128, d_model=4096),
    "gemma-7b-it": Dims(n_layers=28, n_heads=16, n_kv_heads=16, head_dim=256, d_model=3072),
    "phi-3-medium-4k-instruct": Dims(n_layers=40, n_heads=40, n_kv_heads=10, head_dim=128, d_model=5120),
    "mixtral-8x7b-instruct-v0.1": _MISTRAL,
}
REAL_CPU = ("smollm2-135m-instruct",)
HEX40 = re.compile(r"^[0-9a-f]{40}$")
VALID_ENTRY = """[models.demo]
hf_id = "org/demo"
revision = "0123456789abcdef0123456789abcdef01234567"
family = "mistral"
dtype = "float16"
variant = "base"
config = "mistral-7b-v0.1.json"
"""


@pytest.fixture
def no_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline, with an empty Hugging Face cache, whatever the machine holds."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def state(lm: LoadedModel) -> dict[str, torch.Tensor]:
    return lm.model.state_dict()


# --- registry ---------------------------------------------------------------------------------------------


def test_registry_holds_the_published_tiny_and_real_cpu_models() -> None:
    registry = load_registry()
    assert len(registry) == 21
    assert set(registry) == set(PUBLISHED) | set(TINY) | set(REAL_CPU)
    assert [m for m, spec in registry.items() if spec.cpu] == list(REAL_CPU)
    assert all(spec.id == model_id for model_id, spec in registry.items())


def test_published_models_pin_a_40_hex_revision() -> None:
    for model_id in PUBLISHED:
        spec = get_spec(model_id)
        assert HEX40.match(spec.revision), f"{model_id}: revision {spec.revision!r} is not a pinned commit"
        assert not spec.tiny and spec.chat_template is False  # neither source applied a chat template


def test_instruct_models_name_a_registered_base_of_the_same_family() -> None:
    registry = load_registry()
    for spec in registry.values():
        if spec.base is not None:
            assert spec.variant == "instruct"
            assert registry[spec.base].family == spec.family and registry[spec.base].variant == "base"


@pytest.mark.parametrize("published_id", PUBLISHED)
def test_published_architecture_dims_load_through_dims(published_id: str) -> None:
    spec = get_spec(published_id)
    assert architecture(spec)["model_type"] == spec.family
    assert Dims.from_config(_config_from(spec)) == PUBLISHED_DIMS[published_id]


# Published parameter counts (model cards), to 0.5%: the architecture files hold the published dimensions.
FULL_SIZE_PARAMS = {"qwen1.5-7b-chat": 7.72e9, "llama-3-8b-instruct": 8.03e9, "gemma-7b-it": 8.54e9,
                    "phi-3-medium-4k-instruct": 13.96e9, "mixtral-8x7b-instruct-v0.1": 46.70e9}
H200_BYTES = 139 * 2**30


@pytest.mark.parametrize("arch_id", FULL_SIZE_PARAMS)
def test_cross_architecture_models_build_at_full_size_and_their_value_sites_resolve(arch_id: str) -> None:
    """Built on the meta device (no memory): the parameter count, one GPU's worth in 16 bits, and the late-layer
    v site (phi3: a slice of the fused qkv projection) with the width its config implies."""
    from transformers import AutoModelForCausalLM

    from harness.engine.sites import resolve, site_width

    config = _config_from(get_spec(arch_id))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    assert abs(n_params / FULL_SIZE_PARAMS[arch_id] - 1) < 0.005
    assert 2 * n_params < H200_BYTES  # the model alone fits one H200 in 16 bits; Mixtral's twin would not
    dims = Dims.from_config(config)
    site = resolve(model, f"blocks.{dims.n_layers - 4}.attn.v")
    fused = dims.n_heads * dims.head_dim + 2 * dims.n_kv_heads * dims.head_dim
    start, stop = site.part._blocked_bounds() if site.part is not None else (0, site.module.out_features)
    assert stop - start == site_width("attn.v", dims) == dims.n_kv_heads * dims.head_dim
    assert (site.part is not None) == (arch_id == "phi-3-medium-4k-instruct")
    if site.part is not None:
        assert site.module.out_features == fused


def test_mistral_instruct_v02_value_width_is_1024_not_4096() -> None:
    dims = Dims.from_config(_config_from(get_spec("mistral-7b-instruct-v0.2")))
    assert (dims.n_layers, dims.n_heads, dims.n_kv_heads, dims.head_dim) == (32, 32, 8, 128)
    assert dims.n_kv_heads * dims.head_dim == 1024 != dims.d_model


@pytest.mark.parametrize("tiny_id", TINY)
def test_tiny_architectures_use_gqa_odd_heads_and_unpublished_depths(tiny_id: str) -> None:
    dims = Dims.from_config(_config_from(get_spec(tiny_id)))
    assert dims.n_kv_heads < dims.n_heads and dims.n_heads % 2 == 1
    assert dims.n_layers not in (28, 32) and dims.n_layers >= 12


def test_unknown_model_lists_the_known_ids() -> None:
    with pytest.raises(KeyError) as err:
        get_spec("mistral-7b")
    message = err.value.args[0]
    assert message.startswith("unknown model 'mistral-7b'; known models: ")
    assert all(model_id in message for model_id in (*PUBLISHED, *TINY))


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ('revsion = "x"\n', r"model 'demo' has unknown keys \['revsion'\]; allowed: \["),
        ("", None),
    ],
)
def test_registry_rejects_unknown_keys(tmp_path: Path, change: str, pattern: str | None) -> None:
    path = tmp_path / "registry.toml"
    path.write_text(VALID_ENTRY + change, encoding="utf-8")
    if pattern is None:
        assert DTYPES[load_registry(path)["demo"].dtype] is torch.float16
        return
    with pytest.raises(ValueError, match=pattern) as err:
        load_registry(path)
    assert str(err.value).startswith(str(path))


@pytest.mark.parametrize(
    ("old", "new", "pattern"),
    [
        ('family = "mistral"', 'family = "bloom"', r"family='bloom'; allowed: \('llama', 'mistral', 'qwen2', "),
        (
            'dtype = "float16"',
            'dtype = "fp16"',
            r"dtype='fp16'; allowed: \['bfloat16', 'float16', 'float32'\]",
        ),
        (
            'variant = "base"',
            'variant = "instruct"\nbase = "nowhere"',
            r"names base 'nowhere', which is not in",
        ),
    ],
)
def test_registry_rejects_bad_values(tmp_path: Path, old: str, new: str, pattern: str) -> None:
    path = tmp_path / "registry.toml"
    path.write_text(VALID_ENTRY.replace(old, new), encoding="utf-8")
    with pytest.raises(ValueError, match=pattern) as err:
        load_registry(path)
    assert str(err.value).startswith(f"{path}: model 'demo'")
    assert {"mistral", "qwen2", "llama", "phi3", "gpt2"} <= set(FAMILIES) and "float16" in DTYPES


# --- missing weights --------------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_hub_cache")
@pytest.mark.parametrize("allow_download", [False, True])
def test_missing_pretrained_weights_name_model_revision_and_fix(allow_download: bool) -> None:
    spec = get_spec("mistral-7b-v0.1")
    with pytest.raises(ModelUnavailable) as err:
        load(spec, allow_download=allow_download)  # HF_HUB_OFFLINE=1 wins over --allow-download
    message = str(err.value)
    assert message.startswith(f"the weights of 'mistral-7b-v0.1' ({spec.hf_id} @ {spec.revision}) are not in the "
                              "local Hugging Face cache at the pinned revision, and this run does not download")
    assert "(1) --model-path mistral-7b-v0.1=DIR" in message and "(3) --weights random" in message
    assert f"(2) download them once into the Hugging Face cache at the pinned revision (`hf download {spec.hf_id} " \
           f"--revision {spec.revision}`" in message
    assert "connect" not in message  # offline, a missing snapshot is no network fault


@pytest.mark.parametrize(("make", "says"), [("missing", "does not exist"), ("file", "is a file, not a directory")])
def test_model_path_that_is_not_a_directory(tmp_path: Path, make: str, says: str) -> None:
    path = tmp_path / "weights"
    if make == "file":
        path.write_text("not a model", encoding="utf-8")
    with pytest.raises(ModelPathError, match=rf"--model-path mistral-7b-v0.1={re.escape(str(path))}: the path "
                                             rf"{says}; give a directory written by save_pretrained"):
        load(get_spec("mistral-7b-v0.1"), model_path=path)


@pytest.mark.usefixtures("no_hub_cache")
def test_model_path_directory_without_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelPathError, match=r"--model-path qwen2.5-7b=.*: the path is an empty directory"):
        load(get_spec("qwen2.5-7b"), model_path=tmp_path)
    (tmp_path / "notes.txt").write_text("x", encoding="utf-8")
    with pytest.raises(ModelPathError, match=r"the path holds no config.json \(it holds: notes.txt\)"):
        load(get_spec("qwen2.5-7b"), model_path=tmp_path)


@pytest.mark.usefixtures("no_hub_cache")
def test_model_path_directory_with_a_config_but_no_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        _config_from(get_spec("tiny-qwen2")).to_json_string(), encoding="utf-8"
    )
    with pytest.raises(ModelPathError, match=r"--model-path qwen2.5-7b=.*: the path holds no weights \(none of "
                                             r"\*\.safetensors, pytorch_model\*\.bin, \*\.gguf\)"):
        load(get_spec("qwen2.5-7b"), model_path=tmp_path)


@pytest.mark.usefixtures("no_hub_cache")
def test_model_path_whose_weights_do_not_load_says_why(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        _config_from(get_spec("tiny-qwen2")).to_json_string(), encoding="utf-8"
    )
    (tmp_path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!")
    (tmp_path / "tokenizer.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ModelPathError, match=r"--model-path qwen2.5-7b=.*: the model there does not load "
                                             r"\(SafetensorError: "):
        load(get_spec("qwen2.5-7b"), model_path=tmp_path)


def test_load_rejects_an_unknown_weights_kind() -> None:
    with pytest.raises(ValueError, match=r"weights='trained'; allowed: \('pretrained', 'random'\)"):
        load(get_spec("tiny-mistral"), weights="trained")


def test_tiny_model_needs_a_cache_dir() -> None:
    with pytest.raises(ValueError, match="tiny model 'tiny-llama' needs a cache_dir"):
        load(get_spec("tiny-llama"))


# --- tiny models ------------------------------------------------------------------------------------------


def test_tiny_models_load_with_their_config_dims(tiny_models: dict[str, LoadedModel]) -> None:
    for model_id, lm in tiny_models.items():
        spec = get_spec(model_id)
        assert lm.dims == Dims.from_config(_config_from(spec))
        info = lm.describe()
        assert (info["id"], info["requested_revision"], info["weights"], info["dtype"]) == (
            model_id,
            "tiny",
            "tiny",
            "float32",
        )
        assert info["resolved_revision"].startswith("local:") and info["dims"] == vars(lm.dims)
        assert lm.tokenizer.padding_side == "right" and lm.tokenizer.pad_token is not None


def test_tiny_model_round_trips_through_its_saved_directory(tmp_path: Path) -> None:
    lm = load(get_spec("tiny-mistral"), cache_dir=tmp_path)
    directory = tmp_path / "tiny-mistral"
    assert {"config.json", "harness_provenance.json", "tokenizer.json"} <= {
        p.name for p in directory.iterdir()
    }
    again = load(lm.spec, model_path=directory)
    assert again.resolved_revision == lm.resolved_revision
    assert again.resolved_revision.startswith("local:") and len(again.resolved_revision) == len("local:") + 12
    for name, tensor in state(lm).items():
        assert torch.equal(tensor, state(again)[name]), name
    prompt = "The capital of France is"
    assert again.tokenizer(prompt)["input_ids"] == lm.tokenizer(prompt)["input_ids"]


def test_tiny_builds_are_seeded(tmp_path: Path, tiny_models: dict[str, LoadedModel]) -> None:
    lm = tiny_models["tiny-llama"]
    same = load(lm.spec, cache_dir=tmp_path / "same", seed=0)
    other = load(lm.spec, cache_dir=tmp_path / "other", seed=1)
    assert same.resolved_revision == lm.resolved_revision != other.resolved_revision
    name = "model.layers.0.self_attn.v_proj.weight"
    assert torch.equal(state(same)[name], state(lm)[name])
    assert not torch.equal(state(other)[name], state(lm)[name])


def test_tiny_instruct_twin_is_a_perturbation_of_its_base(
    tmp_path: Path, tiny_models: dict[str, LoadedModel]
) -> None:
    base = tiny_models["tiny-qwen2"]
    twin = load(get_spec("tiny-qwen2-instruct"), cache_dir=tmp_path)
    assert twin.spec.base == base.id and twin.dims == base.dims
    assert twin.resolved_revision != base.resolved_revision
    for name, weight in state(base).items():
        if weight.norm() == 0:  # zero-initialised biases: a multiplicative perturbation keeps them zero
            assert torch.equal(state(twin)[name], weight), name
            continue
        delta = (state(twin)[name] - weight).norm() / weight.norm()
        assert 0.01 < delta < 0.5, f"{name}: relative change {delta:.3f} is not a small perturbation"


# --- random weights ---------------------------------------------------------------------------------------


def test_random_weight_build_is_seeded_and_recorded() -> None:
    spec = get_spec("tiny-mistral")  # the random-weight path at tiny size; published ones are GPU-sized
    first, again, other = (_load_random(spec, ["cpu"], seed) for seed in (0, 0, 3))
    assert first.weights == "random" and first.source == "fixtures/models/tiny-mistral.json"
    assert re.match(r"^random:seed0:[0-9a-f]{12}$", first.resolved_revision)
    assert other.resolved_revision.startswith("random:seed3:")
    assert first.dims == Dims.from_config(_config_from(spec)) and first.model.dtype == torch.float32
    assert first.provenance["random_seed"] == 0 and first.provenance["tokenizer"].startswith(
        "harness-offline-bpe:"
    )
    name = "model.layers.0.self_attn.v_proj.weight"
    assert torch.equal(state(first)[name], state(again)[name])
    assert not torch.equal(state(first)[name], state(other)[name])
    ids = first.tokenizer("Observe yourself generating this response.")["input_ids"]
    assert max(ids) < first.model.config.vocab_size and ids[0] == first.tokenizer.bos_token_id


def test_architecture_files_exist_for_every_spec_without_a_source() -> None:
    for spec in load_registry().values():
        assert (MODELS_DIR / spec.config).is_file() if spec.source is None else spec.config == "", spec.id


def test_a_protocol_dtype_overrides_the_registry_and_is_what_the_report_records(tmp_path) -> None:
    """Issue 10 §1: the claim TOML's dtype was never read (rv_contraction ran mistral-7b-v0.1 in float32, the
    report said float16). load(dtype=) now builds the model in the protocol's dtype, and describe() reports the
    dtype that ran."""
    spec = get_spec("tiny-mistral")
    lm = load(spec, cache_dir=tmp_path, dtype="bfloat16")
    assert lm.model.dtype == torch.bfloat16 and lm.describe()["dtype"] == "bfloat16"
    assert load(spec, cache_dir=tmp_path).describe()["dtype"] == spec.dtype
    random = _load_random(get_spec("tiny-qwen2"), ["cpu"], 0, torch.float16)
    assert random.model.dtype == torch.float16
    with pytest.raises(ValueError, match=r"dtype='float8'.*allowed: float16, bfloat16, float32"):
        load(spec, cache_dir=tmp_path, dtype="float8")


def test_the_null_weights_twin_has_the_architecture_and_tokenizer_but_not_the_weights(tmp_path) -> None:
    lm = load(get_spec("tiny-llama"), cache_dir=tmp_path, dtype="bfloat16")
    twin, again, other = random_twin(lm, 0), random_twin(lm, 0), random_twin(lm, 1)
    assert twin.dims == lm.dims and twin.model.dtype == torch.bfloat16 and twin.tokenizer is lm.tokenizer
    assert twin.weights == "random" and twin.provenance["twin_of"] == lm.id
    assert twin.provenance["weight_seed"] == null_seed(lm.spec, 0) != model_seed(lm.spec, 0)
    name = "model.layers.0.self_attn.v_proj.weight"
    assert not torch.equal(state(twin)[name], state(lm)[name])
    assert torch.equal(state(twin)[name], state(again)[name]) and not torch.equal(state(twin)[name], state(other)[name])


def test_a_null_twin_that_cannot_fit_on_the_gpu_skips_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mixtral-8x7B fits one H200 in 16 bits, its twin beside it does not: the null-weights check skips, naming
    the sizes and the two ways out, instead of running out of memory."""
    from types import SimpleNamespace

    from harness.plugin.fixtures import _twin_fits

    weights = torch.nn.Linear(1024, 1024, bias=False).to(torch.float16)  # 2 MiB
    lm = SimpleNamespace(id="big", device=torch.device("cuda:0"), model=weights)
    reserved = {"free": 1 << 20, "reserved": 0}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda _device: (reserved["free"], 1 << 40))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda _device: reserved["reserved"])
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda _device: 0)
    with pytest.raises(pytest.skip.Exception, match=r"twin of big needs 0\.0 GiB .*--gpus-per-model 2.*"
                                                    r"--no-null-weights"):
        _twin_fits(lm)  # type: ignore[arg-type]
    reserved["reserved"] = 4 << 20  # memory torch holds in its cache counts as free
    _twin_fits(lm)  # type: ignore[arg-type]


def test_a_model_too_big_for_what_is_cached_frees_twins_first_then_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before a full-size Mixtral (87 GiB in bf16, counted on the meta device) loads on one GPU, cached twins and
    then cached models are dropped, oldest first, until it fits, and no more."""
    from types import SimpleNamespace

    from harness.engine.models import parameter_bytes
    from harness.plugin import fixtures

    spec = get_spec("mixtral-8x7b-instruct-v0.1")
    needed = parameter_bytes(spec)
    assert needed is not None and abs(needed / 2**30 - 87.0) < 0.5
    registry = load_registry()
    opts = SimpleNamespace(registry=registry, device="cuda:0", shard_devices=[])
    cache = fixtures.ModelCache(opts)  # type: ignore[arg-type]
    cache._loaded.update({("a", None): "model a", ("b", None): "model b"})
    cache._twins.update({("a", None): "twin a", ("b", None): "twin b"})
    held = {"gib": 10}  # what is free now; each dropped entry gives 40 GiB back
    monkeypatch.setattr(fixtures, "_free_bytes", lambda _device: held["gib"] * 2**30)
    monkeypatch.setattr(fixtures, "free_device_memory", lambda: held.__setitem__("gib", held["gib"] + 40))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cache._make_room("mixtral-8x7b-instruct-v0.1", None)
    assert not cache._twins and list(cache._loaded) == [("a", None), ("b", None)]  # 90 GiB free: enough
    held["gib"] = 10
    cache._twins.update({("b", None): "twin b"})
    cache._make_room("mixtral-8x7b-instruct-v0.1", None)
    assert not cache._twins and list(cache._loaded) == [("b", None)]  # the twin, then the oldest model
    assert parameter_bytes(get_spec("tiny-mistral"), "float32") is not None
