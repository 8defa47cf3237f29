"""Discovery, activation, config resolution and the CLI surface that needs no model."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from importlib.metadata import EntryPoint

import pytest

import hallufix
from hallufix import plugins as pl
from hallufix.config import ConfigError, expand_sweeps, method_config, parse_layers, split_overrides
from hallufix.experiment import plan


def test_builtin_methods_are_discovered_through_entry_points():
    reg = pl.discover()
    for name in ("clva", "ara", "contrast", "fhi"):
        assert reg.methods[name].dist == "hallufix"
        assert isinstance(reg.methods[name].target, str)  # lazy: nothing imported yet


def test_unknown_plugin_lists_known_and_suggests():
    reg = pl.discover()
    with pytest.raises(pl.PluginError) as exc:
        reg.get("clav")
    msg = str(exc.value)
    assert "Did you mean 'clva'" in msg and "Known plugins:" in msg and "fhi" in msg


def test_broken_plugin_is_reported_and_hides_nothing(monkeypatch):
    real = pl.entry_points

    def fake(group):
        eps = list(real(group=group))
        broken = EntryPoint(name="broken", value="hallufix_no_such_module_xyz", group=group)
        return eps + [broken]

    monkeypatch.setattr(pl, "entry_points", fake)
    reg = pl.discover()
    assert "clva" in reg.methods
    assert any("broken" in k for k in reg.errors)
    assert "ModuleNotFoundError" in next(iter(reg.errors.values()))


def test_local_plugin_by_path(tmp_path):
    f = tmp_path / "my_method.py"
    f.write_text(textwrap.dedent('''
        import hallufix

        class Mine:
            name = "mine"

            @hallufix.hookimpl
            def hallufix_configure(self, model):
                return []
    '''))
    methods = pl.activate([str(f)], registry=pl.Registry())
    assert methods.order == ["mine"]
    with pytest.raises(pl.PluginError, match="not found"):
        pl.activate([str(tmp_path / "nope.py")], registry=pl.Registry())


def test_duplicate_in_stack_is_rejected():
    with pytest.raises(pl.PluginError, match="twice"):
        pl.activate(["clva", "clva"])


@dataclass
class _Cfg:
    alpha: float = 1.0
    layers: str = "all"

    def validate(self):
        if self.alpha < 0:
            raise ValueError("alpha must be >= 0")


class _Method:
    name = "m"
    Config = _Cfg


def test_config_overrides_types_and_errors():
    cfg = method_config(_Method, overrides=["alpha=2.5", "layers=3-5"])
    assert cfg.alpha == 2.5 and cfg.layers == "3-5"
    with pytest.raises(ConfigError, match="unknown config key 'alpah'.*Did you mean 'alpha'"):
        method_config(_Method, overrides=["alpah=1"])
    with pytest.raises(ConfigError, match="alpha must be >= 0"):
        method_config(_Method, overrides=["alpha=-1"])
    with pytest.raises(ConfigError, match="bad value"):
        method_config(_Method, overrides=["alpha=high"])


def test_layers_sweeps_and_override_split():
    assert parse_layers("2-4", 8) == [2, 3, 4]
    assert parse_layers("5:", 8) == [5, 6, 7]
    assert parse_layers([0, -1], 8) == [0, 7]
    assert parse_layers("all", 3) == [0, 1, 2]
    with pytest.raises(ConfigError, match="out of range"):
        parse_layers([9], 8)
    assert expand_sweeps(["a=1,2", "b=3"]) == [["a=1", "b=3"], ["a=2", "b=3"]]
    per, rest = split_overrides(["clva.alpha=3", "batch_size=2"], ["clva"])
    assert per == {"clva": ["alpha=3"]} and rest == ["batch_size=2"]


def test_experiment_plan_grid_and_method_keys():
    p = plan({"model": "builtin", "task": "shapes-pope"}, ["clva.alpha=10,14", "limit=5"], None,
             {"plugins": ["none", "clva", "clva+ara"]})
    stacks = [(c.stack, c.overrides.get("clva")) for c in p.cells]
    assert stacks == [("baseline", None), ("clva", ["alpha=10"]), ("clva", ["alpha=14"]),
                      ("clva+ara", ["alpha=10"]), ("clva+ara", ["alpha=14"])]
    assert all(c.limit == 5 for c in p.cells)
    assert p.cells[1].swept == {"clva.alpha": 10, "plugins": "clva"}
    with pytest.raises(ConfigError, match="Did you mean 'batch_size'"):
        plan({}, ["bach_size=3"], "clva")
    with pytest.raises(ConfigError, match="not in the stack"):
        plan({}, ["fhi.g_perc=1"], "clva")


def test_task_option_the_override_grammar_cannot_read_stays_a_string():
    """A judge command with quotes (MMHal's ``task.judge``) is not YAML: it stays the string the user typed."""
    p = plan({"model": "builtin", "task": "shapes-pope"}, ['task.judge=python -c "import sys; print(5)"',
                                                         "task.n_images=3"], None)
    assert p.task_options == {"judge": 'python -c "import sys; print(5)"', "n_images": 3}


def test_help_imports_no_torch():
    code = ("import sys; from hallufix.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr


def test_plugins_verb_json_lists_builtins():
    from hallufix.cli import main

    out = subprocess.run([sys.executable, "-m", "hallufix", "plugins", "--json"], capture_output=True, text=True,
                         timeout=60)
    data = json.loads(out.stdout)
    names = {p["name"] for p in data["plugins"]}
    assert {"clva", "ara", "contrast", "fhi"} <= names
    assert main is not None and hallufix.__version__


def test_out_of_tree_example_is_installed_listed_and_lazy():
    """docs/examples/hallufix-example is pip-installed by the test command (scripts/test.sh) like any third-party
    plugin: it must be discovered through its own distribution's entry point without importing its method module."""
    reg = pl.discover()
    info = reg.get("visual-boost")
    assert info.dist == "hallufix-example" and info.version == "0.1.0"
    assert info.target == "hallufix_example.method:VisualBoost"
    out = subprocess.run([sys.executable, "-c", "import sys; from hallufix.plugins import discover; discover(); "
                          "print('hallufix_example.method' in sys.modules, 'torch' in sys.modules)"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_version_lists_plugins(capsys):
    from hallufix.cli import main

    assert main(["--version"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("hallufix 0.1.0") and "plugin clva 0.1.0 from hallufix" in text
    assert "plugin visual-boost 0.1.0 from hallufix-example" in text
