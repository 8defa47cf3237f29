"""A kept beam look-ahead as the next decode step (:meth:`CandidateEvent.lookahead_many` with ``keep=True``).

A batched look-ahead (:mod:`hallufix.intercept.lookahead`) runs candidate ``j`` of beam ``b`` at the next position
on ``b``'s cache. When the search then continues ``b`` with that candidate, the next decode step would compute the
same thing again: that token at that position on that cache. With the look-ahead kept, the step runs no decoder
forward; it takes from the look-ahead

* the keys and values of the chosen row at every layer: the beam step's cache reorder reads each new row's
  parent from the look-ahead's own tensors and puts the chosen candidate's key at the next position, in the one
  copy the reorder makes anyway (:func:`reorder_into`; a decode forward would add a copy of the whole cache, as
  ``DynamicCache`` concatenates on update);
* the logits: the model's ``lm_head`` on the chosen row's final-norm output (recorded during the look-ahead by
  :class:`~hallufix.intercept.lookahead.OutputCapture` on the family's final norm), the product the model itself
  computes for its last position.

The look-ahead row and a decode forward see the same keys with the same positions; the look-ahead's 4D mask and
its ``k``-row batch only change the order of float sums, so the step equals the decode forward to rounding
(tests/test_opera_lookahead.py: ≤ 1e-5 in float32, identical tokens on the four families).

A kept look-ahead is used only when (:func:`match`) every new beam's token was among its parent's looked-ahead
candidates, and (:func:`keepable`) every cache layer is a plain ``DynamicLayer``. The beam loop also requires that
no method other than the candidate hooks has decode-step hooks (``reuse_ok``): those expect one decode forward per
step, and a reused step runs none.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class KeptLookahead:
    """One look-ahead forward kept for reuse: ``tokens`` ``(N, k)`` the candidates per running beam, ``hidden``
    ``(N, k, d)`` their final-norm outputs (model dtype), ``keys`` / ``values`` per cache layer the
    ``(N, Hkv, length + k, D)`` tensors the look-ahead's ``cache.update`` made (candidate ``j`` of row ``b`` at
    ``[b, :, length + j]``; the cache itself was cropped back to a view of their first ``length`` positions, and
    nothing writes into them afterwards: every later update concatenates into new tensors)."""

    tokens: torch.Tensor
    hidden: torch.Tensor
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    length: int


def keepable(cache) -> bool:
    """Whether a look-ahead on ``cache`` can be kept: every layer a plain ``DynamicLayer`` (sliding-window,
    static, quantised or offloaded caches write their keys elsewhere, so their new slots cannot be read back)."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers) and \
        not getattr(cache, "offloading", False)


def final_norm(model):
    """The language model's final norm: the active run's adapter's (``hallufix`` runs always have one), else the
    decoder's ``norm`` attribute; ``None`` when neither exists."""
    from hallufix.intercept.attention import ACTIVE

    st = ACTIVE.get()
    if st is not None:
        return st.adapter.final_norm(st.model)
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    return getattr(decoder, "norm", None)


def keep(cache, length: int, tokens: torch.Tensor, hidden: torch.Tensor) -> KeptLookahead:
    """Keep the look-ahead that just ran on ``cache`` (``length`` positions before it, ``tokens`` ``(N, k)``):
    references to every layer's keys and values as it left them, before the caller crops the cache back, and the
    captured final-norm rows ``hidden`` ``(N, k, d)``."""
    k = tokens.shape[1]
    return KeptLookahead(tokens, hidden[:, -k:], [layer.keys for layer in cache.layers],
                         [layer.values for layer in cache.layers], int(length))


def match(kept: KeptLookahead, parents: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor | None:
    """``(N,)`` the look-ahead slot of each new beam (new row ``i`` continues row ``parents[i]`` with token
    ``chosen[i]``), or ``None`` when some chosen token was not looked ahead on its parent row."""
    found = kept.tokens[parents] == chosen.to(kept.tokens)[:, None]  # (N, k)
    if not bool(found.any(-1).all()):
        return None
    return found.int().argmax(-1)


def reorder_into(cache, kept: KeptLookahead, parents: torch.Tensor, slots: torch.Tensor) -> bool:
    """The beam step's cache reorder and the next step's append in one copy per tensor: each layer becomes, for
    new row ``i``, row ``parents[i]``'s ``length`` cached positions followed by its chosen candidate's key (slot
    ``length + slots[i]`` of the kept tensors). What ``cache.reorder_cache(parents)`` and a decode forward's
    ``cache.update`` would leave, without the copy of the whole cache that the update's concatenation costs.
    Returns ``False`` (nothing changed) when the cache is not the cropped one the look-ahead left."""
    L = kept.length
    if len(cache.layers) != len(kept.keys) or any(
            layer.keys.shape[-2] != L or layer.keys.data_ptr() != k.data_ptr()
            for layer, k in zip(cache.layers, kept.keys)):
        return False
    rows = torch.arange(parents.shape[0], device=parents.device)
    for layer, k, v in zip(cache.layers, kept.keys, kept.values):
        for name, full in (("keys", k), ("values", v)):
            new = full.index_select(0, parents)  # (N, Hkv, L + k, D): each row its parent's cache and candidates
            new[:, :, L] = new[rows, :, L + slots]  # the chosen candidate's key at the next position
            setattr(layer, name, new[:, :, : L + 1])
    return True


def logits(model, kept: KeptLookahead, parents: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """The next-token logits ``(N, 1, V)`` of the chosen rows: the model's ``lm_head`` on their final-norm rows,
    the product the model computes for its last position."""
    hidden = kept.hidden[parents, slots][:, None]  # (N, 1, d)
    return model.get_output_embeddings()(hidden)
