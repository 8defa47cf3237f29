"""Hook points: their names and the declarations plugins make at configure time.

A method plugin tells the core *exactly* which hook points it needs on the loaded model (which layers, which
query rows, which phases). The interception layer installs only those, and checks after each run that every
declared point fired at least once ("configured but never fired" is an error).

One vocabulary: a point's kind is the name of the hook that receives it, without the ``hallufix_`` prefix, and its
name is the kind plus the 0-based layer for per-layer points. The point ``attn_bias.3`` is delivered to
``hallufix_attn_bias`` at decoder layer 3; names are model independent, never raw transformers module paths.

==================  ==============================  =================================================  =======
No torch import here: declarations are plain data, so ``hallufix hooks`` and config validation stay light.
"""
from __future__ import annotations

import fnmatch
import re
import warnings
from dataclasses import dataclass
from typing import Iterable

PHASES = frozenset({"prefill", "decode"})
#: every kind, in the order ``hallufix hooks`` lists them; the hook of kind ``k`` is ``hallufix_<k>``
KINDS = ("input_image", "layer_input", "attn_kv", "attn_bias", "attn_probs", "attn_heads", "logits", "qformer_bias",
         "attn_transform",
         "mlp_in", "mlp_out", "logit_lens")
#: the kinds that live at a decoder layer (named ``<kind>.<layer>``); the others are model-wide (named ``<kind>``)
LAYER_KINDS = ("layer_input", "attn_kv", "attn_bias", "attn_probs", "attn_heads", "mlp_in", "mlp_out", "logit_lens",
               "attn_transform")
#: per-layer kinds whose layer index addresses a sub-model (the Q-Former's layers, ``ModelInfo.qformer_layers``),
#: not the language model's decoder; named ``<kind>.<sub-model layer>`` like the others
SUBMODEL_KINDS = ("qformer_bias",)
ROW_KINDS = ("last", "text", "all")

#: deprecated short kinds -> kinds (accepted with a DeprecationWarning for one release)
_OLD_KINDS = {"image": "input_image", "in": "layer_input", "kv": "attn_kv", "bias": "attn_bias",
              "probs": "attn_probs", "heads": "attn_heads"}
#: deprecated names -> kinds
_OLD_GLOBAL_NAMES = {"input.image": "input_image", "lm.logits": "logits"}
_OLD_LEAVES = {"in": "layer_input", "attn.kv": "attn_kv", "attn.scores": "attn_bias", "attn.probs": "attn_probs",
               "attn.heads": "attn_heads"}
_OLD_NAME_RE = re.compile(r"^lm\.layers\.(\d+)\.(in|attn\.kv|attn\.scores|attn\.probs|attn\.heads)$")
_NAME_RE = re.compile(r"^([a-z_]+)\.(\d+)$")


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"hook point {old!r} is deprecated, use {new!r} (the old names go in the next release)",
                  DeprecationWarning, stacklevel=3)


def hook_name(kind: str) -> str:
    """The hookspec that receives points of ``kind``: ``"attn_bias"`` -> ``"hallufix_attn_bias"``."""
    return f"hallufix_{kind}"


def point_name(kind: str, layer: int | None = None) -> str:
    """``("attn_bias", 3)`` -> ``"attn_bias.3"``; ``("logits", None)`` -> ``"logits"``."""
    return kind if layer is None else f"{kind}.{layer}"


