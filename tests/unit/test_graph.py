"""The controlled graph task: determinism, splits, verifier, closed-strategy OOD, contexts, parameter checks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mitigate import config as C
from mitigate.tasks.graph import BOS, DEMO, EOS, PAD, SEP, SPECIALS, SPLITS, GraphParams, GraphTask, Prompt

SMALL = dict(n_start=12, n_goal=12, n_concepts=5, n_rare=3, pretrain_pool=2000)
ORDINARY = ("pretrain", "id_train", "id_val", "id_test")


def small(seed: int = 0, **kw) -> GraphTask:
    return GraphTask(GraphParams(seed=seed, **{**SMALL, **kw}))


@pytest.fixture(scope="module")
def task() -> GraphTask:
    return small(0)


def pairs(task, split):
    return [(q.start, q.goal) for q in task.prompts(split)]


def row(path, width):
    """A completion row: the path's nodes, EOS, PAD to width."""
    r = [*map(int, path), EOS]
    return r + [PAD] * (width - len(r))


# ----------------------------------------------------------------------------- determinism

def test_same_params_same_task():
    a, b = small(3), small(3)
    np.testing.assert_array_equal(a.adjacency, b.adjacency)
    np.testing.assert_array_equal(a.concept_of, b.concept_of)
    for split in SPLITS:
        assert a.prompts(split) == b.prompts(split)
    ta, ma = a.pretraining_data()
    tb, mb = b.pretraining_data()
    np.testing.assert_array_equal(ta, tb)
    np.testing.assert_array_equal(ma, mb)


def test_different_seed_different_task():
    a, b = small(3), small(4)
    assert a.vocab_size == b.vocab_size  # same shape ...
    assert not np.array_equal(a.adjacency, b.adjacency)  # ... different wiring
    assert a.prompts("id_test") != b.prompts("id_test")
    assert not np.array_equal(a.pretraining_data()[0], b.pretraining_data()[0])


def test_layout_is_layered(task):
    adj, con = task.adjacency, task.concept_of
    assert adj.shape == (task.vocab_size, task.vocab_size)
    assert not adj[: len(SPECIALS)].any() and not adj[:, : len(SPECIALS)].any()
    assert set(np.unique(con[con >= 0]).tolist()) == set(range(task.n_concepts))
    src, dst = np.nonzero(adj)
    inner = (con[src] >= 0) & (con[dst] >= 0)
    assert (con[src][inner] == con[dst][inner]).all(), "edges never jump between communities"


# ----------------------------------------------------------------------------- splits

def test_ordinary_splits_disjoint_and_nonempty(task):
    sets = {s: set(pairs(task, s)) for s in SPLITS}
    for s in SPLITS:
        assert sets[s], f"split {s} is empty"
        assert len(sets[s]) == len(pairs(task, s)), f"split {s} has duplicate pairs"
    for a in ORDINARY + ("ood_rare",):
        for b in ORDINARY + ("ood_rare",):
            if a < b:
                assert not sets[a] & sets[b], (a, b)
    # closed-strategy OOD = held-out ID test pairs with one community closed: never pretrained on
    assert sets["ood_closed"] <= sets["id_test"]
    assert not sets["ood_closed"] & sets["pretrain"]


def test_split_fractions(task):
    p = task.params
    n_held = sum(len(task.prompts(s)) for s in ("id_train", "id_val", "id_test"))
    n_ord = n_held + len(task.prompts("pretrain"))
    assert n_held == round(p.held_out_fraction * n_ord)
    assert len(task.prompts("id_test")) == round(p.id_test_fraction * n_held)
    assert len(task.prompts("id_val")) == round(p.id_val_fraction * n_held)


def test_rare_only_pairs_use_only_rare_concepts(task):
    rare = set(range(task.n_concepts - task.params.n_rare, task.n_concepts))
    for s, g in pairs(task, "ood_rare"):
        feas = set(task.feasible_concepts(s, g).tolist())
        assert feas and feas <= rare
    for split in ORDINARY:
        for s, g in pairs(task, split):
            assert set(task.feasible_concepts(s, g).tolist()) - rare, "ordinary pairs have a common concept"


