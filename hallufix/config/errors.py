"""The one error type of configuration: a bad key, value, stack or grid, raised before any model loads."""
from __future__ import annotations


class ConfigError(ValueError):
    """A bad configuration key or value, with the fix in the message."""
