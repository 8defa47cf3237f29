"""Entry-point module of the `dola` method: light (no torch at import); the class loads only when activated."""
import hallufix


@hallufix.hookimpl
def hallufix_register_methods(register):
    register("dola", "hallufix_dola.method:DoLa",
             description="DoLa (Chuang et al., ICLR 2024): contrast the final layer with a JSD-chosen premature layer")
