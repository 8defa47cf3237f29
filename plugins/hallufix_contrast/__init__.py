"""Entry-point module of the `contrast` method: light (no torch at import); the class loads only when activated."""
import hallufix


@hallufix.hookimpl
def hallufix_register_methods(register):
    register("contrast", "hallufix_contrast.method:Contrast",
             description="contrastive-attention review-layer masking / crop (Song, Li, Yu 2026)")


@hallufix.hookimpl
def hallufix_register_analyses(register):
    register("layer-masking", "hallufix_contrast.analysis:layer_masking", kind="task",
             description="accuracy with the visual tokens hidden from one layer at a time; suggests contrast's "
                         "fusion_layers and review_layer")
