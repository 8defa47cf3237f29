"""The task contract: what a benchmark gives the runner and what it does with the model's outputs.

A task turns its official files (or a built-in generator) into :class:`Sample` objects, parses each generated text
into the form its scorer expects, and scores a list of finished records. The runner never looks inside a task:
it batches samples, generates, calls :meth:`Task.parse`, appends a record per sample to ``samples.jsonl`` and
finally calls :meth:`Task.score` over all records.

Phases: everything here runs on the CPU, outside generation. No torch imports.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from PIL import Image


class TaskError(ValueError):
    """Bad task input: names the file (and line) at fault and how to fix it."""


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
            with Image.open(path) as opened:
                return opened.convert("RGB")
        if isinstance(img, Image.Image):
            return img.convert("RGB")
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
