"""MME from its official release folder (``benchmarks.md`` §3) and the eval_tool result files.

``--task mme:PATH`` with PATH the ``MME_Benchmark_release_version`` folder (subtask folders nested one level deeper
under ``MME_Benchmark/`` are found too). Both subtask layouts are read: split (``images/`` +
``questions_answers_YN/``: artwork, celebrity, landmark, posters, scene) and flat (image and same-stem ``.txt``
side by side: the other nine). Each ``.txt`` holds an image's two ``question<TAB>Yes|No`` lines.

Options: ``subset`` (``all``: the 14 subtasks; ``hallucination``: existence, count, position, color),
``prompt`` (``official``: the question as released, ending " Please answer yes or no."; ``llava``: that sentence
replaced by "\\nAnswer the question using a single word or phrase." as LLaVA-1.5 and lmms-eval do; any other
string replaces it). ``max_new_tokens`` is 8; the official parser reads the first four characters.
"""
from __future__ import annotations

from pathlib import Path

from hallufix.scoring.mme import COGNITION, HALLUCINATION, PERCEPTION, mme_scores
from hallufix.tasks.base import MetricInfo, Sample, Task, TaskError, register_task

SUBTASKS = PERCEPTION + COGNITION
IMAGE_EXT = (".jpg", ".png", ".jpeg", ".JPG", ".PNG")
OFFICIAL_SUFFIX = " Please answer yes or no."
PROMPTS = {"official": OFFICIAL_SUFFIX, "llava": "\nAnswer the question using a single word or phrase."}


def _root(path: Path) -> Path:
    return path / "MME_Benchmark" if (path / "MME_Benchmark").is_dir() else path


def base_question(question: str) -> str:
    """The question without MME's " Please answer yes or no." / LLaVA's suffix, white space collapsed (the join
    key LLaVA's ``convert_answer_to_mme.py`` needs, double spaces included)."""
    q = question.split("\n")[0]
    q = q.replace(OFFICIAL_SUFFIX.strip(), "")
    return " ".join(q.split())


def read_release(path: str | Path, subtasks=SUBTASKS) -> dict[str, list[tuple[str, str, str, Path]]]:
    """``{subtask: [(image name, question, Yes|No, image path)]}``, an image's two questions adjacent."""
    root = _root(Path(path))
    if not root.is_dir():
        raise TaskError(f"MME folder not found: {path}")
    out = {}
    for sub in subtasks:
        d = root / sub
        if not d.is_dir():
            continue
        split_layout = (d / "questions_answers_YN").is_dir()
        qa_dir, img_dir = (d / "questions_answers_YN", d / "images") if split_layout else (d, d)
        rows = []
        for txt in sorted(qa_dir.glob("*.txt")):
            image = next((img_dir / (txt.stem + e) for e in IMAGE_EXT if (img_dir / (txt.stem + e)).is_file()),
                         img_dir / (txt.stem + ".jpg"))
            for i, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                parts = line.split("\t")
                if len(parts) != 2 or parts[1].strip() not in ("Yes", "No"):
                    raise TaskError(f"{txt}:{i}: expected 'question<TAB>Yes|No'")
                rows.append((image.name, parts[0], parts[1].strip(), image))
        if not rows:
            raise TaskError(f"{d}: no question files")
        out[sub] = rows
    if not out:
        raise TaskError(f"{root} holds none of the MME subtask folders ({', '.join(subtasks)})")
    return out


