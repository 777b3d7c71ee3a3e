"""Mixture: proportions, epoch-style walking, pool replacement, and exact resume."""

import json
from collections import Counter

import pytest

from pillion.data.mixture import Mixture
from pillion.problem import Problem


def pool(name, n, levels=(None,)):
    return [Problem(id=f"{name}/{i}", question=f"q{i}", answer="0", source=name,
                    level=levels[i % len(levels)]) for i in range(n)]


def pools():
    return {"a": pool("a", 100), "b": pool("b", 50), "c": pool("c", 30, levels=(1, 2, 3))}


def test_source_proportions_within_tolerance():
    mix = Mixture(pools(), weights={"a": 0.5, "b": 0.3, "c": 0.2}, seed=1)
    counts = Counter(p.source for p in mix.sample(20000))
    # binomial std at n=20000 is <= 0.0036; 0.015 is about 4 std
    for name, w in {"a": 0.5, "b": 0.3, "c": 0.2}.items():
        assert abs(counts[name] / 20000 - w) < 0.015


def test_default_weights_follow_pool_sizes():
    mix = Mixture(pools(), seed=2)
    counts = Counter(p.source for p in mix.sample(18000))
    for name, size in {"a": 100, "b": 50, "c": 30}.items():
        assert abs(counts[name] / 18000 - size / 180) < 0.015


def test_level_weights_inside_a_source():
    mix = Mixture({"c": pool("c", 300, levels=(1, 2, 3))}, level_weights={1: 0.2, 2: 0.3, 3: 0.5},
                  seed=0)
    counts = Counter(p.level for p in mix.sample(20000))
    for level, w in {1: 0.2, 2: 0.3, 3: 0.5}.items():
        assert abs(counts[level] / 20000 - w) < 0.015
    # levels left out of level_weights are never drawn
    only3 = Mixture({"c": pool("c", 30, levels=(1, 2, 3))}, level_weights={3: 1.0})
    assert {p.level for p in only3.sample(100)} == {3}


def test_without_replacement_within_an_epoch():
    mix = Mixture({"a": pool("a", 10)}, seed=5)
    first = [p.id for p in mix.sample(10)]
    assert sorted(first) == sorted(f"a/{i}" for i in range(10))  # one full pass, no repeats
    second = [p.id for p in mix.sample(10)]
    assert sorted(second) == sorted(first) and second != first  # reshuffled for the next epoch
    assert mix.drawn("a") == 20


def test_zero_weight_and_bad_weights():
    mix = Mixture(pools(), weights={"a": 1.0, "b": 0.0})
    assert {p.source for p in mix.sample(500)} == {"a"}
    with pytest.raises(ValueError, match="unknown pools"):
        Mixture(pools(), weights={"z": 1.0})
    with pytest.raises(ValueError, match="no problems"):
        Mixture({"a": pool("a", 5)}, level_weights={1: 1.0})  # pool a has no level 1


def test_replace_pool():
    mix = Mixture(pools(), seed=0)
    mix.sample(50)
    mix.replace_pool("a", pool("a", 100)[:3])
    drawn = [p.id for p in mix.sample(2000) if p.source == "a"]
    assert set(drawn) == {"a/0", "a/1", "a/2"}
    with pytest.raises(KeyError):
        mix.replace_pool("z", [])


def run_with_changes(mix, start, stop):
    """Draw steps start..stop-1 of 7 each, with a weight change and a pool replacement mid-way."""
    out = []
    for step in range(start, stop):
        if step == 4:
            mix.set_weights({"a": 0.2, "b": 0.2, "c": 0.6})
        if step == 6:
            mix.replace_pool("b", pools()["b"][:20])
        out += [p.id for p in mix.sample(7)]
    return out


@pytest.mark.parametrize("cut", [2, 5, 8])
def test_resume_continues_the_same_sequence(cut):
    uninterrupted = run_with_changes(Mixture(pools(), level_weights=None, seed=11), 0, 12)

    first = Mixture(pools(), seed=11)
    head = run_with_changes(first, 0, cut)
    state = json.loads(json.dumps(first.state_dict()))  # it must survive JSON

    resumed_pools = pools()
    if cut > 6:  # the checkpoint was taken after the replacement: rebuild the pool the same way
        resumed_pools["b"] = resumed_pools["b"][:20]
    second = Mixture(resumed_pools, seed=0)  # seed and weights come from the state
    second.load_state_dict(state)
    tail = run_with_changes(second, cut, 12)
    assert head + tail == uninterrupted


def test_resume_batching_does_not_matter():
    a = Mixture(pools(), level_weights={None: 1.0, 1: 1.0, 2: 2.0, 3: 3.0}, seed=4)
    b = Mixture(pools(), level_weights={None: 1.0, 1: 1.0, 2: 2.0, 3: 3.0}, seed=4)
    assert [p.id for p in a.sample(300)] == [p.id for p in b.sample(100) + b.sample(200)]
    state = json.loads(json.dumps(a.state_dict()))
    c = Mixture(pools())
    c.load_state_dict(state)
    assert [p.id for p in c.sample(50)] == [p.id for p in a.sample(50)]


def test_resume_refuses_a_different_pool():
    mix = Mixture(pools(), seed=0)
    mix.sample(10)
    changed = pools()
    changed["a"] = changed["a"][:99]
    with pytest.raises(ValueError, match="differs"):
        Mixture(changed).load_state_dict(mix.state_dict())


def test_level_weight_keys_from_text_configs():
    # YAML / JSON may give level keys as strings: "2" is level 2, "null" / "none" the unlevelled
    mix = Mixture({"c": pool("c", 30, levels=(1, 2))}, level_weights={"2": 1, "1": 0}, seed=0)
    assert mix.level_weights == {2: 1.0, 1: 0.0}
    assert {p.level for p in mix.sample(20)} == {2}
    assert Mixture({"c": pool("c", 4, levels=(1,))}, level_weights={"null": 1, 1: 1}).level_weights == {None: 1.0,
                                                                                                         1: 1.0}
    with pytest.raises(ValueError, match="level_weights: a key must be a level"):
        Mixture({"c": pool("c", 4)}, level_weights={"hard": 1.0})
