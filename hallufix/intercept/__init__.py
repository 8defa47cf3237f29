"""The one place that touches transformers internals: attention function, module hooks, logits processor."""
from hallufix.intercept.dispatch import HookTable
from hallufix.intercept.install import HookNotFiredError, Interceptor

__all__ = ["HookTable", "HookNotFiredError", "Interceptor"]
