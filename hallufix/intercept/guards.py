"""Run-time numerical guards: non-finite logits stop a run (naming the method and layer), prompts that do not fit
the model's context are refused, generated token ids end at EOS.

* :class:`FiniteLogitsGuard` is the last ``LogitsProcessor`` of every ``generate`` (after the methods' own): a row
  whose next-token scores hold NaN or +/-inf raises :class:`NonFiniteLogits` instead of letting greedy decoding pick
  an arbitrary token (a silently scored ``""``). Cost: one max-reduction over ``(B, V)`` per step.
* :func:`locate_nonfinite` replays the failing batch with a forward hook on every decoder layer and reports the
  first layer whose output is non-finite in the failing rows, and the methods acting there.
* :func:`check_context` refuses a batch whose prompt plus generation budget exceeds the language model's positions.
* :func:`trim_at_eos` cuts a row's generated ids after its first end-of-sequence token (batched rows are padded).

Devices and dtypes: whatever the model runs in; the checks reduce to one bool per row on the CPU.
"""
from __future__ import annotations

import torch
from transformers import LogitsProcessor

from hallufix.errors import NumericalError
from hallufix.intercept.installer import Installed
from hallufix.intercept.module_hooks import ModuleHooks


class NonFiniteLogits(NumericalError):
    """Rows ``rows`` (batch indices) had non-finite logits at generation step ``step`` (0 = the prefill's)."""

    def __init__(self, rows: list[int], step: int):
        self.rows, self.step = rows, step
        super().__init__(f"non-finite logits (NaN/inf) in batch rows {rows} at generation step {step}")


class PromptTooLong(ValueError):
    """A prompt (plus the generation budget) does not fit the model's context; ``rows`` with their lengths."""

    def __init__(self, rows: dict[int, int], budget: int, limit: int):
        self.rows, self.budget, self.limit = rows, budget, limit
        worst = max(rows.values())
        super().__init__(f"prompt of {worst} tokens + {budget} new tokens exceeds the model's context of {limit} "
                         f"positions (batch rows {sorted(rows)}) — shorten the question(s) or lower --max-new-tokens")


class FiniteLogitsGuard(LogitsProcessor):
    """Raise :class:`NonFiniteLogits` when any row's scores ``(B, V)`` hold a non-finite value."""

    def __init__(self, eos: int | list[int] | None = None):
        self.step, self.finished = 0, None
        self.eos = [] if eos is None else list(eos) if isinstance(eos, (list, tuple)) else [eos]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # -inf is how a method (or transformers' own processors) bans a token; a row is broken when a value is NaN
        # or +inf, or when nothing is left to choose (every score -inf). Rows that already ended are not looked at.
        # one reduction: a row's max is NaN if any score is NaN, +inf if any is +inf, -inf if all are -inf
        bad = ~torch.isfinite(scores.amax(-1))
        if self.step > 0 and self.eos:
            ended = torch.isin(input_ids[:, -1], torch.tensor(self.eos, device=input_ids.device))
            self.finished = ended if self.finished is None else self.finished | ended
            bad = bad & ~self.finished
        if bool(bad.any()):
            raise NonFiniteLogits(bad.nonzero().flatten().tolist(), self.step)
        self.step += 1
        return scores


def context_limit(model) -> int | None:
    """The language model's ``max_position_embeddings`` (``None`` when the config has none)."""
    cfg = model.config
    text = getattr(cfg, "text_config", None) or cfg
    return getattr(text, "max_position_embeddings", None)


def check_context(model, inputs: dict, max_new_tokens: int) -> None:
    """Raise :class:`PromptTooLong` for rows whose prompt length + ``max_new_tokens`` exceeds the context."""
    limit = context_limit(model)
    if not limit:
        return
    mask = inputs.get("attention_mask")
    lengths = (mask.sum(-1) if mask is not None else torch.full((inputs["input_ids"].shape[0],),
                                                                inputs["input_ids"].shape[1])).tolist()
    over = {i: int(n) for i, n in enumerate(lengths) if int(n) + max_new_tokens > limit}
    if over:
        raise PromptTooLong(over, max_new_tokens, limit)


