"""``--model_args`` of ``--model hallufix``: what lmms-eval hands the model's ``__init__``, checked and normalised.

lmms-eval splits ``--model_args`` on commas outside quotes and brackets, splits each piece at its first ``=``, and
turns ``true``/``false``/numbers into Python values; everything else arrives as a string, quotes included. So::

    pretrained=builtin,plugins="clva,fhi",overrides={clva: {alpha: 10}, fhi: {g_perc: 1.2}},record=out/hallufix

arrives as ``pretrained="builtin"``, ``plugins='"clva,fhi"'``, ``overrides='{clva: {alpha: 10}, fhi: ...}'`` and
``record="out/hallufix"``. Keys:

* ``pretrained`` — a hallufix model alias (``builtin``, ``llava-1.5``, ``qwen2-vl``, ...), hub id or folder
  (default ``builtin``);
* ``plugins`` — the method stack in call order, as ``hallufix run --plugins`` takes it (quote it when it holds a
  comma); empty or absent: the baseline;
* ``overrides`` — per-method settings: a YAML/JSON flow mapping from method name to either a mapping
  ``{key: value}`` or a list of ``key=value`` strings (the ``hallufix run --set`` grammar); a ``dict`` when
  ``simple_evaluate`` is given ``model_args`` as a dict;
* ``dtype`` — ``auto`` (default), ``float32``, ``bfloat16``, ``float16``;
* ``record`` — the folder for hallufix's run record (a fresh folder: one that already holds a record is refused).
  Default: ``<lmms-eval --output_path>/hallufix/<stack>_<UTC time>`` when the lmms-eval command line has an
  ``--output_path``; else no record is written, and the model logs that once.

plus lmms-eval's own ``batch_size`` (an integer: how many requests one ``generate`` call batches, left-padded),
``max_batch_size`` (unused: there is no automatic batch size) and ``device`` (default ``cpu``).
Pure Python: no torch, no lmms-eval.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

KNOWN = ("pretrained", "plugins", "overrides", "dtype", "record", "batch_size", "max_batch_size", "device")
DTYPES = ("auto", "float32", "bfloat16", "float16")


class ModelArgsError(ValueError):
    """A ``--model_args`` value hallufix cannot use; the message names the key and the fix."""


@dataclass
class ModelArgs:
    """The checked ``--model_args``: a hallufix session (``pretrained``, ``dtype``, ``device``) and run
    (``plugins`` in call order, ``overrides`` ``{method: ["key=value", ...]}``), the batch size and the record
    folder (``record``: given; ``record_root``: the default's parent, from lmms-eval's ``--output_path``)."""

    pretrained: str = "builtin"
    plugins: str = ""
    overrides: dict[str, list[str]] = field(default_factory=dict)
    dtype: str = "auto"
    device: str = "cpu"
    batch_size: int = 1
    record: Path | None = None
    record_root: Path | None = None


def unquote(value) -> str:
    """A string value without one pair of surrounding quotes (lmms-eval keeps them)."""
    text = "" if value is None else str(value).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


def parse_overrides(value) -> dict[str, list[str]]:
    """``{method: ["key=value", ...]}`` from a flow mapping string or a dict (see the module docstring)."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        text = unquote(value)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            example = 'overrides={clva: {alpha: 10}} or overrides={"clva": ["alpha=10"]}'
            raise ModelArgsError(f"overrides={text!r} is not a mapping ({exc.problem or exc}); write e.g. "
                                 f"{example}") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ModelArgsError(f"overrides must map method names to settings, got {type(value).__name__} {value!r}; "
                             f"write e.g. overrides={{clva: {{alpha: 10}}}}")
    out: dict[str, list[str]] = {}
    for method, settings in value.items():
        name = str(method)
        if isinstance(settings, dict):
            out[name] = [f"{k}={_setting_text(v)}" for k, v in settings.items()]
        elif isinstance(settings, str):
            out[name] = [settings]
        elif isinstance(settings, list) and all(isinstance(s, str) and "=" in s for s in settings):
            out[name] = list(settings)
        else:
            raise ModelArgsError(f"overrides for '{name}': {settings!r} is neither a mapping {{key: value}} nor a "
                                 f"list of 'key=value' strings")
        bad = [s for s in out[name] if "=" not in s]
        if bad:
            raise ModelArgsError(f"overrides for '{name}': {bad[0]!r} is not 'key=value'")
    return out


def _setting_text(value) -> str:
    """One setting's value as the ``key=value`` grammar reads it (lists and mappings as JSON, booleans lower)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return "null" if value is None else str(value)


def parse_model_args(kwargs: dict, *, argv: list[str] | None = None) -> ModelArgs:
    """Check the keyword arguments lmms-eval passes to the model's ``__init__`` (``create_from_arg_string``'s
    output plus ``batch_size``/``max_batch_size``/``device``); ``argv`` (default ``sys.argv``) supplies the
    default record folder from lmms-eval's ``--output_path``."""
    unknown = sorted(k for k in kwargs if k not in KNOWN)
    if unknown:
        raise ModelArgsError(f"--model hallufix does not take {', '.join(unknown)}; its --model_args are "
                             f"{', '.join(k for k in KNOWN if k not in ('batch_size', 'max_batch_size', 'device'))} "
                             f"(see docs/lmms-eval.md)")
    args = ModelArgs()
    if kwargs.get("pretrained") not in (None, ""):
        args.pretrained = unquote(kwargs["pretrained"])
    args.plugins = unquote(kwargs.get("plugins"))
    args.overrides = parse_overrides(kwargs.get("overrides"))
    dtype = unquote(kwargs.get("dtype")) or "auto"
    if dtype not in DTYPES:
        raise ModelArgsError(f"dtype={dtype!r}: choose one of {', '.join(DTYPES)}")
    args.dtype = dtype
    args.device = unquote(kwargs.get("device")) or "cpu"
    batch = kwargs.get("batch_size")
    if batch not in (None, ""):
        try:
            args.batch_size = int(str(batch))
        except ValueError:
            raise ModelArgsError(f"--batch_size {batch}: hallufix has no automatic batch size; give an integer "
                                 f"(requests batched per generate call, left-padded)") from None
        if args.batch_size < 1:
            raise ModelArgsError(f"--batch_size {batch}: give an integer of at least 1")
    record = unquote(kwargs.get("record"))
    if record:
        args.record = Path(record).expanduser()
    else:
        out = output_path_from_argv(argv)
        args.record_root = None if out is None else out / "hallufix"
    return args


def output_path_from_argv(argv: list[str] | None = None) -> Path | None:
    """lmms-eval's ``--output_path`` on this process's command line (``None`` when absent)."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    for i, a in enumerate(argv):
        if a == "--output_path" and i + 1 < len(argv):
            return Path(argv[i + 1]).expanduser()
        if a.startswith("--output_path="):
            return Path(a.split("=", 1)[1]).expanduser()
    return None
