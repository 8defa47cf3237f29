"""The branch pass: a batch's branches as extra batch rows of the same ``generate`` call, or run separately.

Each branch runs in the mode :meth:`Branch.resolved_mode <hallufix.branches.Branch.resolved_mode>` gives it: rows
(below) or separate (:class:`~hallufix.intercept.branch_forward.SeparateBranch`: its own ``B`` rows, KV cache and
forwards, stepped by :class:`BranchLogits` on the main rows' token, with the interceptor's state swapped to the
branch's hook selection by :mod:`hallufix.intercept.branch_scope`).

Rows: per batch (:meth:`BranchPass.build`), the processor inputs of the ``B`` main rows are followed by one block of
``B`` rows per declared :class:`~hallufix.branches.Branch`, in declaration order (rows ``[B (1 + j), B (2 + j))``
are branch ``j``):

* ``image="same"``: the main rows' tokens again, their ``pixel_values`` passed image by image through the branch's
  ``pixels`` transform (the same token count, so the rows line up without padding);
* ``image="none"``: the same question through the chat template with zero images, tokenised and left-padded to
  the batch's prompt length (fewer tokens; left padding keeps every row's last prompt token at the same column,
  which ``generate`` needs, and the padded keys are masked, so the row's logits are those of the unpadded prompt
  within float rounding; see docs/branches.md for the measured cost against a separate forward).

One ``generate`` then runs all ``(1 + k) B`` rows: one forward per step, each row with its own KV-cache row, the
fused kernels unchanged. :class:`BranchLogits` (the first logits processor) hands the hook the main rows' scores
as ``event.scores`` and each branch's as ``event.branches[name]`` ``(B, V)``, and returns the hook's main scores
for every block, so greedy decoding picks the same token for a main row and its branch rows (lockstep). A sampler
keeps the lockstep when it draws a branch row with its main row's generator (identical scores, identical draw).
:meth:`BranchPass.main_output` cuts ``generate``'s outputs back to the main rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
from transformers import LogitsProcessor

from hallufix.branches import Branch
from hallufix.intercept.branch_inputs import merge, text_only, transform_pixels
from hallufix.events import LogitsEvent
from hallufix.layout import TokenLayout

def collect_branches(methods, info) -> list[tuple[str, Branch]]:
    """``[(method name, Branch), ...]`` from every active method's ``hallufix_declare_branches`` (typed order)."""
    out: list[tuple[str, Branch]] = []
    for inst, name in zip(methods.instances, methods.order):
        caller = methods.pm.subset_hook_caller("hallufix_declare_branches",
                                               remove_plugins=[x for x in methods.instances if x is not inst])
        for result in caller(model=info):
            for br in result or []:
                if not isinstance(br, Branch):
                    raise TypeError(f"method '{name}' declared a branch that is not a hallufix.branches.Branch: "
                                    f"{type(br).__name__}")
                if any(br.name == b.name for _, b in out):
                    raise ValueError(f"branch name {br.name!r} declared twice (method '{name}'); branch names "
                                     f"must be unique within a run")
                out.append((name, br))
    return out


@dataclass
class BranchLayout(TokenLayout):
    """A :class:`~hallufix.layout.TokenLayout` over the main rows followed by the branch rows.

    ``main_rows``: ``B``; ``branch_names``: the branches in row-block order (block ``j + 1`` is branch ``j``)."""

    main_rows: int = 0
    branch_names: tuple = ()
    _rows_memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def block(self, name: str) -> slice:
        """The rows of ``"main"`` or of a branch, as a slice of the batch."""
        B = self.main_rows
        if name == "main":
            return slice(0, B)
        if name not in self.branch_names:
            raise KeyError(f"no branch {name!r} in this batch (branches: {', '.join(self.branch_names) or 'none'})")
        j = self.branch_names.index(name) + 1
        return slice(j * B, (j + 1) * B)

    def rows_of(self, *names: str) -> torch.Tensor:
        """``(B_total,)`` bool on the layout's device: the rows of the named blocks (``"main"`` or branch names)."""
        key = tuple(sorted(names))
        if key not in self._rows_memo:
            mask = torch.zeros(self.batch_size, dtype=torch.bool, device=self.input_ids.device)
            for n in names:
                mask[self.block(n)] = True
            self._rows_memo[key] = mask
        return self._rows_memo[key]

    def main(self) -> TokenLayout:
        """The main rows' own layout (what the logits hook sees)."""
        if "main" not in self._rows_memo:
            B = self.main_rows
            self._rows_memo["main"] = TokenLayout(self.input_ids[:B], self.valid[:B], self.visual[:B], self.text[:B],
                                                  self.grids[:B])
        return self._rows_memo["main"]


@dataclass
class SeparateLayout(BranchLayout):
    """The layout of a separately run branch's own ``B`` rows: ``branch_names`` is ``(branch,)`` and every row
    belongs to it (``rows_of(branch)`` all True, ``rows_of("main")`` all False), so a method that selects rows
    with ``layout.rows_of`` treats the branch's forward as it treats the branch's rows in the rows mode."""

    def block(self, name: str) -> slice:
        if name == "main":
            return slice(0, 0)
        if name not in self.branch_names:
            raise KeyError(f"no branch {name!r} in this forward (it runs branch {self.branch_names[0]!r})")
        return slice(0, self.batch_size)


