"""Entry-point module of the `clva` method: light (no torch at import); the class loads only when activated."""
import hallufix


@hallufix.hookimpl
def hallufix_register_methods(register):
    register("clva", "hallufix_clva.method:CLVA",
             description="cross-layer visual anchors (Yang et al. 2026): re-weight drift-layer attention to positive/negative anchors")


@hallufix.hookimpl
def hallufix_register_analyses(register):
    register("clva-drift", "hallufix_clva.analysis:drift", kind="inspect",
             description="CLVA's head split (sensitive / insensitive heads) and drift curves against its anchors")
