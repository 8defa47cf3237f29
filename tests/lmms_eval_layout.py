"""Sample-log lines in lmms-eval 0.7's layout (``EvaluationTracker.save_results_samples`` after
``evaluator.evaluate``), for tests: the writer's steps redone on a doc, its target, one response and the task's
``process_results`` output. Key order as written: doc_id, target, filtered_resps, token_counts, doc_hash, the
metric records, input; ``resps`` only when it differs from ``filtered_resps``; ``doc`` and ``arguments`` dropped."""
from __future__ import annotations

import hashlib
import json

SUFFIX = "\nAnswer the question using a single word or phrase."


def line(doc_id: int, doc: dict, target, prompt: str, response: str, metrics: dict, raw: str | None = None) -> str:
    # resps: the raw output (before reasoning tags were stripped) where it differs, else the request's output list
    example = {"doc_id": doc_id, "doc": doc, "target": target, "arguments": [prompt, {"max_new_tokens": 16}],
               "resps": [raw] if raw is not None else [[response]], "filtered_resps": [response],
               "token_counts": [None],
               "doc_hash": hashlib.sha256(json.dumps(doc, indent=2, ensure_ascii=False).encode("utf-8")).hexdigest()}
    example.update(metrics)
    example["input"] = example["arguments"][0]
    sanitize = (lambda x: [sanitize(i) for i in x] if isinstance(x, list) else str(x))  # noqa: E731
    example["resps"], example["filtered_resps"] = sanitize(example["resps"])[0], sanitize(example["filtered_resps"])[0]
    if example["resps"] == example["filtered_resps"] or example["resps"] == [example["filtered_resps"]]:
        example.pop("resps")
    example["target"] = str(example["target"])
    example.pop("arguments")
    example.pop("doc")
    return json.dumps(example, ensure_ascii=False) + "\n"


def pope(doc_id: int, question_id: str, question: str, answer: str, category: str, response: str) -> str:
    doc = {"question_id": question_id, "question": question, "answer": answer, "image_source": "", "category": category}
    pred, gt = response.lower().strip(), answer.lower().strip()
    rec = {"question_id": question_id, "score": 1.0 if pred == gt else 0.0, "prediction": pred, "ground_truth": gt}
    metrics = {k: dict(rec) for k in ("pope_accuracy", "pope_precision", "pope_recall", "pope_f1_score",
                                      "pope_yes_ratio")}
    return line(doc_id, doc, answer, question.strip() + SUFFIX, response, metrics)


def mme(doc_id: int, question_id: str, question: str, answer: str, category: str, response: str,
        score: float, raw: str | None = None) -> str:
    doc = {"question_id": question_id, "question": question, "answer": answer, "category": category}
    perception = category not in ("commonsense_reasoning", "numerical_calculation", "text_translation",
                                  "code_reasoning")
    key = "mme_perception_score" if perception else "mme_cognition_score"
    prompt = question.strip().replace(" Please answer yes or no.", "") + SUFFIX
    return line(doc_id, doc, answer, prompt, response, {key: {"question_id": question_id, "category": category,
                                                              "score": score}}, raw)


def chair(doc_id: int, image_id: int, gt_objects: list[str], caption: str, node_words: list[str]) -> str:
    doc = {"question_id": str(image_id), "gt_object": gt_objects}
    rec = {"answer": gt_objects, "pred": node_words, "image_id": image_id}
    return line(doc_id, doc, gt_objects, "Please describe this image in detail.", caption,
                {f"coco_cap_{m}": dict(rec) for m in ("chair_s", "chair_i", "recall")})
