"""The controlled graph path-finding task (docs/design.md, the controlled task).

A layered directed graph: start layer -> K communities ("concepts") -> goal layer. Each community
has entry, middle and exit nodes wired sparsely inside (several internal routes = functional
variety). A start node links to some communities and a goal node is reachable from some, so only
the communities in both sets are feasible for a pair (s, g): the model has to plan. Pretraining
paths pick a feasible concept with a Zipf preference over the global concept rank (concept 0 is
the most preferred), then a route uniformly. A share of pretraining sequences carry a
demonstration prefix `DEMO y' SEP s g SEP y`, whose target `y` shares the concept of `y'` with
probability `demo_copy_concept` (and its route with `demo_copy_route`) - the in-context copying
that makes a self-distillation teacher's pointwise CMI non-zero.

Everything is a pure function of `GraphParams`: equal parameters give identical graphs and splits.
This module is the only one that knows the graph's tokens and split names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from mitigate.core.fields import Section, opt
from mitigate.tasks.base import Vocab, context_not_offered, partial_length, register_task

PAD, BOS, EOS, SEP, DEMO = 0, 1, 2, 3, 4
SPECIALS = ("<pad>", "<bos>", "<eos>", "<sep>", "<demo>")
SPLITS = ("pretrain", "id_train", "id_val", "id_test", "ood_closed", "ood_rare")


_f = opt


@dataclass
class GraphParams(Section):
    name: str = _f("graph", "registered task name")
    seed: int = _f(0, "task seed: fixes graph, splits and pretraining data (not the training seed)", min=0)
    # the maxima bound the vocabulary and the pair tables (memory), far above any graph studied here
    n_start: int = _f(32, "nodes in the start layer", min=2, max=4096)
    n_goal: int = _f(32, "nodes in the goal layer", min=2, max=4096)
    n_concepts: int = _f(8, "communities (concepts, strategies) between start and goal layers", min=2, max=1024)
    n_entry: int = _f(2, "entry nodes per community", min=1, max=256)
    n_mid: int = _f(3, "middle nodes per community", min=1, max=256)
    n_exit: int = _f(2, "exit nodes per community", min=1, max=256)
    p_start_link: float = _f(0.8, "probability that a start node links into a community", min=0.0, max=1.0)
    p_goal_link: float = _f(0.6, "probability that a goal node is reachable from a community", min=0.0, max=1.0)
    p_internal: float = _f(0.5, "density of entry->middle and middle->exit edges", min=0.0, max=1.0)
    zipf_alpha: float = _f(1.0, "skew of the pretraining concept preference w_c = (rank_c+1)^-alpha", min=0.0)
    n_rare: int = _f(5, "lowest-ranked concepts that count as rare (rare-only OOD pairs use only them)", min=1)
    demo_fraction: float = _f(0.3, "share of pretraining sequences with a demonstration prefix", min=0.0, max=1.0)
    demo_copy_concept: float = _f(0.95, "P(target shares the demonstration's concept)", min=0.0, max=1.0)
    demo_copy_route: float = _f(0.5, "P(target copies the whole route | shared concept)", min=0.0, max=1.0)
    held_out_fraction: float = _f(0.4, "share of ordinary pairs kept out of pretraining", min=0.05, max=0.95)
    id_val_fraction: float = _f(0.2, "share of held-out pairs used for validation (model selection)",
                                min=0.0, max=0.9)
    id_test_fraction: float = _f(0.4, "share of held-out pairs used for ID evaluation", min=0.05, max=0.9)
    max_path_len: int = _f(6, "longest rollout (in nodes) the verifier accepts", min=5, max=1024)
    pretrain_pool: int = _f(200_000, "pretraining sequences generated once and sampled from", min=100, max=10**8)
    rare_in_id: float = _f(0.0, "share of the rare-only pairs (every feasible concept rare), drawn from the task "
                                "seed, that join the ID splits (id_train, id_val, id_test by their fractions) "
                                "instead of the rare_only OOD split (0: none, the rare tail is OOD only)",
                           min=0.0, max=1.0)
    rare_in_pretrain: bool = _f(False, "the rare_in_id pairs join the ordinary pairs before the pretraining split, "
                                       "so some are pretrained on (false: held out of pretraining, like rare_only)")
    rare_pretrain_fraction: float = _f(0.0, "share of the rare_in_id pairs, drawn from the task seed on its own "
                                            "stream, that join pretraining (partial exposure of the rare tail); the "
                                            "rest join the ID splits as before (0: none; needs rare_in_pretrain false)",
                                       min=0.0, max=1.0)
    rare_pretrain_weight: float = _f(1.0, "pretraining sampling weight of each rare_pretrain_fraction pair relative to "
                                          "an ordinary pretraining pair (1: uniform over pretraining pairs, as before)",
                                     min=0.0, max=1.0)

    def validate(self) -> None:
        if self.n_rare >= self.n_concepts:
            raise ValueError(f"task.n_rare ({self.n_rare}) must be < task.n_concepts ({self.n_concepts})")
        if self.id_val_fraction + self.id_test_fraction >= 1.0:
            raise ValueError("task.id_val_fraction + task.id_test_fraction must leave room for id_train (< 1)")
        if self.rare_pretrain_fraction > 0 and self.rare_in_pretrain:
            raise ValueError("task.rare_pretrain_fraction needs task.rare_in_pretrain false (with it true the "
                             "rare_in_id pairs are ordinary pairs already)")


@dataclass(frozen=True)
class Prompt:
    """One (start, goal) query. `blocked` is a concept closed at evaluation time (-1 = none)."""

    start: int
    goal: int
    split: str
    blocked: int = -1

    @property
    def tokens(self) -> list[int]:
        return [BOS, self.start, self.goal, SEP]


@dataclass
class PathTable:
    """All valid paths of one pair, with their concept and base (pretraining) probability."""

    paths: np.ndarray  # [P, 5] node tokens
    concepts: np.ndarray  # [P]
    prior: np.ndarray  # [P], sums to 1


@register_task("graph", GraphParams)
@dataclass
class GraphTask:
    params: GraphParams = field(default_factory=GraphParams)
    name: str = "graph"
    train_split = "id_train"
    val_split = "id_val"
    test_split = "id_test"
    # result key -> split, named by what it tests:
    #   closed_strategy: an ID test pair with one of its feasible concepts closed, chosen uniformly
    #     (not by any model's preference); unannounced, so only a model that still samples other
    #     strategies passes. Its pass@1 is neutral to how a perfect model spreads over concepts
    #     (expected 1 - 1/|F|); its pass@k for large k rewards covering several.
    #   rare_only: pairs whose only feasible concepts are rare in pretraining; these pairs are in
    #     neither pretraining nor post-training (unseen structure, reached only by rare strategies).
    #     With `rare_in_id` > 0 a share of such pairs, drawn from the task seed, joins the ordinary
    #     pairs instead (an ID tail that rarer strategies solve); the rest stay here.
    ood_splits = {"closed_strategy": "ood_closed", "rare_only": "ood_rare"}

    # ------------------------------------------------------------------ graph
    @cached_property
    def _layout(self) -> dict:
        p = self.params
        rng = np.random.default_rng([p.seed, 0])
        nxt = len(SPECIALS)

        def take(k: int) -> np.ndarray:
            nonlocal nxt
            nxt += k
            return np.arange(nxt - k, nxt)

        starts, goals = take(p.n_start), take(p.n_goal)
        entry, mid, exit_ = [], [], []
        for _ in range(p.n_concepts):
            entry.append(take(p.n_entry))
            mid.append(take(p.n_mid))
            exit_.append(take(p.n_exit))
        vocab = nxt
        adj = np.zeros((vocab, vocab), dtype=bool)
        concept_of = np.full(vocab, -1, dtype=np.int64)

        def bipartite(src, dst):
            m = rng.random((len(src), len(dst))) < p.p_internal
            for i in range(len(src)):  # every node keeps at least one way through
                if not m[i].any():
                    m[i, rng.integers(len(dst))] = True
            for j in range(len(dst)):
                if not m[:, j].any():
                    m[rng.integers(len(src)), j] = True
            adj[np.ix_(src, dst)] |= m

        for c in range(p.n_concepts):
            concept_of[np.concatenate([entry[c], mid[c], exit_[c]])] = c
            bipartite(entry[c], mid[c])
            bipartite(mid[c], exit_[c])
        start_links = rng.random((p.n_start, p.n_concepts)) < p.p_start_link
        goal_links = rng.random((p.n_goal, p.n_concepts)) < p.p_goal_link
        for i, s in enumerate(starts):
            for c in np.flatnonzero(start_links[i]):  # link to one or both entry nodes
                k = rng.integers(1, p.n_entry + 1)
                adj[s, rng.choice(entry[c], size=k, replace=False)] = True
        for j, g in enumerate(goals):
            for c in np.flatnonzero(goal_links[j]):
                k = rng.integers(1, p.n_exit + 1)
                adj[rng.choice(exit_[c], size=k, replace=False), g] = True
        return dict(starts=starts, goals=goals, entry=entry, mid=mid, exit=exit_, adj=adj,
                    concept_of=concept_of, vocab=vocab)

    @property
    def vocab_size(self) -> int:
        return self._layout["vocab"]

    @property
    def vocab(self) -> Vocab:
        return Vocab(size=self.vocab_size, pad=PAD, bos=BOS, eos=EOS)

    @property
    def adjacency(self) -> np.ndarray:
        return self._layout["adj"]

    @property
    def concept_of(self) -> np.ndarray:
        return self._layout["concept_of"]

    @property
    def n_concepts(self) -> int:
        return self.params.n_concepts

    @property
    def max_new_tokens(self) -> int:
        return self.params.max_path_len + 1  # nodes + EOS

    @cached_property
    def concept_weights(self) -> np.ndarray:
        ranks = np.arange(self.params.n_concepts)
        return (ranks + 1.0) ** -self.params.zipf_alpha

    def token_name(self, t: int) -> str:
        return SPECIALS[t] if t < len(SPECIALS) else f"n{t}"

    # ------------------------------------------------------------------ paths
    def path_table(self, start: int, goal: int) -> PathTable:
        """Enumerate every valid path s -> entry -> middle -> exit -> g with its base probability."""
        L, adj = self._layout, self._layout["adj"]
        paths, concepts = [], []
        for c in range(self.params.n_concepts):
            for e in L["entry"][c]:
                if not adj[start, e]:
                    continue
                for m in L["mid"][c]:
                    if not adj[e, m]:
                        continue
                    for x in L["exit"][c]:
                        if adj[m, x] and adj[x, goal]:
                            paths.append((start, e, m, x, goal))
                            concepts.append(c)
        paths_a = np.array(paths, dtype=np.int64).reshape(-1, 5)
        concepts_a = np.array(concepts, dtype=np.int64)
        prior = np.zeros(len(paths_a))
        if len(paths_a):
            feasible = np.unique(concepts_a)
            w = self.concept_weights[feasible] / self.concept_weights[feasible].sum()
            for c, wc in zip(feasible, w):
                sel = concepts_a == c
                prior[sel] = wc / sel.sum()
        return PathTable(paths_a, concepts_a, prior)

    def correct_completions(self, prompt: Prompt) -> tuple[np.ndarray, np.ndarray]:
        """Every completion the verifier accepts for `prompt` (the path and its EOS), [P, 6], with its
        concept [P]: the correct set is enumerable here (each valid path crosses one community), so
        probabilities restricted to it are exact (the ratio test, `metrics.ratio`)."""
        t = self.path_table(prompt.start, prompt.goal)
        keep = t.concepts != prompt.blocked
        paths = np.hstack([t.paths[keep], np.full((int(keep.sum()), 1), EOS, dtype=np.int64)])
        return paths, t.concepts[keep]

    def feasible_concepts(self, start: int, goal: int) -> np.ndarray:
        return np.unique(self.path_table(start, goal).concepts)

    # ------------------------------------------------------------------ splits
    @cached_property
    def _splits(self) -> dict[str, list[Prompt]]:
        p = self.params
        rng = np.random.default_rng([p.seed, 1])
        rare = set(range(p.n_concepts - p.n_rare, p.n_concepts))
        ordinary, rare_only, every = [], [], []
        for s in self._layout["starts"]:
            for g in self._layout["goals"]:
                feas = set(self.feasible_concepts(int(s), int(g)).tolist())
                if not feas:
                    continue
                (rare_only if feas <= rare else ordinary).append((int(s), int(g)))
                every.append((int(s), int(g)))
        extra = []  # rare-only pairs in the ID splits: an ID tail only rare strategies solve (by structure)
        if p.rare_in_id > 0:
            tail_rng = np.random.default_rng([p.seed, 4])  # its own stream: the other draws stay as they are
            pick = tail_rng.permutation(len(rare_only))[:int(round(p.rare_in_id * len(rare_only)))]
            extra, picked = [rare_only[i] for i in pick], set(pick.tolist())
            rare_only = [q for i, q in enumerate(rare_only) if i not in picked]
            if p.rare_in_pretrain:  # ordinary pairs in every respect, in the enumeration order
                joined = set(ordinary) | set(extra)
                ordinary, extra = [q for q in every if q in joined], []
        extra_pre = []  # rare_in_id pairs pretrained on (rare_pretrain_fraction): partial exposure of the tail
        if extra and p.rare_pretrain_fraction > 0:
            expo_rng = np.random.default_rng([p.seed, 5])  # its own stream: the other draws stay as they are
            k = int(round(p.rare_pretrain_fraction * len(extra)))
            chosen = set(expo_rng.permutation(len(extra))[:k].tolist())
            extra_pre = [q for i, q in enumerate(extra) if i in chosen]
            extra = [q for i, q in enumerate(extra) if i not in chosen]
        order = rng.permutation(len(ordinary))
        ordinary = [ordinary[i] for i in order]
        n_held = int(round(p.held_out_fraction * len(ordinary)))
        held, pre = ordinary[:n_held], ordinary[n_held:] + extra_pre
        n_val = int(round(p.id_val_fraction * n_held))
        n_test = int(round(p.id_test_fraction * n_held))
        val, test, train = held[:n_val], held[n_val:n_val + n_test], held[n_val + n_test:]
        if extra:  # held out of pretraining; each ID split gets its fraction of them, mixed in
            x_val = int(round(p.id_val_fraction * len(extra)))
            x_test = int(round(p.id_test_fraction * len(extra)))
            parts = (val + extra[:x_val], test + extra[x_val:x_val + x_test], train + extra[x_val + x_test:])
            val, test, train = ([part[i] for i in tail_rng.permutation(len(part))] for part in parts)
        out = {
            "pretrain": [Prompt(s, g, "pretrain") for s, g in pre],
            "id_train": [Prompt(s, g, "id_train") for s, g in train],
            "id_val": [Prompt(s, g, "id_val") for s, g in val],
            "id_test": [Prompt(s, g, "id_test") for s, g in test],
            "ood_rare": [Prompt(s, g, "ood_rare") for s, g in rare_only],
            "_rare_pretrain": [Prompt(s, g, "pretrain") for s, g in extra_pre],  # internal: not a split
        }
        # Closed strategy: ID test pairs with an alternative, one feasible concept closed, drawn
        # uniformly from the task seed (never from a model's or the prior's preference).
        closed_rng = np.random.default_rng([p.seed, 3])
        closed = []
        for q in out["id_test"]:
            feas = self.feasible_concepts(q.start, q.goal)
            if len(feas) >= 2:
                closed.append(Prompt(q.start, q.goal, "ood_closed", blocked=int(closed_rng.choice(feas))))
        out["ood_closed"] = closed
        return out

    def prompts(self, split: str) -> list[Prompt]:
        if split not in SPLITS:
            raise ValueError(f"unknown split '{split}'; allowed: {', '.join(SPLITS)}")
        return list(self._splits[split])

    # ------------------------------------------------------------------ verifier
    def verify(self, prompts: list[Prompt], completions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised verifier. `completions[i]` is the generated token row for `prompts[i]`
        (EOS-terminated, padded with anything after EOS). Returns (correct [N] bool,
        concept [N] int, -1 where incorrect). A rollout is correct iff it is a node sequence that
        ends with EOS within `max_path_len` nodes, starts at s, ends at g, follows edges, repeats
        no node, and does not cross the prompt's blocked concept."""
        comp = np.asarray(completions, dtype=np.int64)
        n, width = comp.shape
        starts = np.array([q.start for q in prompts])
        goals = np.array([q.goal for q in prompts])
        blocked = np.array([q.blocked for q in prompts])
        is_eos = comp == EOS
        has_eos = is_eos.any(1)
        length = np.where(has_eos, is_eos.argmax(1), width)  # nodes before EOS
        pos = np.arange(width)[None, :]
        inside = pos < length[:, None]
        node = comp >= len(SPECIALS)
        ok = has_eos & (length >= 2) & (length <= self.params.max_path_len)
        ok &= np.where(inside, node, True).all(1)
        ok &= comp[:, 0] == starts
        last = comp[np.arange(n), np.clip(length - 1, 0, width - 1)]
        ok &= last == goals
        safe = np.where(inside & node, comp, 0)
        adj = self._layout["adj"]
        step_ok = adj[safe[:, :-1], safe[:, 1:]] | ~(inside[:, 1:])
        ok &= step_ok.all(1)
        srt = np.sort(np.where(inside, comp, -1 - pos), axis=1)  # padding made unique and negative
        ok &= ~(srt[:, 1:] == srt[:, :-1]).any(1)
        concept = np.where(ok, self._layout["concept_of"][safe[:, 1]], -1)
        crosses_blocked = (blocked >= 0) & (concept == blocked)
        ok &= ~crosses_blocked
        concept = np.where(ok, concept, -1)
        return ok, concept

    def rollout_features(self, completions: np.ndarray, concepts: np.ndarray, concept_weight: float = 0.5
                         ) -> np.ndarray:
        """Features for comparing rollouts (the `ot` regularizer): [N, n_concepts + vocab].

        Concept one-hot scaled so that two paths of different concepts are `concept_weight` apart in
        squared distance, then visited-node counts scaled so that two paths differing in every one of
        their nodes are `1 - concept_weight` apart. Incorrect rollouts (concept -1) have no concept part."""
        comp = np.asarray(completions, dtype=np.int64)
        n = len(comp)
        one_hot = np.zeros((n, self.n_concepts))
        ok = concepts >= 0
        one_hot[np.flatnonzero(ok), concepts[ok]] = 1.0
        is_eos = comp == EOS
        length = np.where(is_eos.any(1), is_eos.argmax(1), comp.shape[1])
        inside = (np.arange(comp.shape[1])[None, :] < length[:, None]) & (comp >= len(SPECIALS))
        counts = np.zeros((n, self.vocab_size))
        np.add.at(counts, (np.repeat(np.arange(n), comp.shape[1])[inside.ravel()], comp[inside]), 1.0)
        return np.hstack([np.sqrt(concept_weight / 2) * one_hot,
                          np.sqrt((1 - concept_weight) / (2 * self.params.max_path_len)) * counts])

    # ------------------------------------------------------------------ contexts
    # context kinds the self-teacher may see (`tasks.base.CONTEXT_KINDS`; `none` is the plain prompt).
    # Not `answer_verdict`: the vocabulary has no token for a verdict, and pretraining never showed one.
    teacher_contexts = ("full", "partial", "answer")
    ANSWER_NODES = 2  # `answer`: the path's goal-side end, its exit node (which names the concept) and g

    def teacher_context(self, prompt: Prompt, demonstration: list[int] | np.ndarray, kind: str = "full",
                        rollout_correct: bool | None = None, context_tokens: int = 0,
                        context_fraction: float = 0.5) -> list[int]:
        """The pretraining demonstration format `DEMO y* SEP s g SEP` (y* without its EOS) with what
        `kind` keeps of y*: `full` all of it; `partial` its first j nodes (`tasks.base.partial_length`:
        `context_tokens`, or floor(`context_fraction` x its length)); `answer` its goal-side end, the
        last `ANSWER_NODES` nodes (exit node and goal: which community the path came through and where
        it arrived). `none` is the plain prompt, `BOS s g SEP`."""
        demo = [int(t) for t in demonstration if t != EOS and t != PAD]
        if kind == "partial":
            demo = demo[:partial_length(len(demo), context_tokens, context_fraction)]
        elif kind == "answer":
            demo = demo[-self.ANSWER_NODES:]
        elif kind == "none":
            return prompt.tokens
        elif kind != "full":
            raise context_not_offered(self, kind)
        return [DEMO, *demo, SEP, prompt.start, prompt.goal, SEP]

    # ------------------------------------------------------------------ pretraining data
    def pretraining_data(self) -> tuple[np.ndarray, np.ndarray]:
        """(tokens [N, L], loss_mask [N, L]) for next-token pretraining: the loss covers the
        target path and its EOS only. Plain rows are `BOS s g SEP y EOS`; a `demo_fraction` of
        rows are `DEMO y' SEP s g SEP y EOS` with y copying y' as set by the task parameters."""
        p = self.params
        rng = np.random.default_rng([p.seed, 2])
        pairs = self.prompts("pretrain")
        tables = [self.path_table(q.start, q.goal) for q in pairs]
        width = 1 + 5 + 1 + 3 + 5 + 1
        tokens = np.full((p.pretrain_pool, width), PAD, dtype=np.int64)
        mask = np.zeros_like(tokens, dtype=bool)
        rare_pre = set(self._splits["_rare_pretrain"])
        if rare_pre and p.rare_pretrain_weight != 1.0:  # down-weighted rare pairs (never in the default task)
            w = np.array([p.rare_pretrain_weight if q in rare_pre else 1.0 for q in pairs])
            which = rng.choice(len(pairs), size=p.pretrain_pool, p=w / w.sum())
        else:
            which = rng.integers(len(pairs), size=p.pretrain_pool)
        is_demo = rng.random(p.pretrain_pool) < p.demo_fraction
        for k, (q, t) in enumerate(zip(pairs, tables)):
            rows = np.flatnonzero(which == k)
            if len(rows) == 0:
                continue
            y = rng.choice(len(t.prior), size=len(rows), p=t.prior)
            demo_rows = is_demo[rows]
            y_demo = rng.choice(len(t.prior), size=len(rows), p=t.prior)
            copy_c = rng.random(len(rows)) < p.demo_copy_concept
            copy_r = rng.random(len(rows)) < p.demo_copy_route
            for i in np.flatnonzero(demo_rows & copy_c):
                same = np.flatnonzero(t.concepts == t.concepts[y_demo[i]])
                y[i] = y_demo[i] if copy_r[i] else rng.choice(same)
            for r, yi, ydi, d in zip(rows, y, y_demo, demo_rows):
                path = t.paths[yi].tolist()
                if d:
                    seq = self.teacher_context(q, t.paths[ydi]) + path + [EOS]
                else:
                    seq = q.tokens + path + [EOS]
                tokens[r, :len(seq)] = seq
                mask[r, len(seq) - len(path) - 1:len(seq)] = True
        return tokens, mask

    def to_dict(self) -> dict:
        return dataclasses.asdict(self.params)
