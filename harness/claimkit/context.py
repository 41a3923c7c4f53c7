"""What a claim's protocols share about one run on one model: the claim, the model, its prompt bank, the seed,
the batch size and a cache the module's protocols share (a fixture's dict), with the published-to-model layer
map, the prompt format the claim's [protocol] table names, and the smaller sizes a table may give for runs that
only check the protocol. Claims subclass ModelContext with their own sites (GenContext does, for generation)."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from harness.claimkit.prompts import PromptBank
from harness.claimkit.registry import Claim
from harness.engine.formatting import PromptFormat
from harness.engine.models import LoadedModel
from harness.engine.sites import map_layer


def _tier(lm: LoadedModel) -> str | None:
    """Which `sizes` entry applies: `stand_in` on a tiny model, `cpu` on real weights small enough for the CPU."""
    return "stand_in" if lm.spec.tiny else "cpu" if lm.spec.cpu else None


def _sized(table: dict[str, Any], lm: LoadedModel) -> dict[str, Any]:
    tier = _tier(lm)
    return {**table, **(table.get("sizes", {}).get(tier, {}) if tier else {})}


def _changes(published: dict[str, Any], here: dict[str, Any], where: str) -> list[str]:
    return [f"{where}{key} {value} (published {published[key]})" for key, value in sorted(here.items())
            if key != "sizes" and published.get(key) != value]


@dataclass(frozen=True)
class ModelContext:
    """The shared fields, the layer map and the prompt format, and the `sizes` overrides of a claim's
    [protocol] and [controls.<name>] tables for smaller runs: a table's `sizes = { stand_in = {...}, cpu = {...} }`
    applies on tiny stand-ins and on CPU real weights (`-m real`); published models (and any GPU model) run the
    published sizes."""

    claim: Claim
    lm: LoadedModel
    bank: PromptBank
    seed: int = 0
    batch_size: int = 32
    cache: dict[Hashable, Any] = field(default_factory=dict)

    @property
    def params(self) -> dict[str, Any]:
        """The [protocol] table with its size overrides for this model."""
        return _sized(dict(self.claim.protocol), self.lm)

    def control(self, name: str) -> dict[str, Any]:
        """The [controls.<name>] table with its size overrides for this model."""
        return _sized(dict(self.claim.control(name)), self.lm)

    def size_notes(self, *controls: str) -> tuple[str, ...]:
        """A note for the report where this model runs smaller sizes than the published ones ([protocol], and
        the named controls)."""
        said = _changes(dict(self.claim.protocol), self.params, "")
        for name in controls:
            said += _changes(dict(self.claim.control(name)), self.control(name), f"{name}.")
        if not said:
            return ()
        return (f"sized for a protocol check on this model: {', '.join(said)}; the tables' `sizes`",)

    @property
    def fmt(self) -> PromptFormat:
        """Raw text or the chat template, BOS on or off, as the claim's [protocol] table says."""
        return PromptFormat.of(self.claim.protocol)

    def layer(self, published: int) -> int:
        """The model's layer at the published layer's relative depth."""
        return map_layer(published, self.claim.published_n_layers, self.lm.dims.n_layers)

    def cached(self, name: str, build: Callable[[], Any]) -> Any:
        """`build()` once per model (by object: a null-weights twin shares its model's id) and name."""
        key = (id(self.lm.model), name)
        if key not in self.cache:
            self.cache[key] = build()
        return self.cache[key]
