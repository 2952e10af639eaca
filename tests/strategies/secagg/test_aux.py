"""The auxiliary sum: statistics masked beside the update, summed exactly to 2^-16 per silo."""

from __future__ import annotations

import numpy as np
import pytest

from strategies.randomness import KeystreamSource
from strategies.secagg import make_config
from strategies.secagg.aux import AUX_MAX, decode_aux, encode_aux
from strategies.secagg.simulate import LocalFederation
from xsilo.errors import SecureAggregationError, UpdateRejected


def test_the_aux_sum_over_survivors_matches_with_dropouts() -> None:
    config = make_config(run_id="aux", roster=list(range(5)), threshold=3, length=4, clip=1.0,
                         bits=12, max_weight=100, aux_length=3)
    fed = LocalFederation(config, seed=b"aux")
    fed.setup()
    gen = np.random.default_rng(1)  # test data only
    updates = {s: gen.uniform(-1, 1, 4) for s in range(5)}
    aux = {s: np.array([s * 10.5, 0.25 + s, 1e6 * s]) for s in range(5)}
    result = fed.run_round(1, updates, dict.fromkeys(range(5), 7), drop_before_input=[4],
                           drop_before_unmask=[1], aux=aux)
    expected = sum(aux[s] for s in result.contributors)
    assert list(result.contributors) == [0, 1, 2, 3]
    np.testing.assert_allclose(result.aux_sum, expected, atol=4 * 2**-16)
    # the coordinator only ever saw masked aux words: none equals a silo's encoding
    seen = [r["aux"] for r in fed.coordinator_view if r.get("kind") == "secagg/masked_input"]
    encoded = [np.floor(aux[s] * 2**16).astype(np.uint64) for s in range(5)]
    assert seen and not any(np.abs(w.astype(np.float64) - e.astype(np.float64)).max() < 2
                            for w in seen for e in encoded)


def test_encoding_is_unbiased_clipped_and_refuses_nan() -> None:
    rng = KeystreamSource(bytes(32))
    words = np.stack([encode_aux(np.array([0.3]), length=1, rng=rng) for _ in range(4000)])
    assert abs(decode_aux(words.sum(axis=0), count=4000)[0] / 4000 - 0.3) < 1e-6
    big = encode_aux(np.array([-5.0, AUX_MAX * 4]), length=2, rng=rng)
    assert decode_aux(big, count=1)[0] == 0.0 and decode_aux(big, count=1)[1] < AUX_MAX
    with pytest.raises(UpdateRejected, match="NaN or infinite"):
        encode_aux(np.array([np.nan]), length=1, rng=rng)
    with pytest.raises(UpdateRejected, match="sums 2 auxiliary statistics"):
        encode_aux(np.array([1.0]), length=2, rng=rng)
    with pytest.raises(SecureAggregationError, match="masks did not cancel"):
        decode_aux(np.array([2**63], dtype=np.uint64), count=3)
