"""Pure parts of the deliverer."""

from __future__ import annotations

import pytest

from dispatcher.delivery import claim_limit


@pytest.mark.parametrize(
    ("concurrency", "batch_size", "expected"),
    [
        (100, 100, 50),  # half the slots: the other half's requests are answered while the claim runs
        (100, 20, 20),  # never more than a batch
        (7, 100, 3),
        (1, 100, 1),  # a process with one slot still claims
        (2, 1, 1),
    ],
)
def test_claim_takes_at_most_half_the_slots_and_a_batch(concurrency: int, batch_size: int, expected: int) -> None:
    """One claim takes at most half the process's slots and at most batch_size rows, and never zero."""
    assert claim_limit(concurrency, batch_size) == expected
