"""silo_client.secure: the silo's side of the key setup across runs."""

from __future__ import annotations

import pytest

from silo_client import secure as glue
from strategies.secagg import make_config
from strategies.secagg.messages import KeyRequest
from xsilo.errors import ProtocolError


def test_a_key_request_for_another_run_starts_over_with_fresh_keys() -> None:
    """A resumed run (after a coordinator crash) sets up a new secure-aggregation run while
    the silo still holds the old one's keys: it starts over, under its (maybe new) index."""
    old = make_config(run_id="run-1", roster=[0, 1, 2], threshold=2, length=3, clip=1.0,
                      bits=8, max_weight=10)
    new = make_config(run_id="run-1-resumed", roster=[0, 1, 2], threshold=2, length=3,
                      clip=1.0, bits=8, max_weight=10)
    stored, first = glue.setup(None, KeyRequest.for_config(old, epoch=1).to_record(), silo_index=1)
    stored2, second = glue.setup(stored, KeyRequest.for_config(new, epoch=1).to_record(),
                                 silo_index=2)  # its roster index may change too
    assert second["run_id"] == "run-1-resumed" and second["silo"] == 2 and second["epoch"] == 1
    assert second["enc_pk"] != first["enc_pk"] and stored2["config.run_id"] == "run-1-resumed"
    with pytest.raises(ProtocolError, match="keys are for silo 2"):  # same run: index fixed
        glue.setup(stored2, KeyRequest.for_config(new, epoch=2).to_record(), silo_index=0)
