"""Entry-point module of the `memvr` method: light (no torch at import); the class loads only when activated."""
import hallufix


@hallufix.hookimpl
def hallufix_register_methods(register):
    register("memvr", "hallufix_memvr.method:MemVR",
             description="MemVR (Zou et al., ICML 2025): entropy-triggered re-injection of visual tokens as FFN memory")
