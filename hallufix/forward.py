"""One language-model forward (:class:`ForwardInfo`) and its per-forward memo with typed keys.

Layers of one forward share work: the row masks, the summed bias masks, the role masks of the token layout, the
bias terms of ``per_forward`` methods, and whatever a method caches for itself (:meth:`ForwardInfo.cache`). The
memo lives exactly as long as the forward (a new :class:`ForwardInfo` per forward), and its keys are typed tuples
(:class:`MaskKey`, :class:`MethodKey`, ...). Objects enter a key through :class:`Ref`, which holds the object and
compares by identity: a key can never match a later object that reuses a freed one's address, as a raw ``id()``
could.
"""
from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import torch


class Ref:
    """An object in a memo key, compared by identity (tensors compare elementwise, so they cannot be keys
    themselves). Holding the object keeps it alive while the key exists."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any):
        self.obj = obj

    def __eq__(self, other) -> bool:
        return isinstance(other, Ref) and other.obj is self.obj

    def __hash__(self) -> int:
        return object.__hash__(self.obj)

    def __repr__(self) -> str:
        return f"Ref({type(self.obj).__name__})"


class RowsKey(NamedTuple):
    """Which query rows a mask or probe covers: ``kind`` ``"one"`` (the single row of a decode step), ``"last"``
    (the last of ``q_len`` rows) or ``"set"`` (``rows``: the row indices)."""

    kind: str
    q_len: int
    rows: tuple = ()


class MaskKey(NamedTuple):
    """The additive row mask built from one attention mask (``source``: the mask SDPA received, or ``Ref(None)``)
    for ``rows`` of a ``kv_len``-key forward in ``dtype``."""

    source: Ref
    kv_len: int
    dtype: torch.dtype
    rows: RowsKey


class BiasedMaskKey(NamedTuple):
    """A :class:`MaskKey`'s mask plus bias ``terms``: ``((Ref(bias), Ref(rows)), ...)`` in order."""

    mask: MaskKey
    terms: tuple


class RoleKey(NamedTuple):
    """A role mask of the forward's rows (``role``: ``text_rows``, ``visual_rows``, ``text_rows_any``, ...) from
    one token layout, on ``device``."""

    role: str
    layout: Ref
    device: Any = None


class ConvertedKey(NamedTuple):
    """A hand-back tensor converted once per forward to the model's device and ``dtype``."""

    source: Ref
    dtype: torch.dtype


class MethodKey(NamedTuple):
    """A method's own entry (``name``) in the per-forward cache; ``owner`` is the method object, so two methods
    (or two instances of one) never share an entry."""

    owner: Ref
    name: str


#: ``k`` while a batched beam look-ahead forward of ``k`` candidates runs (set by
#: :meth:`hallufix.decoding.candidates.CandidateEvent.lookahead_many` around its forward), else 0
LOOKAHEAD: contextvars.ContextVar = contextvars.ContextVar("hallufix_lookahead_candidates", default=0)


@dataclass
class ForwardInfo:
    """One language-model forward: ``phase`` (``prefill``/``decode``), ``step`` (0 at prefill), ``q_len`` query
    rows, ``kv_offset`` cached positions before them (so row ``i`` sits at cache position ``kv_offset + i``).

    ``lookahead``: ``k > 0`` in a batched beam look-ahead forward (a ``decode`` forward of ``q_len = k`` rows):
    row ``j`` is candidate ``j``, all ``k`` sit at the same sequence position (rope position of cache slot
    ``kv_offset``) and each sees the cached keys and its own key only (its key is stored at cache slot
    ``kv_offset + j``; the cache is cropped back to ``kv_offset`` afterwards). Every row is a "last" row there.
    0 in every other forward."""

    phase: str
    step: int
    q_len: int
    kv_offset: int
    #: per-forward memo shared by every layer's events and the attention function (typed keys, see above)
    memo: dict = field(default_factory=dict, repr=False, compare=False)
    lookahead: int = 0

    @property
    def last_rows(self) -> int:
        """How many of the final query rows are "last" rows: ``lookahead`` in a look-ahead forward, else 1."""
        return self.lookahead or 1

    @property
    def positions(self) -> torch.Tensor:
        """``(q,)`` cache positions of this forward's query rows, in host memory (see :meth:`positions_on`)."""
        return self.positions_on("cpu")

    def positions_on(self, device) -> torch.Tensor:
        """``(q,)`` cache positions of this forward's query rows, on ``device``."""
        return torch.arange(self.kv_offset, self.kv_offset + self.q_len, device=device)

    def shared(self, key: tuple, make: Callable[[], Any]) -> Any:
        """``make()`` once per forward under the typed ``key``; later layers of the same forward get the same
        object (treat cached tensors as read-only)."""
        try:
            return self.memo[key]
        except KeyError:
            value = self.memo[key] = make()
            return value

    def cache(self, owner: object, name: str, make: Callable[[], Any]) -> Any:
        """A method's per-forward cache: ``make()`` once per forward for ``owner`` (pass ``self``) under ``name``,
        e.g. a bias that every layer of the forward applies. Entries of different methods never collide, and the
        cache is dropped when the forward ends (nothing to invalidate)."""
        return self.shared(MethodKey(Ref(owner), name), make)
