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
    g_perc: float = 1.16
    g_reas: float = 1.30
    query_row: str = "last"      # last | prompt_last | mean
    fold: bool = False           # with a frozen query row: fold gains into o_proj (exact, restored afterwards)

    def validate(self):
        if self.query_row not in ("last", "prompt_last", "mean"):
            raise ValueError(f"query_row must be last, prompt_last or mean, got {self.query_row!r}")
        if self.tau_reas >= self.tau_perc:
            raise ValueError(f"tau_reas ({self.tau_reas}) must be below tau_perc ({self.tau_perc})")
        if self.g_perc < 0 or self.g_reas < 0:
            raise ValueError("gains must be >= 0")
        if self.fold and self.query_row == "last":
            raise ValueError("fold needs frozen head classes: use query_row=prompt_last or mean")


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
        frozen = c.query_row != "last"
        probe_phases = {"prefill"} if frozen else {"prefill", "decode"}
        rows = "text" if c.query_row == "mean" else "last"
        return points.attn_probs(self.layers, rows=rows, phases=probe_phases) + points.attn_heads(self.layers)

    @hallufix.hookimpl
    def hallufix_batch_start(self, batch):
        self.sv: dict[int, torch.Tensor] = {}
        self.gains: dict[int, torch.Tensor] = {}
        self.folded: set[int] = set()
        self.idle: set[int] = set()  # layers whose frozen gains are all 1
        self.selected = {"prefill": {}, "last": {}}
        self.stats: dict[int, dict] = {}

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
        self.stats[event.layer] = sv  # summarised at batch end (no per-layer host sync during generation)

    def _gains(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c, sv = self.config, self.sv[layer]
        no = torch.zeros_like(sv, dtype=torch.bool)
        perc = sv >= c.tau_perc if layer <= c.perc_max_layer and c.g_perc != 1 else no
        reas = sv <= c.tau_reas if layer >= c.reas_min_layer and c.g_reas != 1 else no
        gains = torch.ones_like(sv) + (c.g_perc - 1) * perc.float() + (c.g_reas - 1) * reas.float()
        return gains, perc, reas

    @hallufix.hookimpl
    def hallufix_attn_heads(self, event):
        layer, phase = event.layer, event.forward.phase
        if layer in self.folded or layer in self.idle:
            return  # the gains live in o_proj (or are all 1) for the rest of this generation
        if phase == "prefill" or self.config.query_row == "last":
            gains, perc, reas = self._gains(layer)
            self.gains[layer] = gains
            key = "prefill" if phase == "prefill" else "last"
            self.selected[key][layer] = (perc, reas)  # (B, H) masks; listed at batch end
        gains = self.gains[layer]
        if bool((gains == 1).all()):
            if phase == "prefill" and self.config.query_row != "last":
                self.idle.add(layer)  # no head selected in any row: nothing to apply for this generation
                event.done()  # nor any call at this layer during decoding
            return
        if self.config.fold and phase == "prefill" and bool((gains == gains[:1]).all()):
            event.fold(gains[0])  # one gain vector for the batch: exact, zero work per later step
            self.folded.add(layer)
            return
        event.scale(gains.to(event.output.dtype))

    @hallufix.hookimpl
    def hallufix_batch_end(self, batch):
        listed = {key: {layer: [{"perception": p[b].nonzero().flatten().tolist(),
                                 "reasoning": q[b].nonzero().flatten().tolist()} for b in range(p.shape[0])]
                        for layer, (p, q) in sel.items()}
                  for key, sel in self.selected.items()}
        stats = {layer: {"mean": float(sv.mean()), "min": float(sv.min()), "max": float(sv.max())}
                 for layer, sv in self.stats.items()}
        for r, diag in enumerate(batch.diagnostics):
            per_layer = {}
            for key in ("prefill", "last"):
                sel = listed[key]
                per_layer[key] = {str(l): sel[l][r] for l in sorted(sel)
                                  if sel[l][r]["perception"] or sel[l][r]["reasoning"]}
            n_perc = sum(len(v["perception"]) for v in per_layer["prefill"].values())
            n_reas = sum(len(v["reasoning"]) for v in per_layer["prefill"].values())
            diag[self.name] = {"selected_heads": per_layer, "n_perception": n_perc, "n_reasoning": n_reas,
                               "folded_layers": sorted(self.folded),
                               "s_v": {str(l): v for l, v in sorted(stats.items())}}

    # ------------------------------------------------------------------ calibration
    @staticmethod
    def calibrate(session, images, questions, fraction: float = 0.064, perception_share: float = 0.5,
                  perc_max_layer: int | None = None, reas_min_layer: int | None = None) -> dict:
        """Thresholds that select about ``fraction`` of all heads (``perception_share`` of them perception heads),
        from the mean S_v of each head's last prompt row over the given prompts (one analysis prefill).

        Raw S_v levels depend on the number of visual tokens per model (576 for LLaVA, 32 for InstructBLIP, image-
        dependent for Qwen), so copying the paper's 0.22 / 0.01 across models selects very different head sets.
        Returns ``{"tau_perc", "tau_reas", "n_perception", "n_reasoning"}``; pass them as overrides or in a preset.
        """
        c = Config()
        pmax = c.perc_max_layer if perc_max_layer is None else perc_max_layer
        rmin = c.reas_min_layer if reas_min_layer is None else reas_min_layer
        L, H = session.info.num_layers, session.info.num_heads
        run = session.start([])
        cap = run.capture(list(images), list(questions), layers=range(L))
        sv = torch.stack([cap.last_mass[l].mean(0) for l in range(L)])  # (L, H), averaged over prompts
        total = L * H
        k_perc = max(1, round(fraction * perception_share * total))
        k_reas = max(1, round(fraction * (1 - perception_share) * total))
        band_p = sv[: pmax + 1].flatten()
        band_r = sv[rmin:].flatten()
        tau_perc = float(band_p.sort(descending=True).values[min(k_perc, band_p.numel()) - 1])
        tau_reas = float(band_r.sort().values[min(k_reas, band_r.numel()) - 1])
        if tau_reas >= tau_perc:
            tau_reas = float(torch.nextafter(torch.tensor(tau_perc), torch.tensor(0.0)))
        return {"tau_perc": tau_perc, "tau_reas": tau_reas, "n_perception": int((band_p >= tau_perc).sum()),
                "n_reasoning": int((band_r <= tau_reas).sum())}
