"""RePOPE, POPE variants, AMBER, HallusionBench and MMHal-Bench tasks end to end on the built-in model: small files
in each benchmark's official layout, generated images saved under the file names the questions expect
(``task.image_root=DIR``), ``hallufix run ... --plugins clva`` against the baseline, then the run record."""
from __future__ import annotations

import json
import re
import sys

import pytest

from hallufix.cli import main
from hallufix.report import compare_to_baseline
from hallufix.testing.models import tiny_images


def save_images(folder, names, size=56):
    for i, (name, img) in enumerate(zip(names, tiny_images(len(names), size=size, seed=3))):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path)


def run(tmp_path, capsys, task, *extra, limit=None):
    out = tmp_path / "runs"
    args = ["run", "--task", task, "--plugins", "clva", "--output", str(out), "--quiet", *extra]
    if limit:
        args += ["--limit", str(limit)]
    assert main(args) == 0, capsys.readouterr().err
    capsys.readouterr()
    # cells by their stack: fixed task options add a short hash to the directory name (clva-h1a2b3c)
    dirs = {re.sub(r"-h[0-9a-f]{6}$", "", d.name): d for d in out.iterdir()}
    return {name: json.loads((d / "results.json").read_text()) for name, d in dirs.items()}, dirs


def directions(res):
    undeclared = [m for split in res["metrics"].values() for m, v in split.items() if v.get("undeclared")]
    assert not undeclared, f"{res['task']['name']} scores metrics it does not declare: {undeclared}"
    return {m: v["higher_is_better"] for split in res["metrics"].values() for m, v in split.items()}


