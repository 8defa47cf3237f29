"""Entry-point module of the `opera` method: light (no torch at import); the class loads only when activated."""
import hallufix


@hallufix.hookimpl
def hallufix_register_methods(register):
    register("opera", "hallufix_opera.method:OPERA",
             description="over-trust penalty + retrospection-allocation rollback in beam search (Huang et al. 2024)")
