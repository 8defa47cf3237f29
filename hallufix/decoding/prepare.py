"""What one ``generate`` call passes to ``model.generate`` for a :class:`~hallufix.decoding.Decoding`.

Greedy and sampling run transformers' greedy search (sampling forces each row's drawn token through
:class:`~hallufix.decoding.sampling.RowSampler`); beam search runs transformers' ``_beam_search`` with
``num_beams``. Under beams every forward carries ``B * num_beams`` rows (transformers expands the prompt before the
prefill), so the token layout the hooks see is the batch's layout with each row repeated ``num_beams`` times
(:func:`expand_layout`); ``batch_start`` / ``batch_end`` still see the ``B`` prompt rows. All beams of one prompt
share its prompt, so what a method computes from the prompt is the same for each of them; beam reordering only
permutes rows inside a prompt's group.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hallufix.decoding.sampling import RowSampler
from hallufix.decoding.strategy import Decoding, content_key, row_seed


@dataclass
class GenerationPlan:
    """``kwargs`` for ``generate`` (strategy keys only), ``processors`` to append last, ``expand`` rows per prompt
    row in every forward, ``seeds`` per row (``None`` unless sampling)."""

    kwargs: dict
    processors: list = field(default_factory=list)
    expand: int = 1
    seeds: list[int] | None = None


def plan(decoding: Decoding | None, questions: list[str], images: list, row_keys: list[str] | None = None,
         methods=None, declared=None) -> GenerationPlan:
    """The plan for one batch. ``row_keys`` (one per row; the runner passes sample ids) seed the rows of
    ``sample``; without them a row's key is a hash of its question and image (:func:`content_key`)."""
    d = decoding or Decoding()
    if d.strategy == "beam":
        kwargs = {"do_sample": False, "num_beams": d.num_beams}
        caller = candidate_caller(methods, declared) if methods is not None else None
        reorder = hook_caller(methods, declared, "hallufix_beam_reorder") if methods is not None else None
        if caller is not None or reorder is not None:  # transformers' loop plus the candidate / reorder hooks
            from hallufix.decoding.beam import make_beam_search

            kwargs["custom_generate"] = make_beam_search(caller, reuse_ok=reuse_allowed(methods, declared),
                                                         reorder=reorder)
        return GenerationPlan(kwargs, expand=d.num_beams)
    if d.strategy == "greedy":
        return GenerationPlan({"do_sample": False, "num_beams": 1})
    if row_keys is not None and len(row_keys) != len(questions):
        raise ValueError(f"row_keys has {len(row_keys)} keys for {len(questions)} rows")
    keys = row_keys if row_keys is not None else [content_key(q, im) for q, im in zip(questions, images)]
    seeds = [row_seed(d.seed, str(k)) for k in keys]
    return GenerationPlan({"do_sample": False, "num_beams": 1}, [RowSampler(seeds, d.temperature, d.top_p)],
                          seeds=seeds)


def candidate_caller(methods, declared=None):
    """A function ``(event=...)`` calling each active method's ``hallufix_beam_candidates`` in typed order, or
    ``None`` when no active method implements it (beam search then is transformers' own ``_beam_search``). With
    ``declared`` (``{instance: points}``), a method that declared nothing (a no-op setting) is not called."""
    return hook_caller(methods, declared, "hallufix_beam_candidates")


def hook_caller(methods, declared, hook: str):
    """A function ``(**kwargs)`` calling hook ``hook`` of each active method implementing it, in typed order
    (``None`` when none does); with ``declared``, methods that declared nothing are skipped."""
    callers = []
    for inst in methods.instances:
        if not hasattr(inst, hook) or (declared is not None and inst not in declared):
            continue
        others = [x for x in methods.instances if x is not inst]
        callers.append(methods.pm.subset_hook_caller(hook, remove_plugins=others))
    if not callers:
        return None

    def call(**kwargs):
        for c in callers:
            c(**kwargs)

    return call


#: point kinds that act outside the decoder forward (a reused beam step runs no forward but still its logits)
_OUTSIDE_FORWARD = {"logits", "input_image"}


def reuse_allowed(methods, declared=None) -> bool:
    """Whether a kept beam look-ahead may stand in for a decode step (:mod:`hallufix.decoding.reuse`): every method
    that declared decode-phase points inside the forward implements ``hallufix_beam_candidates`` (so it knows from
    ``event.reused`` that the step ran no forward) or says ``stateless_decode`` (its hooks fired in the look-ahead
    on the same rows). ``declared`` ``{instance: points}``; ``None``: not known, no."""
    if declared is None:
        return False
    for inst, pts in declared.items():
        in_decode = any("decode" in p.phases and p.kind not in _OUTSIDE_FORWARD for p in pts)
        if in_decode and not (hasattr(inst, "hallufix_beam_candidates") or getattr(inst, "stateless_decode", False)):
            return False
    return True


def expand_layout(layout, times: int):
    """The :class:`~hallufix.layout.TokenLayout` with each row repeated ``times`` times (row ``b`` becomes rows
    ``b * times ... b * times + times - 1``, transformers' beam order); a branch layout keeps its blocks (its
    ``main_rows`` become ``main_rows * times``)."""
    if times == 1:
        return layout
    rep = lambda t: t.repeat_interleave(times, dim=0)  # noqa: E731
    grids = [g for g in layout.grids for _ in range(times)]
    # a BranchLayout's blocks stay contiguous: the B main rows come first, so their B * times beams do too
    extra = {"main_rows": layout.main_rows * times, "branch_names": layout.branch_names} \
        if hasattr(layout, "branch_names") else {}
    return type(layout)(rep(layout.input_ids), rep(layout.valid), rep(layout.visual), rep(layout.text), grids,
                        **extra)


def row_logits(out, batch_size: int, expand: int) -> torch.Tensor | None:
    """``(B, T, V)`` per-step raw logits of each returned row. Greedy / sampling: ``out.logits`` stacked. Beams:
    step ``t`` of row ``b`` is the logits of the running beam its final hypothesis came from at ``t``
    (``out.beam_indices``, flat indices into the ``B * num_beams`` rows; ``-1`` after the hypothesis ended)."""
    if out.logits is None:
        return None
    logits = torch.stack(out.logits, 1)  # (B * expand, T, V)
    if expand == 1:
        return logits
    idx = out.beam_indices[:, : logits.shape[1]].long()  # (B, T)
    T = idx.shape[1]
    safe = idx.clamp(min=0)
    steps = torch.arange(T, device=logits.device)[None, :].expand(batch_size, T)
    picked = logits[safe, steps]  # (B, T, V)
    return picked
