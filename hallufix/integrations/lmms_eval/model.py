"""The lmms-eval chat model ``hallufix``: a hallufix session with a method stack answers lmms-eval's requests.

Imported by lmms-eval's registry when ``--model hallufix`` is asked for (the entry point in hallufix's
``pyproject.toml`` names :func:`hallufix.integrations.lmms_eval.manifest`). Flow of one ``generate_until`` call:

1. every request's ``args`` is lmms-eval 0.7's chat 6-tuple ``(ctx, doc_to_messages, gen_kwargs, doc_id, task,
   split)``; its ``gen_kwargs`` are checked first, for all requests (:mod:`.gen`: a sampling or beam setting is
   refused before anything is generated);
2. requests are grouped by (task, split, generation settings), in the order they come, and cut into batches of
   ``batch_size``; each batch's documents give one image and one question per row (:mod:`.messages`);
3. :meth:`hallufix.api.MethodRun.generate` answers a batch (left-padded, the methods active, greedy), the text is
   cut at the first ``until`` stop string, and the batch's records go to hallufix's run record (:mod:`.record`);
4. answers come back in the requests' order as ``GenerationResult`` with the generated token count.

``loglikelihood`` and ``generate_until_multi_round`` are not supported (they raise ``NotImplementedError`` saying
so). Multi-process lmms-eval launches are refused: each process would answer every request (hallufix's own
``torchrun`` sharding runs a hallufix task over ranks).
"""
from __future__ import annotations

import os

from loguru import logger
from lmms_eval.api.instance import GenerationResult, TokenCounts
from lmms_eval.api.model import lmms
from tqdm import tqdm

from hallufix.integrations.lmms_eval.args import parse_model_args
from hallufix.integrations.lmms_eval.gen import cut_at_stops, greedy_settings
from hallufix.integrations.lmms_eval.messages import image_and_question


class HallufixLmms(lmms):
    """``--model hallufix``: see :mod:`hallufix.integrations.lmms_eval.args` for ``--model_args``."""

    is_simple = False

    def __init__(self, pretrained: str = "builtin", plugins: str = "", overrides=None, dtype: str = "auto",
                 record: str | None = None, batch_size=1, max_batch_size=None, device=None, **unknown) -> None:
        super().__init__()
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world > 1:
            raise RuntimeError(f"--model hallufix runs in one process (WORLD_SIZE={world}): under a multi-process "
                               f"lmms-eval launch every process would answer every request — launch lmms-eval "
                               f"with one process")
        model_args = {"pretrained": pretrained, "plugins": plugins, "overrides": overrides, "dtype": dtype,
                      "record": record, "batch_size": batch_size, "max_batch_size": max_batch_size,
                      "device": device, **unknown}
        self.args = parse_model_args(model_args)
        from hallufix.api import Session

        self.session = Session.load(self.args.pretrained, dtype=self.args.dtype, device=self.args.device)
        self.run = self.session.start(self.args.plugins or None, overrides=self.args.overrides)
        self.batch_size = self.args.batch_size
        self.record = self._open_record(model_args)

    def _open_record(self, model_args: dict):
        from hallufix.integrations.lmms_eval.record import RunRecord
        from hallufix.provenance import now

        folder = self.args.record
        if folder is None and self.args.record_root is not None:
            stack = "+".join(self.run.order) or "baseline"
            folder = self.args.record_root / f"{stack}_{now().replace(':', '').replace('-', '')}"
        if folder is None:
            logger.warning("--model hallufix: no hallufix run record (give record=FOLDER in --model_args, or an "
                           "lmms-eval --output_path)")
            return None
        return RunRecord(folder, self.session, self.run, self.args, model_args)

    # ------------------------------------------------------------------ lmms-eval's interface
    def generate_until(self, requests) -> list[GenerationResult]:
        settings = [greedy_settings(r.args[2], task=r.args[4]) for r in requests]  # refusals before any work
        groups: dict = {}
        for i, (req, greedy) in enumerate(zip(requests, settings)):
            _, _, _, _, task, split = req.args
            groups.setdefault((task, split, greedy), []).append(i)
        results: list[GenerationResult | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc="hallufix responding", disable=self.rank != 0)
        try:
            for (task, split, greedy), members in groups.items():
                for start in range(0, len(members), self.batch_size):
                    chunk = members[start:start + self.batch_size]
                    for i, result in zip(chunk, self._answer([requests[i] for i in chunk], task, split, greedy)):
                        results[i] = result
                    bar.update(len(chunk))
        finally:  # also when a batch fails: the hook counts of what ran
            bar.close()
            if self.record is not None:
                self.record.write_hooks()
        return results

    def _answer(self, chunk, task: str, split: str, greedy) -> list[GenerationResult]:
        from hallufix.errors import BatchEndFailed

        images, questions = [], []
        for req in chunk:
            _, doc_to_messages, _, doc_id, _, _ = req.args
            doc = self.task_dict[task][split][doc_id]
            image, question = image_and_question(doc_to_messages(doc), f"task '{task}' document {doc_id}")
            images.append(image)
            questions.append(question)
        failure = None
        try:
            gens = self.run.generate(images, questions, max_new_tokens=greedy.max_new_tokens,
                                     min_new_tokens=greedy.min_new_tokens)
        except BatchEndFailed as exc:  # generated: record the batch, then report the method's error
            gens, failure = exc.generations, exc.original
        texts = [cut_at_stops(g.text, greedy.until) for g in gens]
        if self.record is not None:
            self.record.append([
                {"id": f"{task}/{split}/{req.args[3]}", "task": task, "split": split, "doc_id": req.args[3],
                 "question": q, "output": text, "raw_output": g.text, "tokens": int(g.token_ids.numel()),
                 "generation": greedy.record(), "diagnostics": g.diagnostics}
                for req, q, text, g in zip(chunk, questions, texts, gens)])
        if failure is not None:
            raise failure
        for req, text in zip(chunk, texts):
            self.cache_hook.add_partial("generate_until", (req.args[0], req.args[2]), text)
        return [GenerationResult(text=t, token_counts=TokenCounts(output_tokens=int(g.token_ids.numel())))
                for t, g in zip(texts, gens)]

    def loglikelihood(self, requests):
        raise NotImplementedError("--model hallufix generates answers only: loglikelihood (multiple-choice "
                                  "scoring) is not supported — use a generate_until task")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("--model hallufix answers one image and one question per request: multi-round "
                                  "generation is not supported — use a single-round generate_until task")