@dataclass(frozen=True)
class HookPoint:
    """One declared hook point.

    Attributes:
        kind: one of :data:`KINDS` (the hook's name without ``hallufix_``).
        layer: 0-based decoder layer index for layer points (a Q-Former layer for :data:`SUBMODEL_KINDS`),
            ``None`` for ``input_image`` / ``logits``.
        rows: for ``attn_probs``: which query rows to compute: ``"last"`` (the last query row: the final prompt
            token at prefill, the new token at decode), ``"text"`` (every instruction / generated row in the
            forward), ``"all"`` (every row; expensive, for analysis only).
        phases: the phases the point is active in (``prefill``, ``decode``).
        edits: for ``attn_probs``: whether the plugin may replace the probabilities (the layer's output rows are then
            recomputed from them as ``P @ V``).
        per_forward: for ``attn_bias``: the bias does not depend on the layer, only on the forward (e.g. anchors measured
            earlier in the same forward); the hook is then called once per forward, at the first of these layers the
            forward reaches, and its terms are reused at the others (also when other methods bias the same layers).
        static_gains: for ``attn_heads``: the method's head gains are fixed at prefill for the whole generation. The hook
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
        if self.kind in _OLD_KINDS:
            _deprecated(f"kind={self.kind!r}", f"kind={_OLD_KINDS[self.kind]!r}")
            object.__setattr__(self, "kind", _OLD_KINDS[self.kind])
        if self.kind not in KINDS:
            raise ValueError(f"unknown hook-point kind {self.kind!r}; known: {', '.join(KINDS)}")
        if self.rows not in ROW_KINDS:
            raise ValueError(f"unknown probe rows {self.rows!r}; known: {', '.join(ROW_KINDS)}")
        if not self.phases or not set(self.phases) <= PHASES:
            raise ValueError(f"phases must be a non-empty subset of {sorted(PHASES)}, got {sorted(self.phases)}")
        object.__setattr__(self, "phases", frozenset(self.phases))
        if (self.layer is None) == (self.kind in LAYER_KINDS or self.kind in SUBMODEL_KINDS):
            raise ValueError(f"hook point {self.kind!r} {'needs' if self.layer is None else 'takes no'} layer")
        if self.fold and not self.static_gains:
            raise ValueError("fold needs static_gains=True (only gains fixed for the generation can be folded)")

    @property
    def name(self) -> str:
        """The point's name, e.g. ``attn_probs.3``."""
        return point_name(self.kind, self.layer)

    @property
    def hook(self) -> str:
        """The hookspec that receives this point, e.g. ``hallufix_attn_probs``."""
        return hook_name(self.kind)


def parse_name(name: str) -> tuple[str, int | None]:
    """``"attn_probs.3"`` -> ``("attn_probs", 3)``, ``"logits"`` -> ``("logits", None)``; the deprecated names
    (``lm.layers.3.attn.probs``) are translated with a warning; raises ``ValueError`` for unknown names."""
    if name in KINDS and name not in LAYER_KINDS and name not in SUBMODEL_KINDS:
        return name, None
    m = _NAME_RE.match(name)
    if m and (m.group(1) in LAYER_KINDS or m.group(1) in SUBMODEL_KINDS):
        return m.group(1), int(m.group(2))
    if name in _OLD_GLOBAL_NAMES:
        _deprecated(name, _OLD_GLOBAL_NAMES[name])
        return _OLD_GLOBAL_NAMES[name], None
    m = _OLD_NAME_RE.match(name)
    if m:
        kind, layer = _OLD_LEAVES[m.group(2)], int(m.group(1))
        _deprecated(name, point_name(kind, layer))
        return kind, layer
    raise ValueError(f"unknown hook point {name!r}; names look like input_image, attn_bias.3, logits "
                     f"(kinds: {', '.join(KINDS)})")


def all_names(num_layers: int, qformer_layers: Iterable[int] = ()) -> list[str]:
    """Every hook-point name of a model with ``num_layers`` decoder layers, layer by layer (and Q-Former
    cross-attention layers ``qformer_layers``, ``ModelInfo.qformer_layers``, last)."""
    out = [k for k in KINDS if k not in LAYER_KINDS and k not in SUBMODEL_KINDS and k != "logits"]
    for i in range(num_layers):
        out += [point_name(k, i) for k in LAYER_KINDS]
    return out + ["logits"] + [point_name(k, i) for k in SUBMODEL_KINDS for i in qformer_layers]


def _old_name(name: str) -> str:
    """The deprecated spelling of a (current) point name, for matching deprecated selectors."""
    kind, layer = parse_name(name)
    if layer is None:
        return {v: k for k, v in _OLD_GLOBAL_NAMES.items()}.get(kind, kind)
    leaf = {v: k for k, v in _OLD_LEAVES.items()}.get(kind)
    return f"lm.layers.{layer}.{leaf}" if leaf else name


def select(pattern: str, num_layers: int, qformer_layers: Iterable[int] = ()) -> list[str]:
    """Resolve a selector (exact name or fnmatch glob such as ``attn_bias.*`` or ``*.3``) to names. A selector in
    the deprecated spelling (``lm.layers.*.attn.scores``) still matches, with a warning."""
    names = all_names(num_layers, qformer_layers)
    if pattern.startswith(("lm.", "input.")):
        _deprecated(pattern, "the names of `hallufix hooks` (attn_bias.*, logits, input_image)")
        return [n for n in names if fnmatch.fnmatchcase(_old_name(n), pattern)]
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def _layers(layers: int | Iterable[int]) -> list[int]:
    return [layers] if isinstance(layers, int) else sorted(set(int(i) for i in layers))


