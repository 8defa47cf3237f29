"""Reports that cannot be silently wrong (issue 20): partial MME totals, joins by identity, baselines over other
samples, statistics on every metric, and the paper table of a methods x key grid over the three built-in tasks."""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess

import numpy as np
import pytest

from hallufix import stats
from hallufix.cli import main
from hallufix.report import Runs, build_table, compare_to_baseline
from hallufix.scoring.mme import PERCEPTION, mme_scores


def _mme_rows(n_images=3, right=True):
    rows = []
    for i in range(n_images):
        rows += [(f"im{i}", "Yes", "yes" if right else "no"), (f"im{i}", "No", "no")]
    return rows


def test_mme_total_over_an_incomplete_set_is_none_and_names_what_is_missing():
    subtasks = {s: _mme_rows() for s in PERCEPTION if s != "OCR"}
    res = mme_scores(subtasks)
    assert res["perception"] is None and res["incomplete"]["perception"]["missing"] == ["OCR"]
    assert res["incomplete"]["perception"]["partial_sum"] == pytest.approx(9 * 200)
    assert res["cognition"] is None and res["hallucination"] == pytest.approx(800)
    assert mme_scores(subtasks, allow_partial=True)["perception"] == pytest.approx(1800)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """methods x one key over the three built-in tasks, --limit 8 (the README's built-in model)."""
    root = tmp_path_factory.mktemp("grid")
    for task in ("shapes-pope", "shapes-chair", "shapes-mme"):
        assert main(["ablate", "--task", task, "--limit", "8", "--batch-size", "8", "plugins=none,clva",
                     "clva.alpha=5,10", "--output", str(root / task), "--quiet"]) == 0
    return root


def test_paper_table_compiles_and_has_methods_as_rows_ci_bold_and_overhead(grid, tmp_path, capsys):
    runs = sorted(str(p) for p in grid.glob("*/*"))
    assert main(["report", *runs, "--output", str(tmp_path / "t"), "--bootstrap", "300"]) == 0
    capsys.readouterr()
    tex = (tmp_path / "t" / "table_shapes-pope.tex").read_text()
    assert "\\usepackage{booktabs}" in tex and "\\toprule" in tex and "\\caption{" in tex
    assert "n = 8 samples" in tex and "greedy decoding" in tex and "builtin" in tex and "--limit" in tex
    from pylatexenc.latexwalker import LatexEnvironmentNode, LatexWalker

    nodes, _, _ = LatexWalker(tex).get_latex_nodes()
    tabular = [n for t in nodes if isinstance(t, LatexEnvironmentNode) for n in t.nodelist
               if isinstance(n, LatexEnvironmentNode) and n.environmentname == "tabular"]
    assert len(tabular) == 1
    body = tabular[0].latex_verbatim()
    rows = [r for r in body.split("\\\\") if "&" in r]
    header, data = rows[0], rows[1:]
    cols = header.count("&") + 1
    assert all(r.count("&") + 1 == cols for r in data)  # every row as wide as the header
    assert [r.split("&")[0].split("\\midrule")[-1].strip() for r in data] == ["baseline", "clva", "clva"]
    assert "alpha" in header and "ms/token" in header and "x base" in header and "peak MiB" in header
    assert "mean F1" in header and "\\pm" in body and "$" in body
    # POPE fractions x100: every shown accuracy is between 0 and 100 with one decimal
    assert all(0 <= float(v) <= 100 for v in re.findall(r"\$(?:\\mathbf\{)?([0-9.]+) \\pm", body))
    # the CSV keeps every config column and both interval ends
    csv = (tmp_path / "t" / "table_shapes-pope.csv").read_text().splitlines()[0]
    assert "clva.alpha" in csv and "mean F1 ci95_low" in csv and "ms_per_token" in csv
    long = (tmp_path / "t" / "metrics.csv").read_text().splitlines()[0]
    assert "cfg.clva.alpha" in long and "ci95_low" in long
    mme = (tmp_path / "t" / "table_shapes-mme.tex").read_text()
    assert "partial: missing" in mme  # --limit 8 holds only existence: totals are not printed as numbers
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex not installed (apt-get install texlive-latex-recommended)")
    doc = tmp_path / "t" / "doc.tex"
    doc.write_text("\\documentclass{article}\\usepackage{booktabs}\\usepackage[landscape,margin=1cm]{geometry}"
                   "\\begin{document}\\input{metrics.tex}\\end{document}\n")
    out = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=doc.parent,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:]


def test_bold_marks_the_best_by_direction(grid):
    from hallufix.report_tables import task_tables

    runs = Runs(sorted(str(p) for p in (grid / "shapes-chair").iterdir()))
    df = build_table(None, n_boot=0, runs=runs)
    for res in (r for _, r, _ in runs.runs):
        assert res["metrics"]["all"]["chair_s"]["higher_is_better"] is False
    (table,) = task_tables(df, runs, n_boot=0)
    frame = table["frame"]
    for key, rows in table["best"].items():
        values = frame[key].tolist()
        target = min(values) if key.startswith("CHAIR") else max(values)
        assert all(values[i] == target for i in rows)


