"""The Q-Former's cross-attention routed through a hallufix attention function (point ``qformer_bias.{i}``).

The same mechanism as the language model's (:mod:`hallufix.intercept.attention`): a function registered with
transformers' ``AttentionInterface`` (and its mask function with ``AttentionMaskInterface``, G3) and set on the
Q-Former's sub-config only (``{"qformer_config": name}``) while a run that declared a ``qformer_bias`` point is
active; the run's :class:`~hallufix.intercept.install.Interceptor` is found through the same context variable.

Per Q-Former attention call:

* a module that is not a declared cross-attention layer (self-attention, other layers): the Q-Former's previous
  implementation (SDPA, or the eager formula transformers' InstructBLIP uses), unchanged;
* a declared cross-attention layer: its methods add logit biases over the image features
  (:class:`QFormerBiasEvent`); with no term the previous implementation runs, else SDPA (eager where the Q-Former
  was eager) with the float mask ``padding + bias``.

The Q-Former runs once per ``generate``, inside the prefill forward, before the language model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from hallufix.intercept import attention as lm_attention
from hallufix.intercept.attn_impl import AttentionImplementation, current
from hallufix.intercept.registration import ensure_registered

#: the sub-config whose attention implementation the route switches
QFORMER_CONFIG_KEY = "qformer_config"
#: the name the Q-Former function and its mask function are registered under (process-wide, once)
QFORMER_ATTN_NAME = "hallufix-qformer"
KIND = "qformer_bias"


class QFormerBiasEvent:
    """``qformer_bias.{i}``: collects additive logit biases on one Q-Former cross-attention.

    Attributes:
        layer: the Q-Former layer (0-based; ``ModelInfo.qformer_layers``).
        batch_size, num_heads, num_queries, num_keys: ``B``, ``H``, ``Q`` (query tokens), ``K`` (image features:
            ``prefix_keys`` leading features, the ViT's CLS, then the patches in raster order).
        prefix_keys: how many leading image features are not patches.
        device, dtype: of the attention computation (terms are moved there when applied).
        terms: the biases added so far, each ``(B, 1|H, 1|Q, K)`` float.
    """

    def __init__(self, *, layer: int, batch_size: int, num_heads: int, num_queries: int, num_keys: int,
                 prefix_keys: int, device, dtype):
        self.layer, self.batch_size, self.num_heads = layer, batch_size, num_heads
        self.num_queries, self.num_keys, self.prefix_keys = num_queries, num_keys, prefix_keys
        self.device, self.dtype = device, dtype
        self.terms: list[torch.Tensor] = []

    @property
    def num_patches(self) -> int:
        return self.num_keys - self.prefix_keys

    def add(self, bias: torch.Tensor) -> None:
        """Add ``bias`` ``(B, K)``, ``(B, 1|H, K)`` or ``(B, 1|H, 1|Q, K)`` over the image features (``-inf`` masks
        a feature). Adding ``log w`` multiplies the attention by ``w`` and renormalises it over the features."""
        b = bias
        if b.dim() == 2:
            b = b[:, None, None, :]
        elif b.dim() == 3:
            b = b[:, :, None, :]
        B, H, Q, K = b.shape if b.dim() == 4 else (None,) * 4
        if (b.dim() != 4 or B != self.batch_size or K != self.num_keys or H not in (1, self.num_heads)
                or Q not in (1, self.num_queries)):
            raise ValueError(f"Q-Former layer {self.layer}: a bias of shape {tuple(bias.shape)} does not fit "
                             f"(B={self.batch_size}, 1|H={self.num_heads}, 1|Q={self.num_queries}, K={self.num_keys})")
        self.terms.append(b.to(self.device, torch.float32))

    def add_patch_bias(self, bias: torch.Tensor) -> None:
        """Add ``bias`` ``(B, rows*cols)`` over the patches only (raster order; the CLS feature gets 0)."""
        if bias.dim() != 2 or bias.shape[1] != self.num_patches:
            raise ValueError(f"Q-Former layer {self.layer}: a patch bias must be (B, {self.num_patches}), got "
                             f"{tuple(bias.shape)}")
        pad = torch.zeros(bias.shape[0], self.prefix_keys, dtype=torch.float32, device=bias.device)
        self.add(torch.cat([pad, bias.float()], 1))


class QFormerRoute:
    """Installs the Q-Former function for one :class:`~hallufix.intercept.install.Interceptor` and removes it.

    :param st: the interceptor (its ``model``, ``adapter`` and ``table``); the route is ``st.qformer_route``."""

    def __init__(self, st):
        self.st = st
        self.plan: dict[int, int] = {}  # id(cross-attention module) -> Q-Former layer
        self.names: dict[int, str] = {}
        self.prev: str | None = None
        self._impl: AttentionImplementation | None = None

    def install(self) -> None:
        st = self.st
        if not st.info.capabilities.qformer:
            raise ValueError(f"qformer.* hook points declared, but {st.info.family} has no Q-Former (its "
                             f"capabilities do not declare qformer)")
        declared = {p.layer: p.name for p in st.table.points if p.kind == KIND}
        modules = st.adapter.qformer_cross_attention_modules(st.model)
        missing = sorted(set(declared) - set(modules))
        if missing:
            raise ValueError(f"Q-Former layers {missing} have no cross-attention; this model's are "
                             f"{sorted(modules)} (ModelInfo.qformer_layers)")
        self.plan = {id(modules[i]): i for i in declared}
        self.names = dict(declared)
        ensure_registered(QFORMER_ATTN_NAME, qformer_attention, sdpa_mask)
        self.prev = current(st.model, QFORMER_CONFIG_KEY)
        self._impl = AttentionImplementation(st.model, {QFORMER_CONFIG_KEY: QFORMER_ATTN_NAME})
        self._impl.install()

    def remove(self) -> None:
        if self._impl is not None:
            self._impl.remove()
            self._impl = None
            self.prev = None

    def previous(self, module, query, key, value, attention_mask, scaling, dropout, kwargs):
        """The Q-Former's own implementation (what it ran before the route was installed)."""
        if self.prev == "sdpa":
            return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                          dropout=dropout, **kwargs)
        fn = ALL_ATTENTION_FUNCTIONS.get(self.prev)
        if fn is not None and self.prev != QFORMER_ATTN_NAME:
            return fn(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        return _eager(query, key, value, _additive(attention_mask, query.dtype), scaling)


def qformer_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """``AttentionInterface`` signature: ``query (B, H, Q, D)``, ``key/value (B, H, K, D)``, mask ``None``, bool or
    additive float ``(B, 1, Q, K)``. Returns ``(output (B, Q, H, D), None)``."""
    st = lm_attention.ACTIVE.get()
    route = getattr(st, "qformer_route", None) if st is not None else None
    scaling = module.scaling if scaling is None else scaling
    if route is None:  # outside a run (a stale setting): plain SDPA
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    layer = route.plan.get(id(module))
    if layer is None:
        return route.previous(module, query, key, value, attention_mask, scaling, dropout, kwargs)
    B, H, Q, _ = query.shape
    K = key.shape[2]
    ev = QFormerBiasEvent(layer=layer, batch_size=B, num_heads=H, num_queries=Q, num_keys=K,
                          prefix_keys=st.adapter.qformer_prefix_keys, device=query.device, dtype=query.dtype)
    st.table.submodel_callers[(KIND, layer, "prefill")](event=ev)
    st.fired(route.names[layer])
    if not ev.terms:
        st.count_path(f"qformer.{layer}", "previous")
        return route.previous(module, query, key, value, attention_mask, scaling, dropout, kwargs)
    mask = _additive(attention_mask, query.dtype)
    total = mask if mask is not None else torch.zeros((1, 1, 1, K), dtype=query.dtype, device=query.device)
    for term in ev.terms:
        total = total + term.to(query.dtype)
    total = total.clamp(min=torch.finfo(query.dtype).min)  # -inf masks a feature, a fully masked row stays finite
    st.count_path(f"qformer.{layer}", "bias")
    if route.prev == "sdpa":
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=total, scale=scaling)
        return out.transpose(1, 2).contiguous(), None
    return _eager(query, key, value, total, scaling)


def _additive(mask, dtype):
    """The mask as an additive float tensor (``None`` stays ``None``; bool ``True`` = visible)."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.where(mask, torch.tensor(0.0, dtype=dtype, device=mask.device), torch.finfo(dtype).min)


def _eager(query, key, value, mask, scaling):
    """The eager formula of transformers' InstructBLIP Q-Former (no float32 upcast): ``softmax(q k^T s + m) v``."""
    w = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if mask is not None:
        w = w + mask
    w = torch.softmax(w, dim=-1)
    return torch.matmul(w, value).transpose(1, 2).contiguous(), None

