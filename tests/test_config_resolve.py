"""Issue 16 item 1: a run is resolved once, before any model loads, through one grammar, with the preset of the
weights (not of the name typed)."""
from __future__ import annotations

import json
import shutil

import pytest

import hallufix.config as config
from hallufix.builtin import BUILTIN_MODEL_DIR
from hallufix.cli import main
from hallufix.config import ConfigError, identify, method_config, resolve
from hallufix.config.grammar import parse_item, parse_stack

BUILTIN_FHI = {"tau_perc": 0.9587251543998718, "tau_reas": 9.788813856714818e-12}


@pytest.fixture
def no_weights(monkeypatch):
    """Any attempt to load weights fails the test."""
    from hallufix import api
    from hallufix.models import loading

    def refuse(*a, **k):
        raise AssertionError("weights were loaded before the configuration was checked")

    monkeypatch.setattr(api.Session, "load", classmethod(refuse))
    monkeypatch.setattr(loading, "load_pretrained", refuse)


def _fhi():
    from hallufix_fhi.method import FHI

    return FHI


def _error(argv, capsys) -> str:
    assert main(list(argv)) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("hallufix: error: ")]
    assert lines
    return lines[-1]


# ------------------------------------------------------------------------------------------------ identity
@pytest.fixture(scope="module")
def builtin_copy(tmp_path_factory):
    """The shipped built-in checkpoint copied elsewhere: the same weights at another path."""
    dst = tmp_path_factory.mktemp("copy") / "my-shapes"
    shutil.copytree(BUILTIN_MODEL_DIR, dst)
    return dst


def test_every_name_of_the_builtin_weights_gets_the_same_preset(builtin_copy, monkeypatch):
    monkeypatch.chdir(BUILTIN_MODEL_DIR.parent)
    names = ["builtin", "shapes-llava", str(BUILTIN_MODEL_DIR), "shapes_llava", "./shapes_llava/",
             str(builtin_copy)]
    idents = {n: identify(n) for n in names}
    assert {(i.checkpoint, i.family) for i in idents.values()} == {("builtin", "llava")}
    for name in names:
        cfg = method_config(_fhi(), model=name)
        assert (cfg.tau_perc, cfg.tau_reas) == (BUILTIN_FHI["tau_perc"], BUILTIN_FHI["tau_reas"]), name
        assert resolve(settings={"model": name}, plugins="fhi").cells[0].methods[0].preset.endswith("builtin.yaml")


def test_a_different_local_checkpoint_is_its_own_and_gets_the_family_preset(tmp_path):
    from hallufix.models.tiny import save_tiny

    save_tiny("llava", tmp_path / "tiny")
    ident = identify(tmp_path / "tiny")
    assert (ident.checkpoint, ident.family, ident.source) == (str((tmp_path / "tiny").resolve()), "llava", "folder")
    cfg = method_config(_fhi(), model=str(tmp_path / "tiny"))
    assert (cfg.tau_perc, cfg.perc_max_layer) == (0.22, 7)  # llava.yaml: defaults + perc_max_layer 7


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A Hugging Face cache holding only llava-1.5's config.json, laid out as huggingface_hub writes it."""
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--llava-hf--llava-1.5-7b-hf"
    snap = repo / "snapshots" / "a272c74b2481d8aff3aa6fc2c4bf891fe57334fb"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps({"model_type": "llava", "text_config": {"model_type": "llama"}}))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snap.name)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return snap


def test_alias_hub_id_and_snapshot_folder_are_one_checkpoint(hub_cache, tmp_path):
    from hallufix.models.registry import identity

    for spec in ("llava-1.5", "llava-hf/llava-1.5-7b-hf", str(hub_cache)):
        ident = identity(spec)
        assert (ident.checkpoint, ident.family, ident.preset_stem) == (
            "llava-hf/llava-1.5-7b-hf", "llava", "llava-hf--llava-1.5-7b-hf"), spec
    # a bare hub id with nothing cached falls back to the id itself; the family is the alias table's, else unknown
    bare = identify("someone/not-cached")
    assert (bare.checkpoint, bare.family) == ("someone/not-cached", None)
    assert identify("Qwen/Qwen2-VL-7B-Instruct").family == "qwen2-vl"