def _layout(base: TokenLayout, cls=BranchLayout, **kw) -> BranchLayout:
    return cls(**{f.name: getattr(base, f.name) for f in fields(TokenLayout) if f.init}, **kw)


class BranchLogitsEvent(LogitsEvent):
    """point ``logits`` with branches: ``scores`` ``(B, V)`` of the main rows (edit as usual), ``branches``
    ``{name: (B, V)}`` the branch rows' raw next-token scores (read-only), ``input_ids`` of the main rows."""

    def __init__(self, scores, input_ids, forward, layout, branches: dict[str, torch.Tensor]):
        super().__init__(scores, input_ids, forward, layout)
        self.branches = branches


class BranchLogits(LogitsProcessor):
    """The first logits processor of a branched batch: calls the logits hook with the main rows and the branch
    scores, then returns ``(1 + k) B`` rows that are ``1 + k`` copies of the main rows' result (lockstep)."""

    def __init__(self, bp: "BranchPass", st=None, caller=None):
        self.bp, self.st, self.caller = bp, st, caller

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        B, lay = self.bp.step_rows, self.bp.step_layout  # under beam search each row's beams: B * num_beams
        main = scores[:B]
        if self.caller is not None:
            # generate's own processors ran before this one on the rows it computed (min_new_tokens bans EOS):
            # a separate branch's tokens get the same bans as its main row
            banned = torch.isneginf(main) if self.bp.separate else None
            separate = {sb.name: sb.step(input_ids[:B]).masked_fill(banned, float("-inf")) for sb in self.bp.separate}
            branches = {n: separate[n] if n in separate else scores[lay.block(n)] for n in self.bp.names}
            forward = self.st.forward if self.st is not None else None
            ev = BranchLogitsEvent(main, input_ids[:B], forward, lay.main(), branches)
            self.caller(event=ev)
            if self.st is not None:
                self.st.fired("logits")
            main = ev.scores
        return main.repeat(1 + len(lay.branch_names), 1)


class _MainRowsOnly(LogitsProcessor):
    def __init__(self, processor, rows: int):
        self.processor, self.rows = processor, rows

    def __call__(self, input_ids, scores):
        self.processor(input_ids[: self.rows], scores[: self.rows])
        return scores


class _Lockstep(LogitsProcessor):
    def __init__(self, processor, rows: int, blocks: int):
        self.processor, self.rows, self.blocks = processor, rows, blocks

    def __call__(self, input_ids, scores):
        return self.processor(input_ids[: self.rows], scores[: self.rows]).repeat(self.blocks, 1)


def beam_refusal(beams: int, separate_hooked: list[str], custom_candidates: bool, methods: str = "") -> str | None:
    """Why branches cannot run under ``beams`` beams (``None`` when they can): ``separate_hooked`` names the
    branches set to run separately with methods' hooks on them, ``custom_candidates`` whether a beam-candidate
    method is active (see :meth:`BranchPass.expand_for`)."""
    if beams <= 1:
        return None
    who = methods or "branch methods"
    if separate_hooked:
        return (f"{who}: under beam search a separate branch runs the plain model only, but "
                f"{', '.join(separate_hooked)} applies methods' hooks: pass --branch-mode rows (or the method's "
                f"branch=rows), or drop --decoding beam")
    if custom_candidates:
        return (f"{who}: branch passes do not combine with a beam-candidate method (it re-scores each row's "
                f"candidates, so branch beams would not follow the main beams): drop one of them")
    return None


