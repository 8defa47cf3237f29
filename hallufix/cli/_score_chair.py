"""``hallufix score chair``: CHAIR_s / CHAIR_i / recall / length of caption files (JSONL or an lmms-eval
``coco_cap_chair`` sample log) against COCO ground-truth objects, with the published normalisers."""
from __future__ import annotations

from pathlib import Path

from hallufix.cli import CliError
from hallufix.cli.score import _emit, _is_log, _records


def register(ssub) -> None:
    ch = ssub.add_parser(
        "chair", help="CHAIR: CHAIR_s, CHAIR_i, recall (x100), length",
        epilog="example: hallufix score chair --captions caps.jsonl --gt-objects chair_gt.json --json")
    ch.add_argument("--captions", required=True, metavar="FILE",
                    help="JSONL with image_id and caption, or an lmms-eval coco_cap_chair sample log (which carries "
                         "its ground-truth objects)")
    gt = ch.add_mutually_exclusive_group(required=False)
    gt.add_argument("--gt-objects", default=None, metavar="FILE", help="prebuilt {image_id: [objects]} JSON(.gz)")
    gt.add_argument("--coco-annotations", default=None, metavar="DIR",
                    help="folder with COCO 2014 instances_*2014.json and captions_*2014.json")
    ch.add_argument("--normaliser", default="nltk",
                    help="nltk (OPERA / lmms-eval; default; NLTK itself when installed with its data), nltk-3.8 "
                         "(NLTK 3.8's lemmatiser), pattern (the original paper's singulariser)")
    ch.add_argument("--synonyms", default=None, metavar="FILE",
                    help="synonym table in synonyms.txt format (default: the COCO one shipped with hallufix)")
    ch.add_argument("--json", action="store_true", help="print one JSON object")
    ch.set_defaults(handler=_chair)


def chair_result(captions: str, gt_objects: str | None = None, coco_annotations: str | None = None,
                 normaliser: str = "nltk", synonyms: str | None = None) -> dict:
    """``{chair_s, chair_i, recall (percent), length (tokens), n (captions), sources}``; for an lmms-eval log also
    ``lmms_eval_mentions_differ`` (captions whose mentions differ from the node words lmms-eval logged) and
    ``notes``. ``sources`` says where the tokeniser, tagger and lemmatiser came from (nltk variants)."""
    from hallufix.scoring.chair import ChairScorer
    from hallufix.tasks.base import TaskError
    from hallufix.tasks.chair import build_gt_from_coco, load_gt_table
    from hallufix.tasks.lmms_eval_log import NOTES, chair_items

    try:
        if synonyms and not Path(synonyms).is_file():
            raise CliError(f"file not found: {synonyms}")
        if not Path(captions).is_file():
            raise CliError(f"file not found: {captions}")
        scorer = ChairScorer.coco(normaliser, synonyms)
        logged = chair_items(captions) if _is_log(captions) else None
        if logged is not None:
            caps = [(image_id, caption) for image_id, caption, _, _ in logged]
        else:
            caps = []
            for i, c in enumerate(_records(captions), 1):
                if "image_id" not in c or "caption" not in c:
                    raise CliError(f"{captions}: record {i} lacks 'image_id' or 'caption'")
                caps.append((int(c["image_id"]), str(c["caption"])))
        if not caps:
            raise CliError(f"{captions}: no captions")
        if gt_objects:
            if not Path(gt_objects).is_file():
                raise CliError(f"file not found: {gt_objects}")
            gt = load_gt_table(gt_objects)
        elif coco_annotations:
            if not Path(coco_annotations).is_dir():
                raise CliError(f"folder not found: {coco_annotations}")
            gt = build_gt_from_coco(coco_annotations, scorer)
        elif logged is not None:
            if any(g is None for _, _, g, _ in logged):
                raise CliError(f"{captions}: the log carries no ground-truth objects; give --gt-objects")
            gt = {image_id: set(g) for image_id, _, g, _ in logged}
        else:
            raise CliError("give the ground truth: --gt-objects FILE or --coco-annotations DIR")
        res = scorer.score(caps, gt)
    except TaskError as exc:
        raise CliError(str(exc)) from None
    except ValueError as exc:
        raise CliError(f"{captions}: {exc}") from None
    out = {k: res[k] for k in ("chair_s", "chair_i", "recall", "length", "n")}
    out["sources"] = scorer.sources
    if logged is not None:
        out["lmms_eval_mentions_differ"] = sum(d["mentions"] != pred for d, (_, _, _, pred) in
                                               zip(res["details"], logged) if pred is not None)
        out["notes"] = NOTES["chair"]
    return out


def _chair(args) -> int:
    import sys
    import warnings

    with warnings.catch_warnings(record=True) as caught:  # shown as one line each, not Python's two
        warnings.simplefilter("default")
        out = chair_result(args.captions, args.gt_objects, args.coco_annotations, args.normaliser, args.synonyms)
    for w in caught:
        print(f"hallufix: warning: {w.message}", file=sys.stderr)
    return _emit(out, args.json, lambda o: print(
        f"CHAIR_s {o['chair_s']:.2f}  CHAIR_i {o['chair_i']:.2f}  recall {o['recall']:.2f}  "
        f"length {o['length']:.2f}  n {o['n']}"))
