"""baselines/select_field_rows.py: issue 25's selection rule (highest id_val pass@1, ties within 0.005
to the setting nearest the plain method, a far-end choice is an edge to extend)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "baselines"))
import select_field_rows as S  # noqa: E402


def summary(cells: dict[str, float]) -> dict:
    return {"methods": {name: {"id": {"pass_at_k": {"1": p}, "concepts_at_r": 2.0}, "per_seed": []}
                        for name, p in cells.items()}}


def by_row(cells):
    return {c["row"]: c for c in S.choose(summary(cells))}


def test_highest_pass1_wins_and_a_tie_goes_to_the_plain_end():
    rows = by_row({"unlikely_0.1": 0.700, "unlikely_0.25": 0.704, "unlikely_0.5": 0.650})
    assert rows["grpo_unlikely"]["chosen"] == 0.1 and not rows["grpo_unlikely"]["edge"]  # 0.704 - 0.700 < 0.005
    rows = by_row({"unlikely_0.1": 0.690, "unlikely_0.25": 0.704, "unlikely_0.5": 0.650})
    assert rows["grpo_unlikely"]["chosen"] == 0.25


def test_a_far_end_choice_is_an_edge_unless_the_domain_ends_there():
    rows = by_row({"unlikely_0.1": 0.60, "unlikely_0.25": 0.65, "unlikely_0.5": 0.70,
                   "passk_2": 0.60, "passk_4": 0.62, "passk_8": 0.70})
    assert rows["grpo_unlikely"]["edge"] and rows["grpo_unlikely"]["chosen"] == 0.5
    assert rows["grpo_passk"]["chosen"] == 8 and not rows["grpo_passk"]["edge"]  # k cannot pass the group size


def test_top_k_counts_from_the_full_vocabulary_end():
    rows = by_row({"fkl_top5": 0.701, "fkl_top20": 0.700})
    assert rows["sdsd_forward_kl_top20"]["chosen"] == 20  # a tie: 20 is nearer the full vocabulary
    rows = by_row({"fkl_top5": 0.75, "fkl_top20": 0.70})
    assert rows["sdsd_forward_kl_top20"]["chosen"] == 5 and rows["sdsd_forward_kl_top20"]["edge"]
