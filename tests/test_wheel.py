"""The package as a user gets it: the wheel, installed into a fresh virtual environment, in foreign folders.

The wheel is built from a copy of this checkout (the checkout itself stays clean) and installed offline with
`--no-deps --no-index` into a new venv; torch, transformers and pytest come from this environment through a
.pth file, so nothing is downloaded. Then, with no PYTHONPATH and outside the checkout:
- the third-party repository of docs/writing-a-claim.md (its files are read from the guide's code blocks and
  its command from the guide's `run` block) runs its claim on the tiny stand-ins, and the report holds it;
- `pytest --help` and an unrelated test file in an unrelated folder work, import no model code and write no
  report.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # about 20 s: a wheel build, a venv and three pytest runs in subprocesses

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "writing-a-claim.md"
CLAIM = "repetition_collapses_values"
NOT_COPIED = shutil.ignore_patterns(".git", ".venv", "results", "build", "dist", "*.egg-info", "__pycache__",
                                    ".hypothesis", ".pytest_cache", ".benchmarks", ".tox", ".whl", ".carry")
QUIET = ["-p", "no:cacheprovider", "-p", "no:benchmark"]  # plugins of this environment that write files themselves
UNRELATED_TEST = '''
import sys


def test_arithmetic_still_works():
    assert 1 + 1 == 2
    assert not [name for name in sys.modules if name.startswith("harness.engine")], "the plugin loaded model code"
'''


@dataclass(frozen=True)
class Installed:
    python: Path  # the fresh venv's interpreter

    def run(self, args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS")}
        env["HF_HUB_OFFLINE"] = "1"
        return subprocess.run([str(self.python), *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)


def _checked(done: subprocess.CompletedProcess[str], what: str) -> str:
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{what} failed ({done.returncode}):\n{output[-4000:]}"
    return output


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    source = base / "src"
    shutil.copytree(ROOT, source, symlinks=True, ignore=NOT_COPIED)
    _checked(subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                             "--no-index", "-q", "-w", str(base / "dist")], capture_output=True, text=True,
                            timeout=600, check=False), "pip wheel")
    (wheel,) = (base / "dist").glob("claim_harness-*.whl")
    venv = base / "venv"
    _checked(subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], capture_output=True,
                            text=True, timeout=300, check=False), "python -m venv")
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    host = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (Path(purelib) / "host-environment.pth").write_text("\n".join(host) + "\n", encoding="utf-8")
    env = Installed(python)
    _checked(env.run(["-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], base), "pip install")
    return env


def test_the_wheel_is_what_the_venv_imports(installed: Installed, tmp_path: Path) -> None:
    out = _checked(installed.run(["-c", "import harness, claims; print(harness.__file__); print(claims.__file__)"],
                                 tmp_path), "import")
    for line in out.split():
        assert Path(line).is_relative_to(installed.python.parents[1]), f"{line} is not inside the fresh venv"


def guide_files() -> dict[str, str]:
    """The files the guide asks for: each code block preceded by `<!-- file: PATH -->`."""
    text = GUIDE.read_text(encoding="utf-8")
    return dict(re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", text, re.S))


def guide_command(name: str) -> list[str]:
    """The pytest command of the guide's block preceded by `<!-- run: NAME -->`."""
    text = GUIDE.read_text(encoding="utf-8")
    (command,) = re.findall(rf"<!-- run: {name} -->\n```bash\n(.*?)\n```", text, re.S)
    words = shlex.split(command)
    assert words[0] == "pytest", f"the guide's {name} command does not start with pytest: {command!r}"
    return ["-m", "pytest", *words[1:]]


def test_a_third_party_claim_from_the_guide_runs_and_is_reported(installed: Installed, tmp_path: Path) -> None:
    files = guide_files()
    assert {Path(p).name for p in files} == {"claim.toml", "prompts.toml", f"test_{CLAIM}.py"}
    for relative, content in files.items():
        assert "harness." not in content.replace("harness.api", ""), f"{relative} reaches past harness.api"
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(content, encoding="utf-8")
    output = _checked(installed.run([*guide_command("tiny"), "-p", "no:cacheprovider"], tmp_path), "the guide's run")
    document = json.loads((tmp_path / "results" / "claims.json").read_text(encoding="utf-8"))
    mine = [r for r in document["results"] if r["claim"] == CLAIM]
    assert sorted((r["model"], r["protocol"]) for r in mine) == [
        (model, protocol) for model in ("tiny-llama", "tiny-qwen2")
        for protocol in ("as_published", "control:bos_excluded", "null:random_weights")]
    for result in mine:
        assert result["outcome"] == "passed" and result["passed"] in (True, False, None)
        assert result["scope"] == "stand-in" and result["weights"] == "tiny"
        assert result["layer_map"]["published_n_layers"] == 30 != result["layer_map"]["n_layers"]
        assert result["prompt_banks"][0]["id"] == CLAIM
    for control in (r for r in mine if r["kind"] == "control"):  # the guide's control states its effect
        assert control["decision"] in ("pass", "fail", "underpowered")
        assert control["effect"]["name"] == "separation" and control["effect"]["published"] == 2.5
        assert control["effect"]["ci_low"] <= control["effect"]["estimate"] <= control["effect"]["ci_high"]
    nulls = [r for r in mine if r["kind"] == "null"]
    assert [r["null_model"]["weights"] for r in nulls] == ["random", "random"]
    verdicts = {(v["claim"], v["model"]): v["verdict"] for v in document["verdicts"]}
    assert set(verdicts) == {(CLAIM, "tiny-llama"), (CLAIM, "tiny-qwen2")}
    assert (tmp_path / "results" / "claims.html").is_file()
    assert f"{CLAIM}  tiny-llama" in output  # the terminal table of verdicts


def test_pytest_help_in_an_unrelated_folder_works_and_writes_nothing(installed: Installed, tmp_path: Path) -> None:
    output = _checked(installed.run(["-m", "pytest", "--help", *QUIET], tmp_path), "pytest --help")
    assert "published-claim verification:" in output and "--model=NAME=SOURCE" in output
    assert list(tmp_path.iterdir()) == []


def test_an_unrelated_test_file_runs_untouched(installed: Installed, tmp_path: Path) -> None:
    (tmp_path / "test_unrelated.py").write_text(UNRELATED_TEST, encoding="utf-8")
    output = _checked(installed.run(["-m", "pytest", "-q", *QUIET], tmp_path), "unrelated pytest")
    assert "1 passed" in output and "claim-harness" not in output
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == ["test_unrelated.py"]
