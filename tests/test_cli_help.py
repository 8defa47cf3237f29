"""Every option of every verb says what it does and its default (issue 20); `tasks` and `models` list what exists;
`inspect` / `analyze` take the same task options, device and dtype as `run`."""
from __future__ import annotations

import argparse
import json

import pytest

from hallufix.cli import build_parser, main


def _verbs(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", s) for n, s in _verbs(sub))


def test_every_option_has_help_and_states_its_default():
    missing = []
    for verb, sub in _verbs(build_parser()):
        auto = issubclass(sub.formatter_class, argparse.ArgumentDefaultsHelpFormatter)
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            text = action.help or ""
            if not text.strip():
                missing.append(f"{verb} {action.dest}: no help")
            elif action.option_strings and action.default not in (None, False, argparse.SUPPRESS) \
                    and "default" not in text and not auto and not action.required:
                missing.append(f"{verb} {action.dest}: default {action.default!r} not stated")
    assert not missing, "\n".join(missing)


def test_tasks_and_models_verbs(capsys):
    assert main(["tasks", "--json"]) == 0
    cat = {t["name"]: t for t in json.loads(capsys.readouterr().out)}
    assert {"pope", "chair", "mme", "shapes-pope", "shapes-chair", "shapes-mme"} <= set(cat)
    assert cat["pope"]["metrics"]["fp"] is None and cat["shapes-chair"]["metrics"]["chair_s"] is False
    assert cat["shapes-pope"]["options"]["seed"] == 0
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "llava-hf/llava-1.5-7b-hf" in out and "builtin" in out and "huggingface-cli" not in out


@pytest.mark.parametrize("argv, message", [
    (["inspect", "--task", "shapes-pope", "task.n_image=3", "--output", "{out}"], "n_images"),
    (["analyze", "layer-masking", "--task", "shapes-pope", "task.bogus=1", "--output", "{out}"], "bogus"),
    (["analyze", "layer-masking", "--dtype", "float33", "--output", "{out}"], "float33"),
])
def test_inspect_and_analyze_take_task_options_and_check_them(argv, message, tmp_path, capsys):
    argv = [a.replace("{out}", str(tmp_path / "o")) for a in argv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_inspect_with_a_task_option_runs(tmp_path, capsys):
    assert main(["inspect", "--task", "shapes-pope", "task.seed=1", "--samples", "2", "--dtype", "float32",
                 "--output", str(tmp_path / "i")]) == 0
    assert (tmp_path / "i" / "maps.pdf").is_file()
