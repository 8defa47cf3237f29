"""The training script: the prompt format it trains on is the processor's chat template, it smoke-runs into a tmp
dir through its CLI, the result reloads through the Auto classes, and it is deterministic under its seed."""
from __future__ import annotations

import json
import random

import torch

from hallufix.builtin.language import QA, exist_question
from hallufix.builtin.model import N_VISUAL, build_processor
from hallufix.builtin.train import encode_turns, main, train
from hallufix.builtin.world import render, sample_scene


def test_chat_template_is_the_training_format():
    processor = build_processor()
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "is there a star in the image ?"}]}],
        add_generation_prompt=True, tokenize=False)
    assert text == "USER: <image>\nis there a star in the image ? ASSISTANT:"
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids("<image>")
    ids, labels = encode_turns(tok, [QA(exist_question("star"), "yes", "exist")], image_id)
    inputs = processor(images=[render(sample_scene(random.Random(0)))], text=[text], return_tensors="pt")
    prompt_ids = inputs["input_ids"][0].tolist()
    assert prompt_ids == ids[:len(prompt_ids)] and prompt_ids.count(image_id) == N_VISUAL
    answer = [i for i, lab in zip(ids, labels) if lab != -100]
    assert tok.decode(answer) == "yes </s>" and answer[-1] == tok.eos_token_id


def test_cli_smoke_run_writes_a_loadable_folder(tmp_path):
    out = tmp_path / "m"
    assert main(["--steps", "2", "--seed", "1", "--output", str(out), "--threads", "1", "--batch", "2",
                 "--save-every", "0", "--eval-every", "0", "--quiet"]) == 0
    rec = json.loads((out / "training.json").read_text())
    assert rec["completed_steps"] == rec["steps"] == 2 and rec["seed"] == 1 and "--steps 2" in rec["command"]
    assert (out / "train.log").read_text().startswith("step 1 loss")
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(out)
    model = AutoModelForImageTextToText.from_pretrained(out)
    assert type(processor).__name__ == "LlavaProcessor" and model.config.text_config.num_hidden_layers >= 8
    assert processor.tokenizer.padding_side == "left"


def test_three_step_runs_are_deterministic(tmp_path):
    threads = torch.get_num_threads()
    kw = dict(seed=3, threads=1, batch=4, turns=2, log_every=1, save_every=0, eval_every=0, progress=False)
    try:
        a = train(3, output=tmp_path / "a", **kw)
        b = train(3, output=tmp_path / "b", **kw)
        c = train(3, output=tmp_path / "c", **{**kw, "seed": 4})
    finally:
        torch.set_num_threads(threads)
    assert a["losses"] == b["losses"] and len(a["losses"]) == 3
    assert a["losses"] != c["losses"]
