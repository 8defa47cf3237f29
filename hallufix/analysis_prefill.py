"""The analysis prefill two-pass methods run from a hook (:meth:`hallufix.api.MethodRun.capture`): one forward of
the prompts with no method active, recording the last prompt row's attention over the visual tokens (and, when
asked, the text rows' visual mass, the visual tokens' input norms, the token-to-patch map)."""
from __future__ import annotations

import torch

from hallufix import hookimpl
from hallufix import points as P
from hallufix.capture import PrefillCapture, gather_visual, visual_mass
from hallufix.intercept import HookTable, Interceptor
from hallufix.intercept.prefill import run_prefill
from hallufix.plugins import new_manager


def analysis_prefill(session, images, questions, layers, hidden_norms=False, extra_images=None,
                     token_to_patch=False, text_mass=False) -> PrefillCapture:
    """The prefill behind :meth:`hallufix.api.MethodRun.capture` (its docstring says what comes back): a private
    plugin manager with the recorder below, the interceptor around one forward that stops after the last layer
    asked for."""
    s = session
    rec = _Recorder(sorted(set(layers)), hidden_norms, text_mass)
    pm = new_manager()
    pm.register(rec, name="hallufix-capture")
    table = HookTable(pm, {rec: rec.points()})
    rows = [[im] + (extra_images[i] if extra_images else []) for i, im in enumerate(images)]
    inputs = s.adapter.inputs(s.processor, rows, questions, s.device)
    layout = s.adapter.layout(s.model, inputs, rows)
    # no layer after the last one asked for runs (nothing else depends on the rest of this prefill)
    stop_after = s.adapter.decoder_layers(s.model)[max(rec.layers)] if rec.layers else None
    with torch.inference_mode(), Interceptor(s.model, s.adapter, table, pm, layout, s.info):
        run_prefill(s.model, inputs, stop_after)
    rec.result.layout = layout
    if token_to_patch:
        if not s.info.capabilities.token_to_patch:
            raise ValueError(f"capture(token_to_patch=True): {s.info.family} declares no token-to-patch map "
                             f"(check model.capabilities.token_to_patch before asking)")
        with torch.inference_mode():
            mapping, grid = s.adapter.token_to_patch(s.model, inputs)
        rec.result.token_to_patch, rec.result.patch_grid = mapping.float(), tuple(grid)
    return rec.result


class _Recorder:
    """Internal probe plugin behind :meth:`MethodRun.capture` (uses the same hook points as any method)."""

    name = "hallufix-capture"

    def __init__(self, layers: list[int], hidden_norms: bool, text_mass: bool = False):
        self.layers, self.hidden_norms, self.text_mass = layers, hidden_norms, text_mass
        self.result = PrefillCapture()

    def points(self) -> list[P.HookPoint]:
        pts = P.attn_probs(self.layers, rows="last", phases={"prefill"})
        if self.text_mass:
            pts += P.attn_probs(self.layers, rows="text", phases={"prefill"})
        if self.hidden_norms:
            pts += P.layer_input(self.layers, phases={"prefill"})
        return pts

    @hookimpl
    def hallufix_attn_probs(self, event):
        last = event.last()  # (B, H, kv) float32
        self.result.last_visual[event.layer] = gather_visual(last, event.visual)  # (B, H, n_max)
        self.result.last_mass[event.layer] = (last * event.visual_keys[:, None, :]).sum(-1)
        if self.text_mass:
            mass = visual_mass(event.probs, event.visual_keys)  # (B, H, R)
            text = event.row_mask("text").float()  # (B, R)
            self.result.text_mass[event.layer] = (mass * text[:, None]).sum(-1) / text.sum(-1).clamp(min=1)[:, None]

    @hookimpl
    def hallufix_layer_input(self, event):
        norms = event.hidden.float().norm(dim=-1)  # (B, q = P at prefill: query rows are prompt positions)
        self.result.hidden_norms[event.layer] = gather_visual(norms, event.visual)
