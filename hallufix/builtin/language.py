"""The shapes world's language: question templates with their answers, and the word-level tokenizer.

Prompt format (the processor's chat template)::

    USER: <image>
    QUESTION ASSISTANT: ANSWER</s>USER: QUESTION ASSISTANT: ANSWER</s>...

Training puts several turns about one image into a sequence; evaluation asks one question per prompt.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from hallufix.builtin.world import CLASSES, COLOURS, NUMBERS, PARTNERS, RGB, Scene, caption, vocabulary

COLOUR_NAMES = tuple(sorted(RGB))

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %} "
    "{% else %}ASSISTANT: {% for c in m['content'] %}{{ c['text'] }}{% endfor %}</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@dataclass(frozen=True)
class QA:
    """A question, its answer, and its kind (``exist``, ``caption``, ``colour``, ``count``, ``position``)."""

    question: str
    answer: str
    kind: str


def exist_question(cls: str) -> str:
    return f"is there a {cls} in the image ?"


def caption_question() -> str:
    return "describe the image ."


def colour_question(cls: str, colour: str) -> str:
    return f"is the {cls} {colour} ?"


def count_question(k: int) -> str:
    return f"are there {NUMBERS[k]} objects in the image ?"


def position_question(cls: str, side: str) -> str:
    return f"is the {cls} on the {side} side of the image ?"


def colour_twins(scene: Scene) -> list[str]:
    """Absent classes that have the colour of a present object (``cross`` when a red ``circle`` is present)."""
    colours = {o.colour for o in scene.objects}
    return [c for c in CLASSES if c not in scene.classes and COLOURS[c] in colours]


def training_turns(scene: Scene, rng: random.Random, n: int = 6, twin_negatives: float = 0.0) -> list[QA]:
    """``n`` questions about one scene: balanced existence questions, one caption, and colour / count / position
    questions.

    Existence negatives are drawn uniformly from the absent classes (the hallucination pressure comes from the scene
    statistics, not from the question sampler), except that with probability ``twin_negatives`` a negative asks
    about an absent colour twin of a present object instead (when there is one): hard negatives that a model
    answering from colour alone gets wrong. At 0 no extra random number is drawn, so the stream is unchanged."""
    present = sorted(scene.classes)
    absent = [c for c in CLASSES if c not in scene.classes]
    twins = colour_twins(scene) if twin_negatives else []
    out: list[QA] = []
    for _ in range(n):
        r = rng.random()
        if r < 0.5:
            if rng.random() < 0.5:
                out.append(QA(exist_question(rng.choice(present)), "yes", "exist"))
            elif twins and rng.random() < twin_negatives:
                out.append(QA(exist_question(rng.choice(twins)), "no", "exist"))
            else:
                out.append(QA(exist_question(rng.choice(absent)), "no", "exist"))
        elif r < 0.65:
            out.append(QA(caption_question(), caption(scene), "caption"))
        elif r < 0.77:
            c = rng.choice(present)
            if rng.random() < 0.5:
                out.append(QA(f"what colour is the {c} ?", scene.get(c).colour, "colour"))
            else:
                colour = scene.get(c).colour if rng.random() < 0.5 else rng.choice(
                    [x for x in COLOUR_NAMES if x != scene.get(c).colour])
                out.append(QA(colour_question(c, colour), "yes" if colour == scene.get(c).colour else "no",
                              "colour"))
        elif r < 0.88:
            n = len(scene.objects)
            if rng.random() < 0.5:
                out.append(QA("how many objects are there ?", NUMBERS[n], "count"))
            else:
                k = n if rng.random() < 0.5 else rng.choice([x for x in range(1, 5) if x != n])
                out.append(QA(count_question(k), "yes" if k == n else "no", "count"))
        else:
            o = scene.get(rng.choice(present))
            side = rng.choice(("left", "right"))
            out.append(QA(position_question(o.cls, side), "yes" if o.side == side else "no", "position"))
    return out


def build_tokenizer():
    """Word-level tokenizer over :func:`~hallufix.builtin.world.vocabulary` (whitespace / punctuation split),
    BOS prepended, ``<image>`` a special token, left padding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + [w for w in vocabulary() if w not in SPECIALS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", image_token="<image>", padding_side="left")
    fast.padding_side = "left"
    return fast


def partner_of(cls: str) -> str | None:
    return PARTNERS.get(cls)
