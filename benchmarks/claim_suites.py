"""Find each claim's protocols the way its claim test runs them, without a list to keep in step.

A claim `<id>` is run by `claims/<id>/test_<id>.py`, which imports a `PROTOCOLS` dict (protocol name -> function
of one context) from its own protocols module or a harness module. The context class is read from the
protocols' type hints. It is built from what the claim tests pass, matched by parameter name (`claim`, `lm`,
`bank`, `seed`, `batch_size`, `load` (a model loader), `cache`/`measured` (a fresh dict per claim)): through
its constructor, or else through a factory classmethod `for_*` (e.g. `RoleContext.for_instruct`, which loads
the instruct model's base). A claim whose test module, protocols or context cannot be found or built yields
the reason instead, for a clean skip.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.claimkit.registry import Claim

Protocol = Callable[[Any], dict[str, Any]]


class ContextError(ValueError):
    """A claim's context cannot be built for this model; the message says why."""


@dataclass(frozen=True)
class Suite:
    claim: Claim
    protocols: Mapping[str, Protocol]
    context: type
    module: str

    def build(self, pool: Mapping[str, Any]) -> Any:
        """The protocols' context, its parameters filled by name from `pool` (and `claim`)."""
        pool = {"claim": self.claim, **pool}
        reasons = []
        for make in self._makers():
            missing = _required(make) - set(pool)
            if missing:
                reasons.append(f"{make.__name__} needs {sorted(missing)}")
                continue
            try:
                return make(**{k: v for k, v in pool.items() if k in _accepted(make)})
            except (TypeError, ValueError) as err:
                raise ContextError(f"{self.context.__name__} cannot be built: {err}") from err
        raise ContextError(f"{self.context.__name__} cannot be built from {sorted(pool)}: "
                           + "; ".join(reasons))

    def _makers(self) -> list[Callable[..., Any]]:
        """The constructor, then the factory classmethods named for_*."""
        factories = [getattr(self.context, name) for name, value in sorted(vars(self.context).items())
                     if name.startswith("for_") and isinstance(value, classmethod)]
        return [self.context, *factories]


def _accepted(fn: Callable[..., Any]) -> set[str]:
    return set(inspect.signature(fn).parameters)


def _required(fn: Callable[..., Any]) -> set[str]:
    params = inspect.signature(fn).parameters.values()
    return {p.name for p in params if p.default is inspect.Parameter.empty
            and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}


def _protocol_modules(path: Path, package: str) -> list[str]:
    """Modules from which the claim test imports PROTOCOLS (a relative import is resolved in `package`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [f"{package}.{node.module}" if node.level else str(node.module) for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module is not None
            and any(alias.name == "PROTOCOLS" for alias in node.names)]


def _context_type(protocols: Mapping[str, Protocol]) -> type | None:
    """The annotated type of the first parameter of the first protocol that has one."""
    for fn in protocols.values():
        try:
            hints = typing.get_type_hints(fn)
        except (NameError, TypeError):
            continue
        params = list(inspect.signature(fn).parameters)
        if params and isinstance(hints.get(params[0]), type):
            return typing.cast(type, hints[params[0]])
    return None


def discover(claim: Claim) -> Suite | str:
    """The claim's protocol suite, or why there is none yet."""
    path = claim.folder / f"test_{claim.id}.py"
    if not path.is_file():
        return f"claim {claim.id!r} has no claim test {path.name} in {claim.folder} yet"
    modules = _protocol_modules(path, f"{claim.folder.parent.name}.{claim.folder.name}")
    if not modules:
        return f"{path.name} imports no PROTOCOLS dict"
    try:
        module = importlib.import_module(modules[0])
    except ImportError as err:
        return f"{modules[0]} cannot be imported ({err})"
    protocols = getattr(module, "PROTOCOLS", None)
    if not isinstance(protocols, Mapping) or not protocols:
        return f"{modules[0]}.PROTOCOLS is missing or empty"
    context = _context_type(protocols)
    if context is None:
        return f"no protocol in {modules[0]}.PROTOCOLS annotates its context parameter"
    return Suite(claim, protocols, context, modules[0])
