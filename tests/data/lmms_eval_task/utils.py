"""The hallufix_shapes lmms-eval task's functions: a row's image from its scene seed, its question as written."""
import random

from hallufix.builtin.world import render, sample_scene


def doc_to_visual(doc):
    return [render(sample_scene(random.Random(doc["scene_seed"]))).convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def process_results(doc, results):
    return {"exact_match": float(results[0].strip().lower() == doc["answer"].strip().lower())}
