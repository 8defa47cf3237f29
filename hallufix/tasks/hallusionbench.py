"""HallusionBench: ``--task hallusionbench:HallusionBench.json task.image_root=DIR``.

Questions from the official JSON (``category``, ``subcategory``, ``visual_input``, ``set_id``, ``figure_id``,
``question_id``, ``question``, ``gt_answer`` ``"1"``/``"0"``, ``filename`` relative to the image folder, e.g.
``./VS/chart/0_1.png``; ``None`` for image-free questions). Answers are reduced to Yes / No / Unknown with
VLMEvalKit's rule and scored with VLMEvalKit's convention (:func:`hallufix.scoring.hallusionbench.
vlmevalkit_metrics`: aAcc, fAcc, qAcc, overall; ``accuracy`` = aAcc as a fraction, for paired comparisons); the
official judge-based metrics need a judge: write the run's answers as ``model_prediction`` and score them with
``hallufix score hallusionbench --correctness-field``.

``no_image``: hallufix's runner always gives the model an image, so the 178 image-free questions (``visual_input``
0) get a blank white 336x336 image (``blank``, the default, a documented deviation) or are left out (``skip``:
the metrics then cover the image questions only). The choice is recorded in the run record.
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from hallufix.scoring.hallusionbench import FIELDS, HallusionBenchError, check_rows, vlmevalkit_metrics, \
    yes_no_extraction
from hallufix.tasks.base import MetricInfo, Sample, Task, TaskError, read_json, register_task


def blank_image() -> Image.Image:
    return Image.new("RGB", (336, 336), "white")


@register_task("hallusionbench")
class HallusionBench(Task):
    name = "hallusionbench"
    metrics = (MetricInfo("aAcc", True), MetricInfo("fAcc", True), MetricInfo("qAcc", True),
               MetricInfo("overall", True), MetricInfo("accuracy", True), MetricInfo("unknown", None),
               MetricInfo("n", None))

    def __init__(self, path: str, image_root: str = ".", no_image: str = "blank", max_new_tokens: int = 64):
        if no_image not in ("blank", "skip"):
            raise TaskError(f"task.no_image must be blank or skip, not '{no_image}'")
        self.path, self.image_root, self.no_image = Path(path), Path(image_root), no_image
        self.max_new_tokens = int(max_new_tokens)

    def samples(self) -> list[Sample]:
        if not self.path.is_file():
            raise TaskError(f"HallusionBench questions not found: {self.path} (HallusionBench.json)")
        rows = read_json(self.path, "HallusionBench question file")
        try:
            check_rows(rows)
        except HallusionBenchError as exc:
            raise TaskError(f"{self.path}: {exc}") from None
        out = []
        for r in rows:
            if not r.get("filename") and self.no_image == "skip":
                continue
            image = str(self.image_root / r["filename"]) if r.get("filename") else blank_image
            key = "_".join(str(r[f]) for f in ("category", "subcategory", "set_id", "figure_id", "question_id"))
            out.append(Sample(id=key, question=r["question"], image=image,
                              answer="yes" if str(r.get("gt_answer")) == "1" else "no", split="all",
                              meta={f: str(r[f]) for f in FIELDS} | {
                                  "gt_answer": str(r.get("gt_answer")), "question": r["question"],
                                  "gt_answer_details": r.get("gt_answer_details"), "filename": r.get("filename")}))
        return out

    def parse(self, sample: Sample, text: str) -> str:
        return yes_no_extraction(text).lower()

    def score(self, records) -> dict[str, dict]:
        rows = [r["meta"] for r in records]
        m = vlmevalkit_metrics(rows, [r["parsed"] for r in records])
        return {"all": {**{k: m[k] for k in ("aAcc", "fAcc", "qAcc", "overall", "unknown", "n")},
                        "accuracy": m["aAcc"] / 100}}

    def record(self) -> dict:
        return {"questions": str(self.path), "no_image": self.no_image, "scoring": "VLMEvalKit yes/no convention"}
