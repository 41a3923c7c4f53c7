"""Bad input to the plugin (issue 12): each case ends in one clear message, said once per run, that names the
value, where it came from (file and key, or option) and the fix. A run that verifies nothing does not look like
a pass, and nothing written earlier is lost.

Every test runs the real plugin through pytester, in this process where that is enough (fast), or in a
subprocess where the environment or the exit matters. Typed claim parameters ([protocol], [controls.*]) are
tested in test_claims.py.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from plugin_runs import ROOT, demo_claim, inprocess, rv_module, subprocess_run

import harness.engine.runner

TINY = "tiny-mistral-instruct"
PUBLISHED = "mistral-7b-instruct-v0.2"


def output(result: pytest.RunResult) -> str:
    return "\n".join(result.outlines + result.errlines)


def own_output(text: str) -> str:
    """The output up to pytest's short test summary (see said_once)."""
    return text.split("short test summary info", 1)[0]


def said_once(text: str, needle: str) -> None:
    """`needle` is in the run's own output once. pytest's short test summary is left out: it repeats each
    error's first line, in full when the CI variable is set and cut to the terminal's width when not."""
    own = own_output(text)
    assert own.count(needle) == 1, f"{needle!r} said {own.count(needle)} times in:\n{own[-3000:]}"


@pytest.fixture(params=["ci", "terminal"])
def ci_or_terminal(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs a test with and without the CI variable, which changes how pytest prints its summary."""
    if request.param == "ci":
        monkeypatch.setenv("CI", "1")
    else:
        for name in ("CI", "BUILD_NUMBER"):
            monkeypatch.delenv(name, raising=False)


# ------------------------------------------------------------------------ a run that runs no claim --

@pytest.mark.parametrize("args", [["--collect-only"], ["test_plain.py"]], ids=["collect-only", "no-claim-module"])
def test_a_run_without_claims_leaves_the_last_report_alone(pytester: pytest.Pytester, args: list[str]) -> None:
    demo_claim(pytester.path)
    pytester.makepyfile(test_plain="def test_plain():\n    assert 1 + 1 == 2\n")
    results = pytester.mkdir("results")
    earlier = {name: f"an earlier run's {name}\n" for name in ("claims.json", "claims.html")}
    for name, text in earlier.items():
        (results / name).write_text(text, encoding="utf-8")
    assert inprocess(pytester, *args).ret == 0
    assert {name: (results / name).read_text(encoding="utf-8") for name in earlier} == earlier
    assert inprocess(pytester, "demo_claim").ret == 0  # a run that runs a claim does write
    assert json.loads((results / "claims.json").read_text(encoding="utf-8"))["run"]["status"] == "complete"


# ----------------------------------------------------------------------------------- prompt banks --

BANK = (ROOT / "claims" / "rv_contraction" / "prompts.toml").read_text(encoding="utf-8")
FIRST_RECURSIVE = BANK.split("recursive = [", 1)[1].split('"')[1]


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda text: text.replace("recursive = [", f'recursive = [\n    "{FIRST_RECURSIVE}",', 1),
     f"category 'recursive' lists the prompt {FIRST_RECURSIVE!r} twice"),
    (lambda text: text.replace("recursive = [", "empty_one = []\nrecursive = [", 1),
     "category 'empty_one' is empty; give at least one prompt"),
    (lambda text: text.replace("recursive = [", "# caf\xe9\nrecursive = [", 1).encode("latin-1"),
     "is not UTF-8 (byte 0xe9 at offset"),
    (lambda text: text.replace("baseline = [", "baseline_renamed = [", 1),
     "reads prompt categories ['baseline'], which the prompt bank"),
], ids=["duplicate", "empty-category", "not-utf8", "missing-category"])
def test_a_bad_prompt_bank_is_one_error_at_collection(pytester: pytest.Pytester, edit, expected: str) -> None:
    bank = pytester.path / "bank.toml"
    edited = edit(BANK)
    bank.write_bytes(edited if isinstance(edited, bytes) else edited.encode("utf-8"))
    rv_module(pytester)
    result = inprocess(pytester, "--models", f"{TINY},tiny-llama-instruct", "--prompt-bank",
                       f"rv_contraction={bank}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    text = output(result)
    said_once(text, expected)
    assert f"--prompt-bank rv_contraction={bank}" in text  # where the bank came from
    assert " passed" not in text and " failed" not in text  # nothing ran


# --------------------------------------------------------------------------------- long prompts --

@pytest.mark.usefixtures("ci_or_terminal")
def test_a_prompt_longer_than_the_model_is_refused_before_any_forward(pytester: pytest.Pytester,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    forwards: list[int] = []
    real = harness.engine.runner._capture_batch

    def capture_batch(lm: object, chunk: list[str], *args: object) -> object:
        forwards.extend(len(p) for p in chunk if len(p) > 10_000)  # a forward over the long prompt
        return real(lm, chunk, *args)

    monkeypatch.setattr(harness.engine.runner, "_capture_batch", capture_batch)
    long_prompt = "the cat sat on the mat " * 2_000  # about 12,000 tokens; tiny models take 512 positions
    bank = pytester.path / "bank.toml"
    bank.write_text(BANK.replace("recursive = [", f'recursive = [\n    "{long_prompt}",', 1), encoding="utf-8")
    rv_module(pytester)
    result = inprocess(pytester, "--models", TINY, "-k", "as_published", "--prompt-bank", f"rv_contraction={bank}")
    text = output(result)
    result.assert_outcomes(errors=2)
    assert forwards == []
    said_once(text, "takes at most 512 positions")
    assert "category 'recursive': prompt 'the cat sat on the mat" in text and "characters) is" in text
    count = int(text.split(f"tokens under {TINY}'s tokenizer")[0].rsplit(" is ", 1)[1])
    assert 10_000 < count < 20_000
    assert "the error is given once per run, at" in text


@pytest.mark.parametrize("option", ["--claim-batch-size", "--claim-token-budget"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_a_batch_bound_below_one_is_a_usage_error(pytester: pytest.Pytester, option: str, value: str) -> None:
    demo_claim(pytester.path)
    result = inprocess(pytester, option, value)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    said_once(output(result), f"{option} {value}: give a whole number of")


# ------------------------------------------------------------------------------------ options --

@pytest.mark.parametrize("device", ["gpu0", "cuda0", "CPU", "cuda:x"])
def test_a_device_that_is_not_a_device_is_a_usage_error_listing_the_forms(pytester: pytest.Pytester,
                                                                           device: str) -> None:
    demo_claim(pytester.path)
    result = inprocess(pytester, "--device", device)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    said_once(output(result), f"--device {device!r} is not a device; valid forms: cpu, cuda")
    assert "cuda:N" in output(result)


def test_the_device_forms_still_run(pytester: pytest.Pytester) -> None:
    demo_claim(pytester.path)
    assert inprocess(pytester, "--device", "cpu").ret == 0


@pytest.mark.parametrize("where", ["parent-is-a-file", "is-a-directory"])
def test_an_unwritable_report_path_is_a_usage_error_before_any_model_loads(pytester: pytest.Pytester,
                                                                            where: str) -> None:
    demo_claim(pytester.path, with_weights=True)
    blocker = pytester.path / "blocker"
    if where == "parent-is-a-file":
        blocker.write_text("a file\n", encoding="utf-8")
        target = blocker / "claims.json"
    else:
        target = pytester.mkdir("a-directory")
    result = inprocess(pytester, "--claims-json", str(target))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    expected = "is a file, not a directory" if where == "parent-is-a-file" else "the report is a directory"
    said_once(output(result), expected)
    assert f"--claims-json {target}" in output(result) and "give a path in a writable directory" in output(result)


def test_the_default_report_path_is_checked_once_a_claim_is_selected(pytester: pytest.Pytester) -> None:
    demo_claim(pytester.path)
    (pytester.path / "results").write_text("a file where the results folder goes\n", encoding="utf-8")
    assert inprocess(pytester, "--collect-only").ret == 0  # nothing would be written
    result = inprocess(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    said_once(output(result), f"--claims-json {pytester.path / 'results' / 'claims.json'}: the report cannot be "
                              f"created: {pytester.path / 'results'} is a file, not a directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere: a read-only folder cannot be simulated")
def test_a_read_only_folder_is_named(pytester: pytest.Pytester) -> None:  # pragma: no cover - root in CI here
    demo_claim(pytester.path)
    locked = pytester.mkdir("locked")
    locked.chmod(0o500)
    result = inprocess(pytester, "--claims-json", str(locked / "claims.json"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "this user may not write in" in output(result)


# ------------------------------------------------------------------------------- --model-path --

def model_dir(folder: Path, state: str) -> Path:
    """A model directory in a given state of disrepair."""
    path = folder / f"model-{state}"
    if state == "missing":
        return path
    if state == "file":
        path.write_text("not a directory\n", encoding="utf-8")
        return path
    path.mkdir()
    if state == "empty":
        return path
    config = "{\"model_type\": " if state == "corrupt-config" else json.dumps({"model_type": "mistral"})
    (path / "config.json").write_text(config, encoding="utf-8")
    if state != "no-weights":
        (path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!")
        (path / "tokenizer.json").write_text("{}", encoding="utf-8")
    return path


@pytest.mark.parametrize(("state", "says"), [
    ("missing", "the path does not exist"),
    ("file", "the path is a file, not a directory"),
    ("empty", "the path is an empty directory"),
    ("corrupt-config", "the path has a corrupt config.json: Expecting value at line 1 column"),
    ("no-weights", "the path holds no weights (none of *.safetensors"),
], ids=lambda v: v if " " not in v else "")
def test_a_bad_model_path_is_a_usage_error_saying_what_is_wrong(pytester: pytest.Pytester, state: str,
                                                                says: str) -> None:
    demo_claim(pytester.path, with_weights=True)
    path = model_dir(pytester.path, state)
    result = inprocess(pytester, "--models", PUBLISHED, "--model-path", f"{PUBLISHED}={path}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    said_once(output(result), f"--model-path {PUBLISHED}={path}: {says}")


@pytest.mark.usefixtures("ci_or_terminal")
def test_a_model_path_that_does_not_load_is_an_error_said_once(pytester: pytest.Pytester) -> None:
    """A directory that looks right but holds broken weights: an error (not a skip), in full at the first test."""
    demo_claim(pytester.path, with_weights=True)
    path = model_dir(pytester.path, "broken-weights")
    shutil.copy(ROOT / "fixtures" / "models" / "tiny-mistral.json", path / "config.json")
    result = inprocess(pytester, "--models", PUBLISHED, "--model-path", f"{PUBLISHED}={path}")
    result.assert_outcomes(errors=3)
    text = output(result)
    said_once(text, f"--model-path {PUBLISHED}={path}: the model there does not load (SafetensorError")
    assert own_output(text).count(f"{PUBLISHED} did not load; the error is given once per run, at") == 2
    assert "Traceback" not in text


def test_a_model_path_for_an_unknown_model_is_a_usage_error(pytester: pytest.Pytester) -> None:
    demo_claim(pytester.path)
    path = model_dir(pytester.path, "ok")
    result = inprocess(pytester, "--model-path", f"mistral-7b-instruct-v2={path}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    said_once(output(result), "unknown model 'mistral-7b-instruct-v2' (did you mean 'mistral-7b-instruct-v0.2'?)")


def test_a_model_path_for_a_model_not_selected_is_named_in_the_summary(pytester: pytest.Pytester) -> None:
    demo_claim(pytester.path)
    path = model_dir(pytester.path, "ok")
    result = inprocess(pytester, "--model-path", f"mistral-7b-v0.1={path}")
    assert result.ret == 0
    said_once(output(result), f"--model-path mistral-7b-v0.1={path} was not used: mistral-7b-v0.1 is not among "
                              "this run's models")
    assert "select it with --models mistral-7b-v0.1" in output(result)


# ------------------------------------------------------------------ no weights: nothing verified --

def test_a_gpu_run_without_weights_fails_with_one_closing_line(pytester: pytest.Pytester, tmp_path: Path) -> None:
    """`pytest -m gpu` with no weights anywhere (an empty HF cache, offline): no pass, one message per model."""
    demo_claim(pytester.path, with_weights=True)
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    done = subprocess_run(pytester.path, "-m", "gpu", "--models", PUBLISHED, "-k", "as_published", env=env)
    text = done.stdout + done.stderr
    assert done.returncode == 1, text
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    last = next(line for line in lines if line.startswith("no claim was verified"))
    assert lines.index(last) == len(lines) - 2, text  # the closing line, before pytest's tally
    assert last.startswith("no claim was verified: all 1 claim tests were skipped"), text
    assert "--allow-unverified exits 0" in last and "--model-path ID=DIR" in last
    said_once(text, f"{PUBLISHED}: 1 skipped: the weights of '{PUBLISHED}' (mistralai/Mistral-7B-Instruct-v0.2 @ ")
    said_once(text, "are not in the local Hugging Face cache at the pinned revision")
    assert "couldn't connect" not in text.lower()
    for way in ("(1) --model-path", "(2) download them once", "(3) --weights random"):
        said_once(text, way)


SKIPS_EVERYTHING = """

@pytest.fixture(autouse=True)
def no_weights_here():
    pytest.skip("no weights here")
"""


def test_allow_unverified_exits_zero_for_ci_that_only_checks_collection(pytester: pytest.Pytester) -> None:
    demo_claim(pytester.path, extra=SKIPS_EVERYTHING)
    strict = inprocess(pytester)
    assert strict.ret == 1 and "no claim was verified: all 6 claim tests were skipped" in output(strict)
    allowed = inprocess(pytester, "--allow-unverified")
    assert allowed.ret == 0 and "Exit status 0: --allow-unverified." in output(allowed)
    assert "no claim was verified" in output(allowed)  # said, but not failed


# ------------------------------------------------------------------------------ temporary folders --

def test_the_runs_temporary_folder_is_removed(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Path] = []
    real = tempfile.mkdtemp

    def mkdtemp(*args: str, **kwargs: str) -> str:
        made.append(Path(real(*args, **kwargs)))
        return str(made[-1])

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    demo_claim(pytester.path, with_weights=True)  # the tiny model is built and saved in the run's folder
    assert inprocess(pytester, "--models", TINY, "-k", "as_published").ret == 0
    ours = [p for p in made if p.name.startswith("claim-harness-")]
    assert len(ours) == 1  # the run's folder, where the tiny model was saved
    assert not ours[0].exists()


# --------------------------------------------------------------------------- terminal output --

def test_progress_lines_never_split_a_row_of_dots(pytester: pytest.Pytester) -> None:
    demo_claim(pytester.path)
    plain = output(inprocess(pytester))
    rows = [line for line in plain.splitlines() if line.startswith("demo_claim/")]
    assert len(rows) == 1 and rows[0].startswith("demo_claim/test_demo_claim.py ......") and rows[0].endswith("]")
    assert "claim-harness [" not in plain and "progress by claim and model: -v" in plain
    verbose = output(inprocess(pytester, "-v"))
    progress = [line for line in verbose.splitlines() if line.startswith("claim-harness [")]
    assert [line.split("] ")[1] for line in progress] == ["demo_claim on tiny-mistral-instruct",
                                                         "demo_claim on tiny-llama-instruct"]
    assert all("PASSED" not in line for line in progress)


def test_the_summary_lines_end_without_a_space(pytester: pytest.Pytester) -> None:
    """The rerun line, and the verdict rows that have no notes (the published-data row of a re-derivation)."""
    rv_module(pytester, "test_rederive")
    text = output(inprocess(pytester))
    summary = text.split("claim verdicts")[1].splitlines()
    assert any(line.startswith("claims report:") and "(rerun: pytest" in line for line in summary)
    assert any(line.startswith("rv_contraction  published-data") for line in summary), summary
    assert [line for line in summary if line != line.rstrip()] == []


def test_the_plugins_token_budget_default_is_the_engines() -> None:
    """Written out twice (the plugin may not import engine code in a session without claims): kept equal here."""
    from harness.engine.specs import DEFAULT_TOKEN_BUDGET as ENGINE
    from harness.plugin.options import DEFAULT_TOKEN_BUDGET as PLUGIN

    assert PLUGIN == ENGINE