def test_pretraining_data_covers_only_pretrain_pairs(task):
    tokens, mask = task.pretraining_data()
    assert tokens.shape == mask.shape and len(tokens) == task.params.pretrain_pool
    plain = tokens[:, 0] == BOS
    demo = tokens[:, 0] == DEMO
    assert (plain | demo).all()
    frac = demo.mean()
    assert abs(frac - task.params.demo_fraction) < 0.05
    seen = set(map(tuple, tokens[plain][:, 1:3].tolist())) | set(map(tuple, tokens[demo][:, 7:9].tolist()))
    assert seen <= set(pairs(task, "pretrain"))
    held = set().union(*(pairs(task, s) for s in ("id_train", "id_val", "id_test", "ood_rare")))
    assert not seen & held
    # the loss covers exactly the target path and its EOS
    for r in np.flatnonzero(plain)[:50]:
        assert mask[r].tolist() == [False] * 4 + [True] * 6 + [False] * (tokens.shape[1] - 10)
        assert tokens[r, 9] == EOS
    # targets are valid paths for their pair
    prompts = [Prompt(int(t[1]), int(t[2]), "pretrain") for t in tokens[plain][:200]]
    ok, _ = task.verify(prompts, tokens[plain][:200, 4:4 + task.max_new_tokens])
    assert ok.all()


# ----------------------------------------------------------------------------- verifier

@pytest.fixture(scope="module")
def example(task):
    """An ID test prompt and its path table."""
    q = task.prompts("id_test")[0]
    return q, task.path_table(q.start, q.goal)


def test_verify_accepts_every_valid_path(task, example):
    q, table = example
    assert len(table.paths) >= 1
    assert table.prior.sum() == pytest.approx(1.0)
    w = task.max_new_tokens
    ok, concept = task.verify([q] * len(table.paths), np.array([row(p, w) for p in table.paths]))
    assert ok.all()
    np.testing.assert_array_equal(concept, table.concepts)
    np.testing.assert_array_equal(concept, task.concept_of[table.paths[:, 1]])


def test_verify_rejects_broken_paths(task, example):
    q, table = example
    path = table.paths[0].tolist()
    w = task.max_new_tokens
    adj = task.adjacency
    # a non-edge: swap the middle node for one not reachable from the entry node
    non_mid = [v for v in range(len(SPECIALS), task.vocab_size) if not adj[path[1], v] and v not in path]
    bad_edge = path[:2] + [non_mid[0]] + path[3:]
    # a wrong goal: a valid path for another goal of the same start
    other_goal = next(int(g) for g in task._layout["goals"] if g != q.goal
                      and len(task.path_table(q.start, int(g)).paths))
    wrong_goal = task.path_table(q.start, other_goal).paths[0].tolist()
    wrong_start = [path[1]] + path[1:]
    rows = [
        row(bad_edge, w),
        row(wrong_goal, w),
        path + [PAD] * (w - len(path)),         # no EOS
        path + [path[-1]] * (w - len(path)),    # no EOS, node padding
        row(path[:1], w),                       # a single node
        [EOS] + [PAD] * (w - 1),                # empty
        row(path[:2] + [path[1]] + path[2:4], w),  # repeats a node
        row(wrong_start, w),
        [BOS] + row(path, w)[:-1],              # a special token inside
    ]
    ok, concept = task.verify([q] * len(rows), np.array(rows))
    assert not ok.any()
    assert (concept == -1).all()
    good, _ = task.verify([q], np.array([row(path, w)]))
    assert good.all()


def test_verify_length_limit():
    t = small(0, max_path_len=5)
    q = t.prompts("id_test")[0]
    path = t.path_table(q.start, q.goal).paths[0].tolist()
    ok, _ = t.verify([q, q], np.array([row(path, 8), row(path + [path[-1]], 8)]))
    assert ok.tolist() == [True, False]


def test_verify_blocked_concept(task, example):
    q, table = example
    w = task.max_new_tokens
    comp = np.array([row(p, w) for p in table.paths])
    c0 = int(table.concepts[0])
    blocked = dataclasses.replace(q, blocked=c0)
    ok, concept = task.verify([blocked] * len(comp), comp)
    np.testing.assert_array_equal(ok, table.concepts != c0)
    assert (concept[~ok] == -1).all()


