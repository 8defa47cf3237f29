"""Entry-point module of the `fhi` method: light (no torch at import); the class loads only when activated."""
import hallufix


@hallufix.hookimpl
def hallufix_register_methods(register):
    register("fhi", "hallufix_fhi.method:FHI",
             description="functional head identification + class-conditioned rescaling (Lu et al. 2026)")
