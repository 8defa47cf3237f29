"""Entry-point module: light (no torch). It only names the method and where its class lives."""
import hallufix


@hallufix.hookimpl
def hallufix_register_methods(register):
    register("visual-boost", "hallufix_example.method:VisualBoost",
             description="multiply text-to-image attention by w and renormalise (example plugin)")
