"""Branch declarations: extra forwards on a perturbed input that step in lockstep with the main generation.

A method returns :class:`Branch` objects from ``hallufix_declare_branches(model)`` (run setup, once per run). Per
batch the core (:mod:`hallufix.intercept.branch`) runs each branch in one of two layouts (``mode``):

* ``"rows"``: the branch's inputs as extra batch rows behind the ``B`` main rows of the same ``generate`` (the
  batch-doubling of classifier-free guidance: one forward of ``(1 + k) B`` rows), each row with its own KV-cache row;
  a shorter prompt (``image="none"``) is left-padded to the main rows' length;
* ``"separate"``: its own forwards on its own ``B`` rows and its own KV cache (no padding to the main length),
  stepped from the logits processor on the token the main rows chose (:mod:`hallufix.intercept.branch_forward`).

Either way every branch's next-token scores reach the logits hook as ``event.branches[name]`` ``(B, V)``; the hook's
``event.scores`` stay the main rows' ``(B, V)``.

Which hooks apply to a branch (``hooks``): ``"all"`` (every active method's hooks), ``"none"``, or a tuple of method
names; ``exclude`` removes methods from that selection (a method may exclude itself). Only ``"all"`` with no
exclusion can run as batch rows (a row of a batched forward sees every hook of that forward); a branch that selects
hooks runs separately. ``mode="auto"`` (default): separate when the branch selects hooks, else rows (see
docs/branches.md for the measured choice).

Plain data, no torch import: declarations stay light like :mod:`hallufix.points`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

IMAGE_MODES = ("same", "none")
MODES = ("auto", "rows", "separate")


@dataclass(frozen=True)
class Branch:
    """One branch of a method.

    Attributes:
        name: the key of its scores in ``event.branches`` (unique within a run).
        image: ``"same"`` (the row's images, optionally transformed by ``pixels``) or ``"none"`` (the same
            question with no image: the chat template with zero images, left-padded to the batch's length).
        pixels: for ``image="same"``: ``pixels(pixel_values, image) -> tensor`` of the same shape and dtype, called
            once per image with that image's slice of the processor's ``pixel_values`` (float32, host memory:
            LLaVA / InstructBLIP ``(C, H, W)``, Qwen its ``(patches, C*T*P*P)`` rows) and the ``PIL.Image`` it came
            from (for seeding per image, so a batch equals one row at a time).
        hooks: which active methods' hooks apply to the branch's forwards: ``"all"``, ``"none"`` or a tuple of
            method names (the names the run's stack uses, e.g. ``("clva",)``).
        exclude: method names taken out of ``hooks`` (``Branch(..., exclude=("pai",))``: every method but PAI).
        mode: ``"auto"`` (separate when the branch selects hooks, else rows), ``"rows"`` (extra batch rows; only with
            every hook) or ``"separate"`` (its own forwards and KV cache).
    """

    name: str
    image: str = "same"
    pixels: Callable | None = None
    hooks: str | tuple = "all"
    exclude: tuple = ()
    mode: str = "auto"

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"branch name must be a non-empty identifier, got {self.name!r}")
        if self.image not in IMAGE_MODES:
            raise ValueError(f"branch {self.name!r}: image must be one of {IMAGE_MODES}, got {self.image!r}")
        if self.image == "none" and self.pixels is not None:
            raise ValueError(f"branch {self.name!r}: pixels transforms an image; image='none' has none")
        if isinstance(self.hooks, list):
            object.__setattr__(self, "hooks", tuple(self.hooks))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if not (self.hooks in ("all", "none") or (isinstance(self.hooks, tuple)
                                                   and all(isinstance(h, str) for h in self.hooks))):
            raise ValueError(f"branch {self.name!r}: hooks must be 'all', 'none' or a tuple of method names, got "
                             f"{self.hooks!r}")
        if not all(isinstance(h, str) for h in self.exclude):
            raise ValueError(f"branch {self.name!r}: exclude must be method names, got {self.exclude!r}")
        if self.mode not in MODES:
            raise ValueError(f"branch {self.name!r}: mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "rows" and self.selects_hooks:
            raise ValueError(f"branch {self.name!r}: mode='rows' runs the branch as rows of the main forward, where "
                             f"every active method's hooks apply; a hook selection (hooks={self.hooks!r}, exclude="
                             f"{self.exclude!r}) needs mode='separate' or 'auto'")

    @property
    def selects_hooks(self) -> bool:
        """True when not every active method's hooks apply (``hooks`` other than ``"all"``, or an ``exclude``)."""
        return self.hooks != "all" or bool(self.exclude)

    def hook_methods(self, active: list[str]) -> list[str]:
        """The names of the methods in ``active`` (the run's stack, typed order) whose hooks apply to the branch."""
        chosen = list(active) if self.hooks == "all" else [] if self.hooks == "none" else \
            [m for m in active if m in self.hooks]
        return [m for m in chosen if m not in self.exclude]

    def resolved_mode(self, override: str | None = None) -> str:
        """``"rows"`` or ``"separate"``: a hook selection runs separately; else ``override`` (a run-level choice,
        ``auto`` / ``rows`` / ``separate``, replacing this branch's ``auto``), else ``mode``; ``auto`` is rows."""
        if self.selects_hooks:
            return "separate"
        mode = self.mode if self.mode != "auto" or override is None else override
        return "separate" if mode == "separate" else "rows"
