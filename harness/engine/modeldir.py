"""What is wrong with a local model directory (`--model-path ID=DIR`), found without loading anything.

Light on purpose (no torch, no transformers): the plugin checks every directory the user names when the run
starts, so a wrong path is one clear error before any model loads, never a skip or a traceback per test.
"""

from __future__ import annotations

import json
from pathlib import Path

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.gguf")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
HOW = ("a directory written by save_pretrained (config.json, tokenizer files and *.safetensors weights), "
       "e.g. a snapshot folder of the Hugging Face cache")


def problem(path: Path) -> str | None:
    """Why `path` cannot be a model directory, in words, or None when it looks loadable."""
    if not path.exists():
        return "does not exist"
    if not path.is_dir():
        return "is a file, not a directory"
    names = sorted(p.name for p in path.iterdir())
    if not names:
        return "is an empty directory"
    config = path / "config.json"
    if not config.is_file():
        return f"holds no config.json (it holds: {', '.join(names[:8])}{', ...' if len(names) > 8 else ''})"
    broken = _config_problem(config)
    if broken:
        return broken
    if not any(next(path.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        return f"holds no weights (none of {', '.join(WEIGHT_PATTERNS)})"
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        return f"holds no tokenizer (none of {', '.join(TOKENIZER_FILES)})"
    return None


def _config_problem(config: Path) -> str | None:
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        return f"has a config.json that is not UTF-8 text ({config})"
    except json.JSONDecodeError as err:
        return f"has a corrupt config.json: {err.msg} at line {err.lineno} column {err.colno} ({config})"
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        return f"has a config.json without a \"model_type\" ({config}); it is not a transformers model config"
    return None
