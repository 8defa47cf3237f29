"""The one place that touches a model: every mechanism here is an installer (``install`` / ``remove``,
:mod:`~hallufix.intercept.installer`), and :class:`Interceptor` composes them for one call.

attention function (:mod:`.attention`, registered by :mod:`.registration`, switched in by :mod:`.attn_impl`),
module hooks (:mod:`.module_hooks`), weight folds (:mod:`.weights`), the analysis prefill's early stop
(:mod:`.prefill`), the logits processor (:mod:`.logits`), numerical guards (:mod:`.guards`) and strict device mode
(:mod:`.strict`). Nothing outside this package changes a model (``tests/test_intercept_boundary.py``).
"""
from hallufix.intercept.dispatch import HookTable
from hallufix.intercept.install import HookNotFiredError, Interceptor

__all__ = ["HookTable", "HookNotFiredError", "Interceptor"]
