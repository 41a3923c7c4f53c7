"""A user's own models (issue 11): `--model NAME=SOURCE`, `--model-registry`, `--pair`, which claims run on
them, how they are marked, and how the report labels them (generalisation). The plugin's start-up checks fail
once, before anything loads: a pickle-only directory, an unsupported architecture, an unknown pair."""

from __future__ import annotations

import json
import pickle
import struct
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from harness import plugin_installed
from harness.claimkit.registry import get_claim
from harness.engine.sources import SourceError
from harness.engine.specs import extended, load_registry, paired, user_spec
from harness.plugin.collection import applicable_models, model_marks
from harness.plugin.options import Options
from harness.plugin.usermodels import selected_models
from harness.report.document import aggregate, summary_rows
from harness.report.html import render

PLUGIN_ARGS = [] if plugin_installed() else ["-p", "harness.plugin"]
ROOT = Path(__file__).resolve().parents[1]


def options(registry: dict[str, Any], models: list[str], generalise: set[str]) -> Options:
    return Options(models, {}, "pretrained", "cpu", {}, 0, False, 8, registry, ROOT, generalise=frozenset(generalise))


def fake_config(**given: Any) -> Any:
    defaults = {"--models": None, "--model": [], "markexpr": ""}
    values = {**defaults, **given}
    return SimpleNamespace(getoption=lambda name: values[name])


# --- registry entries of a user's models -----------------------------------------------------------------


def test_a_model_from_the_command_line_is_a_generalisation_candidate(tmp_path: Path) -> None:
    spec = user_spec("mine", str(tmp_path / "m.gguf"))
    assert (spec.family, spec.dtype, spec.variant, spec.origin, spec.bos) == ("auto", "float32", "unknown",
                                                                              "--model", True)
    assert spec.source == str(tmp_path / "m.gguf") and spec.base is None and not spec.tiny


