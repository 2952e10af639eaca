"""Render the two nginx configurations (pure functions: paths in, text out).

Every path nginx writes (pid, logs, temp files) lies inside the gateway's prefix so it runs
unprivileged and side by side with other gateways. Values that reach the config are
either paths we created, ``host:port`` strings we validated, certificate subjects built
from validated names, or base64 — nothing is interpolated unchecked.

The limits (docs/security.md, "Gateway limits", says why each has its value):

* a client that has not sent a complete request header — TLS handshake included — within
  ``HEADER_TIMEOUT`` is dropped (RST, ``reset_timedout_connection``), certificate or not;
* ``worker_processes auto`` × ``worker_connections`` connections in all, so a few hundred
  idle connections no longer fill the gateway;
* at most ``PER_ADDRESS`` requests in progress per client address (``limit_conn``; nginx
  counts a connection once its request header is read);
* bodies over 64 MiB are refused (413) before a byte reaches the upstream
  (``proxy_request_buffering on``);
* a reload (new CRL) ends the old workers, and the connections they still hold, after
  ``SHUTDOWN_TIMEOUT``;
* TLS 1.2 with ECDHE and AEAD suites only (TLS 1.3 suites are all AEAD), in and out.

Beside the Fleet API the coordinator gateway serves one more thing, to consortium client
certificates only: ``GET`` :data:`CRL_PATH`, the CRL it enforces (public, CA-signed), so
that silo gateways — which check the coordinator's certificate against that CRL
(``proxy_ssl_crl``) — can keep theirs fresh. That exact path and nothing else.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from pathlib import Path

from xsilo.errors import ConfigError

__all__ = ["CIPHERS", "CRL_PATH", "HEADER_TIMEOUT", "PER_ADDRESS", "SHUTDOWN_TIMEOUT",
           "check_binding", "check_hostport", "coordinator_conf", "silo_conf"]

# Matched with fullmatch: `$` would also match before a final "\n".
_HOSTPORT = re.compile(r"[A-Za-z0-9.\-]+:\d{1,5}|\[[0-9a-fA-F:]+\]:\d{1,5}")
_SAFE = re.compile(r"[^\"\\;{}$\n\r]*")
_B64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")

HEADER_TIMEOUT = 10  # s: TLS handshake + request header
SHUTDOWN_TIMEOUT = 10  # s: old workers after a reload
PER_ADDRESS = 64  # requests in progress per client address
CRL_PATH = "/xsilo/crl.pem"  # the current CRL, served by the coordinator gateway
# TLS 1.2: forward secrecy and AEAD only (no CBC, no SHA-1 MAC, no RSA key exchange)
CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
           "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
           "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305")


def check_hostport(value: str, what: str) -> str:
    """``host:port`` (or ``[v6]:port``) with a port in 1-65535; ConfigError otherwise."""
    if (not isinstance(value, str) or not _HOSTPORT.fullmatch(value)
            or not 0 < int(value.rsplit(":", 1)[1]) < 65536):
        raise ConfigError(f"{what} {value!r} is not host:port with a port in 1-65535 "
                          "(e.g. fl.example.org:8443)")
    return value


def _check_upstream(value: str, what: str) -> str:
    """``host:port``, or ``unix:/absolute/path`` of a socket (quoted for nginx)."""
    if value.startswith("unix:"):
        if not value[5:].startswith("/"):
            raise ConfigError(f"{what} {value!r}: a unix socket path must be absolute")
        return _q(value, what)
    return check_hostport(value, what)


def _q(value: str | Path, what: str = "value") -> str:
    text = str(value)
    if not _SAFE.fullmatch(text):
        raise ConfigError(f"{what} {text!r} contains characters not allowed in an nginx config")
    return f'"{text}"'


def _check_key(key: str, subject: str) -> str:
    """A bound key must be exactly what Flower sends: base64 of a PEM public key."""
    try:
        pem = base64.b64decode(key, validate=True) if _B64.fullmatch(key) else b""
    except binascii.Error:
        pem = b""
    if not pem.startswith(b"-----BEGIN PUBLIC KEY-----"):
        raise ConfigError(f"node key bound to {subject!r} is not a flwr-public-key header "
                          "(base64 of a PEM public key); re-approve that silo's request")
    return key


def _user_line(worker_user: tuple[str, str] | None) -> str:
    if worker_user is None:
        return "# started unprivileged: no user directive"
    user, group = worker_user
    return f"user {user} {group};  # started as root: workers drop privileges"


def _head(prefix: Path, worker_user: tuple[str, str] | None, worker_connections: int,
          nginx_version: tuple[int, ...], scratch: Path | None) -> str:
    temps = "\n".join(f"    {d}_temp_path {_q((scratch or prefix / 'tmp') / d)};"
                      for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    # Before nginx 1.25.3 client_header_timeout also bounds the TLS handshake; from 1.25.3
    # on the handshake has its own timeout, 60 s unless set.
    handshake = (f"    ssl_handshake_timeout {HEADER_TIMEOUT}s;\n"
                 if tuple(nginx_version) >= (1, 25, 3) else "")
    return f"""# Generated by xsilo (deploy/gateway/conf.py). Do not edit: it is rewritten on reload.
{_user_line(worker_user)}
worker_processes auto;
worker_rlimit_nofile {2 * worker_connections + 64};
worker_shutdown_timeout {SHUTDOWN_TIMEOUT}s;  # a reload (new CRL) ends old connections too
pid {_q(prefix / 'logs' / 'nginx.pid')};
error_log {_q(prefix / 'logs' / 'error.log')} info;
events {{ worker_connections {worker_connections}; }}