def trim_at_eos(ids: torch.Tensor, eos: int | list[int] | None) -> torch.Tensor:
    """``(T,)`` generated ids -> up to and including the first EOS (what a one-row generation returns)."""
    if eos is None or ids.numel() == 0:
        return ids
    eos_ids = torch.tensor(eos if isinstance(eos, (list, tuple)) else [eos], device=ids.device)
    hits = torch.isin(ids, eos_ids).nonzero()
    return ids[: int(hits[0]) + 1] if len(hits) else ids


def locate_nonfinite(run, images: list, questions: list[str], rows: list[int], step: int) -> dict:
    """Replay a batch that failed with :class:`NonFiniteLogits` and find where the values first broke.

    Returns ``{"layer": first decoder layer (0-based) whose output is non-finite in ``rows`` or None, "forward":
    0 = prefill / k = decode step k, "methods": the run's methods acting at that layer (or on the logits when every
    layer stayed finite)}``. Runs one more (short) generation; only called on the failure path."""
    s = run.session
    first: dict = {}
    calls = {"n": -1}
    layers = s.adapter.decoder_layers(s.model)

    def hook_for(i):
        def hook(module, args, output):
            h = output[0] if isinstance(output, (tuple, list)) else output
            if i == 0:
                calls["n"] += 1
            if not first and not bool(torch.isfinite(h[rows]).all()):
                first.update(layer=i, forward=calls["n"])
        return hook

    hooks = ModuleHooks()
    for i, layer in enumerate(layers):
        hooks.post(layer, hook_for(i))
    with Installed(hooks):
        try:
            run.generate(images, questions, max_new_tokens=step + 1)
        except NonFiniteLogits:
            pass
    names = dict(zip(map(id, run.methods.instances), run.methods.order))
    layer = first.get("layer")
    if layer is not None:
        acting = [names[id(inst)] for inst, pts in run.declared.items() if any(p.layer == layer for p in pts)]
    else:
        acting = [names[id(inst)] for inst, pts in run.declared.items() if any(p.kind == "logits" for p in pts)]
    return {"layer": layer, "forward": first.get("forward", step), "methods": acting}


def describe_nonfinite(info: dict, ids: list[str], run_order: list[str], dtype: str) -> str:
    """The one-line stop message for :func:`locate_nonfinite`'s findings on samples ``ids``."""
    when = "the prefill" if info["forward"] == 0 else f"decode step {info['forward']}"
    shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
    if info["layer"] is not None:
        where = f"decoder layer {info['layer']} (0-based), in {when}"
        who = (f"method {' / '.join(repr(m) for m in info['methods'])} acts there" if info["methods"] else
               f"no method acts at that layer (methods of this run: {', '.join(run_order) or 'none'})")
    else:
        where = "the logits (every layer's output stayed finite)"
        who = (f"method {' / '.join(repr(m) for m in info['methods'])} edits the logits" if info["methods"] else
               "no method edits the logits")
    fix = ("check that method's settings (a NaN/inf factor, an empty selection) or report it to its authors"
           if info["methods"] else f"the model overflowed in {dtype}: try --dtype float32")
    return f"non-finite values (NaN/inf) for samples {shown}: first at {where}; {who} — {fix}"


def check_questions_fit(session, samples: list, max_new: int) -> None:
    """Refuse before generating when a question alone (no template, no image tokens) plus the budget already
    exceeds the model's context; the exact per-batch check is :func:`hallufix.intercept.guards.check_context`."""
    from hallufix.tasks.base import TaskError

    limit = context_limit(session.model)
    tok = getattr(session.processor, "tokenizer", None)
    if not limit or tok is None or not samples:
        return
    lengths = tok([s.question for s in samples], add_special_tokens=False)["input_ids"]
    over = [(s.id, len(ln)) for s, ln in zip(samples, lengths) if len(ln) + max_new > limit]
    if over:
        shown = ", ".join(f"{i} ({n} tokens)" for i, n in over[:5])
        raise TaskError(f"question(s) longer than the model's context of {limit} positions (with {max_new} new "
                        f"tokens): {shown} — shorten them, or drop them from the task file")
