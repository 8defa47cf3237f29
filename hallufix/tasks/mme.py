"""MME from its official release folder (``docs/benchmarks.md``, "MME") and the eval_tool result files.

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

from hallufix.scoring.mme import COGNITION, HALLUCINATION, PERCEPTION, mme_scores, total_metrics
from hallufix.tasks.base import MetricInfo, Sample, Task, TaskError, register_task

SUBTASKS = PERCEPTION + COGNITION
IMAGE_EXT = (".jpg", ".png", ".jpeg", ".JPG", ".PNG")
OFFICIAL_SUFFIX = " Please answer yes or no."
LLAVA_SUFFIX = "Answer the question using a single word or phrase."
PROMPTS = {"official": OFFICIAL_SUFFIX, "llava": "\n" + LLAVA_SUFFIX}


def _root(path: Path) -> Path:
    return path / "MME_Benchmark" if (path / "MME_Benchmark").is_dir() else path


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
    """``{subtask: [(image, GT, response)]}`` in ground-truth order from an eval_tool 4-column folder, matched on
    (image name up to its first ``.``, question): the eval_tool's own files name the image (``0001.jpg``), the
    folders LLaVA's ``convert_answer_to_mme.py`` writes name its question file (``0001.txt``)."""
    out = {}
    for sub, rows in gt.items():
        if sub not in answers:
            continue
        resp = {(r[0].split(".")[0], r[1]): r[3] for r in answers[sub]}
        missing = [r for r in rows if (r[0].split(".")[0], r[1]) not in resp]
        if missing:
            raise TaskError(f"{where}/{sub}.txt: no response for {missing[0][0]!r} / {missing[0][1]!r} "
                            f"({len(missing)} of {len(rows)} missing)")
        out[sub] = [(r[0], r[2], resp[(r[0].split(".")[0], r[1])].replace("\n", " ")) for r in rows]
    if not out:
        raise TaskError(f"{where}: no subtask file matches the ground truth ({', '.join(sorted(gt))})")
    return out


def read_ground_truth(path: str | Path) -> dict[str, list[tuple[str, str, str]]]:
    """``{subtask: [(image name, question, Yes|No)]}`` from the eval_tool ``Your_Results`` folder (``<subtask>.txt``
    files) or the ``MME_Benchmark_release_version`` folder (subtask folders, as LLaVA's conversion reads it)."""
    p = Path(path)
    if not p.is_dir():
        raise TaskError(f"MME ground truth folder not found: {p} (give eval_tool/Your_Results or "
                        f"MME_Benchmark_release_version)")
    if any((_root(p) / sub).is_dir() for sub in SUBTASKS):
        return {sub: [r[:3] for r in rows] for sub, rows in read_release(p).items()}
    return read_eval_tool(p, with_response=False)


def llava_key(question_id: str, prompt: str, known) -> tuple[str, str, str]:
    """The ground-truth key LLaVA's ``convert_answer_to_mme.py`` looks an answer up by: ``(category, file stem,
    question)`` — the category is ``question_id`` up to its first ``/``, the stem its last part up to the first
    ``.``; the question is ``prompt`` with "Answer the question using a single word or phrase." removed and white
    space stripped, then " Please answer yes or no." appended when absent — with two spaces before "Please" where
    the one-space form is not in ``known`` (seven MME questions are written that way)."""
    category = question_id.split("/")[0]
    stem = question_id.split("/")[-1].split(".")[0]
    q = prompt
    if LLAVA_SUFFIX in q:
        q = q.replace(LLAVA_SUFFIX, "").strip()
    if OFFICIAL_SUFFIX.strip() not in q:
        q = q + OFFICIAL_SUFFIX
        if (category, stem, q) not in known:
            q = q.replace(OFFICIAL_SUFFIX, " " + OFFICIAL_SUFFIX)
    return category, stem, q


