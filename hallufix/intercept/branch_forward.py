"""A branch run separately: its own forwards on its own rows and its own KV cache, stepped in lockstep.

:class:`SeparateBranch` holds one branch of one batch: its processor inputs (``B`` rows: the main rows' tokens with
transformed pixels, or the image-free prompt left-padded among the branch's own rows only), a fresh
``DynamicCache`` and the generation kwargs ``generate`` itself keeps between steps (attention mask, position ids,
token-type ids). :meth:`SeparateBranch.step` is called once per generation step from the branch logits processor
with the main rows' ``input_ids`` ``(B, P + t)``: at the first step it runs the branch's prefill, afterwards one
decode forward on the token the main rows chose at the previous step (``input_ids[:, -1]``). It returns the
branch's next-token logits ``(B, V)`` float32, as ``generate`` hands them to its processors. Under beam search
(``beams > 1``, a plain-model branch) it prefills the ``B`` prompt rows once, then holds ``B * beams`` rows that
follow the main beams (:meth:`SeparateBranch._follow_beams`).

Everything goes through the model's own generation interface: ``prepare_inputs_for_generation`` and the forward
(with ``cache``), and, once at prefill, the model's ``_prepare_position_ids_for_generation`` (what ``generate``
calls: 3D/4D rotary positions on Qwen2-VL / Qwen2.5-VL, ``cumsum(mask) - 1`` elsewhere). A model whose
``generate`` hands the prompt's embeddings to ``language_model.generate`` (InstructBLIP) runs its prefill through the
top-level forward (the Q-Former embeds the image) and its decode steps through ``language_model``, as its
``generate`` does.

Per-model state: transformers keeps Qwen's ``rope_deltas`` on the model between prefill and decode; every
attribute named ``rope_deltas`` on the model's modules is saved before a branch forward, set to the branch's own,
and restored afterwards (:class:`_ModelState`). Per-forward interceptor state (phase, step, layout, plans, static
gains, weight folds, the hook selection) is swapped by :func:`hallufix.intercept.branch_scope.scoped`, so a branch
forward looks to hooks like a forward over the branch's rows and leaves the main forward's state as it was.
"""
from __future__ import annotations

import inspect
from contextlib import nullcontext

import torch
from transformers import DynamicCache, GenerationMixin

#: image inputs a decode step of a delegating model (InstructBLIP's ``language_model``) does not take
_LM_KEYS = ("attention_mask", "position_ids", "cache", "use_cache", "logits_to_keep", "token_type_ids")


class _ModelState:
    """The ``rope_deltas`` attributes of ``model``'s modules: swapped in and out around each branch forward."""

    def __init__(self, model):
        self.modules = [m for m in model.modules() if "rope_deltas" in vars(m)]
        self.branch = [None] * len(self.modules)  # the branch's own values (None before its prefill)

    def __enter__(self):
        self.saved = [m.rope_deltas for m in self.modules]
        for m, v in zip(self.modules, self.branch):
            m.rope_deltas = v
        return self

    def __exit__(self, *exc):
        self.branch = [m.rope_deltas for m in self.modules]
        for m, v in zip(self.modules, self.saved):
            m.rope_deltas = v


def _delegate(model):
    """InstructBLIP-style models: ``(language_model)`` whose ``generate`` runs the decode, else ``None``."""
    lm = getattr(model, "language_model", None)
    overridden = type(model).generate is not GenerationMixin.generate
    return lm if overridden and isinstance(lm, GenerationMixin) else None