class BranchPass:
    """One batch's branches: merged inputs and the layout over the main and branch rows, the separate branches'
    inputs and layouts, the logits processor, output cutting.

    ``names``: every branch in declaration order; ``layout.branch_names``: those run as rows."""

    def __init__(self, inputs: dict, layout: BranchLayout, questions: list[str], main_rows: int,
                 names: tuple = (), separate_specs: list | None = None, session=None, methods=None):
        self.inputs, self.layout, self.questions, self.main_rows = inputs, layout, questions, main_rows
        self.names = names or layout.branch_names
        #: ``[(Branch, inputs, layout, selected method names)]`` of the separate branches
        self.separate_specs = separate_specs or []
        self.session, self.methods = session, methods
        self.separate: list = []
        #: rows per prompt row in every forward (``num_beams`` under beam search; :meth:`expand_for`)
        self.expand = 1

    def expand_for(self, beams: int) -> None:
        """Prepare for ``beams`` rows per prompt row (transformers' beam search expands every input row, branch
        rows too). In the rows mode the branch rows' beams then follow the main beams exactly: each block gets
        the main rows' processed scores (:class:`BranchLogits`), so beam search keeps, orders and reorders the
        same beams, with their caches, in every block. A separate branch that runs the plain model
        (``hooks="none"``: PAI's default) prefills once per prompt row and then follows the main beams (its cache
        reordered at every step, :class:`~hallufix.intercept.branch_forward.SeparateBranch`). What cannot follow
        (a separate branch with methods' hooks, a beam-candidate method) is refused before, by
        :func:`beam_refusal` through ``MethodRun.check_decoding``."""
        self.expand = beams

    @property
    def step_rows(self) -> int:
        """Main rows in every forward and logits call: ``main_rows * expand`` (the first rows of the batch)."""
        return self.main_rows * self.expand

    @property
    def step_layout(self) -> BranchLayout:
        """The layout over every forward's rows (each row ``expand`` times, the blocks kept)."""
        if self.expand == 1:
            return self.layout
        if getattr(self, "_step_layout", None) is None:
            from hallufix.decoding.prepare import expand_layout

            self._step_layout = expand_layout(self.layout, self.expand)
        return self._step_layout

    @classmethod
    def build(cls, session, branches: list[tuple[str, Branch]], inputs: dict, rows: list[list],
              questions: list[str], methods=None, mode: str | None = None) -> "BranchPass":
        """Append the rows branches' rows to the main ``inputs`` (processor output of ``rows`` / ``questions``) and
        prepare the separate branches' own inputs. ``methods``: the run's active methods (hook selection);
        ``mode``: a run-level mode for branches declared ``auto``."""
        s = session
        B = len(rows)
        parts, all_rows, row_names, specs = [inputs], list(rows), [], []
        active = list(methods.order) if methods is not None else []
        for _, br in branches:
            if br.image == "same":
                part = dict(inputs)
                if br.pixels is not None:
                    part["pixel_values"] = transform_pixels(br, inputs, rows)
                part_rows = rows
            else:
                part = text_only(s, questions, inputs)
                part_rows = [[] for _ in rows]
            if br.resolved_mode(mode) == "rows":
                parts.append(part)
                all_rows += part_rows
                row_names.append(br.name)
            else:
                lay = _layout(_part_layout(s, part, part_rows), SeparateLayout, main_rows=0,
                              branch_names=(br.name,))
                specs.append((br, part, lay, br.hook_methods(active)))
        pad_id = s.processor.tokenizer.pad_token_id
        merged = merge(parts, 0 if pad_id is None else int(pad_id)) if len(parts) > 1 else inputs
        base = s.adapter.layout(s.model, merged, all_rows)
        layout = _layout(base, main_rows=B, branch_names=tuple(row_names))
        return cls(merged, layout, list(questions) * (1 + len(row_names)), B,
                   tuple(br.name for _, br in branches), specs, s, methods)

    def logits_processors(self, interceptor=None, caller=None) -> list:
        """``[BranchLogits]``: pass it first in ``generate``'s processor list (before guards and samplers). Sets
        up the separate branches for this ``generate`` call (``interceptor``: the installed one, else ``None``)."""
        from hallufix.intercept.branch_forward import SeparateBranch
        from hallufix.intercept.branch_scope import BranchHooks, scoped

        self.separate = []
        if self.separate_specs and interceptor is not None and self.methods is None:
            raise ValueError("a separate branch's hook selection needs the run's methods: pass methods= to "
                             "BranchPass.build")
        for br, part, lay, selected in self.separate_specs:
            scope = None
            if interceptor is not None:
                bh = BranchHooks(interceptor, self.methods, selected, lay)
                scope = (lambda bh=bh: scoped(bh))
            self.separate.append(SeparateBranch(br.name, self.session.model, part, lay, scope, beams=self.expand))
        return [BranchLogits(self, interceptor, caller)]

    def main_rows_only(self, processor) -> LogitsProcessor:
        """``processor`` (e.g. the finite-logits guard) run on the main rows only; the scores pass unchanged."""
        return _MainRowsOnly(processor, self.step_rows)

    def lockstep(self, processor) -> LogitsProcessor:
        """``processor`` run on the main rows, its result copied to every branch block: for processors whose
        output is not a function of the scores alone (a seeded sampler that turns scores into a one-hot choice per
        row), so branch rows still take their main row's token."""
        return _Lockstep(processor, self.step_rows, 1 + len(self.layout.branch_names))

    def main_output(self, out):
        """``generate``'s output cut to the main rows: ``sequences`` (and beam search's ``sequences_scores`` and
        ``beam_indices``, one per prompt row), per-step ``logits`` / ``scores`` (one per running row: the main
        rows' beams come first)."""
        B = self.main_rows
        out.sequences = out.sequences[:B]
        for name in ("sequences_scores", "beam_indices"):
            value = getattr(out, name, None)
            if value is not None:
                setattr(out, name, value[:B])
        for name in ("logits", "scores"):
            value = getattr(out, name, None)
            if value is not None:
                setattr(out, name, tuple(t[: self.step_rows] for t in value))
        return out


def _part_layout(s, part: dict, part_rows: list[list]) -> TokenLayout:
    """A branch's own rows' layout (rows without images have no grids to read from the processor output)."""
    if any(part_rows):
        return s.adapter.layout(s.model, part, part_rows)
    return TokenLayout.from_inputs(part["input_ids"], part.get("attention_mask"), s.adapter.image_token_id(s.model),
                                   [[] for _ in part_rows])
