"""FHI-CCR: functional head identification + class-conditioned rescaling (Lu et al., arXiv 2510.10285, CVPR 2026).

Per layer l and head h, the visual attention ratio of one query row (Eq. 7): ``S_v = sum_{j in vis} A[i*, j]``.
Perception heads: ``l <= perc_max_layer and S_v >= tau_perc``; reasoning heads: ``l >= reas_min_layer and
S_v <= tau_reas`` (Eq. 8). Their outputs before ``o_proj`` are multiplied by ``g_perc`` / ``g_reas``; other heads
keep gain 1 (Eq. 9-10). No renormalisation; the attention itself is untouched.

Query row ``i*`` (open in the paper): ``last`` (default) = the current last row at every forward (classes follow the
generation); ``prompt_last`` = the prompt's last row, frozen after prefill (then ``fold: true`` moves the gains into
``o_proj``'s columns for the request: decode steps run plain); ``mean`` = the mean over the prompt's text rows,
frozen after prefill.

Within a forward, a layer's probe row is computed before that layer's output, so a layer is classified and
rescaled in the same forward.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

import hallufix
from hallufix.method import Method
from hallufix import capture as C
from hallufix import points


@dataclass
class Config:
    perc_max_layer: int = 6      # 0-based; the paper's layer 7 (Ocean-R1), 1-based counting assumed
    reas_min_layer: int = 2      # 0-based; the paper's layer 3
    tau_perc: float = 0.22       # min S_v of perception heads
    tau_reas: float = 0.01       # max S_v of reasoning heads
    tau_perc_decode: Optional[float] = None  # the same thresholds at decode steps (query_row=last); None = tau_perc
    tau_reas_decode: Optional[float] = None  # (S_v of a generated token's row is distributed unlike the prompt's)
    g_perc: float = 1.16
    g_reas: float = 1.30
    query_row: str = "last"      # last | prompt_last | mean
    fold: bool = False           # with a frozen query row: fold gains into o_proj (exact, restored afterwards)
    record_sv: bool = False      # put every declared head's S_v at prefill and at the last step into the diagnostics
    calibrated_on: str = ""      # provenance of tau_perc / tau_reas (written by `hallufix calibrate`); not used

    def validate(self):
        if self.query_row not in ("last", "prompt_last", "mean"):
            raise ValueError(f"query_row must be last, prompt_last or mean, got {self.query_row!r}")
        if self.tau_reas >= self.tau_perc:
            raise ValueError(f"tau_reas ({self.tau_reas}) must be below tau_perc ({self.tau_perc})")
        if self.decode_taus()[1] >= self.decode_taus()[0]:
            raise ValueError(f"tau_reas_decode ({self.decode_taus()[1]}) must be below tau_perc_decode "
                             f"({self.decode_taus()[0]})")
        if self.g_perc < 0 or self.g_reas < 0:
            raise ValueError("gains must be >= 0")
        if self.fold and self.query_row == "last":
            raise ValueError("fold needs frozen head classes: use query_row=prompt_last or mean")

    def decode_taus(self) -> tuple[float, float]:
        """``(tau_perc, tau_reas)`` applied at decode steps."""
        return (self.tau_perc if self.tau_perc_decode is None else self.tau_perc_decode,
                self.tau_reas if self.tau_reas_decode is None else self.tau_reas_decode)


class FHI(Method):
    name = "fhi"
    Config = Config

    @hallufix.hookimpl
    def hallufix_configure(self, model):
        c = self.config
        L = model.num_layers
        perc = list(range(0, min(c.perc_max_layer, L - 1) + 1)) if c.g_perc != 1 else []
        reas = list(range(max(0, c.reas_min_layer), L)) if c.g_reas != 1 else []
        self.layers = sorted(set(perc) | set(reas))
        if not self.layers:
            return []
        rows = "text" if c.query_row == "mean" else "last"
        if c.query_row == "last":  # classes follow the generation: probe and rescale at every forward
            return points.attn_probs(self.layers, rows=rows) + points.attn_heads(self.layers)
        # frozen classes: gains set at prefill hold for the generation; the core applies them at decode (folded
        # into o_proj with fold=true where one gain vector serves the batch) and releases layers with nothing to do
        return (points.attn_probs(self.layers, rows=rows, phases={"prefill"})
                + points.attn_heads(self.layers, static_gains=True, fold=c.fold))

    @hallufix.hookimpl
    def hallufix_batch_start(self, batch):
        self.sv: dict[int, torch.Tensor] = {}
        self.gains: dict[int, torch.Tensor] = {}
        self.selected = {"prefill": {}, "last": {}}
        self.stats: dict[int, dict] = {}
        self.sv_phase: dict[str, dict[int, torch.Tensor]] = {"prefill": {}, "last": {}}

    @hallufix.hookimpl
    def hallufix_attn_probs(self, event):
        vis = event.visual_keys
        if self.config.query_row == "mean":
            mass = C.visual_mass(event.probs.float(), vis)  # (B, H, R)
            text = event.row_mask("text").float()
            sv = (mass * text[:, None]).sum(-1) / text.sum(-1).clamp(min=1)[:, None]
        else:
            sv = (event.last().float() * vis[:, None, :]).sum(-1)  # Eq. 7: (B, H)
        self.sv[event.layer] = sv
        if self.config.record_sv:  # the calibration's input (hallufix_fhi.calibration): per phase, per head
            self.sv_phase["prefill" if event.forward.phase == "prefill" else "last"][event.layer] = sv
        self.stats[event.layer] = sv  # summarised at batch end (no per-layer host sync during generation)

    def _gains(self, layer: int, phase: str = "prefill") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c, sv = self.config, self.sv[layer]
        tau_perc, tau_reas = (c.tau_perc, c.tau_reas) if phase == "prefill" else c.decode_taus()
        perc = sv >= tau_perc if layer <= c.perc_max_layer and c.g_perc != 1 else None
        reas = sv <= tau_reas if layer >= c.reas_min_layer and c.g_reas != 1 else None
        gains = torch.ones_like(sv)  # Eq. 9-10; a head is never both (tau_reas < tau_perc, validated)
        if perc is not None:
            gains = torch.where(perc, c.g_perc, gains)
        if reas is not None:
            gains = torch.where(reas, c.g_reas, gains)
        no = None if perc is not None and reas is not None else torch.zeros_like(sv, dtype=torch.bool)
        return gains, no if perc is None else perc, no if reas is None else reas

    @hallufix.hookimpl
    def hallufix_attn_heads(self, event):
        # query_row=last: every forward; frozen rows: prefill only (static gains, applied by the core afterwards)
        layer, phase = event.layer, event.forward.phase
        gains, perc, reas = self._gains(layer, phase)
        self.gains[layer] = gains
        self.selected["prefill" if phase == "prefill" else "last"][layer] = (perc, reas)  # listed at batch end
        if self.config.query_row != "last" or not bool((gains == 1).all()):
            event.scale(gains)  # (B, H) float32; static gains of all ones cost nothing (the core checks)

    def _folded_layers(self) -> list[int]:
        """Layers whose frozen gains were one vector for the batch and not all 1: the core folded them into
        ``o_proj`` when ``fold`` is on (its rule for a layer where FHI is the only static-gains method)."""
        if not self.config.fold:
            return []
        return sorted(layer for layer, g in self.gains.items()
                      if bool((g == g[:1]).all()) and not bool((g == 1).all()))

    @hallufix.hookimpl
    def hallufix_batch_end(self, batch):
        listed = {key: {layer: [{"perception": p[b].nonzero().flatten().tolist(),
                                 "reasoning": q[b].nonzero().flatten().tolist()} for b in range(p.shape[0])]
                        for layer, (p, q) in sel.items()}
                  for key, sel in self.selected.items()}
        stats = {layer: {"mean": float(sv.mean()), "min": float(sv.min()), "max": float(sv.max())}
                 for layer, sv in self.stats.items()}
        folded = self._folded_layers()
        out = []
        for r in range(batch.batch_size):
            per_layer = {}
            for key in ("prefill", "last"):
                sel = listed[key]
                per_layer[key] = {str(l): sel[l][r] for l in sorted(sel)
                                  if sel[l][r]["perception"] or sel[l][r]["reasoning"]}
            n_perc = sum(len(v["perception"]) for v in per_layer["prefill"].values())
            n_reas = sum(len(v["reasoning"]) for v in per_layer["prefill"].values())
            d = {"selected_heads": per_layer, "n_perception": n_perc, "n_reasoning": n_reas,
                 "folded_layers": folded, "s_v": {str(l): v for l, v in sorted(stats.items())}}
            if self.config.record_sv:
                d["s_v_heads"] = {key: {str(l): sv[r].tolist() for l, sv in sorted(per.items())}
                                  for key, per in self.sv_phase.items()}
            out.append(d)
        return out

    # ------------------------------------------------------------------ calibration
    @staticmethod
    def calibrate(session, images, questions, fraction: float = 0.064, perception_share: float = 0.5,
                  perc_max_layer: int | None = None, reas_min_layer: int | None = None,
                  overrides: list[str] = (), max_new_tokens: int = 3, batch_size: int = 16) -> dict:
        """Thresholds that select ``fraction`` of all heads per prompt on average (``perception_share`` of them
        perception heads), from the pooled per-prompt S_v at prefill and at the last decode step of greedy
        generation on the given prompts (``hallufix_fhi.calibration``; docs/methods/fhi.md, "Calibration").

        Raw S_v levels depend on the number of visual tokens per model (576 for LLaVA, 32 for InstructBLIP, image-
        dependent for Qwen), so copying the paper's 0.22 / 0.01 across models selects very different head sets.
        Layer bounds and ``query_row`` come from the model's preset and ``overrides`` unless given.
        Returns ``{"tau_perc", "tau_reas", "n_perception", "n_reasoning", "selected"}`` (mean heads per prompt at
        prefill; ``selected`` per phase); pass them as overrides or in a preset (``hallufix calibrate fhi``).
        """
        from hallufix_fhi.calibration import calibrate

        bounds = [f"perc_max_layer={perc_max_layer}"] if perc_max_layer is not None else []
        bounds += [f"reas_min_layer={reas_min_layer}"] if reas_min_layer is not None else []
        # thresholds no S_v can meet, gains != 1 so every band layer is probed: the model runs as the baseline
        probe = list(overrides) + bounds + ["tau_perc=2.0", "tau_reas=-1.0", "g_perc=2.0", "g_reas=2.0",
                                            "tau_perc_decode=2.0", "tau_reas_decode=-1.0", "fold=false",
                                            "record_sv=true"]
        run = session.start(["fhi"], {"fhi": probe})
        c = run.methods.instances[0].config
        cal = calibrate(run, images, questions, fraction=fraction, perception_share=perception_share,
                        perc_max_layer=c.perc_max_layer, reas_min_layer=c.reas_min_layer,
                        max_new_tokens=max_new_tokens, batch_size=batch_size, decode=c.query_row == "last")
        return {"tau_perc": cal.tau_perc, "tau_reas": cal.tau_reas, "tau_perc_decode": cal.tau_perc_decode,
                "tau_reas_decode": cal.tau_reas_decode, "n_perception": cal.n_perception,
                "n_reasoning": cal.n_reasoning, "selected": cal.selected,
                "perc_max_layer": c.perc_max_layer, "reas_min_layer": c.reas_min_layer, "query_row": c.query_row}
