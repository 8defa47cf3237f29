"""Paired comparisons of runs (McNemar, paired bootstrap). The benchmark scorers have their own files:
test_scoring_pope.py, test_scoring_mme.py, test_scoring_chair.py, test_scoring_lmms_eval.py."""
from __future__ import annotations

import json

import pytest


def test_mcnemar_and_paired_bootstrap(tmp_path):
    from hallufix.report import mcnemar_exact, paired_comparison

    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(1, 9) == pytest.approx(2 * 11 / 1024)  # exact binomial tail, two-sided
    for name, correct in (("base", [1, 1, 0, 0, 1, 0]), ("run", [1, 1, 1, 1, 0, 1])):
        d = tmp_path / name
        d.mkdir()
        lines = [json.dumps({"id": f"q{i}", "answer": "yes", "parsed": "yes" if c else "no"})
                 for i, c in enumerate(correct)]
        (d / "samples.jsonl").write_text("\n".join(lines) + "\n")
    cmp = paired_comparison(tmp_path / "base", tmp_path / "run")
    assert cmp["n"] == 6 and cmp["accuracy_diff"] == pytest.approx(2 / 6)
    assert (cmp["only_baseline_right"], cmp["only_run_right"]) == (1, 3)
    assert cmp["ci95"][0] <= 2 / 6 <= cmp["ci95"][1]
