"""MME scoring as published: the official rule on LaVIN's eval_tool files, and LLaVA-1.5's released question and
answer files (tests/data/llava_mme, byte for byte) joined as LLaVA's convert_answer_to_mme.py joins them."""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from hallufix.cli import main
from hallufix.scoring.mme import parse_mme, parse_mme_lmms_eval, subtask_score
from hallufix.tasks.base import TaskError
from hallufix.tasks.mme import join_llava, llava_key

# the benchmark data folder beside the repository (HALLUFIX_SHARED_DATA points elsewhere, e.g. from a worktree)
DATA = Path(os.environ.get("HALLUFIX_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
LLAVA = Path(__file__).resolve().parent / "data" / "llava_mme"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"benchmark data folder {DATA} is absent")
GT = DATA / "mme" / "ground_truth"


def _unzip(name: str, tmp_path: Path) -> Path:
    out = tmp_path / name.removesuffix(".gz")
    out.write_bytes(gzip.decompress((LLAVA / name).read_bytes()))
    return out


def _score(capsys, *args) -> dict:
    assert main(["score", "mme", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@needs_data
def test_lavin_mme_predictions(capsys):
    res = _score(capsys, "--ground-truth", str(GT), "--answers", str(DATA / "mme" / "lavin_predictions"))
    assert round(res["perception"], 4) == 963.6114 and round(res["cognition"], 4) == 249.6429
    assert round(res["hallucination"], 2) == 411.67
    table = {"existence": 185.00, "count": 88.33, "position": 63.33, "color": 75.00, "posters": 79.59,
             "celebrity": 47.35, "scene": 136.75, "landmark": 93.50, "artwork": 87.25, "OCR": 107.50,
             "commonsense_reasoning": 87.14, "numerical_calculation": 65.00, "text_translation": 47.50,
             "code_reasoning": 50.00}
    for sub, score in table.items():
        assert round(res["subtasks"][sub]["score"], 2) == score


def test_mme_worked_example_and_parsers():
    rows = [("a", "Yes", "yes"), ("a", "No", "no"), ("b", "Yes", "yes"), ("b", "No", "yes"),
            ("c", "Yes", "no"), ("c", "No", "There is no")]
    m = subtask_score(rows)
    assert round(m["acc"], 2) == 50.0 and round(m["acc_plus"], 2) == 33.33 and round(m["score"], 2) == 83.33
    assert parse_mme("Not really") == "no" and parse_mme("There is no") == "other" and parse_mme("YES") == "yes"
    # lmms-eval's parse_pred_ans: periods removed and white space stripped first, single y / n accepted
    assert [parse_mme(r) for r in ("y", " .yes", "  yes")] == ["other", "other", "other"]
    assert [parse_mme_lmms_eval(r) for r in ("y", " .yes", "  yes", "N.")] == ["yes", "yes", "yes", "no"]


@needs_data
def test_llava_released_answer_file_alone_reproduces_the_paper(tmp_path, capsys):
    """LLaVA-1.5-13B's own answer file (both questions of an image under one question_id, the question in each
    answer's prompt with LLaVA's suffix, the 7 double-space ground-truth questions) -> perception 1531.3 and
    cognition 295.4 as published."""
    res = _score(capsys, "--ground-truth", str(GT), "--answers", str(_unzip("llava-v1.5-13b.jsonl.gz", tmp_path)))
    assert round(res["perception"], 4) == 1531.3187 and round(res["cognition"], 4) == 295.3571
    assert (round(res["perception"], 1), round(res["cognition"], 1)) == (1531.3, 295.4)
    assert sum(m["n"] for m in res["subtasks"].values()) == 2374


@needs_data
def test_llava_answers_without_prompt_join_through_the_question_file(tmp_path, capsys):
    """Answer lines without 'prompt' take the question file's text by question_id and position (an image's two
    questions share the id); without --questions that is an error naming the line."""
    answers = [json.loads(line) for line in _unzip("llava-v1.5-13b.jsonl.gz", tmp_path).read_text().splitlines()]
    for a in answers:
        del a["prompt"]
    bare = tmp_path / "bare.jsonl"
    bare.write_text("".join(json.dumps(a) + "\n" for a in answers))
    res = _score(capsys, "--ground-truth", str(GT), "--answers", str(bare), "--questions",
                 str(_unzip("llava_mme.jsonl.gz", tmp_path)))
    assert round(res["perception"], 4) == 1531.3187 and round(res["cognition"], 4) == 295.3571
    assert main(["score", "mme", "--ground-truth", str(GT), "--answers", str(bare)]) == 2
    err = capsys.readouterr().err
    assert "bare.jsonl:1" in err and "--questions" in err


def test_llava_key_follows_the_conversion_script():
    known = {("color", "000000405205", "Is there a white bus in the image?  Please answer yes or no."),
             ("artwork", "10002", "Does this artwork exist in the form of painting? Please answer yes or no.")}
    suffix = "\nAnswer the question using a single word or phrase."
    assert llava_key("color/000000405205.jpg", "Is there a white bus in the image?" + suffix, known) in known
    assert llava_key("artwork/images/10002.jpg", "Does this artwork exist in the form of painting?" + suffix,
                     known) in known
    # a prompt already carrying the official sentence is looked up as it is (no double-space retry)
    assert llava_key("color/000000405205.jpg", "Is there a white bus in the image? Please answer yes or no.",
                     known) not in known


def test_llava_join_errors_name_the_first_case_and_the_count():
    gt = {"count": [("1.jpg", "Are there two dogs? Please answer yes or no.", "Yes"),
                    ("1.jpg", "Are there three dogs? Please answer yes or no.", "No")]}

    def ans(q):
        return {"question_id": "count/1.jpg", "prompt": q + "\nAnswer the question using a single word or phrase.",
                "text": "Yes"}

    rows = join_llava(gt, [ans("Are there three dogs?"), ans("Are there two dogs?")], "a.jsonl")
    assert rows == {"count": [("1.jpg", "Yes", "Yes"), ("1.jpg", "No", "Yes")]}  # ground-truth order
    with pytest.raises(TaskError, match=r"a.jsonl:2: no ground-truth question count/1: 'Are there 2 dogs\? "
                                        r"Please answer yes or no.' \(1 of 2 answers"):
        join_llava(gt, [ans("Are there two dogs?"), ans("Are there 2 dogs?")], "a.jsonl")
    with pytest.raises(TaskError, match=r"no answer for count/1.jpg: 'Are there three dogs\?.*1 of 2 count"):
        join_llava(gt, [ans("Are there two dogs?")], "a.jsonl")
    with pytest.raises(TaskError, match=r"a.jsonl:2: .* answered twice"):
        join_llava(gt, [ans("Are there two dogs?"), ans("Are there two dogs?")], "a.jsonl")


def test_release_folder_is_accepted_as_ground_truth(tmp_path, capsys):
    """--ground-truth may be MME_Benchmark_release_version (flat and split subtask layouts), as LLaVA's script
    reads it."""
    root = tmp_path / "MME_Benchmark_release_version"
    (root / "count").mkdir(parents=True)
    (root / "count" / "1.jpg").write_bytes(b"")
    (root / "count" / "1.txt").write_text("Are there two dogs? Please answer yes or no.\tYes\n"
                                          "Are there three dogs?  Please answer yes or no.\tNo\n")
    (root / "artwork" / "images").mkdir(parents=True)
    (root / "artwork" / "questions_answers_YN").mkdir()
    (root / "artwork" / "images" / "7.jpg").write_bytes(b"")
    (root / "artwork" / "questions_answers_YN" / "7.txt").write_text(
        "Is this a painting? Please answer yes or no.\tYes\nIs this a vase? Please answer yes or no.\tNo\n")
    suffix = "\nAnswer the question using a single word or phrase."
    lines = [("count/1.jpg", "Are there two dogs?", "Yes"), ("count/1.jpg", "Are there three dogs?", "No"),
             ("artwork/images/7.jpg", "Is this a painting?", "Yes"), ("artwork/images/7.jpg", "Is this a vase?",
                                                                      "Yes")]
    f = tmp_path / "answers.jsonl"
    f.write_text("".join(json.dumps({"question_id": q, "prompt": p + suffix, "text": t, "answer_id": str(i),
                                     "model_id": "m", "metadata": {}}) + "\n" for i, (q, p, t) in enumerate(lines)))
    res = _score(capsys, "--ground-truth", str(root), "--answers", str(f))
    assert res["subtasks"]["count"]["score"] == 200.0 and res["subtasks"]["artwork"]["score"] == 50.0


def test_folder_written_by_llavas_conversion_script_is_accepted(tmp_path, capsys):
    """convert_answer_to_mme.py names each line by the image's question file (``1.txt``), not the image; its
    folder scores like an eval_tool one (checked on LLaVA-1.5-13B's answers: the same rows, 1531.3187 / 295.3571)."""
    gt, ans = tmp_path / "Your_Results", tmp_path / "llava-v1.5-13b"
    gt.mkdir()
    ans.mkdir()
    q1, q2 = "Are there two dogs? Please answer yes or no.", "Are there three dogs?  Please answer yes or no."
    (gt / "count.txt").write_text(f"1.jpg\t{q1}\tYes\n1.jpg\t{q2}\tNo\n")
    (ans / "count.txt").write_text(f"1.txt\t{q2}\tNo\tNo\n1.txt\t{q1}\tYes\tYes\n")
    res = _score(capsys, "--ground-truth", str(gt), "--answers", str(ans))
    assert res["subtasks"]["count"] == {"acc": 100.0, "acc_plus": 100.0, "score": 200.0, "n": 2}
