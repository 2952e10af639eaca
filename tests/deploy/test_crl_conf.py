"""deploy.gateway.conf: the CRL directives of both gateways (no running nginx)."""

from __future__ import annotations

from pathlib import Path

from deploy.gateway.conf import CRL_PATH, coordinator_conf, silo_conf

P = Path("/srv/gw")


def _coord(**kw: object) -> str:
    return coordinator_conf(prefix=P, listen="0.0.0.0:8443", server_cert=P / "s.crt",  # type: ignore[arg-type]
                            server_key=P / "s.key", ca_cert=P / "ca.crt", crl=P / "crl.pem",
                            superlink="127.0.0.1:9091", superlink_server_name="localhost", **kw)


def _silo(**kw: object) -> str:
    return silo_conf(prefix=P, listen="127.0.0.1:9443", local_cert=P / "l.crt",  # type: ignore[arg-type]
                     local_key=P / "l.key", ca_cert=P / "ca.crt", client_cert=P / "c.crt",
                     client_key=P / "c.key", upstream="127.0.0.1:8443", server_name="localhost",
                     **kw)


def test_the_coordinator_serves_exactly_one_crl_path() -> None:
    conf = _coord(served_crl=P / "tmp" / "crl.pem")
    assert CRL_PATH == "/xsilo/crl.pem"
    block = conf[conf.index(f"location = {CRL_PATH} {{"):conf.index("location / {")]
    assert 'alias "/srv/gw/tmp/crl.pem";' in block  # the copy, never the PKI directory
    assert "return 405;" in block and "proxy_pass" not in block
    assert conf.count("location") == 3  # Fleet, the CRL, everything else (403)
    assert "xsilo/crl.pem" not in _coord()  # no copy, no location


def test_the_silo_gateway_checks_the_coordinator_against_the_kit_crl() -> None:
    conf = _silo(crl=P / "crl.pem")
    fleet = conf[conf.index("location /v1/fleet/"):conf.index("location / {")]
    assert 'proxy_ssl_crl "/srv/gw/crl.pem";' in fleet and "proxy_ssl_verify on;" in fleet
    assert "proxy_ssl_crl" not in _silo()
    assert "/xsilo/" not in conf  # a silo gateway forwards nothing but the Fleet API
