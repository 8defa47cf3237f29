"""Train the built-in model from scratch on the shapes world (CPU, deterministic, fixed number of steps).

    python -m hallufix.builtin.train                       # the shipped schedule (writes hallufix/builtin/shapes_llava)
    python -m hallufix.builtin.train --steps 20 --output /tmp/smoke

Each step: ``batch`` freshly generated scenes (a seeded stream disjoint from the evaluation sets), each a sequence
of ``turns`` question/answer turns about its image; loss on answer tokens (and their ``</s>``) only. AdamW
(betas 0.9/0.98, weight decay 0.05 on matrices), linear warm-up then cosine decay to 10% of the peak, gradient
clipping at 1.0. A log line every ``log_every`` steps and a checkpoint every ``save_every`` steps; the final folder
is a standard ``save_pretrained`` layout plus ``training.json`` (command, commit, seed, steps, wall time, metrics).
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch

from hallufix.builtin.language import QA, exist_question, training_turns
from hallufix.builtin.model import N_VISUAL, build_model, build_processor
from hallufix.builtin.world import CLASSES, render, sample_scene

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "shapes_llava"
TRAIN_SEED_OFFSET = 1_000_000  # training scenes come from seeds >= this; evaluation sets use small seeds


def encode_turns(tok, turns: list[QA], image_token_id: int) -> tuple[list[int], list[int]]:
    """Token ids and labels of ``USER: <image>xN q1 ASSISTANT: a1 </s> USER: q2 ASSISTANT: a2 </s> ...``.

    Identical to what the processor produces for the chat template (the word-level tokenizer is compositional);
    labels are ``-100`` except on answers and their ``</s>``."""
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    user, assistant = enc("USER:"), enc("ASSISTANT:")
    ids, labels = [tok.bos_token_id], [-100]
    for k, qa in enumerate(turns):
        prompt = user + ([image_token_id] * N_VISUAL if k == 0 else []) + enc(qa.question) + assistant
        answer = enc(qa.answer) + [tok.eos_token_id]
        ids += prompt + answer
        labels += [-100] * len(prompt) + answer
    return ids, labels


def make_batch(tok, image_processor, rng: random.Random, size: int, turns: int, image_token_id: int,
               twin_negatives: float = 0.0) -> dict:
    """A right-padded training batch of ``size`` scenes (``twin_negatives``: see ``training_turns``)."""
    seqs, images = [], []
    for _ in range(size):
        scene = sample_scene(random.Random(TRAIN_SEED_OFFSET + rng.randrange(10**9)))
        images.append(render(scene))
        seqs.append(encode_turns(tok, training_turns(scene, rng, turns, twin_negatives), image_token_id))
    L = max(len(s[0]) for s in seqs)
    input_ids = torch.full((size, L), tok.pad_token_id, dtype=torch.long)
    labels = torch.full((size, L), -100, dtype=torch.long)
    mask = torch.zeros((size, L), dtype=torch.long)
    for i, (ids, lab) in enumerate(seqs):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
    pixel_values = image_processor(images, return_tensors="pt")["pixel_values"]
    return {"input_ids": input_ids, "attention_mask": mask, "pixel_values": pixel_values, "labels": labels}


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def quick_existence_accuracy(model, processor, n: int = 200, seed: int = 7) -> float:
    """Greedy first-token yes/no accuracy on ``n`` balanced existence questions (seeded, disjoint from training)."""
    rng = random.Random(seed)
    images, questions, answers = [], [], []
    for i in range(n):
        scene = sample_scene(random.Random(seed * 100_000 + i))
        present = sorted(scene.classes)
        absent = [c for c in CLASSES if c not in scene.classes]
        yes = i % 2 == 0
        cls = rng.choice(present if yes else absent)
        images.append(render(scene))
        questions.append(exist_question(cls))
        answers.append("yes" if yes else "no")
    tok = processor.tokenizer
    yes_id, no_id = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    model.eval()
    right = 0
    for k in range(0, n, 50):
        prompts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                              {"type": "text", "text": q}]}],
                                                 add_generation_prompt=True, tokenize=False)
                   for q in questions[k:k + 50]]
        inputs = processor(images=images[k:k + 50], text=prompts, padding=True, return_tensors="pt")
        logits = model(**inputs).logits[:, -1]
        pred = ["yes" if a > b else "no" for a, b in zip(logits[:, yes_id].tolist(), logits[:, no_id].tolist())]
        right += sum(p == a for p, a in zip(pred, answers[k:k + 50]))
    model.train()
    return right / n


def save(model, processor, out: Path, record: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")


def git_commit() -> str | None:
    from hallufix.runs import git_hash

    return git_hash()[0]


def train(steps: int, seed: int, output: Path, threads: int, batch: int = 32, turns: int = 6, peak_lr: float = 2e-3,
          warmup: int = 200, log_every: int = 50, save_every: int = 500, eval_every: int = 500,
          progress: bool = True, command: str = "", init: Path | None = None, twin_negatives: float = 0.25) -> dict:
    """Run the schedule; returns the training record (also written to ``output/training.json``).

    ``init``: a folder written by an earlier run to continue from (a second stage with its own seed, steps and
    schedule); its ``training.json`` is kept under ``"previous"`` in the new record."""
    from tqdm import tqdm

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    random.seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    processor = build_processor()
    tok = processor.tokenizer
    if init is not None:
        from transformers import LlavaForConditionalGeneration

        model = LlavaForConditionalGeneration.from_pretrained(init, attn_implementation="sdpa")
    else:
        model = build_model(tok, seed=seed)
    model.train()
    image_token_id = model.config.image_token_id
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=peak_lr, betas=(0.9, 0.98))
    rng = random.Random(seed)
    output.mkdir(parents=True, exist_ok=True)
    log = (output / "train.log").open("a")
    record = {"command": command, "git_commit": git_commit(), "seed": seed, "steps": steps, "batch": batch,
              "turns": turns, "peak_lr": peak_lr, "warmup": warmup, "twin_negatives": twin_negatives,
              "threads": threads, "params": sum(p.numel() for p in model.parameters()),
              "losses": [], "quick_existence_accuracy": []}
    if init is not None:
        record["init"] = str(init)
        previous = Path(init) / "training.json"
        record["previous"] = json.loads(previous.read_text()) if previous.is_file() else None
    t0 = time.time()
    bar = tqdm(range(steps), desc="training", disable=not progress)
    running = None
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, peak_lr, warmup)
        data = make_batch(tok, processor.image_processor, rng, batch, turns, image_token_id, twin_negatives)
        loss = model(**data).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        bar.set_postfix(loss=f"{running:.3f}")
        if (step + 1) % log_every == 0 or step == 0:
            line = f"step {step + 1} loss {loss.item():.4f} avg {running:.4f} lr {opt.param_groups[0]['lr']:.2e} " \
                   f"elapsed {time.time() - t0:.0f}s"
            log.write(line + "\n")
            log.flush()
            record["losses"].append([step + 1, round(loss.item(), 5)])
        if eval_every and (step + 1) % eval_every == 0:
            acc = quick_existence_accuracy(model, processor)
            record["quick_existence_accuracy"].append([step + 1, acc])
            log.write(f"step {step + 1} quick existence accuracy {acc:.3f}\n")
            log.flush()
        if save_every and (step + 1) % save_every == 0 and step + 1 < steps:
            record["wall_s"] = round(time.time() - t0, 1)
            record["completed_steps"] = step + 1
            save(model, processor, output / "checkpoint", record)
    record["wall_s"] = round(time.time() - t0, 1)
    record["completed_steps"] = steps
    model.eval()
    save(model, processor, output, record)
    log.close()
    return record


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Train the built-in shapes-world LLaVA (CPU, deterministic).")
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--save-every", type=int, default=500)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--peak-lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--init", type=Path, default=None, help="continue from this folder (a later stage)")
    ap.add_argument("--twin-negatives", type=float, default=0.25,
                    help="share of existence negatives asking about an absent colour twin of a present object")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    command = "python -m hallufix.builtin.train " + " ".join(argv if argv is not None else sys.argv[1:])
    rec = train(args.steps, args.seed, args.output, args.threads, batch=args.batch, peak_lr=args.peak_lr,
                warmup=args.warmup, save_every=args.save_every, eval_every=args.eval_every,
                progress=not args.quiet, command=command.strip(), init=args.init,
                twin_negatives=args.twin_negatives)
    print(json.dumps({k: v for k, v in rec.items() if k not in ("losses", "previous")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