def test_ood_closed_closes_a_uniformly_drawn_concept(task):
    closed = task.prompts("ood_closed")
    assert closed
    w = task.max_new_tokens
    preferred = 0
    for q in closed:
        table = task.path_table(q.start, q.goal)
        feas = np.unique(table.concepts)
        assert len(feas) >= 2 and q.blocked in feas
        mass = {int(c): table.prior[table.concepts == c].sum() for c in feas}
        preferred += q.blocked == max(mass, key=mass.get)
        ok, concept = task.verify([q] * len(table.paths), np.array([row(p, w) for p in table.paths]))
        np.testing.assert_array_equal(ok, table.concepts != q.blocked)
        assert ok.any(), "another concept stays feasible"
        assert q.blocked not in set(concept[ok].tolist())
    # not built on the prior's preference: the preferred concept is closed about as often as
    # chance (1 / |F| per pair) predicts, not always
    chance = sum(1 / len(task.feasible_concepts(q.start, q.goal)) for q in closed)
    assert preferred < len(closed) and abs(preferred - chance) < 4 * np.sqrt(chance)
    assert all(q.blocked == -1 for s in ORDINARY + ("ood_rare",) for q in task.prompts(s))


# ----------------------------------------------------------------------------- contexts

def test_teacher_context_format(task, example):
    q, table = example
    y = table.paths[0].tolist()
    ctx = task.teacher_context(q, np.array(y + [EOS, PAD, PAD]))
    assert ctx == [DEMO, *y, SEP, q.start, q.goal, SEP]
    assert task.teacher_context(q, y) == ctx
    assert q.tokens == [BOS, q.start, q.goal, SEP]


def test_teacher_context_matches_pretraining_demo_rows(task):
    tokens, mask = task.pretraining_data()
    demo_rows = tokens[tokens[:, 0] == DEMO][:20]
    assert len(demo_rows)
    for r in demo_rows:
        q = Prompt(int(r[7]), int(r[8]), "pretrain")
        ctx = task.teacher_context(q, r[1:6])
        assert r[:len(ctx)].tolist() == ctx


def test_unknown_split(task):
    with pytest.raises(ValueError, match="allowed: .*id_test"):
        task.prompts("test")


# ----------------------------------------------------------------------------- parameter checks

def test_graph_params_validate():
    with pytest.raises(ValueError, match="n_rare"):
        GraphParams(n_concepts=4, n_rare=4).validate()
    with pytest.raises(ValueError, match="id_val_fraction"):
        GraphParams(id_val_fraction=0.5, id_test_fraction=0.5).validate()
    GraphParams().validate()


@pytest.mark.parametrize("override,key", [
    ("task.n_rare=5", "task.n_rare"),                 # smoke has n_concepts = 5
    ("task.p_internal=1.5", "task.p_internal"),
    ("task.p_start_link=-0.1", "task.p_start_link"),
    ("task.seed=-1", "task.seed"),
    ("task.n_concepts=1", "task.n_concepts"),
    ("task.n_concepts=2.5", "task.n_concepts"),
    ("task.max_path_len=4", "task.max_path_len"),
    ("task.id_val_fraction=0.6", "task.id_val_fraction"),
    ("task.held_out_fraction=abc", "task.held_out_fraction"),
    ("task.n_concept=3", "task.n_concept"),
])
def test_bad_task_params_are_config_errors(override, key):
    with pytest.raises(C.ConfigError) as err:
        C.load(preset="smoke", overrides=[override])
    assert key in str(err.value)
    assert isinstance(err.value, ValueError)


def test_unknown_task_key_suggests():
    with pytest.raises(C.ConfigError, match="did you mean 'task.n_concepts'"):
        C.load(preset="smoke", overrides=["task.n_concept=3"])


# ----------------------------------------------------------------------------- an ID tail of rare-only pairs

HELD = ("id_train", "id_val", "id_test")


def all_rare(task, s, g) -> bool:
    rare = set(range(task.n_concepts - task.params.n_rare, task.n_concepts))
    return set(task.feasible_concepts(s, g).tolist()) <= rare


def test_rare_in_id_default_is_todays_task(task):
    assert GraphParams().rare_in_id == 0.0 and GraphParams().rare_in_pretrain is False
    for explicit in (small(0, rare_in_id=0.0), small(0, rare_in_pretrain=True)):  # no share: nothing moves
        for split in SPLITS:
            assert explicit.prompts(split) == task.prompts(split)
        np.testing.assert_array_equal(explicit.pretraining_data()[0], task.pretraining_data()[0])
    for split in ORDINARY:  # today: no ordinary pair is rare-only
        assert not any(all_rare(task, s, g) for s, g in pairs(task, split))


