"""Issue 13's acceptance, end to end through ``hallufix run``: a tiny model of each family at the real 7B depth
and head / KV-head counts, saved like a checkpoint, on a ``jsonl:`` task of 8 images of 4 sizes and 4 PIL modes,
gives the same answers at ``--batch-size 4`` as at ``--batch-size 1`` for the four-method stack and for every
method alone (family presets, float32)."""
from __future__ import annotations

import json

import pytest

from hallufix.cli import main
from hallufix.testing.models import MIXED_MODES, MIXED_SIZES, device_for_tests, tiny_images

FAMILIES = ("qwen2.5-vl", "qwen2-vl", "llava", "instructblip")
STACKS = ("clva,ara,contrast,fhi", "clva", "ara", "contrast", "fhi")
QUESTIONS = ("is there a cat in the image ?", "is there a dog ?", "is there a red car on the left side ?",
             "is there a person ?")


@pytest.fixture(scope="module")
def task_file(tmp_path_factory):
    """8 images (each of the 4 sizes and modes twice, as PNG files keep them) and yes/no questions of 4 lengths,
    so every batch of 4 is left padded and holds 4 visual-token counts on Qwen."""
    d = tmp_path_factory.mktemp("mixed_task")
    lines = []
    for i, img in enumerate(tiny_images(8, mixed=True, seed=3)):
        assert img.size == MIXED_SIZES[i % 4] and img.mode == MIXED_MODES[i % 4]
        p = d / f"img{i}.png"
        img.save(p)
        lines.append(json.dumps({"id": f"q{i}", "image": p.name, "question": QUESTIONS[(i + i // 4) % 4],
                                 "answer": "yes" if i % 3 else "no"}))
    f = d / "questions.jsonl"
    f.write_text("\n".join(lines) + "\n")
    return f


_FOLDERS: dict = {}


@pytest.fixture
def real_folder(family, tmp_path_factory):
    """``save_tiny(family, shape="real")`` once per family (module-cached folder)."""
    from hallufix.models.tiny import save_tiny

    if family not in _FOLDERS:
        _FOLDERS[family] = save_tiny(family, tmp_path_factory.mktemp(f"real_{family.replace('.', '_')}"),
                                     shape="real")
    return _FOLDERS[family]


def _answers(folder, task, stack, batch_size, out):
    args = ["run", "--model", str(folder), "--task", f"jsonl:{task}", "--plugins", stack, "--batch-size",
            str(batch_size), "--max-new-tokens", "3", "--no-baseline", "--device", device_for_tests(), "--output", str(out), "--quiet"]
    assert main(args) == 0, f"hallufix {' '.join(args)} failed"
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    records = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    results = json.loads((run_dir / "results.json").read_text())
    return {r["id"]: r["output"] for r in records}, results


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("family", FAMILIES)
def test_batch_of_mixed_sizes_answers_as_one_at_a_time(family, stack, real_folder, task_file, tmp_path, capsys):
    batched, results = _answers(real_folder, task_file, stack, 4, tmp_path / "b4")
    single, _ = _answers(real_folder, task_file, stack, 1, tmp_path / "b1")
    capsys.readouterr()
    assert results["task"]["n"] == 8 and [m["name"] for m in results["methods"]] == stack.split(",")
    assert len(batched) == 8 and batched.keys() == single.keys()
    assert sum(bool(a.strip()) for a in single.values()) >= 4, f"mostly empty answers, nothing compared: {single}"
    differ = {k: (batched[k], single[k]) for k in batched if batched[k] != single[k]}
    assert not differ, f"{stack} on real-depth {family}: batch 4 != batch 1 for {differ}"


def test_saved_real_model_has_the_real_shape(tmp_path):
    from hallufix.api import Session
    from hallufix.testing.real import REAL_MODEL_INFO

    from hallufix.models.tiny import save_tiny

    folder = save_tiny("qwen2.5-vl", tmp_path / "q", shape="real")
    info, real = Session.load(str(folder)).info, REAL_MODEL_INFO["qwen2.5-vl"]
    assert (info.family, info.num_layers, info.num_heads, info.num_kv_heads) == \
        (real.family, real.num_layers, real.num_heads, real.num_kv_heads)
