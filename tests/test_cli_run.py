"""``hallufix run`` / ``ablate`` / ``report`` end to end on a saved tiny model and a custom JSONL task."""
from __future__ import annotations

import json

import pytest

from hallufix.cli import main
from hallufix.testing.models import tiny_images


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    from hallufix.models.tiny import save_tiny

    path = tmp_path_factory.mktemp("tiny_llava")
    save_tiny("llava", path)
    return path


@pytest.fixture(scope="module")
def jsonl_task(tmp_path_factory):
    d = tmp_path_factory.mktemp("task")
    lines = []
    for i, img in enumerate(tiny_images(6)):
        p = d / f"img{i}.png"
        img.save(p)
        lines.append(json.dumps({"image": str(p), "question": f"is there a cat {'here ' * (i % 2)}?",
                                 "answer": "yes" if i % 2 else "no"}))
    f = d / "questions.jsonl"
    f.write_text("\n".join(lines) + "\n")
    return f


def test_run_compares_with_baseline_and_resumes(saved_model, jsonl_task, tmp_path, capsys):
    args = ["run", "--model", str(saved_model), "--task", f"jsonl:{jsonl_task}", "--plugins", "visual-boost",
            "visual-boost.w=3", "--batch-size", "4", "--output", str(tmp_path / "out"), "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    # the fixed override is part of the directory name (a short hash): another w gets another directory
    (stack_dir,) = (tmp_path / "out").glob("visual-boost-h*")
    assert "baseline" in printed and "visual-boost" in printed and "x baseline" in printed
    base = json.loads((tmp_path / "out" / "baseline" / "results.json").read_text())
    stack = json.loads((stack_dir / "results.json").read_text())
    assert base["methods"] == [] and stack["methods"][0]["config"]["w"] == 3.0
    assert stack["overhead"]["ratio"] > 0 and stack["task"]["n"] == 6
    hooks = (stack_dir / "hooks.json").read_text()
    # rerunning the same command resumes: nothing is generated again, metrics, overhead and hook counts are kept
    assert main(args) == 0
    again = json.loads((stack_dir / "results.json").read_text())
    assert again["metrics"] == stack["metrics"] and again["overhead"] == stack["overhead"]
    assert (stack_dir / "hooks.json").read_text() == hooks


def test_ablation_grid_cells_and_latex_report(saved_model, jsonl_task, tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"model: {saved_model}\ntask: jsonl:{jsonl_task}\nlimit: 4\n"
                    "grid:\n  plugins: [none, visual-boost]\n  visual-boost.w: [2, 4]\n")
    assert main(["ablate", str(grid), "--output", str(tmp_path / "grid"), "--quiet"]) == 0
    cells = sorted(p.name for p in (tmp_path / "grid").iterdir())
    assert cells == ["baseline", "visual-boost_visual-boost.w=2", "visual-boost_visual-boost.w=4"]
    capsys.readouterr()
    run_dirs = [str(tmp_path / "grid" / c) for c in cells]
    assert main(["report", *run_dirs, "--output", str(tmp_path / "tables")]) == 0
    tex = next((tmp_path / "tables").glob("*.tex")).read_text()
    assert "\\begin{tabular}" in tex and "visual-boost" in tex


@pytest.mark.parametrize("args, message", [
    (["run", "--plugins", "clav"], "Did you mean 'clva'"),
    (["run", "--plugins", "visual-boost", "visual-boost.ww=2"], "unknown config key 'ww'"),
    (["run", "--task", "pop"], "unknown task 'pop'"),
    (["run", "--plugins", "visual-boost", "bach_size=2"], "Did you mean 'batch_size'"),
    # overrides after a later option are still read as overrides (not "unrecognized arguments")
    (["run", "--plugins", "visual-boost", "visual-boost.w=2", "--task", "shapes-pope", "visual-boost.ww=2"],
     "unknown config key 'ww'"),
])
def test_bad_input_fails_before_loading_with_a_clear_message(args, message, capsys, tmp_path):
    assert main(args + ["--output", str(tmp_path / "x")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_unknown_option_is_still_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", "--plugins", "clva", "--bogus"])
    assert info.value.code == 2 and "--bogus" in capsys.readouterr().err


def test_hooks_verb_resolves_names_shapes_and_owners(saved_model, capsys):
    assert main(["hooks", "--model", str(saved_model), "*.1", "--plugins", "visual-boost",
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    names = {p["name"]: p for p in data["points"]}
    assert set(names) == {"layer_input.1", "attn_kv.1", "attn_bias.1", "attn_probs.1", "attn_heads.1",
                          "mlp_in.1", "mlp_out.1", "logit_lens.1", "attn_transform.1"}
    assert names["attn_bias.1"]["declared_by"] == ["visual-boost"]
    assert names["attn_heads.1"]["shape"] == "(B, q, 4, 16)"
    assert data["family"] == "llava" and data["num_layers"] == 4


def test_missing_model_names_the_id_and_the_fix(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network in tests
    assert main(["hooks", "--model", "some-org/not-a-cached-model"]) == 2
    err = capsys.readouterr().err
    assert "some-org/not-a-cached-model" in err and "--model /path/to/folder" in err


def test_branch_mode_flag_reaches_the_branch_pass_and_is_recorded(saved_model, jsonl_task, tmp_path, monkeypatch):
    # --branch-mode separate runs VCD's auto branch on its own forwards: the answers of vcd.branch=separate
    import inspect

    import yaml

    from hallufix.intercept import branch as B

    modes = []
    build = B.BranchPass.build.__func__

    def spy(cls, *args, **kwargs):
        modes.append(inspect.signature(build).bind(cls, *args, **kwargs).arguments.get("mode"))
        return build(cls, *args, **kwargs)

    monkeypatch.setattr(B.BranchPass, "build", classmethod(spy))
    common = ["--model", str(saved_model), "--task", f"jsonl:{jsonl_task}", "--plugins", "vcd", "--no-baseline",
              "--batch-size", "3", "--quiet"]
    assert main(["run", *common, "--branch-mode", "separate", "--output", str(tmp_path / "flag")]) == 0
    assert modes and set(modes) == {"separate"}
    modes.clear()
    assert main(["run", *common, "vcd.branch=separate", "--output", str(tmp_path / "own")]) == 0
    assert modes and set(modes) == {None}
    (flag,), (own,) = (tmp_path / "flag").glob("vcd*"), (tmp_path / "own").glob("vcd*")
    assert yaml.safe_load((flag / "config.yaml").read_text())["branch_mode"] == "separate"
    assert yaml.safe_load((own / "config.yaml").read_text())["branch_mode"] is None

    def answers(d):
        return {r["id"]: r["output"] for r in map(json.loads, (d / "samples.jsonl").read_text().splitlines())}

    assert answers(flag) == answers(own)


def test_beam_search_with_branches_refuses_a_hooked_separate_branch_before_any_sample(saved_model, jsonl_task,
                                                                                      tmp_path, capsys):
    """`--decoding beam`: VCD's branch set to run separately (with every method's hooks) is refused before anything
    runs (no finished sample); as rows it runs, and PAI's default plain-model separate branch runs too."""
    import yaml

    common = ["--model", str(saved_model), "--task", f"jsonl:{jsonl_task}", "--batch-size", "3", "--quiet",
              "--decoding", "beam", "--num-beams", "2"]
    assert main(["run", *common, "--plugins", "vcd", "vcd.branch=separate", "--output", str(tmp_path / "sep")]) != 0
    err = capsys.readouterr().err
    assert "--branch-mode rows" in err and "vcd_noised" in err
    assert not list((tmp_path / "sep").rglob("*.jsonl"))
    for name, extra in (("rows", ["--plugins", "vcd", "vcd.branch=rows"]), ("pai", ["--plugins", "pai"])):
        assert main(["run", *common, *extra, "--output", str(tmp_path / name)]) == 0
        (cell,) = [d for d in (tmp_path / name).glob(f"{extra[1]}*")]
        assert yaml.safe_load((cell / "config.yaml").read_text())["identity"]["generation"]["num_beams"] == 2
