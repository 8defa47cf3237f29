"""Entry-point module of the `vcd` method: light (no torch at import); the class loads only when activated."""
import hallufix


@hallufix.hookimpl
def hallufix_register_methods(register):
    register("vcd", "hallufix_vcd.method:VCD",
             description="visual contrastive decoding (Leng et al., CVPR 2024): contrast with a diffusion-noised image")