def test_repope_task_scores_both_label_sets(tmp_path, capsys):
    pope, rep, img = tmp_path / "pope", tmp_path / "repope", tmp_path / "val2014"
    pope.mkdir(), rep.mkdir()
    images = [f"COCO_val2014_00000000000{i}.jpg" for i in range(3)]
    qs = [{"question_id": i + 1, "image": images[i // 2], "text": f"Is there a {obj} in the image?",
           "label": lab} for i, (obj, lab) in enumerate([("dog", "yes"), ("cat", "no"), ("car", "yes"),
                                                         ("bus", "no"), ("tree", "yes"), ("kite", "no")])]
    (pope / "coco_pope_random.json").write_text("".join(json.dumps(q) + "\n" for q in qs))
    relabel = [dict(q, label="no") if q["question_id"] == 1 else q for q in qs if q["question_id"] != 4]
    (rep / "coco_repope_random.json").write_text("".join(json.dumps(q) + "\n" for q in relabel))
    save_images(img, images)
    results, out = run(tmp_path, capsys, f"repope:{pope}", f"task.repope_labels={rep}", f"task.image_root={img}")
    base = results["baseline"]
    assert base["metrics"]["random"]["n"]["value"] == 6 and base["metrics"]["repope-random"]["n"]["value"] == 5
    assert base["task"]["repope_labels"] == str(rep) and base["task"]["pope_files"]["dataset"] == "coco"
    assert directions(base)["repope_mean_f1"] is True and directions(base)["yes_ratio"] is None
    cmp = compare_to_baseline([out["baseline"], out["clva"]])
    acc = cmp[(cmp.metric == "accuracy") & (cmp.split == "repope-random")].iloc[0]
    assert acc.n_paired == 5  # paired on RePOPE's labels, the dropped question left out


def test_pope_variants_are_recorded(tmp_path, capsys):
    d, img = tmp_path / "gqa", tmp_path / "images"
    d.mkdir()
    qs = [{"question_id": i, "image": f"{2405722 + i // 2}.jpg", "text": f"Is there a {o} in the image?",
           "label": "yes" if i % 2 else "no"} for i, o in enumerate(["bird", "wall", "tree", "cat"])]
    (d / "gqa_pope_seem_popular.json").write_text(json.dumps(qs, indent=4))
    save_images(img, sorted({q["image"] for q in qs}))
    results, _ = run(tmp_path, capsys, f"pope:{d}", f"task.image_root={img}")
    rec = results["baseline"]["task"]["pope_files"]
    assert rec["dataset"] == "gqa" and rec["version"] == "unknown" and "popular" in rec["files"]
    assert len(rec["files"]["popular"]["sha256"]) == 64


AMBER_ANN = [{"id": 1, "type": "generative", "truth": ["dog"], "hallu": ["cat"]},
             {"id": 2, "type": "discriminative-hallucination", "truth": "no"},
             {"id": 3, "type": "discriminative-attribute-state", "truth": "yes"},
             {"id": 4, "type": "discriminative-attribute-number", "truth": "no"},
             {"id": 5, "type": "discriminative-relation", "truth": "yes"},
             {"id": 6, "type": "relation", "truth": "no"}]


@pytest.fixture
def amber_data(tmp_path):
    d = tmp_path / "AMBER" / "data"
    (d / "query").mkdir(parents=True)
    (d / "annotations.json").write_text(json.dumps(AMBER_ANN))
    queries = [{"id": 1, "image": "AMBER_1.jpg", "query": "Describe this image."},
               {"id": 2, "image": "AMBER_1.jpg", "query": "Is there a cat in this image?"},
               {"id": 3, "image": "AMBER_1.jpg", "query": "Is the dog sleeping in this image?"},
               {"id": 4, "image": "AMBER_2.jpg", "query": "Are there two dogs in this image?"},
               {"id": 5, "image": "AMBER_2.jpg", "query": "Is the dog on the grass in this image?"},
               {"id": 6, "image": "AMBER_2.jpg", "query": "Is the dog holding the ball in this image?"}]
    (d / "query" / "query_all.json").write_text(json.dumps(queries))
    (d / "query" / "query_discriminative.json").write_text(json.dumps(queries[1:]))
    (d / "query" / "query_generative.json").write_text(json.dumps(queries[:1]))
    (d / "relation.json").write_text(json.dumps({"dog": ["puppy"], "cat": ["kitten"]}))
    (d / "safe_words.txt").write_text("sign\n")
    save_images(tmp_path / "AMBER" / "image", ["AMBER_1.jpg", "AMBER_2.jpg"])
    return d


def test_amber_disc_task(amber_data, tmp_path, capsys):
    results, out = run(tmp_path, capsys, f"amber-disc:{amber_data}", f"task.image_root={amber_data.parent / 'image'}")
    base = results["baseline"]
    assert set(base["metrics"]) == {"existence", "attribute", "state", "number", "relation", "overall"}
    assert base["metrics"]["overall"]["n"]["value"] == 5 and directions(base)["f1"] is True
    assert base["task"]["response_rule"] == "first-word"
    cmp = compare_to_baseline([out["baseline"], out["clva"]])
    assert cmp[(cmp.metric == "accuracy") & (cmp.split == "overall")].iloc[0].n_paired == 5
    # the run's responses as the official inference file, scored by hallufix score amber: the same numbers
    written = tmp_path / "responses.json"
    assert main(["score", "amber", "--run", str(out["baseline"]), "--data", str(amber_data), "--write",
                 str(written), "--evaluation-type", "d", "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in json.loads(written.read_text())] == [2, 3, 4, 5, 6]
    assert scored["overall"] == {k: v["value"] for k, v in base["metrics"]["overall"].items()}


def test_amber_all_task_reports_the_amber_score(amber_data, tmp_path, capsys):
    results, _ = run(tmp_path, capsys, f"amber:{amber_data}", f"task.image_root={amber_data.parent / 'image'}",
                     "--max-new-tokens", "6", "--no-baseline")
    res = results["clva"]
    gen, overall = res["metrics"]["generative"], res["metrics"]["overall"]
    assert res["metrics"]["all"]["amber_score"]["value"] == pytest.approx(
        (100 - gen["chair"]["value"] + overall["f1"]["value"]) / 2)
    assert directions(res)["chair"] is False and directions(res)["cover"] is True and directions(res)["hal"] is False
    assert res["task"]["similarity"]  # says which similarity step ran (or that it was skipped)


def test_hallusionbench_task(tmp_path, capsys):
    rows = [{"category": "VS", "subcategory": "chart", "visual_input": "0", "set_id": "0", "figure_id": "0",
             "sample_note": "gold", "question_id": "0", "question": "Is gold heavier than silver?",
             "gt_answer_details": "", "gt_answer": "1", "filename": None},
            {"category": "VS", "subcategory": "chart", "visual_input": "1", "set_id": "0", "figure_id": "1",
             "sample_note": "gold", "question_id": "0", "question": "According to the chart, is gold heavier?",
             "gt_answer_details": "", "gt_answer": "1", "filename": "./VS/chart/0_1.png"},
            {"category": "VD", "subcategory": "illusion", "visual_input": "2", "set_id": "0", "figure_id": "1",
             "sample_note": "circle", "question_id": "0", "question": "Are the circles the same size?",
             "gt_answer_details": "", "gt_answer": "0", "filename": "./VD/illusion/0_1.png"}]
    f = tmp_path / "HallusionBench.json"
    f.write_text(json.dumps(rows, indent=4))
    save_images(tmp_path / "hallusion_bench", ["VS/chart/0_1.png", "VD/illusion/0_1.png"])
    results, out = run(tmp_path, capsys, f"hallusionbench:{f}", f"task.image_root={tmp_path / 'hallusion_bench'}")
    base = results["baseline"]["metrics"]["all"]
    assert base["n"]["value"] == 3 and base["qAcc"]["higher_is_better"] is True
    assert results["baseline"]["task"]["no_image"] == "blank"
    cmp = compare_to_baseline([out["baseline"], out["clva"]])
    assert cmp[cmp.metric == "accuracy"].iloc[0].n_paired == 3
    # the run in the official result layout, for a judge; scored again by the yes/no path: the same numbers
    written = tmp_path / "results.json"
    assert main(["score", "hallusionbench", "--run", str(out["baseline"]), "--write", str(written), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert {k: scored[k] for k in ("aAcc", "fAcc", "qAcc")} == {k: base[k]["value"] for k in ("aAcc", "fAcc", "qAcc")}
    layout = json.loads(written.read_text())
    assert {"category", "figure_id", "question", "gt_answer", "model_prediction"} <= set(layout[0])


def test_mmhal_task_writes_the_response_file_and_judges(tmp_path, capsys):
    template = [{"question_type": t, "question_topic": "animal", "image_id": f"id{i}",
                 "image_src": f"https://farm1.staticflickr.com/1/{i}_abc_o.jpg", "image_content": ["dog", "ball"],
                 "question": "What is the dog doing?", "gt_answer": "Playing.", "model_answer": ""}
                for i, t in enumerate(["attribute", "adversarial", "comparison"])]
    tf = tmp_path / "response_template.json"
    tf.write_text(json.dumps(template, indent=2))
    save_images(tmp_path / "images", [f"{i}_abc_o.jpg" for i in range(3)])
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Contents: {}\nQ: {}\nHuman: {}\nModel: {}\nRate it.")
    script = tmp_path / "judge.py"  # a stand-in judge: reads the prompt on stdin, prints a reply with a rating
    script.write_text("import sys\nprompt = sys.stdin.read()\nok = 'Contents: dog, ball' in prompt and "
                      "'Q: What is the dog doing?' in prompt and 'Human: Playing.' in prompt\n"
                      "print('Informative. Rating: 4' if ok else 'Rating: 1')\n")
    judge = f"{sys.executable} {script}"
    results, out = run(tmp_path, capsys, f"mmhal:{tf}", f"task.image_root={tmp_path / 'images'}",
                       "--max-new-tokens", "4", f"task.judge={judge}", "task.judge_name=fake-judge",
                       f"task.prompt_template={prompt}")
    res = results["baseline"]
    assert res["metrics"]["all"]["average_score"]["value"] == 4.0
    assert res["metrics"]["all"]["hallucination_rate"]["higher_is_better"] is False
    assert res["task"]["judge"]["name"] == "fake-judge" and res["task"]["judge"]["prompt_template"].startswith(
        "Contents")
    written = tmp_path / "response_mymodel.json"
    assert main(["score", "mmhal", "--run", str(out["baseline"]), "--template", str(tf), "--write",
                 str(written)]) == 0
    rows = json.loads(written.read_text())
    assert [r["image_id"] for r in rows] == ["id0", "id1", "id2"] and all(isinstance(r["model_answer"], str)
                                                                           for r in rows)
    capsys.readouterr()
    assert main(["score", "mmhal", "--responses", str(written), "--judge", judge, "--judge-name", "fake-judge",
                 "--prompt-template", str(prompt), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["average_score"] == 4.0 and got["hallucination_rate"] == 0.0 and got["judge"]["name"] == "fake-judge"
