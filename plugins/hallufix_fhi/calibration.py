"""FHI-CCR threshold calibration on the S_v values the rule is applied to (per prompt, per forward).

Eq. 8 (docs/methods/fhi.md) selects a head of layer l when ``l <= perc_max_layer and S_v >= tau_perc``
(perception) or ``l >= reas_min_layer and S_v <= tau_reas`` (reasoning), where S_v (Eq. 7) is the visual share of
*one prompt's* query row. The thresholds therefore have to be quantiles of the pooled per-prompt values, not of
per-head means: one head's S_v spans ~1e-8 to 1.0 across prompts, so a threshold among the means selects far more
than its fraction on individual prompts.

The rule here: collect, for every calibration prompt, every declared head's S_v at prefill and at the last decode
step (the two forwards FHI's diagnostics list), pool them per class band and per phase, and take

* ``tau_perc`` = the value with ``round(fraction * share * L * H * N)`` pooled perception-band values at or above it,
* ``tau_reas`` = the value with ``round(fraction * (1 - share) * L * H * N)`` pooled reasoning-band values at or
  below it,

with ``N`` the number of prompts: once over the prefill rows (``tau_perc`` / ``tau_reas``) and once over the last
decode step's rows (``tau_perc_decode`` / ``tau_reas_decode``, only with ``query_row=last``). The two phases need
their own pair: a generated token's row is distributed unlike the prompt's last row (on the built-in model one pair
pooled over both phases selects 9.7% of the heads at prefill and 3.1% at the last step for a 6.4% target). Over
prompts drawn like the calibration prompts, the rule then selects ``fraction`` of the ``L * H`` heads per prompt
*on average* (the paper's ~6.4%); single prompts vary around it (the rule stays Eq. 8's fixed thresholds).

Shapes: ``sv`` arrays are ``(N, L, H)`` float64 with NaN where a layer was not probed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Calibration:
    """Thresholds and what they select on the calibration prompts (fractions of all ``L * H`` heads)."""

    tau_perc: float
    tau_reas: float
    tau_perc_decode: float | None
    tau_reas_decode: float | None
    fraction: float
    perception_share: float
    n_prompts: int
    selected: dict = field(default_factory=dict)  # {"prefill"|"last": {"perception", "reasoning", "total"}}

    @property
    def n_perception(self) -> float:
        """Mean perception heads per prompt at prefill (the old return key, kept for callers)."""
        return self.selected["prefill"]["perception_heads"]

    @property
    def n_reasoning(self) -> float:
        return self.selected["prefill"]["reasoning_heads"]


def band_masks(L: int, perc_max_layer: int, reas_min_layer: int) -> tuple[np.ndarray, np.ndarray]:
    """``(perception layers, reasoning layers)`` as ``(L,)`` bool masks (0-based layers)."""
    layers = np.arange(L)
    return layers <= perc_max_layer, layers >= reas_min_layer


def thresholds(sv: np.ndarray, perc_max_layer: int, reas_min_layer: int, fraction: float,
               perception_share: float = 0.5) -> tuple[float, float]:
    """``(tau_perc, tau_reas)`` from pooled per-prompt ``sv (N, L, H)`` (see the module docstring)."""
    N, L, H = sv.shape
    perc_l, reas_l = band_masks(L, perc_max_layer, reas_min_layer)
    p = sv[:, perc_l].reshape(-1)
    r = sv[:, reas_l].reshape(-1)
    p, r = np.sort(p[~np.isnan(p)])[::-1], np.sort(r[~np.isnan(r)])
    if not p.size or not r.size:
        raise ValueError("no S_v values in a class band: check perc_max_layer / reas_min_layer against the model")
    k_p = int(np.clip(round(fraction * perception_share * L * H * N), 1, p.size))
    k_r = int(np.clip(round(fraction * (1 - perception_share) * L * H * N), 1, r.size))
    tau_perc, tau_reas = float(p[k_p - 1]), float(r[k_r - 1])
    if tau_reas >= tau_perc:  # the classes must stay disjoint (Eq. 8 needs tau_reas < tau_perc)
        tau_reas = float(np.nextafter(tau_perc, 0.0))
    return tau_perc, tau_reas


def selected(sv: np.ndarray, tau_perc: float, tau_reas: float, perc_max_layer: int, reas_min_layer: int) -> dict:
    """Mean per-prompt selection of Eq. 8 over ``sv (N, L, H)``: heads per class and the fraction of ``L * H``."""
    N, L, H = sv.shape
    perc_l, reas_l = band_masks(L, perc_max_layer, reas_min_layer)
    with np.errstate(invalid="ignore"):
        perc = (sv >= tau_perc) & perc_l[None, :, None]
        reas = (sv <= tau_reas) & reas_l[None, :, None] & ~perc
    n_p, n_r = perc.sum((1, 2)), reas.sum((1, 2))
    return {"perception_heads": float(n_p.mean()), "reasoning_heads": float(n_r.mean()),
            "fraction": float(((n_p + n_r) / (L * H)).mean()),
            "fraction_min": float(((n_p + n_r) / (L * H)).min()), "fraction_max": float(((n_p + n_r) / (L * H)).max())}


def sv_from_diagnostics(diagnostics: list[dict], L: int, H: int, name: str = "fhi") -> dict[str, np.ndarray]:
    """``{"prefill", "last"}: (N, L, H)`` from the ``s_v_heads`` of FHI runs with ``record_sv: true``. A prompt
    with no decode step (a one-token answer) uses its prefill values as its last step (its classes never changed)."""
    out = {k: np.full((len(diagnostics), L, H), np.nan) for k in ("prefill", "last")}
    for i, d in enumerate(diagnostics):
        heads = d[name]["s_v_heads"]
        for key in ("prefill", "last"):
            per = heads[key] or heads["prefill"]
            for layer, values in per.items():
                out[key][i, int(layer)] = values
    return out


def calibrate(run, images: list, questions: list[str], *, fraction: float, perception_share: float,
              perc_max_layer: int, reas_min_layer: int, batch_size: int = 16, max_new_tokens: int = 3,
              decode: bool = True) -> Calibration:
    """Generate on the prompts with ``run`` (an FHI run with ``record_sv`` and thresholds that select nothing, so
    the model behaves as the baseline), pool S_v per phase and place the thresholds; ``decode=False`` (frozen
    classes) calibrates the prefill pair only."""
    L, H = run.session.info.num_layers, run.session.info.num_heads
    diags = []
    for k in range(0, len(questions), batch_size):
        outs = run.generate(list(images[k:k + batch_size]), list(questions[k:k + batch_size]),
                            max_new_tokens=max_new_tokens)
        diags += [o.diagnostics for o in outs]
    sv = sv_from_diagnostics(diags, L, H)
    tau_perc, tau_reas = thresholds(sv["prefill"], perc_max_layer, reas_min_layer, fraction, perception_share)
    tau_perc_d, tau_reas_d = (thresholds(sv["last"], perc_max_layer, reas_min_layer, fraction, perception_share)
                              if decode else (None, None))
    sel = {"prefill": selected(sv["prefill"], tau_perc, tau_reas, perc_max_layer, reas_min_layer),
           "last": selected(sv["last"] if decode else sv["prefill"], tau_perc if tau_perc_d is None else tau_perc_d,
                            tau_reas if tau_reas_d is None else tau_reas_d, perc_max_layer, reas_min_layer)}
    return Calibration(tau_perc, tau_reas, tau_perc_d, tau_reas_d, fraction, perception_share, len(questions), sel)
