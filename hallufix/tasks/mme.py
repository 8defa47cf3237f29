"""MME from its official release folder (both layouts, ``benchmarks.md`` §3.1) or eval_tool result files.

``--task mme:PATH`` with PATH the ``MME_Benchmark_release_version`` folder (subtask folders nested one level deeper
under ``MME_Benchmark/`` are found too). Split layout (``images/`` + ``questions_answers_YN/``) and flat layout
(image and same-stem ``.txt`` side by side) are both read; each ``.txt`` holds ``question<TAB>Yes|No`` lines.
"""
from __future__ import annotations

from pathlib import Path

from hallufix.scoring.mme import COGNITION, HALLUCINATION, PERCEPTION, mme_scores
from hallufix.tasks.base import MetricInfo, Sample, Task, TaskError, register_task

SUBTASKS = PERCEPTION + COGNITION
IMAGE_EXT = (".jpg", ".png", ".jpeg")


def _root(path: Path) -> Path:
    if (path / "MME_Benchmark").is_dir():
        return path / "MME_Benchmark"
    return path


def read_release(path: str | Path, subtasks=SUBTASKS) -> dict[str, list[tuple[str, str, str, Path]]]:
    """``{subtask: [(image name, question, Yes|No, image path)]}`` in file order (an image's pair adjacent)."""
    root = _root(Path(path))
    if not root.is_dir():
        raise TaskError(f"MME folder not found: {path}")
    out = {}
    for sub in subtasks:
        d = root / sub
        if not d.is_dir():
            continue
        qa_dir, img_dir = (d / "questions_answers_YN", d / "images") if (d / "questions_answers_YN").is_dir() else (d, d)
        rows = []
        for txt in sorted(qa_dir.glob("*.txt")):
            image = next((img_dir / (txt.stem + e) for e in IMAGE_EXT if (img_dir / (txt.stem + e)).is_file()),
                         img_dir / (txt.stem + ".jpg"))
            for i, line in enumerate(txt.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                parts = line.split("\t")
                if len(parts) != 2:
                    raise TaskError(f"{txt}:{i}: expected 'question<TAB>Yes|No'")
                rows.append((image.name, parts[0], parts[1].strip(), image))
        out[sub] = rows
    if not out:
        raise TaskError(f"{root} holds none of the 14 MME subtask folders")
    return out


def read_eval_tool(folder: str | Path, with_response: bool) -> dict[str, list[tuple]]:
    """eval_tool files ``<subtask>.txt``: ``image<TAB>question<TAB>GT[<TAB>response]`` per line."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TaskError(f"MME results folder not found: {folder}")
    out = {}
    for f in sorted(folder.glob("*.txt")):
        rows = []
        for i, line in enumerate(f.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < (4 if with_response else 3):
                raise TaskError(f"{f}:{i}: expected {'4' if with_response else '3'} tab-separated columns")
            rows.append(tuple(parts[:4] if with_response else parts[:3]))
        out[f.stem] = rows
    return out


@register_task("mme")
class MME(Task):
    """MME yes/no pairs; scored with the official rule (acc, acc+, score; perception / cognition / hallucination)."""

    name = "mme"
    max_new_tokens = 8
    metrics = (MetricInfo("acc", True), MetricInfo("acc_plus", True), MetricInfo("score", True),
               MetricInfo("perception", True), MetricInfo("cognition", True), MetricInfo("hallucination", True))

    def __init__(self, path: str, subset: str = "all",
                 prompt_suffix: str = ""):
        if subset not in ("all", "hallucination"):
            raise TaskError(f"MME subset must be all or hallucination, got '{subset}'")
        self.path, self.subset, self.suffix = path, subset, prompt_suffix

    def samples(self):
        subs = HALLUCINATION if self.subset == "hallucination" else SUBTASKS
        out = []
        for sub, rows in read_release(self.path, subs).items():
            for k, (name, q, gt, image) in enumerate(rows):
                out.append(Sample(id=f"{sub}/{name}/{k % 2}", question=q + self.suffix, image=str(image), answer=gt,
                                  split=sub, meta={"image": name}))
        return out

    def parse(self, sample, text):
        return text.replace("\n", " ")

    def score(self, records):
        by = {}
        for r in records:
            by.setdefault(r["split"], []).append((r["meta"]["image"], r["answer"], r["parsed"]))
        res = mme_scores(by)
        out = {n: {k: v for k, v in m.items() if k != "n"} for n, m in res["subtasks"].items()}
        out["all"] = {k: res[k] for k in ("perception", "cognition", "hallucination", "object_level",
                                          "attribute_level")}
        return out
