"""Switching a sub-model's attention implementation for one call, through transformers' public
``model.set_attn_implementation({config_key: name})`` (per sub-config: ``text_config``, ``qformer_config``, ...).

Used for the language model (the hallufix attention function while a run is active, a reference function in the
eager-reference tests) and for a sub-model that must run eagerly to return attention weights (InstructBLIP's
Q-Former for its token-to-patch map: its fused kernel returns no weights).
"""
from __future__ import annotations


def current(model, config_key: str) -> str:
    """The attention implementation the sub-config ``config_key`` of ``model`` uses now."""
    return getattr(model.config, config_key)._attn_implementation


class AttentionImplementation:
    """Installer: ``model``'s sub-configs ``implementations`` ``{config_key: name}`` switched on install, the
    previous implementations restored on remove."""

    def __init__(self, model, implementations: dict[str, str]):
        self.model, self.implementations = model, dict(implementations)
        self._previous: dict[str, str] | None = None

    def install(self) -> None:
        self._previous = {key: current(self.model, key) for key in self.implementations}
        self.model.set_attn_implementation(self.implementations)

    def remove(self) -> None:
        if self._previous is not None:
            self.model.set_attn_implementation(self._previous)
            self._previous = None

    def __enter__(self) -> "AttentionImplementation":
        try:
            self.install()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def eager(model, config_key: str) -> AttentionImplementation:
    """``with eager(model, "qformer_config"): ...``: that sub-model runs transformers' eager attention (which
    returns the attention weights) inside the block."""
    return AttentionImplementation(model, {config_key: "eager"})
