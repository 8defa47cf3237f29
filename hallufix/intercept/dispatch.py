"""The typed facade over pluggy for per-layer hooks: one pre-resolved caller per (kind, layer, phase).

Under strict device mode (:mod:`hallufix.intercept.strict`, for tests) the callers run their hooks inside the
checking mode; otherwise they are pluggy's own callers, unwrapped.

Resolving once per run means a layer no method declared costs a dict miss, and a declared layer calls only the
methods that declared it, in typed order (pluggy calls last-registered first; the plugin manager registers the
active methods in reverse, see :mod:`hallufix.plugins`).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import pluggy

from hallufix.intercept import strict
from hallufix.points import KINDS, PHASES, SUBMODEL_KINDS, HookPoint, hook_name

#: kind -> the hookspec that receives it (``hallufix_<kind>``, see :mod:`hallufix.points`)
HOOK_OF_KIND = {kind: hook_name(kind) for kind in KINDS}
ATTENTION_KINDS = frozenset({"attn_kv", "attn_bias", "attn_probs", "attn_heads", "attn_transform"})


@dataclass
class LayerPlan:
    """What runs at one decoder layer, per phase: callers by kind and the probe row kinds."""

    layer: int
    callers: dict = field(default_factory=dict)  # (kind, phase) -> pluggy caller
    probe_rows: dict = field(default_factory=lambda: defaultdict(set))  # phase -> {"last", "text", "all"}
    names: dict = field(default_factory=dict)  # (kind) -> canonical name
    heads_only: dict = field(default_factory=dict)  # phase -> True when heads is the only kind in that phase
    #: phase -> the owners' key when every bias method at this layer declared ``per_forward`` (terms shared by the
    #: layers with the same owners within a forward), else absent
    bias_shared: dict = field(default_factory=dict)
    #: phase -> the row kinds (``last`` / ``text``) of the layer's score transforms (:mod:`~hallufix.intercept.transform`)
    transform_rows: dict = field(default_factory=lambda: defaultdict(set))


class HookTable:
    """Pre-resolved callers for a run's declarations.

    :param pm: the run-scoped plugin manager (active methods registered).
    :param declared: ``{plugin_object: [HookPoint, ...]}`` for the active methods.
    """

    def __init__(self, pm: pluggy.PluginManager, declared: dict[object, list[HookPoint]]):
        self.pm, self.declared = pm, declared
        self.points: list[HookPoint] = [p for pts in declared.values() for p in pts]
        self.layers: dict[int, LayerPlan] = {}
        self.global_callers: dict[str, object] = {}
        #: ``{(kind, sub-model layer, phase): caller}`` for :data:`~hallufix.points.SUBMODEL_KINDS` (the Q-Former)
        self.submodel_callers: dict[tuple, object] = {}
        owners: dict[tuple, list[object]] = defaultdict(list)
        for plugin, pts in declared.items():
            for p in pts:
                for phase in p.phases:
                    key = (p.kind, p.layer, phase)
                    if plugin not in owners[key]:
                        owners[key].append(plugin)
                    if p.kind == "attn_probs":
                        self._plan(p.layer).probe_rows[phase].add(p.rows)
                    if p.kind == "attn_transform":
                        self._plan(p.layer).transform_rows[phase].add(p.rows)
        for plugin, pts in declared.items():
            for p in pts:
                hook = HOOK_OF_KIND[p.kind]
                if plugin not in {i.plugin for i in getattr(pm.hook, hook).get_hookimpls()}:
                    name = getattr(plugin, "name", type(plugin).__name__)
                    raise ValueError(f"method '{name}' declared {p.name} but does not implement {hook}")
        per_forward = {(plugin, p.layer, ph) for plugin, pts in declared.items() for p in pts
                       if p.kind == "attn_bias" and p.per_forward for ph in p.phases}
        everyone = list(declared)
        for (kind, layer, phase), who in owners.items():
            if kind == "attn_bias" and all((w, layer, phase) in per_forward for w in who):
                self._plan(layer).bias_shared[phase] = ("bias_terms", phase, tuple(id(w) for w in who))
            # under strict device mode (tests) every caller runs its hooks inside the checking mode
            caller = strict.wrap(pm.subset_hook_caller(HOOK_OF_KIND[kind],
                                                       remove_plugins=[x for x in everyone if x not in who]))
            if layer is None:
                self.global_callers[(kind, phase)] = caller
            elif kind in SUBMODEL_KINDS:
                self.submodel_callers[(kind, layer, phase)] = caller
            else:
                plan = self._plan(layer)
                plan.callers[(kind, phase)] = caller
        for p in self.points:
            if p.layer is not None and p.kind not in SUBMODEL_KINDS:
                self.layers[p.layer].names[p.kind] = p.name
        for plan in self.layers.values():
            for phase in PHASES:
                kinds = {k for (k, ph) in plan.callers if ph == phase}
                plan.heads_only[phase] = kinds == {"attn_heads"}

    def attention_layers(self, phase: str) -> dict[int, LayerPlan]:
        """``{layer: plan}`` of the layers with an attention-level hook (kv / bias / probs / heads) in ``phase``;
        every other layer runs transformers' own SDPA function in that phase."""
        return {i: plan for i, plan in self.layers.items()
                if any(ph == phase and k in ATTENTION_KINDS for (k, ph) in plan.callers)}

    def _plan(self, layer: int) -> LayerPlan:
        if layer not in self.layers:
            self.layers[layer] = LayerPlan(layer)
        return self.layers[layer]

    def kinds(self) -> set[str]:
        return {p.kind for p in self.points}

    def global_caller(self, kind: str, phase: str | None = None):
        """Caller for ``image`` / ``logits`` points (any phase when ``phase`` is None)."""
        for ph in ([phase] if phase else sorted(PHASES)):
            c = self.global_callers.get((kind, ph))
            if c is not None:
                return c
        return None

    def editing_probes(self, layer: int) -> bool:
        return any(p.kind == "attn_probs" and p.layer == layer and p.edits for p in self.points)
