"""A task's ``generation_kwargs`` → the greedy settings hallufix generates with, or a refusal naming the setting.

hallufix generates greedily with one beam (:meth:`hallufix.api.MethodRun.generate`), so a request asking for
sampling (``do_sample: true``, or ``temperature > 0`` — lmms-eval's own HF models sample whenever the temperature
is positive), beam search (``num_beams > 1``) or a setting that changes greedy choices (``repetition_penalty``,
``no_repeat_ngram_size``, ``min_length``) is refused with :class:`GenerationRefused` before anything runs.
Settings without effect on greedy single-beam decoding (``top_p``, ``top_k``, ``length_penalty``, ``use_cache``,
a task's own keys) are accepted and recorded as ``ignored``.
``until`` stop strings cut the decoded text at the first one (as lmms-eval's models do); ``max_new_tokens``
(default :data:`DEFAULT_MAX_NEW_TOKENS`, lmms-eval's HF models' default) is honoured exactly. Pure Python.
"""
from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_MAX_NEW_TOKENS = 1024


class GenerationRefused(ValueError):
    """Generation settings this run cannot honour; the message names them and what hallufix does instead."""


@dataclass(frozen=True)
class Greedy:
    """What one group of requests generates with: ``max_new_tokens``, ``min_new_tokens``, ``until`` stop strings,
    and what was accepted without effect (``ignored``)."""

    max_new_tokens: int
    min_new_tokens: int = 0
    until: tuple[str, ...] = ()
    ignored: tuple[str, ...] = field(default=())

    def record(self) -> dict:
        return {"decoding": "greedy", "do_sample": False, "num_beams": 1, "max_new_tokens": self.max_new_tokens,
                "min_new_tokens": self.min_new_tokens, "until": list(self.until), "ignored": list(self.ignored)}


def _number(kwargs: dict, key: str, default):
    value = kwargs.get(key, default)
    if value is None:
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        raise GenerationRefused(f"generation_kwargs {key}={value!r} is not a number") from None


def greedy_settings(gen_kwargs: dict | None, task: str = "") -> Greedy:
    """Check one request's ``generation_kwargs`` (see the module docstring)."""
    kw = dict(gen_kwargs or {})
    where = f"task '{task}': " if task else ""
    refused = []
    do_sample = kw.get("do_sample", False)
    if do_sample not in (False, None, 0, "false", "False"):
        refused.append(f"do_sample={do_sample}")
    temperature = _number(kw, "temperature", 0.0)
    if temperature > 0:
        refused.append(f"temperature={kw['temperature']} (lmms-eval samples when temperature > 0)")
    if _number(kw, "num_beams", 1) > 1:
        refused.append(f"num_beams={kw['num_beams']}")
    if _number(kw, "repetition_penalty", 1.0) != 1.0:
        refused.append(f"repetition_penalty={kw['repetition_penalty']}")
    if _number(kw, "no_repeat_ngram_size", 0) > 0:
        refused.append(f"no_repeat_ngram_size={kw['no_repeat_ngram_size']}")
    if _number(kw, "min_length", 0) > 0:
        refused.append(f"min_length={kw['min_length']} (use min_new_tokens)")
    if refused:
        raise GenerationRefused(
            f"{where}hallufix generates greedily with one beam and cannot honour {', '.join(refused)} — run the "
            f"task with greedy settings, e.g. --gen_kwargs temperature=0,do_sample=false,num_beams=1")
    max_new = kw.get("max_new_tokens")
    max_new = DEFAULT_MAX_NEW_TOKENS if max_new in (None, "") else int(_number(kw, "max_new_tokens", 0))
    if max_new < 1:
        raise GenerationRefused(f"{where}max_new_tokens={kw['max_new_tokens']}: give at least 1")
    min_new = int(_number(kw, "min_new_tokens", 0))
    until = kw.get("until") or ()
    if isinstance(until, str):
        until = (until,)
    if not all(isinstance(u, str) for u in until):
        raise GenerationRefused(f"{where}until={until!r}: give a string or a list of strings")
    known = {"do_sample", "temperature", "num_beams", "repetition_penalty", "no_repeat_ngram_size", "min_length",
             "max_new_tokens", "min_new_tokens", "until"}
    ignored = tuple(sorted(k for k in kw if k not in known))
    return Greedy(max_new, min_new, tuple(u for u in until if u), ignored)


def cut_at_stops(text: str, until: tuple[str, ...]) -> str:
    """``text`` up to the first occurrence of any stop string (the whole text when none occurs)."""
    cut = len(text)
    for stop in until:
        at = text.find(stop)
        if at != -1:
            cut = min(cut, at)
    return text[:cut]
