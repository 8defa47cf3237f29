"""The decoding flags of ``hallufix run`` / ``hallufix ablate`` (one place; the run's ``--seed`` seeds sampling)."""
from __future__ import annotations


def add_decoding_flags(p) -> None:
    p.add_argument("--decoding", choices=("greedy", "sample", "beam"), default="greedy",
                   help="greedy (default); sample: multinomial, each sample seeded from --seed and its id (same "
                        "samples in any batch and on resume); beam: beam search (--num-beams, default 5)")
    p.add_argument("--num-beams", type=int, default=None, help="beams of --decoding beam (default 5)")
    p.add_argument("--temperature", type=float, default=1.0, help="--decoding sample: temperature (default 1)")
    p.add_argument("--top-p", type=float, default=1.0, help="--decoding sample: nucleus mass kept (default 1)")


def decoding_from_args(args):
    """A :class:`~hallufix.decoding.Decoding` from the flags (seed filled in per run from the run's ``seed``);
    bad combinations raise :class:`~hallufix.cli.CliError` naming the flag."""
    from hallufix.cli import CliError
    from hallufix.decoding import Decoding, DecodingError

    try:
        return Decoding.from_args(getattr(args, "decoding", "greedy") or "greedy", getattr(args, "num_beams", None),
                                  0, getattr(args, "temperature", 1.0), getattr(args, "top_p", 1.0))
    except DecodingError as exc:
        raise CliError(str(exc)) from None
