"""What a claim's protocols share about one run on one model: the claim, the model, its prompt bank, the seed,
the batch size and a cache the module's protocols share (a fixture's dict), with the published-to-model layer
map and the prompt format the claim's [protocol] table names. Claims subclass it with their own sites."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from harness.claimkit.prompts import PromptBank
from harness.claimkit.registry import Claim
from harness.engine.formatting import PromptFormat
from harness.engine.models import LoadedModel
from harness.engine.sites import map_layer


@dataclass(frozen=True)
class ModelContext:
    claim: Claim
    lm: LoadedModel
    bank: PromptBank
    seed: int = 0
    batch_size: int = 32
    cache: dict[Hashable, Any] = field(default_factory=dict)

    @property
    def params(self) -> dict[str, Any]:
        """The [protocol] table with its size overrides for this model: `[protocol].sizes.stand_in` on a tiny
        stand-in, `.cpu` on real weights small enough for the CPU (`-m real`); the published sizes otherwise."""
        protocol = dict(self.claim.protocol)
        sizes = protocol.get("sizes", {})
        tier = "stand_in" if self.lm.spec.tiny else "cpu" if self.lm.spec.cpu else None
        return {**protocol, **(sizes.get(tier, {}) if tier else {})}

    def size_notes(self) -> tuple[str, ...]:
        """A note for the report where this model runs smaller sizes than the published protocol's."""
        published, here = self.claim.protocol, self.params
        changed = {key: (published[key], value) for key, value in here.items()
                   if key != "sizes" and published.get(key) != value}
        if not changed:
            return ()
        said = ", ".join(f"{key} {now} (published {then})" for key, (then, now) in sorted(changed.items()))
        return (f"sized for a protocol check on this model: {said}; [protocol].sizes",)

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
