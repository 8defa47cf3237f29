"""The Python API, mirroring the CLI: load a model, start a run with a stack of methods, generate.

    >>> import hallufix
    >>> session = hallufix.load_model("builtin")
    >>> run = session.start(["clva"], overrides={"clva": ["alpha=10"]})
    >>> out = run.generate(images, ["is there a star ?"], max_new_tokens=4)
    >>> out[0].text, out[0].diagnostics["clva"]

A :class:`MethodRun` is run-scoped: the methods are instantiated and configured once, and its hook table is
installed around each ``generate`` call and removed afterwards (also on errors).
"""
from __future__ import annotations

from dataclasses import dataclass, field
import torch
from transformers import LogitsProcessorList

from hallufix import points as P
from hallufix.analysis_prefill import analysis_prefill
from hallufix.capture import PrefillCapture
from hallufix.events import BatchInfo, ImageEvent
from hallufix.errors import BatchEndFailed
from hallufix.intercept import HookTable, Interceptor, guards, strict
from hallufix.intercept.branch import BranchPass, collect_branches
from hallufix.models.families import adapter_for
from hallufix.plugins import ActiveMethods, PluginError, activate, split_plugins


@dataclass
class Generation:
    """One batch row's result: generated ``text``, ``token_ids`` ``(T,)``, per-method ``diagnostics``, and, when
    asked, per-step ``logits`` ``(T, V)``."""

    text: str
    token_ids: torch.Tensor
    diagnostics: dict = field(default_factory=dict)
    logits: torch.Tensor | None = None
    #: the row's sampling seed (``--decoding sample``; :func:`hallufix.decoding.row_seed`), else ``None``
    seed: int | None = None


class Session:
    """A loaded model with its processor and adapter."""

    def __init__(self, model, processor, name: str = "", identity=None):
        from hallufix.config.identity import identify_loaded

        self.model, self.processor = model.eval(), processor
        self.adapter = adapter_for(model)
        self.info = self.adapter.model_info(model, name)
        #: the canonical :class:`~hallufix.config.ModelIdentity` (what presets are looked up by)
        self.identity = identity or identify_loaded(model, name)

    @classmethod
    def load(cls, model: str | None = None, *, dtype: str = "auto", device: str = "cpu") -> "Session":
        """Load an alias (``llava-1.5``, ``qwen-vl``, ``qwen2-vl``, ``instructblip``, ``builtin``), hub id or folder."""
        from hallufix.models.loading import load_pretrained
        from hallufix.models.registry import resolve

        from hallufix.config.identity import identify

        target = resolve(model)
        m, proc = load_pretrained(target, dtype=dtype, device=device)
        ident = identify(model)
        return cls(m, proc, name=model or "builtin", identity=ident if ident.family else None)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def start(self, plugins: str | list | None = None, overrides: dict[str, list[str]] | None = None,
              methods=None) -> "MethodRun":
        """Start a run with a stack of methods (typed order = call order).

        ``methods``: resolved methods (a cell's ``methods`` from :func:`hallufix.config.resolve`, or an
        :class:`ActiveMethods`), used as they are. Else ``plugins`` (names, ``"clva+ara"``, file plugins or method
        objects) with per-method ``overrides`` (``{"clva": ["alpha=10"]}``) are resolved by the same
        :func:`hallufix.config.resolve_methods`, with this model's preset. Given together with ``methods``,
        ``plugins`` and ``overrides`` must describe the same stack (else :class:`~hallufix.config.ConfigError`)."""
        from hallufix.config.resolution import check_given

        if methods is None:
            methods = activate(split_plugins(plugins), overrides=overrides, model=self.identity,
                               family=self.info.family)
        else:
            check_given(methods.resolved if isinstance(methods, ActiveMethods) else methods, plugins, overrides)
            if not isinstance(methods, ActiveMethods):
                methods = activate(methods)
        return MethodRun(self, methods)

    def generate(self, images: list, questions: list[str], plugins=None, overrides=None, **kw) -> list[Generation]:
        """One-shot convenience: :meth:`start` then :meth:`MethodRun.generate`."""
        return self.start(plugins, overrides).generate(images, questions, **kw)


def load_model(model: str | None = None, **kw) -> Session:
    """Shorthand for :meth:`Session.load`."""
    return Session.load(model, **kw)


def generate(model: Session, images: list, questions: list[str], plugins=None, overrides=None, **kw):
    """Shorthand for :meth:`Session.generate`."""
    return model.generate(images, questions, plugins, overrides, **kw)