def llava_prompts(answers: list[dict], questions: list[dict] | None, where: str) -> list[str]:
    """The question each answer was asked: its own ``prompt`` field (LLaVA's ``model_vqa_loader`` writes it), else
    the question file's ``text`` — matched by ``question_id`` and position, because LLaVA's ``llava_mme.jsonl``
    gives an image's two questions the same id and the answer file keeps the question file's order."""
    if all("prompt" in a for a in answers):
        return [str(a["prompt"]) for a in answers]
    first = next(i for i, a in enumerate(answers, 1) if "prompt" not in a)
    if questions is None:
        raise TaskError(f"{where}:{first}: answer has no 'prompt' field; give LLaVA's question file "
                        f"(llava_mme.jsonl) with --questions to join on")
    texts: dict[str, list[str]] = {}
    for q in questions:
        texts.setdefault(str(q.get("question_id")), []).append(str(q.get("text", q.get("prompt", ""))))
    seen: dict[str, int] = {}
    out = []
    for i, a in enumerate(answers, 1):
        if "prompt" in a:
            out.append(str(a["prompt"]))
            continue
        qid = str(a.get("question_id"))
        k = seen.get(qid, 0)
        seen[qid] = k + 1
        if k >= len(texts.get(qid, ())):
            raise TaskError(f"{where}:{i}: question_id {qid!r} appears {k + 1} times among the answers but "
                            f"{len(texts.get(qid, ()))} times in the question file")
        out.append(texts[qid][k])
    return out


def join_llava(gt: dict[str, list[tuple]], answers: list[dict], where: str, questions: list[dict] | None = None
               ) -> dict[str, list[tuple[str, str, str]]]:
    """``{subtask: [(image, GT, response)]}`` in ground-truth order from a LLaVA answer JSONL (``question_id`` =
    ``<subtask>/[images/]<file>``, ``prompt``, ``text``), joined as ``convert_answer_to_mme.py`` does (see
    :func:`llava_key`). The response is kept as written (a line break becomes a space: the eval_tool format is
    one line per answer). Subtasks without any answer are left out; an answer matching no question, a question
    answered twice, or a partly answered subtask raise :class:`TaskError` naming the first case and the count."""
    index = {(sub, r[0].split(".")[0], r[1]): (sub, i) for sub, rows in gt.items() for i, r in enumerate(rows)}
    bad = next((i for i, a in enumerate(answers, 1) if "question_id" not in a or "text" not in a), None)
    if bad is not None:
        raise TaskError(f"{where}:{bad}: a LLaVA answer line needs 'question_id' and 'text'")
    got: dict[tuple[str, int], str] = {}
    unmatched, twice = [], []
    for i, (a, prompt) in enumerate(zip(answers, llava_prompts(answers, questions, where)), 1):
        key = llava_key(str(a["question_id"]), prompt, index)
        if key not in index:
            unmatched.append((i, key))
        elif index[key] in got:
            twice.append((i, key))
        else:
            got[index[key]] = str(a["text"]).replace("\n", " ")
    if unmatched:
        i, (cat, stem, q) = unmatched[0]
        q = q.replace(" " + OFFICIAL_SUFFIX, OFFICIAL_SUFFIX)  # as asked (both spacings were looked up)
        raise TaskError(f"{where}:{i}: no ground-truth question {cat}/{stem}: {q!r} "
                        f"({len(unmatched)} of {len(answers)} answers match no question)")
    if twice:
        i, (cat, stem, q) = twice[0]
        raise TaskError(f"{where}:{i}: {cat}/{stem}: {q!r} is answered twice ({len(twice)} repeated answers)")
    out = {}
    for sub, rows in gt.items():
        answered = [i for i in range(len(rows)) if (sub, i) in got]
        if not answered:
            continue
        if len(answered) < len(rows):
            first = next(r for i, r in enumerate(rows) if (sub, i) not in got)
            raise TaskError(f"{where}: no answer for {sub}/{first[0]}: {first[1]!r} "
                            f"({len(rows) - len(answered)} of {len(rows)} {sub} questions unanswered)")
        out[sub] = [(r[0], r[2], got[(sub, i)]) for i, r in enumerate(rows)]
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
        self.expected: dict[str, int] = {}  # questions per subtask in the full set: a --limit cut is partial
        for sub, rows in read_release(self.path, subs).items():
            self.expected[sub] = len(rows)
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
        res = mme_scores(by, expected=getattr(self, "expected", None))
        out: dict[str, dict[str, float]] = {n: dict(m) for n, m in res["subtasks"].items()}
        names = ("hallucination", "object_level", "attribute_level") if self.subset == "hallucination" else \
            ("perception", "cognition", "hallucination", "object_level", "attribute_level")
        out["all"] = total_metrics(res, names)  # an incomplete total: None, naming the missing subtasks
        return out
