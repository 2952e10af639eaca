"""deploy.gateway.conf and gateway helpers that need no running nginx."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import deploy.gateway.nginx as gateway
from deploy.gateway.bindings import node_key_bindings
from deploy.gateway.conf import coordinator_conf, silo_conf
from deploy.pki.authority import Pki
from tests.deploy.conftest import enroll_silo
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


@pytest.mark.parametrize("subject", ["~.*", "default", "hostnames", "CNX=a"])
def test_a_subject_nginx_would_read_as_a_regex_or_keyword_is_refused(subject: str) -> None:
    with pytest.raises(ConfigError, match="is not one xsilo issues"):
        _coord(node_key_bindings={subject: KEY})


@pytest.mark.parametrize("key", ["TFMwdExT+/==", "x|" + KEY, KEY + " ", base64.b64encode(
    b"-----BEGIN PRIVATE KEY-----").decode()])
def test_a_bound_key_must_be_what_flower_sends(key: str) -> None:
    with pytest.raises(ConfigError, match="flwr-public-key"):
        _coord(node_key_bindings={"CN=a": key})


@pytest.mark.parametrize("bad", [{"listen": "0.0.0.0:8443; evil"},
                                 {"superlink_server_name": 'x"; include /etc/passwd; "'},
                                 {"node_key_bindings": {"CN=a": "x;y"}},
                                 {"crl": Path("/tmp/$crl")},
                                 # `$` matches before a final newline: every check is whole
                                 {"listen": "0.0.0.0:8443\n"},
                                 {"superlink": "127.0.0.1:9091\n"},
                                 {"superlink_server_name": "localhost\n"},
                                 {"node_key_bindings": {"CN=a\n": KEY}},
                                 {"node_key_bindings": {"CN=a": KEY + "\n"}},
                                 {"listen": "0.0.0.0:0"}, {"listen": "0.0.0.0:65536"}])
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


def test_a_stale_pid_file_never_gets_another_process_signalled(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`xsilo silo renew --bundle` reloads the gateway named by its pid file; after a reboot
    that pid may be any process's (here a `sleep`, which SIGHUP would end)."""
    (tmp_path / "logs").mkdir()
    other = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / "logs" / "nginx.pid").write_text(f"{other.pid}\n")
        assert gateway.reload_running(tmp_path) is False
        assert other.poll() is None  # not signalled
        assert f"names process {other.pid}, which is not the nginx gateway" in caplog.text
    finally:
        other.kill()
        other.wait()


def test_only_this_prefixs_nginx_master_is_taken_for_the_gateway(tmp_path: Path) -> None:
    prefix, proc = tmp_path / "gw", tmp_path / "proc"
    launched = " ".join(gateway._nginx_cmd("/usr/sbin/nginx", prefix, "-g", "daemon off;"))
    cmdlines = {1: f"nginx: master process {launched}".encode() + b"\0",
                2: "\0".join(gateway._nginx_cmd("/usr/sbin/nginx", prefix)).encode() + b"\0",
                3: b"nginx: worker process\0",
                4: f"nginx: master process {launched}".replace(str(prefix), str(prefix) + "x")
                   .encode(),
                5: b"sleep\0" + "\0".join(gateway._nginx_cmd("", prefix)[1:]).encode()}
    for pid, raw in cmdlines.items():
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "cmdline").write_bytes(raw)
    assert [pid for pid in (*cmdlines, 6) if gateway._is_master_for(pid, prefix, proc)] == [1, 2]


def test_a_silo_whose_binding_nginx_cannot_read_is_left_out_by_name(
        pki: Pki, tmp_path: Path) -> None:
    """A certificate issued before organizations were checked whole ('O=Acme\\ ,CN=…')
    refuses that silo, not the coordinator gateway for every silo."""
    enroll_silo(pki, "hospital-a", tmp_path / "a")
    enroll_silo(pki, "hospital-b", tmp_path / "b")
    index = json.loads(pki.index_path.read_text())
    for rec in index["certificates"]:
        if rec["name"] == "hospital-a":
            rec["subject"] = "O=Acme\\ ,CN=hospital-a"
    pki.index_path.write_text(json.dumps(index))
    with pytest.raises(ConfigError):  # all of them in one config: nginx cannot have it
        _coord(node_key_bindings=pki.node_key_bindings())
    bindings, problems = node_key_bindings(pki)
    assert [dn.rpartition("CN=")[2] for dn in bindings] == ["hospital-b"]
    (problem,) = problems
    assert problem.startswith("silo hospital-a is refused by the gateway")
    assert "xsilo pki revoke hospital-a" in problem
    assert f'"{next(iter(bindings))}"' in _coord(node_key_bindings=bindings)
