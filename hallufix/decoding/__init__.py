"""Decoding strategies (greedy, per-row seeded sampling, beam search) on transformers' own ``generate``.

* :class:`Decoding` — the small, serialisable description a run records (``record()``) and the CLI builds
  (``--decoding greedy|sample|beam --num-beams 5 --seed 0 --temperature 1 --top-p 1``).
* :func:`~hallufix.decoding.prepare.plan` — what :meth:`hallufix.api.MethodRun.generate` passes to ``model.generate`` for a strategy: the
  ``generate`` keywords, the extra ``LogitsProcessor`` (last in the list), and the token layout the hooks see.
* :class:`~hallufix.decoding.sampling.RowSampler` — sampling as a ``LogitsProcessor`` that draws each row from its
  own ``torch.Generator`` and forces the drawn token, so a row's samples depend on its seed only (not on its batch
  neighbours, the batch size, or a resumed run's position).
"""
from hallufix.decoding.strategy import Decoding, DecodingError, row_seed  # light: no torch (CLI help)

__all__ = ["Decoding", "DecodingError", "GenerationPlan", "plan", "row_seed"]


def __getattr__(name):
    if name in ("GenerationPlan", "plan"):
        from hallufix.decoding import prepare

        return getattr(prepare, name)
    raise AttributeError(name)
