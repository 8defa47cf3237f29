"""The branches' inputs: transformed pixels, the image-free prompt, and the rows mode's merge of the parts.

Every function takes or returns processor outputs (``dict`` of tensors on the model's device, ``input_ids`` /
per-token keys ``(rows, P)``); pixels are transformed image by image on the host in float32.
"""
from __future__ import annotations

import torch

from hallufix.branches import Branch

#: per-token keys of the processors' outputs and their padding value (input_ids uses the tokenizer's pad id)
_PER_TOKEN_FILL = {"attention_mask": 0, "mm_token_type_ids": 0, "token_type_ids": 0}


def _image_slices(inputs: dict, n_images: int) -> list[slice]:
    """Each image's rows of ``pixel_values``: one per image, or ``prod(thw)`` patches each (``image_grid_thw``)."""
    thw = inputs.get("image_grid_thw")
    if thw is None:
        return [slice(i, i + 1) for i in range(n_images)]
    counts = thw.prod(-1).tolist()
    starts = [0]
    for c in counts:
        starts.append(starts[-1] + int(c))
    return [slice(a, b) for a, b in zip(starts[:-1], starts[1:])]


def transform_pixels(br: Branch, inputs: dict, rows: list[list]) -> torch.Tensor:
    pv = inputs["pixel_values"]
    images = [im for row in rows for im in row]
    pieces = []
    for sl, image in zip(_image_slices(inputs, len(images)), images):
        x = pv[sl]
        squeeze = inputs.get("image_grid_thw") is None
        src = (x[0] if squeeze else x).detach().to("cpu", torch.float32)
        new = br.pixels(src, image)
        if tuple(new.shape) != tuple(src.shape):
            raise ValueError(f"branch {br.name!r}: pixels() must keep the shape {tuple(src.shape)}, got "
                             f"{tuple(new.shape)}")
        new = new.to(device=pv.device, dtype=pv.dtype)
        pieces.append(new[None] if squeeze else new)
    return torch.cat(pieces, 0)


def text_only(session, questions: list[str], inputs: dict) -> dict:
    """The questions with zero images, tokenised as the processor's text path does (left padding)."""
    s = session
    tok = s.processor.tokenizer
    tok.padding_side = "left"
    prompts = [s.adapter.prompt(s.processor, q, 0) for q in questions]
    enc = tok(prompts, padding=True, return_tensors="pt")
    device = inputs["input_ids"].device
    part = {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}
    B, P = enc["input_ids"].shape
    for k, v in inputs.items():  # per-token keys the text path lacks (Qwen's mm_token_type_ids): all text
        if k not in part and torch.is_tensor(v) and k in _PER_TOKEN_FILL:
            part[k] = torch.full((B, P), _PER_TOKEN_FILL[k], dtype=v.dtype, device=device)
    return part


def _left_pad(t: torch.Tensor, length: int, fill: int) -> torch.Tensor:
    if t.shape[1] == length:
        return t
    pad = torch.full((t.shape[0], length - t.shape[1]), fill, dtype=t.dtype, device=t.device)
    return torch.cat([pad, t], 1)


def merge(parts: list[dict], pad_id: int) -> dict:
    """Concatenate the parts' rows: per-token keys left-padded to the longest prompt, image keys (``pixel_values``,
    ``image_grid_thw``, the Q-Former's inputs) concatenated over the parts that have images."""
    P = max(p["input_ids"].shape[1] for p in parts)
    out = {}
    keys = list(parts[0])
    for k in keys:
        if k == "input_ids" or k in _PER_TOKEN_FILL:
            fill = pad_id if k == "input_ids" else _PER_TOKEN_FILL[k]
            out[k] = torch.cat([_left_pad(p[k], P, fill) for p in parts], 0)
        elif torch.is_tensor(parts[0][k]):
            out[k] = torch.cat([p[k] for p in parts if k in p], 0)
        else:
            out[k] = parts[0][k]
    return out
