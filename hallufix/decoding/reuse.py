"""A kept beam look-ahead as the next decode step (:meth:`CandidateEvent.lookahead_many` with ``keep=True``).

A batched look-ahead (:mod:`hallufix.intercept.lookahead`) runs candidate ``j`` of beam ``b`` at the next position
on ``b``'s cache. When the search then continues ``b`` with that candidate, the next decode step would compute the
same thing again: that token at that position on that cache. With the look-ahead kept, the step runs no decoder
forward; it takes from the look-ahead

* the keys and values of the chosen row at every layer, appended to the reordered cache with ``cache.update``
  (what the decode forward's attention would have written);
* the logits: the model's ``lm_head`` on the chosen row's final-norm output (captured by a forward hook on the
  family's final norm during the look-ahead), the product the model itself computes for its last position.

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
    ``(N, k, d)`` their final-norm outputs (model dtype), ``keys`` / ``values`` per cache layer ``(N, Hkv, k, D)``
    (candidate ``j`` of row ``b`` at ``[b, :, j]``)."""

    tokens: torch.Tensor
    hidden: torch.Tensor
    keys: list[torch.Tensor]
    values: list[torch.Tensor]


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


class NormCapture:
    """Context manager recording the output of ``norm`` (``(N, q, d)``) during one forward."""

    def __init__(self, norm):
        self.norm, self.output, self._handle = norm, None, None

    def __enter__(self):
        def hook(module, args, output):
            self.output = output

        self._handle = self.norm.register_forward_hook(hook)
        return self

    def __exit__(self, *exc):
        self._handle.remove()
        return False


def keep(cache, length: int, tokens: torch.Tensor, hidden: torch.Tensor) -> KeptLookahead:
    """The look-ahead's new cache slots ``length .. length + k - 1`` of every layer (copied: the cache is cropped
    right after) and the captured final-norm rows ``hidden`` ``(N, k, d)``."""
    k = tokens.shape[1]
    keys = [layer.keys[:, :, length:length + k].clone() for layer in cache.layers]
    values = [layer.values[:, :, length:length + k].clone() for layer in cache.layers]
    return KeptLookahead(tokens, hidden[:, -k:].clone(), keys, values)


def match(kept: KeptLookahead, parents: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor | None:
    """``(N,)`` the look-ahead slot of each new beam (new row ``i`` continues row ``parents[i]`` with token
    ``chosen[i]``), or ``None`` when some chosen token was not looked ahead on its parent row."""
    found = kept.tokens[parents] == chosen.to(kept.tokens)[:, None]  # (N, k)
    if not bool(found.any(-1).all()):
        return None
    return found.int().argmax(-1)


def commit(model, cache, kept: KeptLookahead, parents: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """Append the chosen rows' keys and values to ``cache`` (already reordered with ``parents``) and return their
    next-token logits ``(N, 1, V)`` from the model's ``lm_head``."""
    for i, (k, v) in enumerate(zip(kept.keys, kept.values)):
        cache.update(k[parents, :, slots][:, :, None], v[parents, :, slots][:, :, None], i)
    hidden = kept.hidden[parents, slots][:, None]  # (N, 1, d)
    return model.get_output_embeddings()(hidden)
