"""The synthetic shapes world: seeded scenes of 1-4 coloured shapes (12-22 px) on a tinted, noisy 64x64 background.

Object statistics create hallucination pressure like COCO's:

* **popular classes**: seed classes are drawn with Zipf-like popularity (exponent 0.8, over a fixed shuffled
  ranking, so list order is not popularity);
* **co-occurrence**: five symmetric partner pairs; each seed's partner joins the scene with probability 0.75.
  Pairs join a fairly popular class with a rare one (ranks 2-11, 3-10, 4-9, 5-8, 6-7); the two most popular
  classes have no partner. A partner inherits frequency from its class, so pairing the top classes would make
  their partners as frequent as they are; this way POPE's *popular* negatives (the most frequent absent classes)
  and *adversarial* negatives (absent partners of present classes) almost never coincide (0.1% of scenes).

Every class has one colour; three colours are shared by two classes each ("colour twins": red circle and red
cross, blue square and blue moon, green triangle and green bar), so colour alone does not name those classes. The
twins pair silhouettes that differ at 8-pixel patch resolution (a filled blob with a thin or hollow shape), and no
twin pair is a partner pair, so a "yes" to an absent partner is co-occurrence, not colour. (An earlier world shared
all six colours between pairs of similar blobs; its model said "yes" to 54% of absent colour twins, which hid the
co-occurrence effect: docs/builtin-model.md.) No torch here.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
CLASSES = ("circle", "square", "triangle", "star", "cross", "diamond", "ring", "hexagon", "bar", "moon", "heart",
           "arrow")
COLOURS = {"circle": "red", "cross": "red", "square": "blue", "moon": "blue", "triangle": "green", "bar": "green",
           "star": "yellow", "ring": "cyan", "heart": "purple", "hexagon": "orange", "diamond": "pink",
           "arrow": "brown"}
RGB = {"red": (215, 40, 40), "blue": (40, 70, 215), "green": (30, 160, 60), "yellow": (225, 200, 30),
       "purple": (140, 50, 170), "orange": (240, 130, 20), "pink": (240, 110, 190), "brown": (125, 75, 30),
       "cyan": (20, 180, 195)}
#: popularity ranking (0 = most popular); a fixed shuffle of CLASSES
RANKING = ("star", "ring", "cross", "square", "heart", "circle", "arrow", "moon", "diamond", "bar", "hexagon",
           "triangle")
ZIPF_EXPONENT = 0.8
PARTNER_PROB = 0.75
MAX_OBJECTS = 4
MIN_SIZE, MAX_SIZE = 12, 22
#: partner pairs by popularity rank (the top two classes are unpaired)
PAIR_RANKS = ((2, 11), (3, 10), (4, 9), (5, 8), (6, 7))
PARTNERS = {**{RANKING[a]: RANKING[b] for a, b in PAIR_RANKS}, **{RANKING[b]: RANKING[a] for a, b in PAIR_RANKS}}
NUMBERS = ("zero", "one", "two", "three", "four")


@dataclass(frozen=True)
class Obj:
    """One object: class, colour name, and bounding box ``(x0, y0, x1, y1)`` in pixels."""

    cls: str
    colour: str
    box: tuple[int, int, int, int]

    @property
    def centre(self) -> tuple[float, float]:
        return ((self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2)

    @property
    def side(self) -> str:
        """``left`` or ``right`` of the image centre."""
        return "left" if self.centre[0] < IMAGE_SIZE / 2 else "right"


@dataclass(frozen=True)
class Scene:
    """Objects (distinct classes), background tint and the seed for pixel noise."""

    objects: tuple[Obj, ...]
    tint: tuple[int, int, int]
    noise_seed: int

    @property
    def classes(self) -> set[str]:
        return {o.cls for o in self.objects}

    def get(self, cls: str) -> Obj | None:
        return next((o for o in self.objects if o.cls == cls), None)


def popularity() -> np.ndarray:
    """Seed-class probabilities, in ``CLASSES`` order."""
    w = np.array([1.0 / (RANKING.index(c) + 1) ** ZIPF_EXPONENT for c in CLASSES])
    return w / w.sum()


def sample_scene(rng: random.Random) -> Scene:
    """Draw 1-3 seed classes by popularity, add each seed's partner with probability ``PARTNER_PROB``, cap at 4,
    place them without overlap (size ``MIN_SIZE``-``MAX_SIZE`` px)."""
    probs = popularity()
    n_seeds = rng.choice((1, 1, 2, 2, 3))
    seeds: list[str] = []
    while len(seeds) < n_seeds:
        c = rng.choices(CLASSES, weights=probs)[0]
        if c not in seeds:
            seeds.append(c)
    classes = list(seeds)
    for c in seeds:
        partner = PARTNERS.get(c)
        if partner is not None and rng.random() < PARTNER_PROB and partner not in classes:
            classes.append(partner)
    classes = classes[:MAX_OBJECTS]
    objects: list[Obj] = []
    for c in classes:
        for _ in range(100):
            s = rng.randint(MIN_SIZE, MAX_SIZE)
            x0, y0 = rng.randint(1, IMAGE_SIZE - s - 1), rng.randint(1, IMAGE_SIZE - s - 1)
            box = (x0, y0, x0 + s, y0 + s)
            if all(_apart(box, o.box) for o in objects):
                objects.append(Obj(c, COLOURS[c], box))
                break
    tint = tuple(rng.randint(200, 250) for _ in range(3))
    return Scene(tuple(objects), tint, rng.randint(0, 2**31 - 1))


def _apart(a, b, gap: int = 2) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def render(scene: Scene) -> Image.Image:
    """The scene as a 64x64 RGB image with light pixel noise."""
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), scene.tint)
    d = ImageDraw.Draw(img)
    for o in scene.objects:
        _draw(d, o.cls, o.box, RGB[o.colour], scene.tint)
    arr = np.asarray(img, dtype=np.int16)
    noise = np.random.default_rng(scene.noise_seed).integers(-12, 13, size=arr.shape)
    return Image.fromarray(np.clip(arr + noise, 0, 255).astype(np.uint8))


def _draw(d: ImageDraw.ImageDraw, cls: str, box, fill, bg) -> None:
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    if cls == "circle":
        d.ellipse(box, fill=fill)
    elif cls == "square":
        d.rectangle(box, fill=fill)
    elif cls == "triangle":
        d.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    elif cls == "star":
        pts = []
        for k in range(10):
            a = np.pi / 2 + k * np.pi / 5
            rr = r if k % 2 == 0 else r * 0.45
            pts.append((cx + rr * np.cos(a), cy - rr * np.sin(a)))
        d.polygon(pts, fill=fill)
    elif cls == "cross":
        w = r * 0.35
        d.rectangle((cx - w, y0, cx + w, y1), fill=fill)
        d.rectangle((x0, cy - w, x1, cy + w), fill=fill)
    elif cls == "diamond":
        d.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    elif cls == "ring":
        d.ellipse(box, fill=fill)
        d.ellipse((cx - r * 0.5, cy - r * 0.5, cx + r * 0.5, cy + r * 0.5), fill=bg)
    elif cls == "hexagon":
        d.polygon([(cx + r * np.cos(k * np.pi / 3), cy + r * np.sin(k * np.pi / 3)) for k in range(6)], fill=fill)
    elif cls == "bar":
        d.rectangle((x0, cy - r * 0.3, x1, cy + r * 0.3), fill=fill)
    elif cls == "moon":
        d.ellipse(box, fill=fill)
        d.ellipse((x0 + r * 0.7, y0 - r * 0.2, x1 + r * 0.7, y1 - r * 0.2), fill=bg)
    elif cls == "heart":
        d.ellipse((x0, y0, cx + 1, cy + 1), fill=fill)
        d.ellipse((cx - 1, y0, x1, cy + 1), fill=fill)
        d.polygon([(x0, cy - r * 0.2), (x1, cy - r * 0.2), (cx, y1)], fill=fill)
    elif cls == "arrow":
        d.rectangle((x0, cy - r * 0.2, cx, cy + r * 0.2), fill=fill)
        d.polygon([(cx, y0), (x1, cy), (cx, y1)], fill=fill)
    else:  # pragma: no cover
        raise ValueError(cls)


def caption(scene: Scene) -> str:
    """Objects left to right: ``"a red circle and a blue ring ."`` (each class once)."""
    objs = sorted(scene.objects, key=lambda o: o.centre[0])
    parts = [f"a {o.colour} {o.cls}" for o in objs]
    return " and ".join(parts) + " ."


def vocabulary() -> list[str]:
    """Every word the world's questions and answers use (the tokenizer's vocabulary, besides specials)."""
    words = set(CLASSES) | set(RGB) | set(NUMBERS) | {"yes", "no", "left", "right", "a", "and", ".", "?",
                                                      "is", "there", "describe", "the", "image", "what", "colour",
                                                      "how", "many", "objects", "are", "on", "side", "of", "USER",
                                                      "ASSISTANT", ":", "in"}
    return sorted(words)