def test_report_joins_by_identity_not_folder_name(grid, tmp_path, capsys):
    base = grid / "shapes-pope" / "baseline"
    copy = tmp_path / "elsewhere" / "baseline"
    shutil.copytree(base, copy)
    runs = Runs([str(base), str(copy), str(grid / "shapes-pope" / "clva_clva.alpha=5")])
    assert len(runs.runs) == 2 and runs.duplicates == [(str(copy), str(base))]
    # a different run under the same folder name (another seed) is kept and labelled apart
    other = tmp_path / "seed1"
    assert main(["run", "--task", "shapes-pope", "--limit", "8", "--seed", "1", "--output", str(other),
                 "--quiet"]) == 0
    (seeded,) = [p for p in other.iterdir()]
    renamed = tmp_path / "x" / "baseline"
    shutil.copytree(seeded, renamed)
    runs = Runs([str(base), str(renamed)])
    labels = [lab for _, _, lab in runs.runs]
    assert len(labels) == 2 and len(set(labels)) == 2
    df = build_table(None, n_boot=0, runs=runs)
    from hallufix.report import pivot

    assert pivot(df).shape[1] == 2  # nothing dropped by aggfunc="first"


def test_baseline_over_other_samples_is_not_compared(grid, tmp_path, capsys):
    small = tmp_path / "small"
    assert main(["ablate", "--task", "shapes-pope", "--limit", "6", "--batch-size", "8", "plugins=none,clva",
                 "--output", str(small), "--quiet"]) == 0
    runs = [str(grid / "shapes-pope" / "baseline"), str(small / "clva")]
    cmp = compare_to_baseline(runs, n_boot=100)
    assert not cmp.empty and cmp["diff"].isna().all()
    assert cmp["note"].str.contains("holds 8 samples, this run 6").all()
    capsys.readouterr()
    assert main(["report", *runs, "--bootstrap", "50"]) == 0
    assert "not compared" in capsys.readouterr().err


def test_bootstrap_point_estimates_match_the_scorers_and_intervals_match_scipy(grid):
    for task in ("shapes-pope", "shapes-chair", "shapes-mme"):
        d = grid / task / "clva_clva.alpha=5"
        res = json.loads((d / "results.json").read_text())
        runs = Runs([str(d)])
        units = runs.units(str(d), res)
        assert units is not None and units.kind == {"shapes-pope": "yesno", "shapes-chair": "chair",
                                                    "shapes-mme": "mme"}[task]
        wanted = {s: set(m) for s, m in res["metrics"].items()}
        ci = stats.bootstrap(units, wanted, n_boot=200)
        assert ci, task
        for (split, metric), v in ci.items():
            assert v["value"] == pytest.approx(res["metrics"][split][metric]["value"]), (task, split, metric)
            assert v["ci95"][0] <= v["value"] + 1e-9 and v["value"] <= v["ci95"][1] + 1e-9
    # one stratum, a mean: the percentile interval agrees with scipy.stats.bootstrap's
    from scipy.stats import bootstrap as scipy_bootstrap

    rng = np.random.default_rng(1)
    gold = rng.random(400) < 0.5
    pred = np.where(rng.random(400) < 0.8, gold, ~gold)
    u = stats.Units("yesno", [str(i) for i in range(400)], ["all"] * 400,
                    {"gold_yes": gold, "pred_yes": pred, "pred_no": ~pred})
    ours = stats.bootstrap(u, {"all": {"accuracy"}}, n_boot=4000, seed=0)[("all", "accuracy")]["ci95"]
    theirs = scipy_bootstrap(((gold == pred).astype(float),), np.mean, n_resamples=4000, method="percentile",
                             random_state=0).confidence_interval
    assert ours[0] == pytest.approx(theirs.low, abs=0.01) and ours[1] == pytest.approx(theirs.high, abs=0.01)


def test_mcnemar_holm_and_the_disagreement_sentence():
    assert stats.mcnemar_exact(1, 9) == pytest.approx(2 * 11 / 1024)
    assert stats.mcnemar_exact(0, 0) == 1.0
    assert stats.mcnemar_exact(3, 20) == pytest.approx(
        min(1, 2 * sum(math.comb(23, i) for i in range(4)) / 2 ** 23))
    assert stats.holm([0.01, None, 0.04, 0.03]) == pytest.approx([0.03, None, 0.06, 0.06])
    from hallufix.report import _disagreement

    assert _disagreement({"mcnemar_p": 0.03, "ci95_low": -0.001, "ci95_high": 0.05}).startswith("McNemar")
    assert _disagreement({"mcnemar_p": 0.03, "ci95_low": 0.001, "ci95_high": 0.05}) is None


def test_paired_comparison_covers_f1_mean_f1_chair_and_mme(grid):
    for task, metric in (("shapes-pope", "mean_f1"), ("shapes-pope", "f1"), ("shapes-chair", "chair_i"),
                         ("shapes-mme", "score")):
        cmp = compare_to_baseline([str(grid / task / "baseline"), str(grid / task / "clva_clva.alpha=10")],
                                  n_boot=200)
        row = cmp[cmp["metric"] == metric].iloc[0]
        assert row["n_paired"] > 0 and row["ci95_low"] <= row["diff"] + 1e-9 <= row["ci95_high"] + 2e-9
        assert row["p_holm"] is not None and 0 <= row["p_holm"] <= 1
    acc = cmp[cmp["metric"] == "acc"].iloc[0]
    assert 0 <= acc["mcnemar_p"] <= 1


def test_a_limit_cut_subtask_makes_the_totals_partial():
    """shapes-mme --limit 90: existence complete, count cut after 10 of 80 questions -> no object-level total."""
    from hallufix.tasks.shapes import ShapesMME

    task = ShapesMME()
    samples = task.samples()[:90]
    records = [{"id": s.id, "split": s.split, "answer": s.answer, "parsed": s.answer, "meta": s.meta}
               for s in samples]
    scores = task.score(records)
    assert scores["existence"]["score"] == pytest.approx(200)
    level = scores["all"]["object_level"]
    assert level["value"] is None and "count (10 of 80 questions)" in level["partial"]
    assert scores["all"]["attribute_level"]["value"] is None
