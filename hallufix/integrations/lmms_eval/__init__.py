"""hallufix as an lmms-eval model: ``lmms-eval --model hallufix --model_args pretrained=builtin,plugins="clva"``.

lmms-eval (0.7.x) finds models through the entry-point group ``lmms_eval.models``; hallufix's ``pyproject.toml``
points it at :func:`manifest`, which names the chat model class
:class:`hallufix.integrations.lmms_eval.model.HallufixLmms`. The entry point's payload is a callable (lmms-eval
calls it) so that importing this module imports neither torch nor lmms-eval; lmms-eval imports the model class only
when ``--model hallufix`` is asked for.

* :mod:`~hallufix.integrations.lmms_eval.args` — ``--model_args`` values (plugins, overrides) → a hallufix run;
* :mod:`~hallufix.integrations.lmms_eval.gen` — a task's ``generation_kwargs`` → greedy settings, or a refusal;
* :mod:`~hallufix.integrations.lmms_eval.messages` — a chat request's messages → one image and one question;
* :mod:`~hallufix.integrations.lmms_eval.model` — the lmms-eval chat model;
* :mod:`~hallufix.integrations.lmms_eval.record` — hallufix's run record beside lmms-eval's output.

See ``docs/lmms-eval.md``.
"""
from __future__ import annotations

MODEL_ID = "hallufix"
CHAT_CLASS_PATH = "hallufix.integrations.lmms_eval.model.HallufixLmms"


def manifest():
    """lmms-eval's ``ModelManifest`` for ``--model hallufix`` (called by lmms-eval's registry)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, chat_class_path=CHAT_CLASS_PATH)