class MethodRun:
    """The active methods of one run on one session: their declarations and the hook table built from them."""

    def __init__(self, session: Session, methods: ActiveMethods):
        self.session, self.methods = session, methods
        self.declared: dict[object, list[P.HookPoint]] = {}
        for inst, name in zip(methods.instances, methods.order):
            caller = methods.pm.subset_hook_caller("hallufix_configure",
                                                   remove_plugins=[x for x in methods.instances if x is not inst])
            results = caller(model=session.info)
            pts = [p for r in results for p in (r or [])]
            for p in pts:
                if p.kind in P.SUBMODEL_KINDS:
                    if p.layer not in session.info.qformer_layers:
                        raise PluginError(f"method '{name}' declared {p.name}, but the model's Q-Former "
                                          f"cross-attention layers are {list(session.info.qformer_layers)}")
                elif p.layer is not None and not 0 <= p.layer < session.info.num_layers:
                    raise PluginError(f"method '{name}' declared {p.name}, but the model has "
                                      f"{session.info.num_layers} layers (0-based) — check its layer settings")
            if pts:
                self.declared[inst] = pts
        self.table = HookTable(methods.pm, self.declared)
        self.branches = collect_branches(methods, session.info)  # [(method, Branch)]: extra rows per batch
        #: run-level mode of branches declared ``auto`` (``rows`` / ``separate``; ``None``: each branch's own rule)
        self.branch_mode: str | None = None
        self.hook_stats: dict = {"fired": {}, "paths": {}}
        #: per method, in typed order: its own ``hallufix_batch_end`` caller (what it returns is filed under its name)
        self._batch_end = [(name, methods.pm.subset_hook_caller(
            "hallufix_batch_end", remove_plugins=[x for x in methods.instances if x is not inst]))
            for inst, name in zip(methods.instances, methods.order)]

    @property
    def order(self) -> list[str]:
        return self.methods.order

    def declarations(self) -> dict[str, list[str]]:
        """``{method: [canonical hook-point names]}``."""
        names = dict(zip(map(id, self.methods.instances), self.methods.order))
        return {names[id(inst)]: sorted({p.name for p in pts}) for inst, pts in self.declared.items()}

    # ------------------------------------------------------------------ generation
    def check_decoding(self, decoding) -> None:
        """Raise :class:`PluginError` when this run's branches cannot follow ``decoding`` (a
        :class:`hallufix.decoding.Decoding`): beam search takes branch rows and plain-model separate branches, and
        no beam-candidate method beside them (:func:`hallufix.intercept.branch.beam_refusal`). A runner calls it
        before any sample runs; :meth:`generate` calls it for every batch."""
        from hallufix.decoding import prepare as decoding_plan
        from hallufix.intercept.branch import beam_refusal

        if decoding is None or decoding.strategy != "beam" or not self.branches:
            return
        active = list(self.methods.order)
        separate = [br.name for _, br in self.branches
                    if br.resolved_mode(self.branch_mode) != "rows" and br.hook_methods(active)]
        problem = beam_refusal(decoding.num_beams, separate,
                               decoding_plan.candidate_caller(self.methods, self.declared) is not None,
                               ", ".join(m for m, _ in self.branches))
        if problem:
            raise PluginError(problem)

    def generate(self, images: list, questions: list[str], *, max_new_tokens: int = 16, min_new_tokens: int = 0,
                 output_logits: bool = False, decoding=None, row_keys: list[str] | None = None,
                 **generate_kw) -> list[Generation]:
        """Generation for a batch (one image per question), with the run's methods active.

        :param images: RGB ``PIL.Image`` per row. :param questions: user texts (the adapter applies the chat
        template). :param decoding: a :class:`hallufix.decoding.Decoding` (default greedy). :param row_keys: one key
        per row seeding its samples (sample ids; default a hash of the row's question and image). Returns one
        :class:`Generation` per row.
        """
        from hallufix.decoding import prepare as decoding_plan

        steps = decoding_plan.plan(decoding, questions, images, row_keys, self.methods, self.declared)
        s = self.session
        batch = BatchInfo(s.info, None, list(questions), [{} for _ in questions], beams=steps.expand)
        with strict.active():
            self.methods.pm.hook.hallufix_batch_start(batch=batch)  # reset per-batch state, before the images
        rows = [[im] for im in images]
        image_caller = self.table.global_caller("input_image")
        if image_caller is not None:
            ev = ImageEvent(images, questions, s.info, self.capture, self._geometry)
            image_caller(event=ev)
            rows = [[im] + extra for im, extra in zip(ev.images, ev.extra_images)]
        inputs = s.adapter.inputs(s.processor, rows, questions, s.device)
        layout = s.adapter.layout(s.model, inputs, rows)
        bp = BranchPass.build(s, self.branches, inputs, rows, questions, self.methods, self.branch_mode) \
            if self.branches else None
        if bp is not None:  # the branches' rows follow the main rows: every layer hook sees all (1 + k) B rows
            self.check_decoding(decoding)
            bp.expand_for(steps.expand)
            inputs, layout = bp.inputs, bp.layout
        batch.layout = layout
        guards.check_context(s.model, inputs, max_new_tokens)  # before the model runs
        guard = guards.FiniteLogitsGuard(s.model.generation_config.eos_token_id)
        guard = guard if bp is None else bp.main_rows_only(guard)  # rows it names are main rows
        # a sampler turns scores into each row's choice: with branches it draws for the main rows, copied to theirs
        after = steps.processors if bp is None else [bp.lockstep(p) for p in steps.processors]
        kw = dict(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, **steps.kwargs,
                  return_dict_in_generate=True, output_logits=output_logits, **generate_kw)
        with torch.inference_mode():
            if not self.table.points:
                first = bp.logits_processors() if bp is not None else []
                out = s.model.generate(**inputs, logits_processor=LogitsProcessorList(first + [guard] + after), **kw)
            else:
                with Interceptor(s.model, s.adapter, self.table, self.methods.pm,
                                 decoding_plan.expand_layout(layout, steps.expand), s.info) as ic:
                    first = ic.logits_processors() if bp is None else \
                        bp.logits_processors(ic, self.table.global_caller("logits"))
                    out = s.model.generate(**inputs, logits_processor=LogitsProcessorList(first + [guard] + after),
                                           **kw)
                self._accumulate(ic)
            if bp is not None:
                out, inputs = bp.main_output(out), {**inputs, "input_ids": inputs["input_ids"][: bp.main_rows]}
        try:
            with strict.active():
                self._end_batch(batch)
        except Exception as exc:
            ended = exc
        else:
            ended = None
        new = s.adapter.new_tokens(out.sequences, inputs)
        texts = s.processor.batch_decode(new, skip_special_tokens=True)
        logits = decoding_plan.row_logits(out, len(texts), steps.expand) if output_logits else None
        eos = s.model.generation_config.eos_token_id
        ids = [guards.trim_at_eos(new[i], eos) for i in range(len(texts))]  # batched rows: no pad after EOS
        gens = [Generation(t.strip(), ids[i], batch.diagnostics[i], None if logits is None else logits[i][: len(ids[i])],
                           None if steps.seeds is None else steps.seeds[i]) for i, t in enumerate(texts)]
        if ended is not None:  # the outputs exist: hand them over with the plugin's error (the runner keeps them)
            raise BatchEndFailed(gens, ended) from ended
        return gens

    def _end_batch(self, batch: BatchInfo) -> None:
        """Each method's ``hallufix_batch_end``, in typed order; a returned list (one JSON-serialisable entry per
        row, ``None`` for none) is filed as ``batch.diagnostics[row][method]``."""
        for name, caller in self._batch_end:
            for result in caller(batch=batch):
                if result is None:
                    continue
                if isinstance(result, (list, tuple)) and batch.layout is not None and \
                        len(result) == batch.layout.batch_size > batch.batch_size:
                    result = result[: batch.batch_size]  # one per row with the branch rows: the main rows come first
                if not isinstance(result, (list, tuple)) or len(result) != batch.batch_size:
                    got = f"{len(result)} entries" if isinstance(result, (list, tuple)) else type(result).__name__
                    raise PluginError(f"method '{name}': hallufix_batch_end must return one diagnostics entry per "
                                      f"batch row ({batch.batch_size}) or None, got {got}")
                for diag, entry in zip(batch.diagnostics, result):
                    if entry is not None:
                        diag[name] = entry

    def _geometry(self, image, grid=None):
        s = self.session
        grid = grid or s.adapter.image_grid(s.processor, image)
        if grid is None:
            raise ValueError(f"{s.info.family} has no spatial token grid; pass the grid (e.g. capture's patch_grid)")
        return s.adapter.cell_index(s.processor, image, grid)

    def _accumulate(self, ic: Interceptor) -> None:
        for k, v in ic.counts.items():
            self.hook_stats["fired"][k] = self.hook_stats["fired"].get(k, 0) + v
        for (layer, path), v in ic.paths.items():
            key = f"{layer}:{path}"
            self.hook_stats["paths"][key] = self.hook_stats["paths"].get(key, 0) + v

    # ------------------------------------------------------------------ analysis prefill (service for methods)
    def capture(self, images: list | None = None, questions: list[str] | None = None, *, layers=(),
                hidden_norms: bool = False, extra_images: list[list] | None = None,
                token_to_patch: bool = False, text_mass: bool = False) -> PrefillCapture:
        """Run one prefill (fresh cache, no generation, no method active) and return, for ``layers``, the last
        prompt row's attention over the visual tokens per head and, when asked, the visual tokens' input hidden
        norms. Used by two-pass methods (ARA, the contrast crop) through :class:`~hallufix.events.ImageEvent`.

        ``token_to_patch=True`` (models whose ``info.capabilities.token_to_patch`` is set) adds
        ``result.token_to_patch`` ``(B, n_visual, rows*cols)``, each visual token's weights over the vision
        encoder's patches, and ``result.patch_grid`` ``(rows, cols)`` (InstructBLIP: the head- and layer-averaged
        Q-Former cross-attention, CLS column dropped).

        ``text_mass=True`` adds ``result.text_mass`` ``{layer: (B, H)}``, each head's visual attention mass averaged
        over the prompt's text rows (CLVA's Eq. 1 at prefill).

        Every tensor is float32 on the model's device; ``result.visual`` gives each row's visual-token count, grids
        and per-image slots (rows of mixed sizes are padded, see :class:`~hallufix.visual.VisualTokens`)."""
        with strict.suspended():  # called from a hook: the model runs outside strict device mode
            return analysis_prefill(self.session, images, questions, layers, hidden_norms, extra_images,
                                    token_to_patch, text_mass)
