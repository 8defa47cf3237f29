"""Canonical hook-point names and the declarations plugins make at configure time.

A method plugin tells the core *exactly* which hook points it needs on the loaded model (which layers, which
query rows, which phases). The interception layer installs only those, and checks after each run that every
declared point fired at least once ("configured but never fired" is an error).

Names are 0-based, model independent and never raw transformers module paths:

==================================  ======  ====================================================  ===============
name                                kind    what                                                  phase
==================================  ======  ====================================================  ===============
``input.image``                     image   PIL image before the processor                        before prefill
``lm.layers.{i}.in``                in      decoder-layer input hidden states ``(B, q, d)``       both
``lm.layers.{i}.attn.kv``           kv      keys / values as the kernel sees them                 both
``lm.layers.{i}.attn.scores``       bias    additive logit bias, ``(B, 1|H, kv)`` per query row   both
``lm.layers.{i}.attn.probs``        probs   post-softmax rows ``(B, H, R, kv)`` (declared rows)   both
``lm.layers.{i}.attn.heads``        heads   per-head output before ``o_proj`` ``(B, q, H, D)``    both
``lm.logits``                       logits  next-token scores ``(B, V)``                          each step
==================================  ======  ====================================================  ===============

No torch import here: declarations are plain data, so ``hallufix hooks`` and config validation stay light.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Iterable

PHASES = frozenset({"prefill", "decode"})
KINDS = ("image", "in", "kv", "bias", "probs", "heads", "logits")
ROW_KINDS = ("last", "text", "all")

_TEMPLATES = {
    "image": "input.image",
    "in": "lm.layers.{i}.in",
    "kv": "lm.layers.{i}.attn.kv",
    "bias": "lm.layers.{i}.attn.scores",
    "probs": "lm.layers.{i}.attn.probs",
    "heads": "lm.layers.{i}.attn.heads",
    "logits": "lm.logits",
}
_NAME_RE = re.compile(r"^lm\.layers\.(\d+)\.(in|attn\.kv|attn\.scores|attn\.probs|attn\.heads)$")
_LEAF_TO_KIND = {"in": "in", "attn.kv": "kv", "attn.scores": "bias", "attn.probs": "probs", "attn.heads": "heads"}


@dataclass(frozen=True)
class HookPoint:
    """One declared hook point.

    Attributes:
        kind: one of :data:`KINDS`.
        layer: 0-based decoder layer index for layer points, ``None`` for ``input.image`` / ``lm.logits``.
        rows: for ``probs``: which query rows to compute: ``"last"`` (the last query row: the final prompt token at
            prefill, the new token at decode), ``"text"`` (every instruction / generated row in the forward),
            ``"all"`` (every row; expensive, for analysis only).
        phases: the phases the point is active in (``prefill``, ``decode``).
        edits: for ``probs``: whether the plugin may replace the probabilities (the layer's output rows are then
            recomputed from them as ``P @ V``).
        per_forward: for ``bias``: the bias does not depend on the layer, only on the forward (e.g. anchors measured
            earlier in the same forward); the hook is then called once per forward, at the first of these layers the
            forward reaches, and its terms are reused at the others (also when other methods bias the same layers).
        static_gains: for ``heads``: the method's head gains are fixed at prefill for the whole generation. The hook
            runs at prefill only and hands its gains to ``event.scale``; the core applies them at every forward
            (folded into ``o_proj`` when ``fold``, else scaled), and releases the layer's decode steps when nothing
            else runs there.
        fold: with ``static_gains``: the core may fold the gains into ``o_proj``'s weight for the generation when
            they are one vector for the whole batch (exact up to rounding, restored afterwards; a copy of the
            weight per folded layer).
    """

    kind: str
    layer: int | None = None
    rows: str = "last"
    phases: frozenset = PHASES
    edits: bool = False
    per_forward: bool = False
    static_gains: bool = False
    fold: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown hook-point kind {self.kind!r}; known: {', '.join(KINDS)}")
        if self.rows not in ROW_KINDS:
            raise ValueError(f"unknown probe rows {self.rows!r}; known: {', '.join(ROW_KINDS)}")
        if not self.phases or not set(self.phases) <= PHASES:
            raise ValueError(f"phases must be a non-empty subset of {sorted(PHASES)}, got {sorted(self.phases)}")
        object.__setattr__(self, "phases", frozenset(self.phases))
        if (self.layer is None) != (self.kind in ("image", "logits")):
            raise ValueError(f"hook point {self.kind!r} {'needs' if self.layer is None else 'takes no'} layer")
        if self.fold and not self.static_gains:
            raise ValueError("fold needs static_gains=True (only gains fixed for the generation can be folded)")

    @property
    def name(self) -> str:
        """The canonical name, e.g. ``lm.layers.3.attn.probs``."""
        return _TEMPLATES[self.kind].format(i=self.layer)


def parse_name(name: str) -> tuple[str, int | None]:
    """``"lm.layers.3.attn.probs"`` -> ``("probs", 3)``; raises ``ValueError`` for unknown names."""
    if name == "input.image":
        return "image", None
    if name == "lm.logits":
        return "logits", None
    m = _NAME_RE.match(name)
    if not m:
        raise ValueError(f"unknown hook point {name!r}; names look like {', '.join(_TEMPLATES.values())}")
    return _LEAF_TO_KIND[m.group(2)], int(m.group(1))


def all_names(num_layers: int) -> list[str]:
    """Every canonical hook-point name of a model with ``num_layers`` decoder layers."""
    out = ["input.image"]
    for i in range(num_layers):
        out += [_TEMPLATES[k].format(i=i) for k in ("in", "kv", "bias", "probs", "heads")]
    return out + ["lm.logits"]


def select(pattern: str, num_layers: int) -> list[str]:
    """Resolve a selector (exact name or fnmatch glob such as ``lm.layers.*.attn.scores``) to names."""
    return [n for n in all_names(num_layers) if fnmatch.fnmatchcase(n, pattern)]


def _layers(layers: int | Iterable[int]) -> list[int]:
    return [layers] if isinstance(layers, int) else sorted(set(int(i) for i in layers))


def attn_bias(layers, *, phases=PHASES, per_forward: bool = False) -> list[HookPoint]:
    """Declare an additive pre-softmax bias at ``layers`` (keeps SDPA for rows without bias). ``per_forward``: the
    same bias at every one of these layers within a forward, so the hook runs once per forward (see
    :class:`HookPoint`)."""
    return [HookPoint("bias", i, phases=frozenset(phases), per_forward=per_forward) for i in _layers(layers)]


def attn_probs(layers, *, rows: str = "last", phases=PHASES, edits: bool = False) -> list[HookPoint]:
    """Declare a probe of post-softmax probabilities for ``rows`` at ``layers``."""
    return [HookPoint("probs", i, rows=rows, phases=frozenset(phases), edits=edits) for i in _layers(layers)]


def attn_heads(layers, *, phases=PHASES, static_gains: bool = False, fold: bool = False) -> list[HookPoint]:
    """Declare per-head outputs before ``o_proj`` at ``layers`` (read or scale). ``static_gains``: gains set at
    prefill hold for the whole generation (the core applies them; ``fold``: into ``o_proj`` where it can), see
    :class:`HookPoint`."""
    return [HookPoint("heads", i, phases=frozenset(phases), static_gains=static_gains, fold=fold)
            for i in _layers(layers)]


def attn_kv(layers, *, phases=PHASES) -> list[HookPoint]:
    """Declare key/value edits at ``layers`` (what the kernel sees; the KV cache keeps the originals)."""
    return [HookPoint("kv", i, phases=frozenset(phases)) for i in _layers(layers)]


def layer_input(layers, *, phases=PHASES) -> list[HookPoint]:
    """Declare decoder-layer input hidden states at ``layers`` (read or edit)."""
    return [HookPoint("in", i, phases=frozenset(phases)) for i in _layers(layers)]


def logits() -> list[HookPoint]:
    """Declare the next-token logits (every generation step)."""
    return [HookPoint("logits")]


def input_image() -> list[HookPoint]:
    """Declare the input-image hook (before the processor; may run analysis passes)."""
    return [HookPoint("image")]


@dataclass
class Declaration:
    """Everything one plugin declared: its name and hook points (built by the helpers above)."""

    plugin: str
    points: list[HookPoint] = field(default_factory=list)

    def names(self) -> list[str]:
        return sorted({p.name for p in self.points})
