"""The optional base class of method plugins: a ``name``, a ``Config`` dataclass, the resolved config kept as
``self.config``. Methods may equally be plain classes with those attributes (pluggy needs no base class)."""
from __future__ import annotations


class Method:
    #: the name users type in ``--plugins``
    name: str = ""
    #: the config schema (a dataclass) or ``None``
    Config: type | None = None

    def __init__(self, config=None):
        self.config = config
