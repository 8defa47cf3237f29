"""The decoding strategy of a run: a frozen, JSON-serialisable dataclass (what ``results`` / ``config.yaml`` record).

Defaults follow what the papers publish: sampling at temperature 1 and top-p 1 (VCD, Leng et al. 2024, and ICD
release sampled numbers with plain multinomial sampling), beam search with 5 beams (OPERA, Huang et al. 2024, and
its "beam-5" baseline).
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

STRATEGIES = ("greedy", "sample", "beam")


class DecodingError(ValueError):
    """A decoding setting that cannot run (the message names the setting and the fix)."""


@dataclass(frozen=True)
class Decoding:
    """How tokens are chosen.

    :param strategy: ``greedy`` (argmax), ``sample`` (multinomial over softmax(scores / temperature) after the
        top-p cut, per-row seeded) or ``beam`` (transformers' beam search, ``num_beams`` beams, its
        ``length_penalty`` / ``early_stopping`` defaults).
    :param num_beams: beams for ``beam`` (default 5); must be 1 otherwise.
    :param seed: run seed of ``sample``; each row's generator is seeded with :func:`row_seed` ``(seed, key)``, the
        key being the sample's id (the runner) or a hash of the row's question and image (the API default).
    :param temperature: divides the scores before sampling (``sample`` only; > 0).
    :param top_p: nucleus mass kept before sampling, in (0, 1] (``sample`` only; 1 keeps every token).
    """

    strategy: str = "greedy"
    num_beams: int = 1
    seed: int = 0
    temperature: float = 1.0
    top_p: float = 1.0

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise DecodingError(f"decoding '{self.strategy}' is not one of {', '.join(STRATEGIES)}")
        if self.strategy == "beam" and self.num_beams < 2:
            raise DecodingError(f"beam search needs --num-beams >= 2 (got {self.num_beams}); use --decoding greedy "
                                f"for one beam")
        if self.strategy != "beam" and self.num_beams != 1:
            raise DecodingError(f"--num-beams {self.num_beams} needs --decoding beam (got '{self.strategy}')")
        if not self.temperature > 0:
            raise DecodingError(f"--temperature must be > 0 (got {self.temperature})")
        if not 0 < self.top_p <= 1:
            raise DecodingError(f"--top-p must be in (0, 1] (got {self.top_p})")
        if self.strategy != "sample" and (self.temperature != 1.0 or self.top_p != 1.0):
            raise DecodingError("--temperature / --top-p apply to --decoding sample only")

    @classmethod
    def from_args(cls, strategy: str = "greedy", num_beams: int | None = None, seed: int = 0,
                  temperature: float = 1.0, top_p: float = 1.0) -> "Decoding":
        """From CLI flags: ``num_beams`` defaults to 5 for ``beam`` and 1 otherwise."""
        beams = num_beams if num_beams is not None else (5 if strategy == "beam" else 1)
        return cls(strategy, int(beams), int(seed), float(temperature), float(top_p))

    @classmethod
    def from_record(cls, record: dict | None) -> "Decoding":
        """Inverse of :meth:`record` (a missing record is the greedy default of runs before this field)."""
        if not record:
            return cls()
        return cls(**{k: record[k] for k in ("strategy", "num_beams", "seed", "temperature", "top_p") if k in record})

    def record(self) -> dict:
        """Plain JSON for a run's record (seed rule included, so a reader can re-derive every row's seed)."""
        out = asdict(self)
        if self.strategy == "sample":
            out["row_seed"] = "sha256('{seed}:{key}')[:8] as int; key = sample id"
        return out

    @property
    def sampled(self) -> bool:
        return self.strategy == "sample"


def row_seed(seed: int, key: str) -> int:
    """The generator seed of one row: the first 8 bytes of ``sha256(f"{seed}:{key}")`` as an unsigned int (63 bits).

    Depends on the run seed and the row's own key only, never on its position in a batch."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def content_key(question: str, image) -> str:
    """A row key from its content (API calls without sample ids): sha256 of the question, image size, mode and
    pixels. Two identical rows get identical samples."""
    h = hashlib.sha256(question.encode())
    if image is not None:
        h.update(f"{image.size}{image.mode}".encode())
        h.update(image.tobytes())
    return h.hexdigest()
