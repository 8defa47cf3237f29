"""The calibration cache (hallufix.calibration_cache): a second calibration with the same key reads the cache, a
changed key (model weights, method config, calibration set or targets) recomputes."""
from __future__ import annotations

import json


from hallufix.calibration_cache import CalibrationCache, model_key
from hallufix.testing.models import tiny_session


def test_same_key_reads_changed_key_recomputes(tmp_path):
    cache = CalibrationCache(tmp_path)
    calls = []

    def compute(v):
        return lambda: calls.append(v) or {"tau": v}

    model = model_key(tiny_session("llava"), "tiny-llava")
    args = ("fhi", {"query_row": "last"}, {"task": "shapes-pope", "n": 8})
    assert cache.get_or_compute(model, *args, compute(0.5)) == ({"tau": 0.5}, False)
    assert cache.get_or_compute(model, *args, compute(0.7)) == ({"tau": 0.5}, True)  # read, not recomputed
    assert calls == [0.5]
    assert cache.get_or_compute(model, "fhi", {"query_row": "mean"}, args[2], compute(0.6))[1] is False
    assert cache.get_or_compute(model, "fhi", args[1], {"task": "shapes-pope", "n": 9}, compute(0.8))[1] is False
    other = model_key(tiny_session("qwen2-vl"), "tiny-llava")  # other weights under the same name
    assert cache.get_or_compute(other, *args, compute(0.9))[1] is False
    assert cache.get_or_compute(model, *args, compute(1.0), refresh=True) == ({"tau": 1.0}, False)
    assert calls == [0.5, 0.6, 0.8, 0.9, 1.0]
    assert len(list((tmp_path / "fhi").glob("*.json"))) == 4


def test_corrupt_or_foreign_entry_is_recomputed(tmp_path, capsys):
    cache = CalibrationCache(tmp_path)
    model, args = {"target": "m"}, ("fhi", {}, {"n": 1})
    path = cache.put(model, *args, {"tau": 1})
    path.write_text("{not json")
    assert cache.get_or_compute(model, *args, lambda: {"tau": 2}) == ({"tau": 2}, False)
    assert "unreadable" in capsys.readouterr().err
    entry = json.loads(path.read_text())
    entry["key"]["calibration"]["n"] = 5  # an entry whose recorded key is not this key is never trusted
    path.write_text(json.dumps(entry))
    assert cache.get(model, *args) is None


def test_calibrate_fhi_twice_reads_the_cache(tmp_path, monkeypatch, capsys):
    """`hallufix calibrate fhi` computes once; the same command again reads the cache (FHI.calibrate is not
    called), writing the same preset; another --fraction recomputes."""
    from hallufix.cli import main
    from hallufix_fhi.method import FHI

    monkeypatch.setenv("HALLUFIX_CACHE_DIR", str(tmp_path / "cache"))
    cmd = ["calibrate", "fhi", "--limit", "6", "--max-new-tokens", "2", "--output", str(tmp_path / "a.yaml")]
    assert main(cmd) == 0
    first = (tmp_path / "a.yaml").read_text()
    assert "computed and stored" in capsys.readouterr().out

    original, calls = FHI.calibrate, []

    def counted(*a, **k):
        calls.append(k.get("fraction"))
        return original(*a, **k)

    monkeypatch.setattr(FHI, "calibrate", staticmethod(counted))
    assert main(cmd) == 0
    assert "read from the cache" in capsys.readouterr().out
    assert (tmp_path / "a.yaml").read_text() == first and calls == []
    assert main([*cmd, "--fraction", "0.1"]) == 0
    assert "computed and stored" in capsys.readouterr().out and calls == [0.1]
