"""Typed method configs: the method class's ``Config`` dataclass defaults -> its preset for the model
(:mod:`hallufix.config.presets`) -> the user's ``key=value`` overrides, merged by OmegaConf in struct mode so an
unknown key or a value of the wrong type fails naming the key and the closest known one; then the finite check
and the config's own ``validate()``. No Hydra.
"""
from __future__ import annotations

import difflib

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from hallufix.config.errors import ConfigError
from hallufix.config.identity import ModelIdentity
from hallufix.config.presets import preset_path


def apply_overrides(base, items: list[str], where: str):
    """Merge ``key=value`` strings into the OmegaConf ``base`` (struct mode), with did-you-mean errors."""
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{where}: override '{item}' is not of the form key=value")
        key, value = item.split("=", 1)
        try:
            parsed = OmegaConf.from_dotlist([f"{key}={value}"])
            base = OmegaConf.merge(base, parsed)
        except ConfigKeyError:
            known = [str(k) for k in base.keys()]
            close = difflib.get_close_matches(key.split(".")[0], known, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{where}: unknown config key '{key}'.{hint} Known keys: {', '.join(known)}") from None
        except OmegaConfBaseException as exc:
            raise ConfigError(f"{where}: bad value for '{key}': {value!r} ({exc.msg if hasattr(exc, 'msg') else exc})"
                              ) from None
    return base


def method_config(cls: type, *, family: str | None = None, overrides: list[str] = (), preset: str | None = None,
                  model: ModelIdentity | str | None = None):
    """Resolve a method's config object (an instance of ``cls.Config``) or ``None`` if it has no schema.

    :param model: the model's :class:`~hallufix.config.identity.ModelIdentity` (or a ``--model`` string, identified
        from its ``config.json``): picks the preset. :param family: overrides the identity's family.
    :param preset: a preset file stem to use before the model's own.
    A ``validate()`` failure names the preset the value came from, so the fix is clear."""
    name = getattr(cls, "name", cls.__name__)
    schema = getattr(cls, "Config", None)
    if schema is None:
        if overrides:
            raise ConfigError(f"method '{name}' takes no config; got {list(overrides)}")
        return None
    conf = OmegaConf.structured(schema)
    OmegaConf.set_struct(conf, True)
    where = f"method '{name}'"
    path = preset_path(cls, family, preset, model)
    if path is not None:
        try:
            conf = OmegaConf.merge(conf, OmegaConf.load(path))
        except ConfigKeyError as exc:
            raise ConfigError(f"{where}: preset {path} has an unknown key: {exc}") from None
    conf = apply_overrides(conf, list(overrides), where)
    obj = OmegaConf.to_object(conf)
    from hallufix.validate import check_finite

    check_finite(obj, where, name)  # NaN / inf never reach a method
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as exc:
            origin = (f" (the other values come from the preset {path.parent.parent.name}/presets/{path.name})"
                      if path is not None else "")
            raise ConfigError(f"{where}: {exc}{origin} — change the override{'s' if len(overrides) > 1 else ''} "
                              f"{' '.join(f'{name}.{o}' for o in overrides) or '(none given)'}") from None
    return obj
