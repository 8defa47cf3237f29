"""Entry-point module of the `pai` method: light (no torch at import); the class loads only when activated."""
import hallufix


@hallufix.hookimpl
def hallufix_register_methods(register):
    register("pai", "hallufix_pai.method:PAI",
             description="paying more attention to image (Liu et al., ECCV 2024): image-attention boost + image-free CFG")