def test_a_checkpoint_preset_file_is_found_for_every_name_of_it(hub_cache, tmp_path, monkeypatch):
    """A method's ``presets/<org>--<name>.yaml`` wins over its family's for the alias, the id and the snapshot."""
    import importlib
    import sys

    pkg = tmp_path / "pkg" / "checkpoint_preset_method"
    (pkg / "presets").mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "from dataclasses import dataclass\n\n@dataclass\nclass Config:\n    k: int = 0\n\n"
        "class M:\n    name = 'm'\n    Config = Config\n")
    (pkg / "presets" / "llava.yaml").write_text("k: 1\n")
    (pkg / "presets" / "llava-hf--llava-1.5-7b-hf.yaml").write_text("k: 2\n")
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    M = importlib.import_module("checkpoint_preset_method").M
    try:
        got = {spec: method_config(M, model=spec).k for spec in ("llava-1.5", "llava-hf/llava-1.5-7b-hf",
                                                                 str(hub_cache))}
        assert got == {"llava-1.5": 2, "llava-hf/llava-1.5-7b-hf": 2, str(hub_cache): 2}
        assert method_config(M, family="llava").k == 1
    finally:
        sys.modules.pop("checkpoint_preset_method", None)


# ------------------------------------------------------------------------------------------- before loading
def test_a_value_the_preset_refutes_is_refused_before_any_weights_load(no_weights, tmp_path, capsys):
    """The check runs with the model's preset: on the built-in model tau_reas is 9.79e-12, not the default 0.01."""
    err = _error(["run", "--plugins", "fhi", "fhi.tau_perc=1e-12", "--output", str(tmp_path / "o")], capsys)
    assert "tau_reas (9.788813856714818e-12) must be below tau_perc (1e-12)" in err
    assert "hallufix_fhi/presets/builtin.yaml" in err and "fhi.tau_perc=1e-12" in err
    err = _error(["run", "--model", "shapes-llava", "--plugins", "fhi", "fhi.tau_perc=1e-12",
                  "--output", str(tmp_path / "o")], capsys)
    assert "must be below tau_perc (1e-12)" in err
    assert not (tmp_path / "o").exists()


def test_tau_perc_0_1_is_checked_before_load_against_the_model_that_runs(no_weights, tmp_path, capsys):
    """``fhi.tau_perc=0.1`` is refused before loading where the model's preset makes it invalid (tau_reas 0.2
    here), and resolves to exactly the config the run would use where it is valid (the built-in preset)."""
    err = _error(["run", "--plugins", "fhi", "fhi.tau_perc=0.1", "fhi.tau_reas_decode=0.2", "fhi.tau_perc_decode=0.1",
                  "--output", str(tmp_path / "o")], capsys)
    assert "tau_reas_decode (0.2) must be below tau_perc_decode (0.1)" in err
    cfg = resolve(["fhi.tau_perc=0.1"], plugins="fhi").cells[0].methods[0].config
    assert (cfg.tau_perc, cfg.tau_reas, cfg.perc_max_layer) == (0.1, BUILTIN_FHI["tau_reas"], 1)


def test_tau_reas_0_3_on_builtin_runs_with_the_builtin_preset(tmp_path, capsys):
    """Valid only with the built-in preset (tau_perc 0.959): the pre-load check and the run agree."""
    out = tmp_path / "o"
    assert main(["run", "--plugins", "fhi", "fhi.tau_reas=0.3", "--limit", "2", "--batch-size", "2", "--quiet",
                 "--output", str(out)]) == 0
    capsys.readouterr()
    cells = sorted(p.name for p in out.iterdir())
    assert cells[0] == "baseline" and cells[1].startswith("fhi")
    results = json.loads((out / cells[1] / "results.json").read_text())
    assert results["metrics"]  # it ran and was scored
    recorded = results["methods"][0]["config"]
    assert recorded["tau_reas"] == 0.3 and recorded["tau_perc"] == BUILTIN_FHI["tau_perc"]
    assert recorded["perc_max_layer"] == 1


