"""deploy.gateway.conf and gateway helpers that need no running nginx."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import deploy.gateway.nginx as gateway
from deploy.gateway.conf import coordinator_conf, silo_conf
from xsilo.errors import ConfigError, DeploymentError

P = Path("/srv/gw")


def _coord(**kw: object) -> str:
    args = dict(prefix=P, listen="0.0.0.0:8443", server_cert=P / "s.crt", server_key=P / "s.key",
                ca_cert=P / "ca.crt", crl=P / "crl.pem", superlink="127.0.0.1:9091",
                superlink_server_name="localhost")
    return coordinator_conf(**{**args, **kw})  # type: ignore[arg-type]


def test_coordinator_conf_has_the_directives_that_matter() -> None:
    conf = _coord()
    for directive in ("ssl_verify_client on;", "ssl_verify_depth 1;", 'ssl_crl "/srv/gw/crl.pem"',
                      "client_max_body_size 64m;", "proxy_buffering off;", "proxy_ssl_verify on;",
                      "location /v1/fleet/", "return 405;", "return 403;",
                      "$ssl_client_verify", "$ssl_client_s_dn", "$ssl_client_serial",
                      "error.log\" info;", 'pid "/srv/gw/logs/nginx.pid"'):
        assert directive in conf, directive
    fleet = conf[conf.index("location /v1/fleet/"):conf.index("location / ")]
    assert "return 403" not in fleet  # Flower reads a 403 on a Fleet path as "run not running"
    assert "xsilo_key_ok" not in conf


KEY = base64.b64encode(ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()


def test_node_key_binding_map() -> None:
    conf = _coord(node_key_bindings={"O=H,CN=hospital-a": KEY})
    assert f'"O=H,CN=hospital-a" "{KEY}";' in conf
    fleet = conf[conf.index("location /v1/fleet/"):conf.index("location / ")]
    assert 'if ($xsilo_expected_key = "") { return 401; }' in fleet
    assert "if ($http_flwr_public_key != $xsilo_expected_key) { return 401; }" in fleet
    assert "\\1" not in conf  # no back-reference that a crafted header could satisfy


@pytest.mark.parametrize("key", ["TFMwdExT+/==", "x|" + KEY, KEY + " ", base64.b64encode(
    b"-----BEGIN PRIVATE KEY-----").decode()])
def test_a_bound_key_must_be_what_flower_sends(key: str) -> None:
    with pytest.raises(ConfigError, match="flwr-public-key"):
        _coord(node_key_bindings={"CN=a": key})


@pytest.mark.parametrize("bad", [{"listen": "0.0.0.0:8443; evil"},
                                 {"superlink_server_name": 'x"; include /etc/passwd; "'},
                                 {"node_key_bindings": {"CN=a": "x;y"}},
                                 {"crl": Path("/tmp/$crl")}])
def test_unsafe_values_never_reach_the_config(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        _coord(**bad)


def test_silo_conf_presents_the_client_certificate() -> None:
    conf = silo_conf(prefix=P, listen="127.0.0.1:9443", local_cert=P / "l.crt",
                     local_key=P / "l.key", ca_cert=P / "ca.crt", client_cert=P / "silo.crt",
                     client_key=P / "silo.key", upstream="coord.example.org:8443",
                     server_name="coord.example.org")
    for directive in ('proxy_ssl_certificate "/srv/gw/silo.crt"', "proxy_ssl_verify on;",
                      'proxy_ssl_name "coord.example.org"', "proxy_ssl_server_name on;",
                      "server coord.example.org:8443;", "listen 127.0.0.1:9443 ssl;"):
        assert directive in conf, directive


def test_missing_nginx_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XSILO_NGINX", raising=False)
    monkeypatch.setattr(gateway.shutil, "which", lambda _name: None)
    monkeypatch.setattr(gateway, "NGINX_FALLBACKS", ("/nonexistent/nginx",))
    with pytest.raises(DeploymentError, match="apt-get install nginx-light"):
        gateway.find_nginx()


def test_reload_running_without_nginx_is_false(tmp_path: Path) -> None:
    assert gateway.reload_running(tmp_path) is False