def attn_bias(layers, *, phases=PHASES, per_forward: bool = False) -> list[HookPoint]:
    """Declare an additive pre-softmax bias at ``layers`` (keeps SDPA for rows without bias). ``per_forward``: the
    same bias at every one of these layers within a forward, so the hook runs once per forward (see
    :class:`HookPoint`)."""
    return [HookPoint("attn_bias", i, phases=frozenset(phases), per_forward=per_forward) for i in _layers(layers)]


def attn_probs(layers, *, rows: str = "last", phases=PHASES, edits: bool = False) -> list[HookPoint]:
    """Declare a probe of post-softmax probabilities for ``rows`` at ``layers``."""
    return [HookPoint("attn_probs", i, rows=rows, phases=frozenset(phases), edits=edits) for i in _layers(layers)]


def attn_transform(layers, *, rows: str = "last", phases=PHASES) -> list[HookPoint]:
    """Declare a score transform at ``layers``: the hook sees the raw pre-softmax scores ``(B, H, R, kv)`` of the
    query ``rows`` (``"last"`` or ``"text"``; mask and biases included) and may replace them; those rows' outputs
    are then ``softmax(scores') @ V``, every other row keeps the fused kernel."""
    if rows not in ("last", "text"):
        raise ValueError(f"attn_transform rows must be 'last' or 'text', got {rows!r}")
    return [HookPoint("attn_transform", i, rows=rows, phases=frozenset(phases)) for i in _layers(layers)]


def attn_heads(layers, *, phases=PHASES, static_gains: bool = False, fold: bool = False) -> list[HookPoint]:
    """Declare per-head outputs before ``o_proj`` at ``layers`` (read or scale). ``static_gains``: gains set at
    prefill hold for the whole generation (the core applies them; ``fold``: into ``o_proj`` where it can), see
    :class:`HookPoint`."""
    return [HookPoint("attn_heads", i, phases=frozenset(phases), static_gains=static_gains, fold=fold)
            for i in _layers(layers)]


def attn_kv(layers, *, phases=PHASES) -> list[HookPoint]:
    """Declare key/value edits at ``layers`` (what the kernel sees; the KV cache keeps the originals)."""
    return [HookPoint("attn_kv", i, phases=frozenset(phases)) for i in _layers(layers)]


def layer_input(layers, *, phases=PHASES) -> list[HookPoint]:
    """Declare decoder-layer input hidden states at ``layers`` (read or edit)."""
    return [HookPoint("layer_input", i, phases=frozenset(phases)) for i in _layers(layers)]


def qformer_bias(layers) -> list[HookPoint]:
    """Declare an additive logit bias on the Q-Former cross-attention (query tokens over the image features) at
    Q-Former ``layers`` (``ModelInfo.qformer_layers``). The Q-Former runs once per generation, in the prefill."""
    return [HookPoint("qformer_bias", i, phases=frozenset({"prefill"})) for i in _layers(layers)]


def mlp_in(layers, *, phases=PHASES) -> list[HookPoint]:
    """Declare the MLP input at ``layers`` (after ``post_attention_layernorm``; read or edit)."""
    return [HookPoint("mlp_in", i, phases=frozenset(phases)) for i in _layers(layers)]


def mlp_out(layers, *, phases=PHASES) -> list[HookPoint]:
    """Declare the MLP output at ``layers`` (before the residual add; read or edit, the input alongside)."""
    return [HookPoint("mlp_out", i, phases=frozenset(phases)) for i in _layers(layers)]


def logit_lens(layers, *, phases=PHASES) -> list[HookPoint]:
    """Declare the logit lens at ``layers``: next-token logits of the residual stream entering each layer, at the
    last position, through the model's final norm and ``lm_head`` (computed only when a hook asks)."""
    return [HookPoint("logit_lens", i, phases=frozenset(phases)) for i in _layers(layers)]


def logits() -> list[HookPoint]:
    """Declare the next-token logits (every generation step)."""
    return [HookPoint("logits")]


def input_image() -> list[HookPoint]:
    """Declare the input-image hook (before the processor; may run analysis passes)."""
    return [HookPoint("input_image")]
