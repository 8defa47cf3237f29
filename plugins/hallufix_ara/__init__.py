"""Entry-point module of the `ara` method: light (no torch at import); the class loads only when activated."""
import hallufix


@hallufix.hookimpl
def hallufix_register_methods(register):
    register("ara", "hallufix_ara.method:ARA",
             description="attention re-alignment by intermediate-layer-guided input masking (Chen et al. 2026; reconstruction)")
