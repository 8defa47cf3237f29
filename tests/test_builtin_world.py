"""The shapes world: deterministic under its seed, well-formed scenes, and the statistics that create hallucination
pressure (popular classes, partner co-occurrence, popular classes paired with rare partners)."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from hallufix.builtin.world import (CLASSES, COLOURS, IMAGE_SIZE, MAX_OBJECTS, MAX_SIZE, MIN_SIZE, PARTNERS, RANKING,
                                    caption, render, sample_scene, vocabulary)


@pytest.fixture(scope="module")
def scenes():
    rng = random.Random(123)
    return [sample_scene(rng) for _ in range(4000)]


def test_scenes_and_pixels_are_deterministic_under_the_seed():
    a = [sample_scene(random.Random(i)) for i in range(5)]
    b = [sample_scene(random.Random(i)) for i in range(5)]
    assert a == b
    assert all(render(x).tobytes() == render(y).tobytes() for x, y in zip(a, b))
    assert len({s for s in a}) > 1  # different seeds give different scenes


def test_scenes_are_well_formed(scenes):
    for s in scenes[:500]:
        assert 1 <= len(s.objects) <= MAX_OBJECTS
        assert len(s.classes) == len(s.objects)  # each class at most once
        for o in s.objects:
            x0, y0, x1, y1 = o.box
            assert 0 <= x0 < x1 <= IMAGE_SIZE and 0 <= y0 < y1 <= IMAGE_SIZE and MIN_SIZE <= x1 - x0 <= MAX_SIZE
            assert o.colour == COLOURS[o.cls]
    img = render(scenes[0])
    assert img.size == (IMAGE_SIZE, IMAGE_SIZE) and img.mode == "RGB"
    assert len(set(caption(scenes[0]).split()) & set(CLASSES)) == len(scenes[0].objects)


def test_class_list_and_shared_colours():
    assert 12 <= len(CLASSES) <= 16 and sorted(RANKING) == sorted(CLASSES)
    per_colour = Counter(COLOURS.values())
    assert sum(n == 2 for n in per_colour.values()) >= 3  # several colours name two classes
    # a partner is never a colour twin (a yes to an absent partner must come from co-occurrence, not colour), and the
    # two most popular classes have a colour of their own (else POPE's popular negatives would often be twins)
    assert all(COLOURS[c] != COLOURS[p] for c, p in PARTNERS.items())
    assert all(per_colour[COLOURS[c]] == 1 for c in RANKING[:2])


def test_popular_classes_follow_the_zipf_ranking(scenes):
    freq = Counter(c for s in scenes for c in s.classes)
    # the top class is over twice as frequent as any class of the lower half (which get frequency from partners)
    assert freq[RANKING[0]] > 2 * max(freq[c] for c in RANKING[len(RANKING) // 2:])
    assert set(c for c, _ in freq.most_common(2)) == {RANKING[0], RANKING[1]}


def test_partners_co_occur_most_of_the_time(scenes):
    n = len(scenes)
    freq = Counter(c for s in scenes for c in s.classes)
    assert len(PARTNERS) >= 6 and all(PARTNERS[PARTNERS[c]] == c for c in PARTNERS)
    for cls, partner in PARTNERS.items():
        with_cls = [s for s in scenes if cls in s.classes]
        together = sum(partner in s.classes for s in with_cls) / len(with_cls)
        lift = together / (freq[partner] / n)
        assert together > 0.6 and lift > 3.0, (cls, partner, together, lift)
        if RANKING.index(cls) > RANKING.index(partner):  # the rarer class of a pair nearly always has its partner
            assert together > 0.7, (cls, partner, together)


def test_popular_classes_have_rare_or_no_partners():
    top = RANKING[:2]
    assert all(c not in PARTNERS for c in top)
    for cls in RANKING[2:5]:  # the next most popular classes are paired with classes from the rare half
        assert RANKING.index(PARTNERS[cls]) >= len(RANKING) // 2, (cls, PARTNERS[cls])


def test_every_training_question_is_in_the_vocabulary():
    from hallufix.builtin.language import build_tokenizer, training_turns

    tok = build_tokenizer()
    assert set(CLASSES) <= set(vocabulary())
    rng = random.Random(1)
    for _ in range(200):
        scene = sample_scene(rng)
        for qa in training_turns(scene, rng, 6):
            for text in (qa.question, qa.answer):
                assert tok.unk_token_id not in tok(text, add_special_tokens=False)["input_ids"], text
