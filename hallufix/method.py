"""The optional base class of method plugins: a ``name``, a ``Config`` dataclass, the resolved config kept as
``self.config``. Methods may equally be plain classes with those attributes (pluggy needs no base class)."""
from __future__ import annotations


class Method:
    #: the name users type in ``--plugins``
    name: str = ""
    #: the config schema (a dataclass) or ``None``
    Config: type | None = None
    #: the method's decode-step hooks depend only on the forward they fire in (no state carried from one forward
    #: to the next): a kept beam look-ahead, where they fired, may then stand in for a decode step
    #: (:mod:`hallufix.decoding.reuse`). Plain classes may set the same attribute.
    stateless_decode: bool = False

    def __init__(self, config=None):
        self.config = config