def test_a_user_registry_resolves_relative_sources_and_may_not_reuse_ids(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text('[models.mine]\nsource = "weights/mine"\nvariant = "instruct"\n', encoding="utf-8")
    mine = load_registry(path, origin=f"--model-registry {path}")["mine"]
    assert mine.source == str(tmp_path / "weights" / "mine") and mine.variant == "instruct"
    path.write_text('[models.tiny-llama]\nsource = "x"\n', encoding="utf-8")
    with pytest.raises(SourceError, match=r"model id\(s\) \['tiny-llama'\] from --model-registry .* are already "
                       r"in the registry; choose another NAME"):
        extended(load_registry(), load_registry(path, origin=f"--model-registry {path}"))


def test_pair_names_the_base_and_unknown_models_fail() -> None:
    registry = extended(load_registry(), {"a": user_spec("a", "/x/a"), "b": user_spec("b", "/x/b")})
    done = paired(registry, {"a": "b"})
    assert (done["a"].base, done["a"].variant, done["b"].variant) == ("b", "instruct", "base")
    with pytest.raises(SourceError, match=r"--pair a=nobody: unknown model\(s\) \['nobody'\]"):
        paired(registry, {"a": "nobody"})


# --- which claims run where -------------------------------------------------------------------------------


def test_chosen_models_run_every_compatible_claim_and_defaults_only_their_own() -> None:
    registry = extended(load_registry(), {"mine": user_spec("mine", "/x/mine")})
    rv, rfc = get_claim("rv_contraction"), get_claim("rfc_instruct_compresses_mistral")
    assert (rv.needs, rfc.needs) == ("model", "instruct_and_base")
    chosen = options(registry, ["mine", "qwen2.5-7b-instruct"], {"mine", "qwen2.5-7b-instruct"})
    assert applicable_models(rv, chosen) == ["mine", "qwen2.5-7b-instruct"]
    assert applicable_models(rfc, chosen) == ["qwen2.5-7b-instruct"]  # the registry knows its base; mine has none
    with_base = options(paired({**registry, "b": user_spec("b", "/x/b")}, {"mine": "b"}), ["mine"], {"mine"})
    assert applicable_models(rfc, with_base) == ["mine"]
    gpu_default = options(registry, [m for m, s in registry.items() if not s.tiny and not s.cpu
                                     and s.origin == "registry"], set())
    assert applicable_models(rv, gpu_default) == list(rv.models)


def test_marks_follow_where_the_weights_can_run() -> None:
    registry = load_registry()
    names = {spec.id: {m.name for m in model_marks(spec)} for spec in
             (registry["tiny-llama"], registry["smollm2-135m-instruct"], registry["mistral-7b-v0.1"],
              user_spec("mine", "/x"))}
    assert names == {"tiny-llama": {"xdist_group"}, "smollm2-135m-instruct": {"real", "xdist_group"},
                     "mistral-7b-v0.1": {"gpu", "xdist_group"}, "mine": {"xdist_group"}}


# The default run's models: every tiny stand-in in the registry's order (the sizes of the published ones).
TINY_DEFAULT = ["tiny-mistral", "tiny-mistral-instruct", "tiny-qwen2", "tiny-qwen2-instruct", "tiny-phi3",
                "tiny-gemma", "tiny-llama", "tiny-llama-instruct"]


@pytest.mark.parametrize(("given", "models", "chosen"), [
    ({}, TINY_DEFAULT, set()),
    ({"markexpr": "real"}, ["smollm2-135m-instruct"], {"smollm2-135m-instruct"}),
    ({"markexpr": "not real"}, TINY_DEFAULT, set()),
    ({"--model": ["mine=/x"]}, ["mine"], {"mine"}),
    ({"--models": "tiny-llama,mistral-7b-v0.1"}, ["tiny-llama", "mistral-7b-v0.1"], {"mistral-7b-v0.1"}),
])
def test_selected_models(given: dict[str, Any], models: list[str], chosen: set[str]) -> None:
    registry = extended(load_registry(), {"mine": user_spec("mine", "/x")})
    assert selected_models(fake_config(**given), registry) == (models, frozenset(chosen))


def test_gpu_default_selects_the_published_models_only() -> None:
    models, chosen = selected_models(fake_config(markexpr="gpu"), load_registry())
    assert "smollm2-135m-instruct" not in models and not any(m.startswith("tiny") for m in models)
    registry = load_registry()
    published = [m for m, spec in registry.items() if not spec.tiny and not spec.cpu]
    assert models == published and chosen == frozenset()
    assert {"mistral-7b-instruct-v0.2", "qwen2.5-7b-instruct", "llama-3.1-8b",
            "mixtral-8x7b-instruct-v0.1"} <= set(models)


# --- the report's label -----------------------------------------------------------------------------------


def result(model: str, scope: str, passed: bool | None = True) -> dict[str, Any]:
    return {"claim": "c", "model": model, "protocol": "as_published", "kind": "as_published", "passed": passed,
            "weights": "pretrained", "scope": scope, "outcome": "passed", "notes": []}


def test_generalisation_is_labelled_in_the_table_and_the_page() -> None:
    verdicts = aggregate([result("mine", "generalisation"), result("published-one", "published")])
    assert [(v["model"], v["scope"]) for v in verdicts] == [("mine", "generalisation"),
                                                            ("published-one", "published")]
    rows = summary_rows(verdicts)
    assert "generalisation: evidence about the protocol on this model" in rows[1]
    assert "generalisation" not in rows[2]
    page = render({"run": {}, "models": {}, "results": [replace_outcome(r) for r in
                                                         (result("mine", "generalisation"),)],
                   "verdicts": verdicts[:1]})
    assert 'data-model="mine"' in page and ">generalisation</span>" in page
    assert "is not one of this claim's published models" in page


def replace_outcome(res: dict[str, Any]) -> dict[str, Any]:
    """A measured result as the page reads it."""
    return {**res, "claim_version": 1, "criterion": {}, "criterion_detail": {}, "published": {}, "observed": {},
            "tests": {}, "n": {}, "exclusions": {}, "non_diagnostic": False, "prompt_banks": [],
            "protocol_params": {}, "data": {}, "model_info": None, "layer_map": None}


# --- end to end through the plugin (subprocess) -----------------------------------------------------------

RV_TEST = ("import pytest\n"
           "from claims.rv_contraction.test_rv_contraction import test_rv_contraction  # noqa: F401\n"
           "pytestmark = pytest.mark.claim('rv_contraction')\n")


def run_plugin(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_rv=RV_TEST)
    root = str(ROOT)
    return pytester.runpytest_subprocess(*PLUGIN_ARGS, *args, "-p", "no:cacheprovider", f"--rootdir={root}",
                                         "-o", f"pythonpath={root}")


@pytest.mark.slow
def test_a_claim_runs_on_a_model_the_package_never_heard_of(pytester: pytest.Pytester,
                                                             tiny_models: dict[str, Any]) -> None:
    directory = pytester.path / "my-model"
    lm = tiny_models["tiny-qwen2"]
    lm.model.save_pretrained(directory)
    lm.tokenizer.save_pretrained(directory)
    out = pytester.path / "claims.json"
    ran = run_plugin(pytester, "--model", f"my={directory}", "-k", "as_published and not stated",
                     f"--claims-json={out}")
    assert ran.ret == 0, ran.outlines[-20:]
    ran.stdout.fnmatch_lines(["*rv_contraction*my*generalisation: evidence about the protocol on this model*"])
    document = json.loads(out.read_text(encoding="utf-8"))
    (res,) = document["results"]
    assert (res["model"], res["scope"], res["weights"]) == ("my", "generalisation", "pretrained")
    assert res["layer_map"]["map"][27] == 27 * lm.dims.n_layers // 32
    info = document["models"]["my"]
    assert (info["family"], info["format"], info["registered_in"]) == ("qwen2", "safetensors", "--model")
    assert info["resolved_revision"].startswith("sha256:") and info["validation"]["entropy_max_abs_error"] < 1e-4
    (verdict,) = document["verdicts"]
    assert verdict["scope"] == "generalisation"
    assert ">generalisation</span>" in (pytester.path / "claims.html").read_text(encoding="utf-8")


def test_a_pickle_only_model_fails_once_at_start_up(pytester: pytest.Pytester, tiny_models: dict[str, Any]) -> None:
    directory = pytester.path / "evil"
    directory.mkdir()
    (directory / "config.json").write_text(tiny_models["tiny-llama"].model.config.to_json_string(), encoding="utf-8")
    marker = pytester.path / "pwned"
    (directory / "model.pt").write_bytes(pickle.dumps(_Opens(marker)))
    ran = run_plugin(pytester, "--model", f"evil={directory}", "-k", "as_published")
    assert ran.ret == pytest.ExitCode.USAGE_ERROR
    ran.stderr.fnmatch_lines(["*model 'evil'*holds only pickle checkpoints (model.pt)*--allow-pickle*"])
    assert not marker.exists()


def test_an_unsupported_gguf_fails_once_naming_the_supported_list(pytester: pytest.Pytester) -> None:
    path = pytester.path / "old.gguf"
    key, arch = b"general.architecture", b"bloom"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
                     + struct.pack("<IQ", 8, len(arch)) + arch)
    ran = run_plugin(pytester, "--model", f"old={path}")
    assert ran.ret == pytest.ExitCode.USAGE_ERROR
    ran.stderr.fnmatch_lines(["*model 'old' (*old.gguf, from --model) has model_type 'bloom', which claim-harness "
                              "does not support; supported model_types: llama, mistral, qwen2, qwen3, gemma,*"])
    assert len([line for line in ran.stderr.lines if "model_type 'bloom'" in line]) == 1


