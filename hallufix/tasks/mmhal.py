"""MMHal-Bench: ``--task mmhal:response_template.json task.image_root=DIR``.

The template is the official list of 96 questions (``question_type``, ``question_topic``, ``image_id``,
``image_src``, ``image_content``, ``question``, ``gt_answer``; ``model_answer`` to fill). Images: ``image_root=``
the folder holding them, each found under the file name of its ``image_src`` URL (or an ``image_path`` field).
A run's samples become the official response file (the template with ``model_answer`` filled, in its order) with
``hallufix score mmhal --run RUN_DIR --template FILE --write response.json``; judging needs a judge the user gives
(``--judge``, :mod:`hallufix.scoring.mmhal`). With ``judge=`` (a command or ``module:function``),
``judge_name=`` and ``prompt_template=`` task options, the run itself scores: average score (0-6, higher is better),
hallucination rate (lower is better), per-type averages; the judge's identity and prompt go into the run record.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from hallufix.tasks.base import MetricInfo, Sample, Task, TaskError, read_json, register_task

FIELDS = ("question", "gt_answer", "image_src")


def image_name(row: dict) -> str:
    """The file name an image is saved under: ``image_path`` if given, else the last part of ``image_src``."""
    if row.get("image_path"):
        return str(row["image_path"])
    return PurePosixPath(urlparse(str(row["image_src"])).path).name


def read_template(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise TaskError(f"MMHal-Bench template not found: {p} (response_template.json from the MMHal-Bench "
                        f"dataset)")
    rows = read_json(p, "MMHal-Bench template")
    if not isinstance(rows, list):
        raise TaskError(f"{p}: expected a JSON list of questions")
    for i, r in enumerate(rows):
        missing = [f for f in FIELDS if not isinstance(r, dict) or f not in r]
        if missing:
            raise TaskError(f"{p}: question {i} lacks {missing}")
    return rows


def response_file(template: list[dict], answers: dict[int, str]) -> list[dict]:
    """The official response file: the template rows, in order, with ``model_answer`` filled (every row needs one)."""
    missing = [i for i in range(len(template)) if i not in answers]
    if missing:
        raise TaskError(f"{len(missing)} of {len(template)} MMHal questions have no answer (first {missing[:5]}); "
                        f"finish the run (rerun it to resume)")
    return [{**row, "model_answer": answers[i]} for i, row in enumerate(template)]


@register_task("mmhal")
class MMHal(Task):
    name = "mmhal"
    metrics = (MetricInfo("average_score", True), MetricInfo("hallucination_rate", False),
               MetricInfo("unreadable", None), MetricInfo("n", None))

    def __init__(self, path: str, image_root: str = ".", judge: str | None = None, judge_name: str | None = None,
                 prompt_template: str | None = None, max_new_tokens: int = 512):
        self.path, self.image_root, self.max_new_tokens = Path(path), Path(image_root), int(max_new_tokens)
        self.judge, self.judge_name, self.prompt_template = judge, judge_name, prompt_template
        if judge and not prompt_template:
            raise TaskError("a judge needs task.prompt_template=FILE (four '{}' slots: image contents, question, "
                            "human answer, model answer)")
        self._judge_info: dict | None = None

    def samples(self) -> list[Sample]:
        rows = read_template(self.path)
        return [Sample(id=str(i), question=r["question"], image=str(self.image_root / image_name(r)),
                       split=str(r.get("question_type", "all")), meta={"index": i}) for i, r in enumerate(rows)]

    def parse(self, sample: Sample, text: str) -> str:
        return text.strip()

    def score(self, records) -> dict[str, dict]:
        if not self.judge:
            return {"all": {"n": len(records)}}
        from hallufix.scoring.mmhal import JudgeError, judge_record, judge_rows, make_judge, summarise

        template = read_template(self.path)
        rows = [{**template[r["meta"]["index"]], "model_answer": r["parsed"]} for r in records]
        try:
            text = Path(self.prompt_template).read_text(encoding="utf-8")
            func, how = make_judge(self.judge)
            judged = judge_rows(rows, func, text)
        except (OSError, JudgeError) as exc:
            raise TaskError(f"MMHal judge: {exc}") from None
        self._judge_info = {**judge_record(self.judge_name, how, text),
                            "ratings": [j["rating"] for j in judged]}
        s = summarise(rows, judged)
        out = {t: {"average_score": v} for t, v in s["per_type"].items()}
        out["all"] = {k: s[k] for k in ("average_score", "hallucination_rate", "unreadable", "n")}
        return out

    def record(self) -> dict:
        return {"template": str(self.path), "judge": self._judge_info}
