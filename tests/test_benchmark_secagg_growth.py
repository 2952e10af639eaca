"""benchmarks/secagg_growth.py: the share bytes it reports are the protocol's, and the
whole round it runs with a dropped silo unmasks."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import secagg_growth  # noqa: E402

from strategies.secagg.masking import share_bytes  # noqa: E402


def test_the_share_traffic_per_silo_grows_with_the_square_of_n_or_with_n() -> None:
    pairs = [secagg_growth.one_size(n, 64, 2, full=True) for n in (6, 12)]
    for row in pairs:
        n, t = row["silos"], row["threshold"]
        assert t == -(-2 * n // 3)
        # n sealed bundles of n shares (33 bytes) + nonce and tag (28), and 16 bytes of
        # commitment per share
        assert row["share_bytes_per_silo"] == n * (33 * n + 28) + 16 * n * n
        assert share_bytes(n) == (row["share_bytes_per_silo"], n * row["share_bytes_per_silo"])
        # an unmask request carries one bundle from each of the n − 1 survivors
        assert row["unmask_request_bytes"] == (n - 1) * (33 * n + 28)
        assert row["coordinator_unmask_ms"] > 0 and row["dealing_ms"] > 0
    assert pairs[1]["share_bytes_per_silo"] > 3.5 * pairs[0]["share_bytes_per_silo"]
    keys = [secagg_growth.one_size(n, 64, 2, full=True, round_keys=True) for n in (6, 12)]
    for row in keys:
        n = row["silos"]
        assert row["mode"] == "round keys"
        assert row["share_bytes_per_silo"] == n * (2 * (33 + 16) + 28)
        assert share_bytes(n, round_keys=True)[0] == row["share_bytes_per_silo"]
        # every silo's bundle, the dropped silo's too (it dealt before it dropped)
        assert row["unmask_request_bytes"] == n * (2 * 33 + 28)
        assert row["coordinator_unmask_ms"] > 0 and row["dealing_ms"] > 0
    assert keys[1]["share_bytes_per_silo"] == 2 * keys[0]["share_bytes_per_silo"]
    text = secagg_growth.table(pairs + keys)
    assert "| pair seeds | 12 | 8 |" in text and "| round keys | 12 | 8 |" in text
