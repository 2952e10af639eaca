"""Messages travel as flat plain data; malformed ones are protocol errors."""

from __future__ import annotations

import numpy as np
import pytest

from strategies.secagg import make_config, message_from_record
from strategies.secagg.messages import (
    KeyAdvert, KeyRequest, MaskedInput, MaskRequest, UnmaskRequest, UnmaskResponse)
from xsilo.errors import ConfigError, ProtocolError

CONFIG = make_config(run_id="r", roster=[3, 1, 2], threshold=2, length=4, clip=1.0, bits=8,
                     max_weight=10)

SAMPLES = [
    KeyRequest.for_config(CONFIG, epoch=1),
    KeyAdvert(run_id="r", silo=1, epoch=1, enc_pk=b"e" * 32, mask_pk=b"m" * 32),
    MaskRequest(run_id="r", round=1, active=(1, 2), dir_silos=(1, 2), dir_epochs=(1, 1),
                dir_enc_pks=(b"a" * 32, b"b" * 32), dir_mask_pks=(b"c" * 32, b"d" * 32),
                dir_certificates=(b"", b""), dir_signatures=(b"", b"")),
    MaskedInput(run_id="r", round=1, silo=1, recipients=(1, 2), bundles=(b"x", b"y"),
                masked=np.arange(5, dtype=np.uint32), commitments=(b"c" * 32, b"d" * 32)),
    UnmaskRequest(run_id="r", round=1, survivors=(1,), dropped=(2,), senders=(1,), bundles=(b"z",)),
    UnmaskResponse(run_id="r", round=1, silo=1, self_owners=(1,), self_shares=(b"s" * 33,),
                   pair_owners=(1,), pair_peers=(2,), pair_shares=(b"p" * 33,)),
]

PLAIN = (int, float, str, bytes, list, np.ndarray)


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_roundtrip_through_plain_records(message):
    record = message.to_record()
    assert all(isinstance(v, PLAIN) for v in record.values())
    assert all(isinstance(x, (int, bytes)) for v in record.values() if isinstance(v, list) for x in v)
    back = message_from_record(record)
    assert type(back) is type(message)
    for key, value in record.items():
        got = back.to_record()[key]
        assert np.array_equal(got, value) if isinstance(value, np.ndarray) else got == value


def test_config_travels_in_the_key_request():
    assert SAMPLES[0].config() == CONFIG and CONFIG.roster == (1, 2, 3) and CONFIG.x_of(3) == 3


@pytest.mark.parametrize("field,value", [("round", "1"), ("round", True), ("active", [1, "2"]),
                                         ("dir_enc_pks", "notalist"), ("run_id", None)])
def test_malformed_fields_are_protocol_errors(field, value):
    record = SAMPLES[2].to_record()
    record[field] = value
    with pytest.raises(ProtocolError, match=f"field '{field}'"):
        message_from_record(record)


def test_an_absent_field_is_an_error_unless_it_has_a_default():
    record = SAMPLES[0].to_record()
    del record["protocol"], record["encoded"]  # as an older release sends it
    old = message_from_record(record)
    assert (old.protocol, old.encoded) == (1, 0)
    del record["epoch"]
    with pytest.raises(ProtocolError, match="field 'epoch' = None .NoneType.; expected an integer"):
        message_from_record(record)


def test_masked_vector_must_be_a_uint_vector():
    record = SAMPLES[3].to_record()
    record["masked"] = np.arange(5, dtype=np.float32)
    with pytest.raises(ProtocolError, match="masked"):
        message_from_record(record)


def test_unknown_kind_and_mismatched_directory():
    with pytest.raises(ProtocolError, match="not a secure-aggregation message"):
        message_from_record({"kind": "other"})
    bad = MaskRequest(**{**SAMPLES[2].__dict__, "dir_epochs": (1,)})
    with pytest.raises(ProtocolError, match="dir_silos, dir_epochs, dir_enc_pks, dir_mask_pks, "
                       "dir_certificates, dir_signatures must have the same length"):
        bad.directory()


@pytest.mark.parametrize("kwargs,match", [({"threshold": 1}, "threshold must be in 2..3"),
                                          ({"threshold": 4}, "threshold"),
                                          ({"roster": [1, 1, 2]}, "distinct"),
                                          ({"length": 0}, "length"), ({"run_id": ""}, "run_id"),
                                          ({"bits": 64}, "bits")])
def test_config_validation(kwargs, match):
    base = dict(run_id="r", roster=[1, 2, 3], threshold=2, length=4, clip=1.0, bits=8,
                max_weight=10)
    with pytest.raises(ConfigError, match=match):
        make_config(**{**base, **kwargs})