class SeparateBranch:
    """One branch of one batch run on its own rows.

    :param name: the branch name. :param model: the loaded model. :param inputs: the branch's processor inputs
    (``B`` rows, on the model's device). :param layout: its :class:`~hallufix.intercept.branch.SeparateLayout`.
    :param scope: a callable returning the context manager that makes the interceptor serve this branch's forward
    (``None``: no interceptor in this run).
    """

    def __init__(self, name: str, model, inputs: dict, layout, scope=None, beams: int = 1):
        self.name, self.model, self.layout, self.scope = name, model, layout, scope
        #: rows per prompt row after the prefill (beam search; see :meth:`_follow_beams`)
        self.beams = beams
        self._seen: torch.Tensor | None = None  # the main rows' ids at the previous step (beam search)
        self.state = _ModelState(model)
        self.lm = _delegate(model)
        self.prefill_model = model if self.lm is None or "pixel_values" in inputs else self.lm
        self.decode_model = model if self.lm is None else self.lm
        self.ids = inputs["input_ids"]
        self.kw = {k: v for k, v in inputs.items() if k != "input_ids"}
        self.steps = 0

    def _prefill_kwargs(self) -> dict:
        m, kw = self.prefill_model, dict(self.kw)
        if self.prefill_model is not self.model:  # the language model alone: text inputs only
            kw = {k: v for k, v in kw.items() if k in _LM_KEYS}
        gen = self.decode_model
        kw["cache"] = DynamicCache(config=gen.config.get_text_config(decoder=True))
        kw["use_cache"] = True
        if "position_ids" in inspect.signature(gen.forward).parameters:
            kw["position_ids"] = gen._prepare_position_ids_for_generation(self.ids, {"input_ids": self.ids, **kw})
        if kw.get("attention_mask") is not None and bool((kw["attention_mask"] == 1).all()):
            kw["attention_mask"] = None  # as generate: no padding, no mask
        if "logits_to_keep" in inspect.signature(m.forward).parameters:
            kw["logits_to_keep"] = 1
        return kw

    def _advance(self, token: torch.Tensor) -> None:
        """Append ``token`` ``(B, 1)`` to the branch's ids and grow the per-token kwargs by one position."""
        kw = self.kw
        self.ids = torch.cat([self.ids, token.to(self.ids.device)], 1)
        if kw.get("attention_mask") is not None:
            am = kw["attention_mask"]
            kw["attention_mask"] = torch.cat([am, am.new_ones((am.shape[0], 1))], 1)
        if kw.get("mm_token_type_ids") is not None:
            t = kw["mm_token_type_ids"]
            kw["mm_token_type_ids"] = torch.cat([t, t.new_zeros((t.shape[0], 1))], 1)
        if kw.get("token_type_ids") is not None:
            t = kw["token_type_ids"]
            kw["token_type_ids"] = torch.cat([t, t[:, -1:]], 1)
        if kw.get("position_ids") is not None:
            p = kw["position_ids"]
            kw["position_ids"] = torch.cat([p, p[..., -1:] + 1], -1)

    def step(self, main_ids: torch.LongTensor) -> torch.Tensor:
        """The branch's next-token logits ``(B, V)`` float32 for this generation step (``main_ids``: the main
        rows' ``(B, P + t)`` sequences; the last column is the token chosen at the previous step)."""
        scope = self.scope() if self.scope is not None else nullcontext()
        with scope, self.state:
            if self.steps == 0:
                self.kw = self._prefill_kwargs()
                model = self.prefill_model
                inputs = model.prepare_inputs_for_generation(self.ids, is_first_iteration=True, **self.kw)
            else:
                if self.beams > 1:
                    self._follow_beams(main_ids)
                self._advance(main_ids[:, -1:])
                model = self.decode_model
                kw = self.kw if model is self.prefill_model else {k: v for k, v in self.kw.items() if k in _LM_KEYS}
                inputs = model.prepare_inputs_for_generation(self.ids, next_sequence_length=1, **kw)
            out = model(**inputs, return_dict=True)
        self.kw["cache"] = out.cache if getattr(out, "cache", None) is not None else self.kw["cache"]
        logits = out.logits[:, -1].to(copy=True, dtype=torch.float32)
        if self.steps == 0 and self.beams > 1:  # prefill ran once per prompt row: give each of its beams a copy
            self._expand_rows()
            logits = logits.repeat_interleave(self.beams, 0)
        self.steps += 1
        if self.beams > 1:
            self._seen = main_ids
        return logits

    def _expand_rows(self) -> None:
        """After the prefill under beam search: every per-row state ``beams`` times, row ``b`` becoming rows
        ``b * beams ...`` (transformers' beam order): the cache (``batch_repeat_interleave``), the per-token
        kwargs, the ids and the model's ``rope_deltas``."""
        n, kw = self.beams, self.kw
        kw["cache"].batch_repeat_interleave(n)
        self.ids = self.ids.repeat_interleave(n, 0)
        for key in ("attention_mask", "mm_token_type_ids", "token_type_ids"):
            if kw.get(key) is not None:
                kw[key] = kw[key].repeat_interleave(n, 0)
        if kw.get("position_ids") is not None:  # (B, T), or (k, B, T) rotary sections (Qwen2-VL)
            p = kw["position_ids"]
            kw["position_ids"] = p.repeat_interleave(n, 0 if p.dim() == 2 else 1)
        self.state.branch = [v.repeat_interleave(n, 0) if isinstance(v, torch.Tensor) else v
                             for v in self.state.branch]

    def _follow_beams(self, main_ids: torch.LongTensor) -> None:
        """Reorder the branch's rows as beam search reordered the main beams since the previous step.

        ``main_ids`` ``(B * beams, L)``: each row extends the sequence of one running beam of the previous step
        (its parent, among the same prompt row's beams); the parent is found by comparing ``main_ids[:, :-1]``
        with the previous step's ids (beams with equal histories hold equal branch rows, so any match serves), and
        the cache rows follow (``reorder_cache``). The other per-row state is equal across a prompt row's beams."""
        prev, n = self._seen, self.beams
        rows = main_ids.shape[0]
        hist = main_ids[:, :-1].view(rows // n, n, 1, -1)
        match = (hist == prev.view(rows // n, 1, n, -1)).all(-1)  # (Q, child, parent)
        if not bool(match.any(-1).all()):
            raise RuntimeError(f"branch {self.name!r}: a beam's history matches no beam of the previous step")
        parent = match.float().argmax(-1) + torch.arange(0, rows, n, device=main_ids.device)[:, None]
        parent = parent.flatten()
        if not torch.equal(parent, torch.arange(rows, device=parent.device)):
            self.kw["cache"].reorder_cache(parent)
            self.ids = self.ids[parent]
