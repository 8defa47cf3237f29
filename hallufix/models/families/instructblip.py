"""InstructBLIP (``InstructBlipForConditionalGeneration``): ``num_query_tokens`` Q-Former query tokens prepended
to every row (before BOS and any left padding); no spatial grid in the language model, one image per prompt, and a
token-to-patch map through the Q-Former cross-attention."""
from __future__ import annotations

from hallufix.models.families.base import Adapter
from hallufix.models.families.spec import Capabilities, Family

#: ``"{Q}"`` (the processor itself prepends the query-token placeholders).
INSTRUCTBLIP_TEMPLATE = (
    "{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endfor %}"
)
CAPABILITIES = Capabilities(spatial_grid=False, multi_image=False, token_to_patch=True, qformer=True)
NUM_QUERY_TOKENS = 8


class InstructBlipAdapter(Adapter):
    """InstructBLIP: 32 Q-Former query tokens prepended to the prompt; no spatial grid in the language model."""

    family = "instructblip"
    capabilities = CAPABILITIES

    def prompt(self, processor, question: str, n_images: int = 1) -> str:
        if getattr(processor, "chat_template", None):
            return super().prompt(processor, question, n_images)
        return question

    def model_info(self, model, name: str = ""):
        import dataclasses

        return dataclasses.replace(super().model_info(model, name),
                                   qformer_layers=tuple(sorted(self.qformer_cross_attention_modules(model))))

    # ---------------------------------------------------------------- the Q-Former (capabilities.qformer)
    #: leading image features before the patches in the Q-Former's cross-attention keys (the ViT's CLS)
    qformer_prefix_keys = 1

    def qformer_cross_attention_modules(self, model) -> dict:
        """``{Q-Former layer index: its cross-attention module}`` (``InstructBlipQFormerMultiHeadAttention``: the
        module transformers passes to the attention function; queries = the query tokens, keys = the image
        features, CLS first)."""
        return {i: layer.crossattention.attention for i, layer in enumerate(model.qformer.encoder.layer)
                if getattr(layer, "has_cross_attention", False)}

    def visual_tokens_per_image(self, model) -> int:
        return int(model.config.num_query_tokens)

    def patch_grid(self, model) -> tuple[int, int]:
        """The vision encoder's patch grid (the Q-Former attends to CLS + these patches in raster order)."""
        vc = model.config.vision_config
        n = vc.image_size // vc.patch_size
        return (n, n)

    def token_to_patch(self, model, inputs: dict):
        """``((B, n_query, rows*cols), (rows, cols))``: the Q-Former cross-attention of each query token over the
        vision encoder's patches (:meth:`qformer_cross_attention` without its CLS column, not renormalised)."""
        return self.qformer_cross_attention(model, inputs)[:, :, 1:], self.patch_grid(model)

    def qformer_cross_attention(self, model, inputs: dict):
        """Q-Former cross-attention of the query tokens over the image tokens, averaged over heads and over the
        cross-attention layers: ``(B, n_query, 1 + rows*cols)`` (column 0 is CLS).

        The Q-Former runs eagerly for this one call (its fused kernel returns no weights); the previous
        implementation is restored afterwards."""
        import torch

        from hallufix.intercept.attn_impl import eager

        with eager(model, "qformer_config"):
            out = model.get_image_features(pixel_values=inputs["pixel_values"],
                                           qformer_input_ids=inputs["qformer_input_ids"],
                                           qformer_attention_mask=inputs.get("qformer_attention_mask"),
                                           output_attentions=True, return_dict=True)

        cross = [a for a in out.qformer_outputs.cross_attentions if a is not None]
        if not cross:
            raise RuntimeError("the Q-Former returned no cross-attention weights")
        nq = int(model.config.num_query_tokens)
        return torch.stack([a[:, :, :nq].float().mean(1) for a in cross]).mean(0)


def finish_processor(processor) -> None:
    """InstructBlipProcessor passes the LM tokenizer's *init kwargs* to both tokenizers, so a saved
    padding_side="left" would left-pad the Q-Former text too and shift its absolute positions (batched results
    then differ from single ones). Keep the LM's side as an attribute only."""
    processor.tokenizer.init_kwargs.pop("padding_side", None)


def build_tiny_instructblip(image_size, *, shape="default", num_query_tokens=NUM_QUERY_TOKENS, **dims):
    """Tiny ``InstructBlipForConditionalGeneration`` (BLIP ViT + Q-Former, 2 layers each, width 32) +
    ``InstructBlipProcessor`` with a stand-in Q-Former tokenizer."""
    import torch
    from tokenizers import Tokenizer
    from transformers import (InstructBlipConfig, InstructBlipForConditionalGeneration, InstructBlipProcessor,
                              PreTrainedTokenizerFast)
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    from hallufix.models.tiny import PATCH, _bpe_json, _text_config, build_tokenizer

    # Stand-in for the BERT Q-Former tokenizer: same BPE, no BOS/EOS needed.
    qtok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_bpe_json()), pad_token="<pad>",
                                   unk_token="<unk>")
    ip = BlipImageProcessorPil(size={"height": image_size, "width": image_size})
    proc = InstructBlipProcessor(image_processor=ip, tokenizer=build_tokenizer("instructblip"),
                                 qformer_tokenizer=qtok, num_query_tokens=num_query_tokens)
    proc.chat_template = INSTRUCTBLIP_TEMPLATE  # InstructBlipProcessor.__init__ drops a chat_template kwarg
    tok = proc.tokenizer  # now holds the processor's <image> AddedToken (G6): read ids only from here on
    cfg = InstructBlipConfig(vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                num_attention_heads=2, image_size=image_size, patch_size=PATCH,
                                                initializer_range=0.02),
                             qformer_config=dict(vocab_size=len(qtok), hidden_size=32, num_hidden_layers=2,
                                                 num_attention_heads=2, intermediate_size=64,
                                                 max_position_embeddings=128, cross_attention_frequency=1,
                                                 pad_token_id=qtok.pad_token_id),
                             text_config=dict(model_type="llama", **_text_config(tok, **dims)),
                             num_query_tokens=num_query_tokens, image_token_index=tok.convert_tokens_to_ids("<image>"))
    return InstructBlipForConditionalGeneration._from_config(cfg, attn_implementation="sdpa",
                                                             dtype=torch.float32), proc


FAMILY = Family(
    name="instructblip", display_name="InstructBLIP",
    model_types={"instructblip": "InstructBlipForConditionalGeneration"}, adapter=InstructBlipAdapter,
    capabilities=CAPABILITIES, chat_template=INSTRUCTBLIP_TEMPLATE, tiny=build_tiny_instructblip,
    aliases={"instructblip": "Salesforce/instructblip-vicuna-7b"}, processor_classes=("InstructBlipProcessor",),
    finish_processor=finish_processor,
    tiny_real=dict(num_layers=32, hidden_size=32 * 8, num_heads=32, num_kv_heads=32,  # InstructBLIP-Vicuna-7B
                   num_query_tokens=32),
    # no padding_side init kwarg: the processor forwards the LM tokenizer's init kwargs to the Q-Former tokenizer
    # too, and a left-padded Q-Former text shifts its absolute positions (batched != single results)
    tokenizer_kwargs={})