def read_eval_tool(folder: str | Path, with_response: bool) -> dict[str, list[tuple[str, ...]]]:
    """eval_tool files ``<subtask>.txt`` with ``image<TAB>question<TAB>GT[<TAB>response]`` lines."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TaskError(f"MME results folder not found: {folder}")
    cols = 4 if with_response else 3
    out = {}
    for f in sorted(folder.glob("*.txt")):
        rows = []
        for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < cols:
                raise TaskError(f"{f}:{i}: expected {cols} tab-separated columns "
                                f"(image, question, answer{', response' if with_response else ''}), got {len(parts)}")
            rows.append(tuple(parts[:cols]))
        out[f.stem] = rows
    if not out:
        raise TaskError(f"{folder} holds no <subtask>.txt files")
    return out


def join_eval_tool(gt: dict[str, list[tuple]], answers: dict[str, list[tuple]], where: str
                   ) -> dict[str, list[tuple[str, str, str]]]:
    """``{subtask: [(image, GT, response)]}`` in ground-truth order from an eval_tool 4-column folder."""
    out = {}
    for sub, rows in gt.items():
        if sub not in answers:
            continue
        resp = {(r[0], r[1]): r[3] for r in answers[sub]}
        missing = [r for r in rows if (r[0], r[1]) not in resp]
        if missing:
            raise TaskError(f"{where}/{sub}.txt: no response for {missing[0][0]!r} / {missing[0][1]!r} "
                            f"({len(missing)} missing)")
        out[sub] = [(r[0], r[2], resp[(r[0], r[1])].replace("\n", " ")) for r in rows]
    if not out:
        raise TaskError(f"{where}: no subtask file matches the ground truth ({', '.join(sorted(gt))})")
    return out


def join_llava(gt: dict[str, list[tuple]], questions: list[dict], answers: list[dict], where: str
               ) -> dict[str, list[tuple[str, str, str]]]:
    """Join LLaVA answers (``question_id``, ``text``) to the ground truth through LLaVA's question file
    (``question_id``, ``image`` = ``<subtask>/<file>``, ``text``, ``category``) on (category, image stem, question),
    as ``convert_answer_to_mme.py`` does."""
    qs = {q["question_id"]: q for q in questions}
    by_key: dict[tuple, str] = {}
    for a in answers:
        q = qs.get(a.get("question_id"))
        if q is None:
            raise TaskError(f"{where}: answer question_id {a.get('question_id')!r} is not in the question file")
        cat = q.get("category") or Path(q["image"]).parts[0]
        by_key[(cat, Path(q["image"]).stem, base_question(q.get("text", q.get("prompt", ""))))] = a["text"]
    out = {}
    for sub, rows in gt.items():
        got = []
        for r in rows:
            key = (sub, Path(r[0]).stem, base_question(r[1]))
            if key not in by_key:
                if got or any(k[0] == sub for k in by_key):
                    raise TaskError(f"{where}: no answer for {sub}/{r[0]}: {r[1]!r}")
                break
            got.append((r[0], r[2], by_key[key].replace("\n", " ")))
        if got:
            out[sub] = got
    if not out:
        raise TaskError(f"{where}: no answer matches the ground truth")
    return out


@register_task("mme")
class MME(Task):
    """MME yes/no pairs, scored with the official rule: acc, acc+ (percent) and score per subtask; perception,
    cognition, hallucination subset, object and attribute levels in ``"all"`` (points, max 200 per subtask)."""

    name = "mme"
    max_new_tokens = 8
    metrics = (MetricInfo("acc", True), MetricInfo("acc_plus", True), MetricInfo("score", True),
               MetricInfo("perception", True), MetricInfo("cognition", True), MetricInfo("hallucination", True),
               MetricInfo("object_level", True), MetricInfo("attribute_level", True), MetricInfo("n", None))

    def __init__(self, path: str, subset: str = "all", prompt: str = "official", max_new_tokens: int = 8):
        if subset not in ("all", "hallucination"):
            raise TaskError(f"MME subset must be 'all' or 'hallucination', got '{subset}'")
        self.path, self.subset, self.max_new_tokens = path, subset, int(max_new_tokens)
        self.suffix = PROMPTS.get(prompt, prompt)

    def samples(self) -> list[Sample]:
        subs = HALLUCINATION if self.subset == "hallucination" else SUBTASKS
        out = []
        for sub, rows in read_release(self.path, subs).items():
            for k, (name, q, gt, image) in enumerate(rows):
                question = q[: -len(OFFICIAL_SUFFIX)] if q.endswith(OFFICIAL_SUFFIX) else q
                out.append(Sample(id=f"{sub}/{name}/{k % 2}", question=question.rstrip() + self.suffix
                                  if self.suffix != OFFICIAL_SUFFIX else q, image=str(image), answer=gt, split=sub,
                                  meta={"image": name}))
        return out

    def parse(self, sample: Sample, text: str) -> str:
        """The response on one line (the eval_tool format); the official rule parses it when scoring."""
        return text.replace("\n", " ")

    def score(self, records) -> dict[str, dict[str, float]]:
        by: dict[str, list] = {}
        for r in records:
            by.setdefault(r["split"], []).append((r["meta"]["image"], r["answer"], r["parsed"]))
        res = mme_scores(by)
        out: dict[str, dict[str, float]] = {n: dict(m) for n, m in res["subtasks"].items()}
        out["all"] = {k: res[k] for k in ("perception", "cognition", "hallucination", "object_level",
                                          "attribute_level")}
        return out
