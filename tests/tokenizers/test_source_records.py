"""The held-out share of whole units (shards, demo pieces): exact, stable, never all or none."""

from __future__ import annotations

import pytest
from musiclm.tokenizers.contract import shard_index
from musiclm.tokenizers.source_records import held_out_share


def rank(name: str) -> int:
    return shard_index(name, 1_000_000)


def test_the_share_is_the_lowest_ranked_round_fraction_of_the_items():
    names = [f"shard-{i:06d}.tar" for i in range(8)]
    held = held_out_share(names, 0.25, rank)
    assert held == sorted(names, key=rank)[:2]
    assert held == held_out_share(list(reversed(names)), 0.25, rank)  # order does not matter


@pytest.mark.parametrize(
    ("count", "fraction", "expected"),
    [(2, 0.01, 1), (2, 0.99, 1), (5, 0.0, 0), (5, 1.0, 5), (1, 0.5, 0), (0, 0.5, 0)],
)
def test_at_least_one_and_never_every_item_unless_asked(count, fraction, expected):
    names = [f"piece-{i}" for i in range(count)]
    assert len(held_out_share(names, fraction, rank)) == expected