class _Opens:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (str(self.path), "w")


def test_a_family_that_contradicts_the_config_is_refused(tmp_path: Path, tiny_models: dict[str, Any]) -> None:
    from harness.plugin.usermodels import checked

    tiny_models["tiny-llama"].model.save_pretrained(tmp_path)
    spec = replace(user_spec("mine", str(tmp_path)), family="qwen2")
    with pytest.raises(ValueError, match=r"family = 'qwen2', but its config says model_type 'llama'"):
        checked(spec, allow_pickle=False)
    assert checked(replace(spec, family="auto"), allow_pickle=False).family == "llama"


@pytest.mark.usefixtures("no_hub_cache")
def test_a_hub_model_that_is_not_cached_says_how_to_get_it() -> None:
    from harness.engine.models import ModelUnavailable, load

    spec = user_spec("q", "hf:HuggingFaceTB/SmolLM2-135M-Instruct@main")
    with pytest.raises(ModelUnavailable, match=r"weights for 'q' not found .*'q' comes from --model "
                       r"\(hf:HuggingFaceTB/SmolLM2-135M-Instruct@main\): .*pass --allow-download"):
        load(spec)


@pytest.fixture
def no_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


@pytest.mark.parametrize(("option", "form", "example"), [("--model", "NAME=SOURCE", "my=/models/SmolLM2.gguf"),
                                                         ("--pair", "INSTRUCT=BASE", "my-instruct=my-base")])
def test_malformed_assignments_name_the_option_the_form_and_an_example(option: str, form: str, example: str) -> None:
    from harness.plugin.options import assignments

    with pytest.raises(pytest.UsageError, match=rf"^{option} 'mine': expected {form}, e.g. {option} {example}$"):
        assignments(["mine"], option, form)
    assert assignments(["a=b=c"], option, form) == {"a": "b=c"}
