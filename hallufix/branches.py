"""Branch declarations: extra forwards on a perturbed input that step in lockstep with the main generation.

A method returns :class:`Branch` objects from ``hallufix_declare_branches(model)`` (run setup, once per run). Per
batch the core (:mod:`hallufix.intercept.branch`) appends each branch's inputs as extra batch rows behind the
``B`` main rows (the batch-doubling of classifier-free guidance: one forward of ``(1 + k) B`` rows instead of
``1 + k`` forwards), each row with its own KV-cache row, and after every step forces the branch rows onto the token
their main row chose. Every branch's next-token scores reach the logits hook as ``event.branches[name]``
``(B, V)``; the hook's ``event.scores`` stay the main rows' ``(B, V)``.

Which hooks apply to branch rows: branch rows are ordinary batch rows of the forward, so every active method's
layer hooks see them (the layout covers all ``(1 + k) B`` rows; :class:`~hallufix.intercept.branch.BranchLayout`
says which rows belong to which branch, and a method that must leave a branch alone selects rows with
``layout.rows_of(...)``, as PAI's score transform does). ``hooks="all"`` is the only setting today; see
docs/branches.md for the choice and what a per-method exclusion would need.

Plain data, no torch import: declarations stay light like :mod:`hallufix.points`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

IMAGE_MODES = ("same", "none")


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
        hooks: which active methods' layer hooks apply to the branch rows: ``"all"``.
    """

    name: str
    image: str = "same"
    pixels: Callable | None = None
    hooks: str = "all"

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"branch name must be a non-empty identifier, got {self.name!r}")
        if self.image not in IMAGE_MODES:
            raise ValueError(f"branch {self.name!r}: image must be one of {IMAGE_MODES}, got {self.image!r}")
        if self.image == "none" and self.pixels is not None:
            raise ValueError(f"branch {self.name!r}: pixels transforms an image; image='none' has none")
        if self.hooks != "all":
            raise ValueError(f"branch {self.name!r}: hooks must be 'all' (branch rows are batch rows every active "
                             f"method sees; select rows with layout.rows_of), got {self.hooks!r}")
