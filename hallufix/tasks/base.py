"""The task contract: what a benchmark gives the runner and what it does with the model's outputs.

A task turns its official files (or a built-in generator) into :class:`Sample` objects, parses each generated text
into the form its scorer expects, and scores a list of finished records. The runner never looks inside a task:
it batches samples, generates, calls :meth:`Task.parse`, appends a record per sample to ``samples.jsonl`` and
finally calls :meth:`Task.score` over all records.

Phases: everything here runs on the CPU, outside generation. No torch imports.
"""
from __future__ import annotations

import json

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from PIL import Image


class TaskError(ValueError):
    """Bad task input: names the file (and line) at fault and how to fix it."""


def read_text(path: str | Path, what: str = "file") -> str:
    """The UTF-8 text of a data file, or :class:`TaskError` naming the file (and the line of a non-UTF-8 byte) and the
    fix. Use it for every task / answer / label file so a bad encoding never ends in a traceback."""
    path = Path(path)
    if not path.exists():
        raise TaskError(f"{what} not found: {path} — check the path")
    if path.is_dir():
        raise TaskError(f"{path} is a folder, not a {what} — give the file inside it")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TaskError(f"cannot read {what} {path}: {exc.strerror} — check its permissions") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise TaskError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}) — re-save the {what} as "
                        f"UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def read_json(path: str | Path, what: str = "file"):
    """The parsed JSON document of a data file, or :class:`TaskError` naming the file, the line of a syntax error
    (or of a non-UTF-8 byte) and the fix (:func:`read_text` for missing, unreadable and non-UTF-8 files)."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TaskError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg}) — fix the {what}") from None


@dataclass
class Sample:
    """One question about one image.

    Attributes:
        id: unique and stable within the task (``question_id`` for POPE, ``image/question`` for MME).
        question: the user text, without chat template; the model adapter wraps it.
        image: a path to an image file, an already open ``PIL.Image``, or a zero-argument callable returning one
            (built-in synthetic tasks render on demand).
        answer: the gold answer where the task has one (``"yes"``/``"no"`` for POPE and MME), else ``None``.
        split: the sub-set the sample is scored in (``"random"``, ``"existence"``, ...).
        meta: anything the scorer needs later (image id for CHAIR, category for MME); must be JSON-serialisable.
    """

    id: str
    question: str
    image: Any
    answer: str | None = None
    split: str = "all"
    meta: dict = field(default_factory=dict)

    def load_image(self) -> Image.Image:
        """Return the image as RGB ``PIL.Image``; a missing file raises :class:`TaskError` naming its path."""
        img = self.image
        if callable(img) and not isinstance(img, (str, Path)):
            img = img()
        if isinstance(img, (str, Path)):
            path = Path(img)
            if not path.is_file():
                raise TaskError(
                    f"image not found: {path} (sample {self.id}); point the task at the folder holding the images "
                    f"(e.g. image_root=/path/to/val2014)"
                )
            try:
                with Image.open(path) as opened:
                    return opened.convert("RGB")
            except (OSError, ValueError, Image.DecompressionBombError) as exc:  # corrupt, truncated, 0-byte, huge
                raise TaskError(f"cannot read image {path} (sample {self.id}): {type(exc).__name__}: {exc} — replace "
                                f"the file, or remove the sample from the task") from None
        if isinstance(img, Image.Image):
            try:
                return img.convert("RGB")
            except (OSError, ValueError) as exc:
                raise TaskError(f"cannot read the image of sample {self.id}: {type(exc).__name__}: {exc}") from None
        raise TaskError(f"sample {self.id}: unsupported image value {type(img).__name__}")

    def to_record(self) -> dict:
        """JSON-serialisable description of the sample (the image as a path or a placeholder)."""
        d = dataclasses.asdict(self)
        d["image"] = str(self.image) if isinstance(self.image, (str, Path)) else "<generated>"
        return d


@dataclass(frozen=True)
class MetricInfo:
    """How to read a metric: ``higher_is_better`` is ``None`` for diagnostics such as POPE's yes-ratio."""

    name: str
    higher_is_better: bool | None


class Task:
    """Base class of every task. Subclasses set :attr:`name` and implement the three methods.

    ``max_new_tokens`` is the generation budget the community uses for the task (1-word answers: small).
    """

    name: str = "task"
    max_new_tokens: int = 16
    metrics: tuple[MetricInfo, ...] = ()

    def samples(self) -> list[Sample]:
        raise NotImplementedError

    def parse(self, sample: Sample, text: str) -> Any:
        """Turn a generated text into the value the scorer reads (``"yes"``/``"no"``, a caption, ...)."""
        raise NotImplementedError

    def score(self, records: list[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
        """Score finished records (``{"id", "split", "answer", "parsed", "output", "meta"}``).

        Returns ``{split: {metric: value}}``; an ``"all"`` entry holds the task-level summary (e.g. POPE mean F1).
        Every metric returned should be declared in :attr:`metrics` (an undeclared one is recorded with no
        direction). A value that cannot be given honestly (a total over an incomplete set of subtasks) is
        ``{"value": None, "partial": "what is missing"}``.

        Optional: a task may define ``sample_stats(records) -> {id: {name: number}}`` (per-sample counts the
        scorer uses, e.g. CHAIR's mentions and hallucinated mentions); the runner writes them to
        ``sample_stats.json`` and ``hallufix report`` bootstraps the metric from them.
        """
        raise NotImplementedError

    def record(self) -> dict:
        """What the run record (``results.json`` ``task``) should say about the inputs (file versions, parser)."""
        return {}


TaskFactory = Callable[..., Task]
_TASKS: dict[str, TaskFactory] = {}


def register_task(name: str) -> Callable[[TaskFactory], TaskFactory]:
    """Class decorator: make a task constructible by ``name`` (``--task NAME`` or ``--task NAME:ARG``)."""

    def deco(factory: TaskFactory) -> TaskFactory:
        _TASKS[name] = factory
        return factory

    return deco


def known_tasks() -> list[str]:
    from hallufix import tasks as _pkg  # noqa: F401  (imports every built-in task module)

    return sorted(_TASKS)


def get_task(spec: str, **options: Any) -> Task:
    """Build a task from ``NAME`` or ``NAME:ARG`` (``jsonl:/path/file.jsonl``, ``pope:/data/pope``).

    Unknown names raise :class:`TaskError` with the known names and a did-you-mean.
    """
    import difflib

    names = known_tasks()
    name, _, arg = spec.partition(":")
    if name not in _TASKS:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise TaskError(f"unknown task '{name}'.{hint} Known tasks: {', '.join(names)}")
    if arg:
        options = {"path": arg, **options}
    return _TASKS[name](**options)


def iter_batches(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    """Consecutive lists of at most ``size`` items."""
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
