"""Where things are: the loaded model's shape (:class:`ModelInfo`) and each batch's token layout
(:class:`TokenLayout`).

Token roles per batch row, in prompt order (left padding first)::

    [pad ...] [system ...] [visual ... (one run per image)] [instruction ...] | [generated ...]

* visual positions are ``input_ids == image_token_id`` (every family expands its placeholders in ``input_ids``);
* *text* query rows (CLVA's ``T_txt``) are instruction tokens after the last visual token, and every generated
  token;
* positions are cache indices: at decode step ``t`` the query sits at ``prompt_len + t - 1``. Visual key columns
  keep their indices in the cache, so one prefill-time mask serves every step.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hallufix.models.families.spec import Capabilities
from hallufix.visual import VisualTokens


@dataclass(frozen=True)
class ModelInfo:
    """Static facts of a loaded model that plugins configure on.

    Attributes:
        family: ``llava``, ``qwen2-vl``, ``qwen2.5-vl`` or ``instructblip``.
        num_layers, num_heads, num_kv_heads, head_dim, hidden_size: the language model's decoder.
        image_token_id: id of the visual placeholder token in ``input_ids``.
        visual_tokens_per_image: fixed count where the family has one (LLaVA 576, InstructBLIP 32), else ``None``.
        grid: ``(rows, cols)`` of the visual tokens on the image where fixed (LLaVA 24x24), else ``None`` (Qwen:
            per image from ``image_grid_thw``; InstructBLIP: query tokens, no grid).
        name: the model id or folder it was loaded from.
        capabilities: what the visual tokens support (:class:`~hallufix.models.families.spec.Capabilities`:
            ``spatial_grid``, ``multi_image``, ``token_to_patch``); methods test these, never ``family``. Left
            unset, the registered family's are filled in.
        qformer_layers: the Q-Former layers (0-based) that hold a cross-attention over the image features, where
            ``capabilities.qformer`` is set (InstructBLIP-7B: 0, 2, ..., 10); else empty.
    """

    family: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    image_token_id: int
    visual_tokens_per_image: int | None = None
    grid: tuple[int, int] | None = None
    name: str = ""
    capabilities: Capabilities | None = None
    qformer_layers: tuple[int, ...] = ()

    def __post_init__(self):
        if self.capabilities is None:
            from hallufix.models.families import capabilities

            object.__setattr__(self, "capabilities", capabilities(self.family))

    @property
    def display_name(self) -> str:
        """How messages name the family (``"InstructBLIP"``)."""
        from hallufix.models.families import display_name

        return display_name(self.family)


@dataclass
class TokenLayout:
    """Token roles of one padded batch at prefill, valid for every later decode step.

    Attributes:
        input_ids: ``(B, P)`` prompt ids (left padded), P = prompt length.
        valid: ``(B, P)`` bool, False on padding.
        visual: ``(B, P)`` bool, True on visual tokens.
        text: ``(B, P)`` bool, True on instruction tokens after the row's last visual token.
        grids: per row, per image, the ``(rows, cols)`` grid of its visual tokens in raster order (``None`` where
            the family has no spatial grid, e.g. InstructBLIP's query tokens).
    """

    input_ids: torch.Tensor
    valid: torch.Tensor
    visual: torch.Tensor
    text: torch.Tensor
    grids: list[list[tuple[int, int] | None]] = field(default_factory=list)
    #: :meth:`visual_keys` per key length and the :attr:`visual_tokens` description (not part of the identity)
    _visual_keys_memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def from_inputs(cls, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, image_token_id: int,
                    grids: list[list[tuple[int, int] | None]] | None = None) -> "TokenLayout":
        """Build the layout from a processor's ``input_ids`` ``(B, P)`` and ``attention_mask`` ``(B, P)``."""
        valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        visual = (input_ids == image_token_id) & valid
        pos = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        last_vis = torch.where(visual, pos, torch.full_like(pos, -1)).max(dim=1, keepdim=True).values
        text = valid & ~visual & (pos > last_vis) & (last_vis >= 0)
        return cls(input_ids, valid, visual, text, grids or [[] for _ in range(input_ids.shape[0])])

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def prompt_len(self) -> int:
        return self.input_ids.shape[1]

    @property
    def visual_tokens(self) -> VisualTokens:
        """The batch's :class:`~hallufix.visual.VisualTokens` (per-row index, valid mask, counts, per-image grids
        and slot ranges), built once per layout on first use."""
        memo = self._visual_keys_memo
        if "visual_tokens" not in memo:
            memo["visual_tokens"] = VisualTokens.from_layout(self)
        return memo["visual_tokens"]

    def visual_keys(self, kv_len: int) -> torch.Tensor:
        """``(B, kv_len)`` bool: key columns that are visual tokens (generated keys are never visual).

        Memoised per ``kv_len`` (every declared layer of a forward asks for the same one); treat it as read-only."""
        memo = self._visual_keys_memo
        if kv_len not in memo:
            P = self.prompt_len
            if kv_len <= P:
                memo[kv_len] = self.visual[:, :kv_len]
            else:
                pad = torch.zeros(self.batch_size, kv_len - P, dtype=torch.bool, device=self.visual.device)
                memo[kv_len] = torch.cat([self.visual, pad], dim=1)
        return memo[kv_len]

    def _roles_at(self, role: torch.Tensor, positions: torch.Tensor, generated: bool) -> torch.Tensor:
        P = self.prompt_len
        inside = positions < P
        gathered = role[:, positions.clamp(max=P - 1)]
        return torch.where(inside[None, :], gathered, torch.full_like(gathered, generated))

    def text_rows(self, positions: torch.Tensor) -> torch.Tensor:
        """``(B, q)`` bool: which query rows at cache ``positions`` ``(q,)`` are text rows (instruction/generated)."""
        return self._roles_at(self.text, positions, True)

    def visual_rows(self, positions: torch.Tensor) -> torch.Tensor:
        """``(B, q)`` bool: which query rows at cache ``positions`` are visual tokens."""
        return self._roles_at(self.visual, positions, False)
