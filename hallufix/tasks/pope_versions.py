"""Which POPE question files a run used: the source dataset (COCO, A-OKVQA, GQA) and, for COCO, the version.

AoiDragon/POPE rewrote its COCO question files several times (``docs/benchmarks.md``, POPE versions):

* ``v1-llava15`` — 2023-05-31…08-04 and 08-10…10-09 (incl. ``e3e3926``): the files LLaVA-1.5, OPERA and
  LLaVA-RLHF evaluate on (random 2910 questions, "imange" typos);
* ``v2-53023fd`` — 2023-08-04…08-10: a different 500-image set with an ``image_id`` field, question ids from 0;
* ``v3-edebdda`` — 2023-10-09…11-16: random regenerated to 3000 questions, popular typo-fixed, adversarial with
  one typo fixed;
* ``v4-current`` — 2023-11-16 onwards (the files RePOPE relabels).

A file is identified by its SHA-256 (the bytes as the POPE repository holds them); a file with an unknown hash
gets ``unknown`` plus what its content says (``image_id`` field, 2910 random questions). A-OKVQA and GQA
(``*_pope_seem_<split>.json``, one version each) are the "avg3" protocol: three splits, each scored alone, the
three averaged. No torch.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

#: sha256 of the official file -> (dataset, version)
KNOWN = {
    "420b3407db1fa9f1187a805dca41cb7b97fd91504e6c2179706188c107fb8ef8": ("coco", "v4-current"),
    "72c1a8ad45d0c13514f5f22598261df41d3b533854d29682e924db50ed8aa753": ("coco", "v4-current"),
    "ac25245170b975a5bdf9080b23fd431dfe6be458bc038259c1f4f09a6bef7994": ("coco", "v4-current"),
    "1d8f0906a9b50c05640f6f23abfac97523be2a1bed28f7eadc63b811699b2d26": ("coco", "v1-llava15"),
    "5b16653023bf4f64d57eb0d168259de6627f5cde7538b85ebed3cc33034aa6cc": ("coco", "v1-llava15"),
    "c16b65d2df6d70bb0814c8a4375833d39cdb09928fd936d3fc546491efa37f35": ("coco", "v1-llava15"),
    "412efc6fe25eb2604f2386d536bcf713dc88327cb20c36489b1f689f89617d04": ("coco", "v2-53023fd"),
    "eafca6ceff32c7bbb5b2845a00c6828ec8cbaf5e04f890d6902dc46b92f96076": ("coco", "v2-53023fd"),
    "cb8dec967727fbee4b9cfadf9ba1ea9968515b12063efd313d0cf8b2b4230c86": ("coco", "v2-53023fd"),
    "207273ac3b7fdd04df206c6809b77a4e7f60360a730ade6b7e32804e8dd5602f": ("coco", "v3-edebdda"),
    "2ddd3bdfa0df7a77a2cb1765ed06ac5ed190b5a093aa405b96986e862e8cdac1": ("aokvqa", "seem"),
    "2ae5bedee3450cda52f9b033942c7b04a3917a86a110e859a66c1e41934c6ffd": ("aokvqa", "seem"),
    "f06eecde6d6ef4a00b95a7bbb510490708a09a6a67d952b59b8bdd33ac2c7200": ("aokvqa", "seem"),
    "74e01b41d8308e2392e3b8d961167496ff3901c01100265d931a7a392f138a7a": ("gqa", "seem"),
    "dd03f06a458dd216e83233160fbf6628af9c63c84b11e99599f4fc0304b3361d": ("gqa", "seem"),
    "6ce488eade3770185034939fabfe742fa32ed369011c8d9c3ac77bc0c85abd94": ("gqa", "seem"),
}


def dataset_from_name(path: Path) -> str:
    """``coco`` / ``aokvqa`` / ``gqa`` from a ``<dataset>_pope_*`` file name, else ``unknown``."""
    head = path.name.split("_pope_")[0].lower() if "_pope_" in path.name else ""
    return head if head in ("coco", "aokvqa", "gqa") else "unknown"


def identify(path: Path, records: list[dict] | None = None) -> dict:
    """``{"file", "sha256", "dataset", "version"}`` for one question file (``records`` refine an unknown one)."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    dataset, version = KNOWN.get(digest, (dataset_from_name(Path(path)), "unknown"))
    if version == "unknown" and records:
        if all("image_id" in r for r in records):
            version = "unknown (image_id field: like v2-53023fd)"
        elif len(records) == 2910:
            version = "unknown (2910 questions: like v1-llava15 random)"
    return {"file": Path(path).name, "sha256": digest, "dataset": dataset, "version": version}


def describe(files: dict[str, Path]) -> dict:
    """``{"dataset", "version", "files": {split: identify(...)}}``; dataset/version are ``mixed`` when the splits
    disagree."""
    per = {split: identify(f) for split, f in sorted(files.items())}
    datasets = {d["dataset"] for d in per.values()}
    versions = {d["version"] for d in per.values()}
    return {"dataset": datasets.pop() if len(datasets) == 1 else "mixed",
            "version": versions.pop() if len(versions) == 1 else "mixed", "files": per}
