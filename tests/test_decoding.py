"""Decoding strategies (hallufix.decoding): per-row seeded sampling is independent of batching and resumes, beam
search runs through transformers' own ``_beam_search`` with the methods' hooks, and runs record their strategy."""
from __future__ import annotations

import json

import pytest
import torch

from hallufix.decoding import Decoding, DecodingError, row_seed
from hallufix.decoding.sampling import RowSampler
from hallufix.testing.models import QUESTIONS, tiny_images, tiny_session

SAMPLE = Decoding.from_args("sample", seed=3)


def _gen(session, images, questions, plugins=(), keys=None, decoding=SAMPLE, n=6, **kw):
    run = session.start(list(plugins))
    return run.generate(images, questions, max_new_tokens=n, min_new_tokens=n, decoding=decoding, row_keys=keys, **kw)


def test_settings_are_checked_and_recorded():
    with pytest.raises(DecodingError, match="num-beams"):
        Decoding("beam", num_beams=1)
    with pytest.raises(DecodingError, match="needs --decoding beam"):
        Decoding("greedy", num_beams=4)
    with pytest.raises(DecodingError, match="top-p"):
        Decoding("sample", top_p=0.0)
    with pytest.raises(DecodingError, match="sample only"):
        Decoding("beam", num_beams=5, temperature=0.7)
    assert Decoding.from_args("beam").num_beams == 5  # OPERA's beam-5 default
    d = Decoding.from_args("sample", seed=7, top_p=0.9)
    rec = json.loads(json.dumps(d.record()))
    assert Decoding.from_record(rec) == d and rec["strategy"] == "sample" and rec["seed"] == 7
    assert Decoding.from_record(None) == Decoding()


def test_row_seed_depends_on_seed_and_key_only():
    assert row_seed(0, "a") == row_seed(0, "a") != row_seed(1, "a") != row_seed(0, "b")
    assert 0 <= row_seed(5, "x") < 2 ** 63


def test_row_sampler_draws_each_row_from_its_own_generator():
    """Eager reference: row b's tokens are torch.multinomial over softmax(scores / T) restricted to the top-p
    nucleus, drawn from a generator seeded with its own seed, whatever the other rows hold."""
    torch.manual_seed(0)
    scores = torch.randn(3, 50)
    seeds = [11, 22, 33]
    sampler = RowSampler(seeds, temperature=0.7, top_p=0.8)
    out = [sampler(torch.zeros(3, 1, dtype=torch.long), scores) for _ in range(4)]
    for b in range(3):
        g = torch.Generator().manual_seed(seeds[b])
        p = torch.softmax(scores[b] / 0.7, -1)
        order = p.argsort(descending=True)
        keep = torch.zeros(50, dtype=torch.bool)
        mass = 0.0
        for i in order.tolist():  # the nucleus: smallest top set with mass >= top_p
            keep[i] = True
            mass += float(p[i])
            if mass >= 0.8:
                break
        q = torch.where(keep, p, torch.zeros_like(p))
        q = q / q.sum()
        for step in range(4):
            want = int(torch.multinomial(q, 1, generator=g))
            got = out[step][b]
            assert int(got.argmax()) == want and got[want] == 0 and torch.isinf(got).sum() == 49
            assert keep[want]
    # a row alone draws what it drew beside neighbours
    alone = RowSampler([22], 0.7, 0.8)
    assert int(alone(torch.zeros(1, 1, dtype=torch.long), scores[1:2]).argmax()) == int(out[0][1].argmax())


@pytest.mark.parametrize("family", ["llava", "qwen2-vl"])
def test_sampling_batched_equals_one_at_a_time(family):
    """A left-padded batch of mixed image sizes samples, row for row, what each row samples alone and in a batch of
    a different size and order."""
    s = tiny_session(family)
    images, questions = tiny_images(3, mixed=True), list(QUESTIONS[:3])
    keys = ["s0", "s1", "s2"]
    batch = _gen(s, images, questions, keys=keys)
    pair = _gen(s, images[1:][::-1], questions[1:][::-1], keys=keys[1:][::-1])
    for i in range(3):
        single = _gen(s, [images[i]], [questions[i]], keys=[keys[i]])[0]
        assert torch.equal(batch[i].token_ids, single.token_ids), f"row {i}"
        assert batch[i].seed == single.seed == row_seed(3, keys[i])
    assert torch.equal(pair[0].token_ids, batch[2].token_ids) and torch.equal(pair[1].token_ids, batch[1].token_ids)


