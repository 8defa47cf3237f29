"""One batch through a started run, with the non-finite-logits policy of ``--on-nonfinite``."""
from __future__ import annotations

from hallufix.errors import NumericalError


def generate_batch(run, batch, images, max_new: int, on_nonfinite: str, decoding=None):
    """One batch: ``(generations, {row: message})``. Non-finite logits stop the run with the method and layer that
    produced them (:mod:`hallufix.intercept.guards`); with ``on_nonfinite="record"`` the batch is redone one row at a
    time and the rows that still break are returned flagged (their message says where) instead. ``decoding``: a
    :class:`hallufix.decoding.Decoding` (``None``: greedy); each row's samples are seeded by its sample id."""
    import torch

    from hallufix.api import Generation
    from hallufix.intercept.guards import NonFiniteLogits, describe_nonfinite, locate_nonfinite

    questions = [s.question for s in batch]
    try:
        return run.generate(images, questions, max_new_tokens=max_new, decoding=decoding,
                            row_keys=[s.id for s in batch]), {}
    except NonFiniteLogits as exc:
        info = locate_nonfinite(run, images, questions, exc.rows, exc.step)
        dtype = str(next(run.session.model.parameters()).dtype)
        message = describe_nonfinite(info, [batch[r].id for r in exc.rows], run.order, dtype)
        if on_nonfinite != "record":
            raise NumericalError(message + " (or --on-nonfinite record to flag such samples and go on)") from None
    outs, flagged = [], {}
    for i, (image, question) in enumerate(zip(images, questions)):
        try:
            outs.extend(run.generate([image], [question], max_new_tokens=max_new, decoding=decoding,
                                     row_keys=[batch[i].id]))
        except NonFiniteLogits:
            outs.append(Generation("", torch.zeros(0, dtype=torch.long)))
            flagged[i] = message
    return outs, flagged