def check_disjoint(v):
    for a in ORDINARY + ("ood_rare",):
        for b in ORDINARY + ("ood_rare",):
            if a < b:
                assert not set(pairs(v, a)) & set(pairs(v, b)), (a, b)
    assert set(pairs(v, "ood_closed")) <= set(pairs(v, "id_test"))


def pretrained_pairs(v):
    tokens, _ = v.pretraining_data()
    plain, demo = tokens[:, 0] == BOS, tokens[:, 0] == DEMO
    return set(map(tuple, tokens[plain][:, 1:3].tolist())) | set(map(tuple, tokens[demo][:, 7:9].tolist()))


@pytest.mark.parametrize("share", [0.25, 0.5, 1.0])
def test_rare_in_id_puts_the_set_share_of_rare_only_pairs_in_the_id_splits_only(task, share):
    v = small(0, rare_in_id=share)
    np.testing.assert_array_equal(v.adjacency, task.adjacency)  # the same graph ...
    before, after = set(pairs(task, "ood_rare")), set(pairs(v, "ood_rare"))
    assert after <= before  # ... the rest of the rare tail stays OOD
    moved = before - after
    assert len(moved) == round(share * len(before))
    check_disjoint(v)
    # pretraining is today's (same pairs, same data: the same base model); the held-out ordinary
    # pairs keep their split, and the moved pairs join the ID splits by the split fractions
    assert v.prompts("pretrain") == task.prompts("pretrain")
    np.testing.assert_array_equal(v.pretraining_data()[0], task.pretraining_data()[0])
    for s in HELD:
        got = set(pairs(v, s))
        assert got - moved == set(pairs(task, s))
        assert all(all_rare(v, *q) for q in got & moved)
    tail = {s: len(set(pairs(v, s)) & moved) for s in HELD}
    assert sum(tail.values()) == len(moved)
    assert tail["id_val"] == round(v.params.id_val_fraction * len(moved))
    assert tail["id_test"] == round(v.params.id_test_fraction * len(moved))
    # mixed into each split, not appended (a prompt cap `eval.max_prompts` takes both kinds)
    test = pairs(v, "id_test")
    first = [q in moved for q in test[: len(test) // 2]]
    assert any(first) and not all(first)


def test_rare_in_id_with_pretrain_treats_them_as_ordinary_pairs(task):
    v = small(0, rare_in_id=0.5, rare_in_pretrain=True)
    before, after = set(pairs(task, "ood_rare")), set(pairs(v, "ood_rare"))
    moved = before - after
    assert after <= before and len(moved) == round(0.5 * len(before))
    check_disjoint(v)
    ordinary = {s: set(pairs(v, s)) for s in ORDINARY}
    assert set().union(*ordinary.values()) == set().union(*(pairs(task, s) for s in ORDINARY)) | moved
    assert all(len(ordinary[s] & moved) > 0 for s in ORDINARY)  # in pretraining and every held-out split
    n_held = sum(len(ordinary[s]) for s in HELD)
    assert n_held == round(v.params.held_out_fraction * (n_held + len(ordinary["pretrain"])))
    assert pretrained_pairs(v) == ordinary["pretrain"]


def test_rare_in_id_is_deterministic_and_follows_the_task_seed():
    a, b = small(3, rare_in_id=0.5), small(3, rare_in_id=0.5)
    for split in SPLITS:
        assert a.prompts(split) == b.prompts(split)
    assert small(4, rare_in_id=0.5).prompts("id_test") != a.prompts("id_test")


def test_rare_in_id_all_leaves_no_rare_only_split():
    assert small(0, rare_in_id=1.0).prompts("ood_rare") == []


@pytest.mark.parametrize("value", ["1.5", "-0.1"])
def test_rare_in_id_out_of_range_is_a_config_error(value):
    with pytest.raises(C.ConfigError, match="task.rare_in_id"):
        C.load(preset="smoke", overrides=[f"task.rare_in_id={value}"])


# ----------------------------------------------------------------------------- partial exposure of the rare tail

def test_rare_pretrain_fraction_default_changes_nothing():
    assert GraphParams().rare_pretrain_fraction == 0.0 and GraphParams().rare_pretrain_weight == 1.0
    base = small(0, rare_in_id=0.5)
    for explicit in (small(0, rare_in_id=0.5, rare_pretrain_fraction=0.0),
                     small(0, rare_in_id=0.5, rare_pretrain_weight=0.3)):  # no pretrained rare pair: no weight
        for split in SPLITS:
            assert explicit.prompts(split) == base.prompts(split)
        np.testing.assert_array_equal(explicit.pretraining_data()[0], base.pretraining_data()[0])
    # without rare_in_id nothing moves, so nothing is pretrained either
    plain = small(0, rare_pretrain_fraction=0.5)
    for split in SPLITS:
        assert plain.prompts(split) == small(0).prompts(split)


@pytest.mark.parametrize("frac", [0.25, 0.5])
def test_rare_pretrain_fraction_pretrains_that_share_of_the_moved_pairs(task, frac):
    ref = small(0, rare_in_id=0.75)
    v = small(0, rare_in_id=0.75, rare_pretrain_fraction=frac)
    np.testing.assert_array_equal(v.adjacency, task.adjacency)
    assert pairs(v, "ood_rare") == pairs(ref, "ood_rare")  # the OOD tail is untouched
    moved = set(pairs(task, "ood_rare")) - set(pairs(v, "ood_rare"))
    exposed = set(pairs(v, "pretrain")) - set(pairs(task, "pretrain"))
    assert set(pairs(task, "pretrain")) <= set(pairs(v, "pretrain"))  # the ordinary pretraining pairs stay
    assert exposed <= moved and len(exposed) == round(frac * len(moved))
    assert all(all_rare(v, *q) for q in exposed)
    check_disjoint(v)
    held = set().union(*(pairs(v, s) for s in HELD))
    assert held & moved == moved - exposed  # the rest of the moved pairs are ID, split by the fractions
    tail = {s: len(set(pairs(v, s)) & moved) for s in HELD}
    assert tail["id_test"] == round(v.params.id_test_fraction * len(moved - exposed))
    for s in HELD:  # the ordinary held-out pairs keep their split
        assert set(pairs(v, s)) - moved == set(pairs(task, s))
    assert pretrained_pairs(v) == set(pairs(v, "pretrain"))  # the exposed pairs are in the data


def test_rare_pretrain_fraction_is_deterministic_and_follows_the_task_seed():
    a, b = (small(3, rare_in_id=0.75, rare_pretrain_fraction=0.3) for _ in range(2))
    for split in SPLITS:
        assert a.prompts(split) == b.prompts(split)
    np.testing.assert_array_equal(a.pretraining_data()[0], b.pretraining_data()[0])
    assert small(4, rare_in_id=0.75, rare_pretrain_fraction=0.3).prompts("pretrain") != a.prompts("pretrain")


def test_rare_pretrain_weight_down_weights_the_exposed_pairs_rows():
    def share(w):
        v = small(0, rare_in_id=0.75, rare_pretrain_fraction=0.5, rare_pretrain_weight=w, pretrain_pool=20_000)
        exposed = set(pairs(v, "pretrain")) - set(pairs(small(0), "pretrain"))
        tokens, _ = v.pretraining_data()
        plain = tokens[:, 0] == BOS
        sg = np.where(plain[:, None], tokens[:, 1:3], tokens[:, 7:9])
        hit = np.array([tuple(r) in exposed for r in sg.tolist()])
        n_pre = len(v.prompts("pretrain"))
        return hit.mean(), len(exposed), n_pre

    full, k, n = share(1.0)
    low, _, _ = share(0.2)
    assert abs(full - k / n) < 0.02  # uniform over pretraining pairs
    assert abs(low - 0.2 * k / (n - k + 0.2 * k)) < 0.02
    for split in SPLITS:  # the weight changes the data only, never a split
        a = small(0, rare_in_id=0.75, rare_pretrain_fraction=0.5, rare_pretrain_weight=0.2)
        assert a.prompts(split) == small(0, rare_in_id=0.75, rare_pretrain_fraction=0.5).prompts(split)


@pytest.mark.parametrize("override", ["task.rare_pretrain_fraction=1.5", "task.rare_pretrain_weight=-0.1"])
def test_rare_pretrain_out_of_range_is_a_config_error(override):
    with pytest.raises(C.ConfigError, match=override.split("=")[0]):
        C.load(preset="smoke", overrides=[override])


def test_rare_pretrain_fraction_with_rare_in_pretrain_is_a_config_error():
    with pytest.raises(C.ConfigError, match="rare_pretrain_fraction"):
        C.load(preset="smoke", overrides=["task.rare_in_id=0.5", "task.rare_in_pretrain=true",
                                          "task.rare_pretrain_fraction=0.2"])