def test_inspect_refuses_what_run_refuses_before_loading(no_weights, tmp_path, capsys):
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (40, 30), (10, 200, 30)).save(image)
    inspect = ["inspect", "--image", str(image), "--question", "is there a cat ?", "--output", str(tmp_path / "i")]
    run = ["run", "--output", str(tmp_path / "r")]
    for items, message in ((["--plugins", "fhi", "fhi.tau_perc=1e-12"], "must be below tau_perc"),
                           (["--plugins", "clva", "clva.alpah=3"], "unknown config key 'alpah'"),
                           (["--plugins", "clva", "ara.top_k=2"], "not in the stack"),
                           (["--plugins", "clav"], "Did you mean 'clva'")):
        assert message in _error(inspect + items, capsys)
        assert message in _error(run + items, capsys)
    assert "one configuration" in _error(inspect + ["--plugins", "clva", "clva.alpha=10,14"], capsys)
    assert "not an option of this command" in _error(inspect + ["limit=3"], capsys)


class _Resolved(SystemExit):
    pass


@pytest.fixture
def spy(monkeypatch):
    """Record what every command passes to and gets from :func:`hallufix.config.resolve`, then stop."""
    seen = []
    real = config.resolve

    def spying(*a, **k):
        seen.append(real(*a, **k))
        raise _Resolved

    monkeypatch.setattr(config, "resolve", spying)
    return seen


def test_inspect_and_run_resolve_the_same_grammar_to_the_same_methods(spy, no_weights, tmp_path):
    items = ["--plugins", "clva,ara", "clva.alpha=10", "ara.top_k=3", "task.seed=1"]
    for argv in (["run", "--no-baseline", *items, "--output", str(tmp_path / "r")],
                 ["inspect", "--task", "shapes-pope", *items, "--output", str(tmp_path / "i")]):
        with pytest.raises(_Resolved):
            main(argv)
    (run,), (insp,) = spy[0].cells, spy[1].cells
    assert run.methods == insp.methods and run.spec.task_options == insp.spec.task_options == {"seed": 1}
    assert [m.name for m in run.methods] == ["clva", "ara"] and run.methods[0].config.alpha == 10.0


def test_a_grid_file_and_argv_resolve_through_the_same_function(spy, no_weights, tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text("limit: 3\ngrid:\n  plugins: [none, clva, clva+ara]\n  clva.alpha: [10, 14]\n")
    for argv in (["ablate", str(grid)], ["ablate", "plugins=none,clva,clva+ara", "clva.alpha=10,14", "limit=3"],
                 ["run", "--no-baseline", "plugins=none,clva,clva+ara", "clva.alpha=10,14", "limit=3"]):
        with pytest.raises(_Resolved):
            main(argv + ["--output", str(tmp_path / "o")])
    from_grid, from_argv, from_run = (r.cells for r in spy)
    assert from_grid == from_argv == from_run
    assert [c.name for c in from_grid] == ["baseline", "clva_clva.alpha=10", "clva_clva.alpha=14",
                                           "clva+ara_clva.alpha=10", "clva+ara_clva.alpha=14"]
    assert [m.config.alpha for c in from_grid[1:] for m in c.methods if m.name == "clva"] == [10, 14, 10, 14]


# -------------------------------------------------------------------------------------------- grammar, API
def test_one_stack_grammar():
    assert parse_stack("clva,ara") == parse_stack("clva+ara") == parse_stack(["clva", "ara"]) == ["clva", "ara"]
    assert parse_stack("none") == parse_stack("baseline") == parse_stack(None) == []
    assert parse_item("clva.apply_layers=[2,3]").values == ("[2,3]",)
    assert parse_item("clva.alpha=10,14").swept and parse_item("task.seed=1").scope == "task"
    with pytest.raises(ConfigError, match="key=value"):
        parse_item("clva.alpha")


def test_session_start_resolves_once_and_ignores_nothing():
    from hallufix.config import resolve_methods
    from hallufix.testing.models import tiny_session

    s = tiny_session("llava")
    run = s.start(["clva"], overrides={"clva": ["alpha=10"]})
    resolved = resolve_methods("clva", {"clva": ["alpha=10"]}, model=s.identity)
    assert run.methods.configs == [resolved[0].config]
    assert s.start(methods=resolved).methods.configs == run.methods.configs
    assert s.start(["clva"], {"clva": ["alpha=10"]}, methods=run.methods).methods is run.methods  # consistent
    with pytest.raises(ConfigError, match="plugins= names"):
        s.start(["ara"], methods=resolved)
    with pytest.raises(ConfigError, match="resolved with"):
        s.start(["clva"], {"clva": ["alpha=3"]}, methods=resolved)
    with pytest.raises(ConfigError, match="'clvaa', which is not in the stack"):
        s.start(["clva"], {"clvaa": ["alpha=3"]})
