"""benchmarks/secagg_growth.py: the share bytes it reports are the protocol's, and the
whole round it runs with a dropped silo unmasks."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import secagg_growth  # noqa: E402

from strategies.secagg.masking import share_bytes  # noqa: E402


def test_the_share_traffic_grows_with_the_square_of_the_silos_per_input() -> None:
    rows = [secagg_growth.one_size(n, 64, 2, full=True) for n in (6, 12)]
    for row in rows:
        n, t = row["silos"], row["threshold"]
        assert t == -(-2 * n // 3)
        # n sealed bundles of n shares (33 bytes) + nonce and tag (28), and 16 bytes of
        # commitment per share
        assert row["share_bytes_per_input"] == n * (33 * n + 28) + 16 * n * n
        assert share_bytes(n) == (row["share_bytes_per_input"], n * row["share_bytes_per_input"])
        # an unmask request carries one bundle from each of the n − 1 survivors
        assert row["unmask_request_bytes"] == (n - 1) * (33 * n + 28)
        assert row["coordinator_unmask_ms"] > 0 and row["dealing_ms"] > 0
    assert rows[1]["share_bytes_per_input"] > 3.5 * rows[0]["share_bytes_per_input"]
    assert "| 12 | 8 |" in secagg_growth.table(rows)