http {{
{temps}
    log_format xsilo '$time_iso8601 $remote_addr "$request" status=$status '
                     'bytes=$body_bytes_sent verify=$ssl_client_verify '
                     'dn="$ssl_client_s_dn" serial=$ssl_client_serial '
                     'upstream=$upstream_status rt=$request_time msec=$msec';
    access_log {_q(prefix / 'logs' / 'access.log')} xsilo;
    server_tokens off;

    client_header_timeout {HEADER_TIMEOUT}s;
{handshake}    keepalive_timeout 30s;
    client_body_timeout 30s;
    send_timeout 30s;
    reset_timedout_connection on;
    limit_conn_zone $binary_remote_addr zone=xsilo_per_address:1m;
    limit_conn_status 503;  # Flower retries 503 (a Fleet path is never answered 403)
"""


_PROXY = f"""            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_ssl_verify on;
            proxy_ssl_verify_depth 1;
            proxy_ssl_server_name on;
            proxy_ssl_session_reuse on;
            proxy_ssl_protocols TLSv1.2 TLSv1.3;
            proxy_ssl_ciphers {CIPHERS};
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
            proxy_connect_timeout 10s;
"""

# proxy_pass forwards the request URI as sent, while locations match its decoded, normalised
# form. Forward only a URI that is literally a Fleet endpoint: no dot segments, no escapes,
# no doubled slashes, no query.
_EXACT_FLEET = """            if ($request_uri !~ "^/v1/fleet/[a-z][a-z-]*$") { return 400; }
"""

_BODY = f"""        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers {CIPHERS};
        ssl_prefer_server_ciphers on;
        client_max_body_size 64m;    # Flower pushes objects in chunks up to 5 MiB
        client_body_buffer_size 6m;  # a whole chunk in memory; larger bodies spool to tmp/
        proxy_request_buffering on;  # the whole body is read, and its size checked, first
        proxy_buffering off;
        limit_conn xsilo_per_address {PER_ADDRESS};
"""


def check_binding(subject: str, key: str) -> str:
    """One line of the node-key map; :class:`ConfigError` if the subject or the key cannot
    be written into the config as they are. A subject is one xsilo issues (``CN=…`` or
    ``O=…,CN=…``): nginx reads a map key that starts with ``~`` as a regex and one that
    reads ``default`` as the map's default, quoted or not."""
    if not subject.startswith(("CN=", "O=")):
        raise ConfigError(f"certificate subject {subject!r:.100} is not one xsilo issues "
                          "(CN=… or O=…,CN=…); it cannot be a key of the gateway's map")
    key = _check_key(key, subject)
    return f"        {_q(subject, 'certificate subject')} {_q(key, 'node key')};"


def _binding_map(bindings: Mapping[str, str]) -> str:
    lines = [check_binding(dn, key) for dn, key in sorted(bindings.items())]
    return ("    # client certificate subject -> the flwr-public-key it must send\n"
            "    map $ssl_client_s_dn $xsilo_expected_key {\n        default \"\";\n"
            + "\n".join(lines) + "\n    }\n")


# No enrolled key: refused. Otherwise the header must be that key, byte for byte (an `if`
# compares case-sensitively; a map would ignore case). 401, never 403, on a Fleet path.
_KEY_CHECK = """            if ($xsilo_expected_key = "") { return 401; }  # a subject without a key
            if ($http_flwr_public_key != $xsilo_expected_key) { return 401; }  # not its key
"""


def _proxy_crl(crl: Path | None) -> str:
    # a revoked coordinator certificate is refused; a lapsed CRL refuses every coordinator
    return f"            proxy_ssl_crl {_q(crl)};\n" if crl is not None else ""


def _crl_location(served_crl: Path) -> str:
    # Exact match: /xsilo/crl.pem and nothing under or beside it (those fall to `location /`).
    return f"""
        location = {CRL_PATH} {{
            if ($request_method !~ ^(GET|HEAD)$) {{ return 405; }}
            alias {_q(served_crl)};
            types {{ }}
            default_type application/x-pem-file;
            add_header Cache-Control "no-store" always;
        }}
"""


def coordinator_conf(*, prefix: Path, listen: str, server_cert: Path, server_key: Path,
                     ca_cert: Path, crl: Path, superlink: str, superlink_server_name: str,
                     node_key_bindings: Mapping[str, str] | None = None,
                     worker_user: tuple[str, str] | None = None,
                     worker_connections: int = 4096,
                     nginx_version: tuple[int, ...] = (1, 22, 0),
                     scratch: Path | None = None, served_crl: Path | None = None) -> str:
    """The coordinator gateway: mTLS in, only ``POST /v1/fleet/…`` out to the SuperLink.

    ``superlink`` is ``host:port`` or ``unix:/path`` of the SuperLink's private socket;
    ``scratch`` the workers' directory for request bodies over 6 MiB (default
    ``prefix/tmp``); ``served_crl`` a copy of ``crl`` the workers can read, served at
    ``GET`` :data:`CRL_PATH`.
    """
    bind = node_key_bindings is not None
    return _head(prefix, worker_user, worker_connections, nginx_version, scratch) + (
        _binding_map(node_key_bindings) if bind else "") + f"""
    upstream xsilo_superlink {{
        server {_check_upstream(superlink, 'superlink address')};
        keepalive 16;
    }}

    server {{
        listen {check_hostport(listen, 'listen address')} ssl;
        ssl_certificate {_q(server_cert)};
        ssl_certificate_key {_q(server_key)};
        ssl_client_certificate {_q(ca_cert)};
        ssl_verify_client on;
        ssl_verify_depth 1;
        ssl_crl {_q(crl)};
{_BODY}
        location /v1/fleet/ {{
            if ($request_method != POST) {{ return 405; }}  # never 403 on a Fleet path
{_EXACT_FLEET}{_KEY_CHECK if bind else ""}            proxy_pass https://xsilo_superlink;
            proxy_ssl_trusted_certificate {_q(ca_cert)};
            proxy_ssl_name {_q(superlink_server_name, 'server name')};
{_PROXY}        }}
{_crl_location(served_crl) if served_crl is not None else ""}
        location / {{
            return 403;  # the Control and Runtime APIs are the operator's alone
        }}
    }}
}}
"""


def silo_conf(*, prefix: Path, listen: str, local_cert: Path, local_key: Path, ca_cert: Path,
              client_cert: Path, client_key: Path, upstream: str, server_name: str,
              worker_user: tuple[str, str] | None = None, worker_connections: int = 4096,
              nginx_version: tuple[int, ...] = (1, 22, 0), scratch: Path | None = None,
              crl: Path | None = None) -> str:
    """The silo gateway: TLS for the SuperNode, mTLS up to the coordinator, whose
    certificate is checked against the CA, its name and, given ``crl``, that CRL.

    ``listen`` is ``127.0.0.1:PORT``, or ``unix:/path`` of a socket in a directory only
    the silo's account may enter (a SuperNode in its private network namespace reaches it
    through :mod:`deploy.gateway.uplink`)."""
    return _head(prefix, worker_user, worker_connections, nginx_version, scratch) + f"""
    upstream xsilo_coordinator {{
        server {check_hostport(upstream, 'coordinator address')};
        keepalive 16;
    }}

    server {{
        listen {_check_upstream(listen, 'listen address')} ssl;
        ssl_certificate {_q(local_cert)};
        ssl_certificate_key {_q(local_key)};
{_BODY}
        location /v1/fleet/ {{
            if ($request_method != POST) {{ return 405; }}
{_EXACT_FLEET}            proxy_pass https://xsilo_coordinator;
            proxy_ssl_certificate {_q(client_cert)};
            proxy_ssl_certificate_key {_q(client_key)};
            proxy_ssl_trusted_certificate {_q(ca_cert)};
{_proxy_crl(crl)}            proxy_ssl_name {_q(server_name, 'server name')};
{_PROXY}        }}

        location / {{
            return 403;  # only the Fleet API leaves this site
        }}
    }}
}}
"""