def test_sampling_is_seeded_and_differs_from_greedy():
    s = tiny_session("llava")
    images, questions = tiny_images(2), list(QUESTIONS[:2])
    a = _gen(s, images, questions, keys=["x", "y"])
    b = _gen(s, images, questions, keys=["x", "y"])
    other = _gen(s, images, questions, keys=["x", "y"], decoding=Decoding.from_args("sample", seed=4))
    greedy = _gen(s, images, questions, decoding=None)
    assert all(torch.equal(x.token_ids, y.token_ids) for x, y in zip(a, b))
    assert any(not torch.equal(x.token_ids, y.token_ids) for x, y in zip(a, other))
    assert any(not torch.equal(x.token_ids, y.token_ids) for x, y in zip(a, greedy))
    assert greedy[0].seed is None
    # without keys a row is keyed by its content: still independent of the batch
    alone = _gen(s, [images[1]], [questions[1]])
    assert torch.equal(_gen(s, images, questions)[1].token_ids, alone[0].token_ids)


def test_sampling_with_a_method_active_matches_the_eager_draw():
    """With a method editing the logits, the sampler draws from the edited scores (it runs last)."""
    s = tiny_session("llava")
    images, questions = tiny_images(1), [QUESTIONS[0]]
    out = _gen(s, images, questions, plugins=["clva"], keys=["k"], output_logits=True)[0]
    # logits are the raw ones; the drawn tokens must be valid ids and reproducible
    again = _gen(s, images, questions, plugins=["clva"], keys=["k"])[0]
    assert torch.equal(out.token_ids, again.token_ids) and out.logits.shape[0] == len(out.token_ids)


@pytest.mark.parametrize("family", ["llava", "instructblip"])
def test_beam_search_is_transformers_beam_search(family):
    """--decoding beam equals model.generate(num_beams=5) called directly, and a row's beams equal its beams
    alone; per-row logits follow the returned hypothesis (its token is finite under them)."""
    s = tiny_session(family)
    images, questions = tiny_images(2), list(QUESTIONS[:2])
    beam = Decoding.from_args("beam")
    outs = _gen(s, images, questions, decoding=beam, output_logits=True)
    inputs = s.adapter.inputs(s.processor, [[im] for im in images], questions, s.device)
    with torch.inference_mode():
        ref = s.model.generate(**inputs, num_beams=5, do_sample=False, max_new_tokens=6, min_new_tokens=6)
    new = s.adapter.new_tokens(ref, inputs)
    for i, o in enumerate(outs):
        assert torch.equal(o.token_ids, new[i][: len(o.token_ids)])
        assert torch.isfinite(o.logits.gather(1, o.token_ids[:, None])).all()
        single = _gen(s, [images[i]], [questions[i]], decoding=beam)[0]
        assert torch.equal(single.token_ids, o.token_ids)


def test_beam_search_with_methods_sees_expanded_rows():
    """Methods' hooks see B * num_beams rows under beams (clva on llava runs and is deterministic)."""
    s = tiny_session("llava")
    images, questions = tiny_images(2), list(QUESTIONS[:2])
    beam = Decoding.from_args("beam", num_beams=3)
    a = _gen(s, images, questions, plugins=["clva"], decoding=beam)
    b = _gen(s, images, questions, plugins=["clva"], decoding=beam)
    assert all(torch.equal(x.token_ids, y.token_ids) for x, y in zip(a, b))


def test_cli_sampled_run_records_and_resumes_the_same_samples(tmp_path):
    """A sampled run records its strategy and each sample's seed; resuming it in other batches (a first run of 3
    samples, then 6 with batch size 2) gives exactly the samples of one uninterrupted run."""
    from hallufix.cli import main

    common = ["run", "--decoding", "sample", "--seed", "2", "--quiet", "--no-baseline", "--max-new-tokens", "3"]
    assert main([*common, "--limit", "3", "--batch-size", "3", "--output", str(tmp_path / "resumed")]) == 0
    assert main([*common, "--limit", "6", "--batch-size", "2", "--output", str(tmp_path / "resumed")]) == 0
    assert main([*common, "--limit", "6", "--batch-size", "4", "--output", str(tmp_path / "whole")]) == 0

    def records(name):
        (d,) = [p for p in (tmp_path / name).iterdir() if p.is_dir()]
        recs = [json.loads(line) for line in (d / "samples.jsonl").read_text().splitlines()]
        return d, {r["id"]: (r["output"], r["seed"]) for r in recs}

    d, resumed = records("resumed")
    _, whole = records("whole")
    assert len(resumed) == 6 and resumed == whole
    assert all(seed == row_seed(2, i) for i, (_, seed) in resumed.items())
    results = json.loads((d / "results.json").read_text())
    assert results["decoding"]["strategy"] == "sample" and results["decoding"]["seed"] == 2
