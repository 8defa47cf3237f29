"""Strict device mode: catch, on a CPU-only machine, the device mistakes that break a method on a GPU.

On CPU every tensor is a host tensor, so ``model_tensor.numpy()`` or ``torch.tensor(array) + model_tensor`` work
in tests and fail on CUDA. While hooks run under strict mode, a ``torch.overrides.TorchFunctionMode`` simulates
the split between host and device memory:

* tensors a hook receives (everything an event carries) and tensors it makes with an explicit ``device=`` are
  *device* tensors;
* host tensors are what a GPU run would put in host memory: results of ``.cpu()`` (returned as a fresh copy, so
  the device tensor itself stays a device tensor), tensor factories called without ``device=`` (``torch.tensor``,
  ``torch.as_tensor`` of an array, ``torch.zeros``, ``torch.full``, ``torch.arange``, ...), and anything computed
  from host tensors only. (``torch.from_numpy`` has no torch-function override, so the mode cannot see it: build
  tensors from arrays with ``torch.as_tensor(array, device=event.device)``.)
* it raises :class:`DeviceMisuseError` on ``.numpy()`` / ``np.asarray`` of a device tensor (copy with ``.cpu()``
  first), and on any operation mixing a host tensor with a device tensor (move it with ``.to(event.device)``);
  zero-dimensional host tensors and host index tensors in ``[...]`` are allowed, as CUDA allows them.

``.to(device)`` of any tensor returns a device tensor (on a CPU machine ``.to(event.device)`` and ``.to("cpu")``
are the same call; use ``.cpu()`` for host copies); ``.to(dtype)`` keeps a host tensor on the host. Python scalars (``float(t)``, ``.item()``, ``.tolist()``) are
always allowed (they synchronise, but work on CUDA).

Turn it on with the environment variable ``HALLUFIX_STRICT_DEVICES=1`` (read when a run's hook table is built) or
``with strict.enforce(): ...`` around a run's start and generation; it costs nothing when off (the hook callers
are not wrapped). The analysis prefill a hook starts (``ImageEvent.capture``) runs the model outside the mode.
"""
from __future__ import annotations

import contextlib
import functools
import os

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

ENV = "HALLUFIX_STRICT_DEVICES"
_MARK = "_hallufix_host"
_FORCED: list[bool] = []


class DeviceMisuseError(RuntimeError):
    """A hook used a device tensor as host memory (or mixed host and device tensors)."""


def enabled() -> bool:
    """Strict mode is on (:func:`enforce` or ``HALLUFIX_STRICT_DEVICES=1``)."""
    return bool(_FORCED) or os.environ.get(ENV, "") not in ("", "0")


@contextlib.contextmanager
def enforce():
    """Turn strict mode on for the runs started and generated inside the block."""
    _FORCED.append(True)
    try:
        yield
    finally:
        _FORCED.pop()


def is_host(t: torch.Tensor) -> bool:
    return bool(getattr(t, _MARK, False))


def _mark(out):
    for t in tree_flatten(out)[0]:
        if isinstance(t, torch.Tensor):
            try:
                setattr(t, _MARK, True)
            except (AttributeError, RuntimeError):
                pass
    return out


_FACTORIES = frozenset({torch.tensor, torch.as_tensor, torch.zeros, torch.ones, torch.full, torch.empty,
                        torch.arange, torch.linspace, torch.logspace, torch.eye, torch.rand, torch.randn,
                        torch.randint, torch.randperm, torch.scalar_tensor})
_TO_NUMPY = frozenset({torch.Tensor.numpy, torch.Tensor.__array__})
_INDEXING = frozenset({torch.Tensor.__getitem__})


class StrictDevices(TorchFunctionMode):
    """The mode behind strict device checks (see the module docstring)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _TO_NUMPY:
            t = args[0]
            if not is_host(t):
                raise DeviceMisuseError(
                    "a hook converted a model-device tensor to NumPy; copy it to host memory first "
                    "(tensor.cpu().numpy()) — on a GPU this raises")
            return func(*args, **kwargs)
        if func is torch.Tensor.cpu:
            src = args[0]
            out = func(*args, **kwargs)
            if out is src:
                out = out.clone()  # a distinct host copy: the device tensor itself stays a device tensor
            return _mark(out)
        if func in _FACTORIES:
            out = func(*args, **kwargs)
            if kwargs.get("device") is None and not (func is torch.as_tensor and _device_tensor_arg(args)):
                _mark(out)
            return out
        if func is torch.Tensor.to:
            out = func(*args, **kwargs)
            moves = kwargs.get("device") is not None or any(isinstance(a, (str, torch.device, torch.Tensor, int))
                                                            and not isinstance(a, bool) for a in args[1:])
            if not moves and is_host(args[0]):
                _mark(out)  # a dtype change keeps a host tensor on the host
            elif moves and out is args[0] and is_host(out):
                out = out.clone()  # on a CPU machine the "move" is a no-op: a distinct, device-side tensor
            return out  # a move: to the model's device on a CPU machine
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if func in _INDEXING:
            tensors = tensors[:1]
        elif func is torch.Tensor.__setitem__:
            tensors = [tensors[0]] + ([args[2]] if len(args) > 2 and isinstance(args[2], torch.Tensor) else [])
        host = [is_host(t) for t in tensors if t.dim() > 0]
        if any(host) and not all(host):
            name = getattr(func, "__qualname__", getattr(func, "__name__", str(func)))
            raise DeviceMisuseError(
                f"a hook mixed host and model-device tensors in {name}; build tensors with device=event.device "
                f"(or move them with .to(event.device)) — on a GPU this raises")
        out = func(*args, **kwargs)
        if host and all(host):
            _mark(out)
        return out


def _device_tensor_arg(args) -> bool:
    return bool(args) and isinstance(args[0], torch.Tensor) and not is_host(args[0])


_MODE_OFF = contextlib.nullcontext()


def active():
    """A context that runs its block under :class:`StrictDevices` when strict mode is on (else a no-op)."""
    return StrictDevices() if enabled() else _MODE_OFF


def wrap(caller):
    """``caller`` (a pluggy hook caller) run under strict mode when it is on at wrap time; unchanged otherwise."""
    if caller is None or not enabled():
        return caller

    @functools.wraps(caller)
    def strict_caller(*args, **kwargs):
        with StrictDevices():
            return caller(*args, **kwargs)

    strict_caller.get_hookimpls = caller.get_hookimpls  # the interceptor compares implementations
    return strict_caller


@contextlib.contextmanager
def suspended():
    """Leave strict mode for the block (the model forward of an analysis prefill started inside a hook)."""
    from torch.overrides import _pop_mode_temporarily, _len_torch_function_stack

    if _len_torch_function_stack() == 0:
        yield
        return
    with _pop_mode_temporarily() as mode:
        if isinstance(mode, StrictDevices):
            yield
        else:  # not ours: put it back as it was
            with mode:
                yield
