"""A silo's own, direct mutual-TLS connection to the coordinator gateway.

Not through the silo gateway: the silo dials the kit's coordinator address itself,
verifies the coordinator's certificate against the consortium CA and the kit's server
name, and presents the kit's client certificate — what the silo gateway does, minus the
CRL check (the CRL is what :mod:`deploy.pki.crl_sync` fetches this way; it is verified by
its CA signature instead). Used to read the coordinator's live certificate
(:func:`peer_certificate`, for fingerprint pinning) and to GET the current CRL.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from contextlib import contextmanager
from collections.abc import Iterator

from cryptography import x509

from deploy.pki.kit import MemberKit
from xsilo.errors import DeploymentError

__all__ = ["connect", "get", "peer_certificate"]

MAX_BODY = 16 * 1024 * 1024  # a CRL of ~400,000 revocations


def _host_port(address: str) -> tuple[str, int]:
    """``(host, port)`` of the kit's coordinator address, the port in 1-65535 (a kit file
    may be damaged: an out-of-range port must not reach the socket layer)."""
    host, _, port = address.rpartition(":") if isinstance(address, str) else ("", "", "")
    if host and port.isascii() and port.isdigit() and len(port) <= 5 and 0 < int(port) < 65536:
        return host.strip("[]"), int(port)
    raise DeploymentError(f"coordinator address {address!r} in the member kit is not "
                          "host:port with a port in 1-65535; re-import the bundle")


def _context(kit: MemberKit) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(kit.ca_cert))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(kit.client_cert), str(kit.client_key))
    return ctx


@contextmanager
def connect(kit: MemberKit, *, timeout: float = 10.0) -> Iterator[ssl.SSLSocket]:
    """A TLS connection to ``kit.coordinator``: the peer verified against the consortium CA
    and ``kit.server_name``, the kit's client certificate presented."""
    host, port = _host_port(kit.coordinator)
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise DeploymentError(f"cannot reach the coordinator gateway at {kit.coordinator}: "
                              f"{exc.strerror or exc}") from exc
    except (ValueError, TypeError, OverflowError) as exc:  # UnicodeError: a bad DNS label
        raise DeploymentError(f"cannot dial the coordinator gateway at {kit.coordinator!r} "
                              f"({exc}): the member kit's gateway.coordinator is damaged; fix "
                              "it, or re-import the bundle") from exc
    try:
        tls = _context(kit).wrap_socket(raw, server_hostname=kit.server_name)
    except ssl.SSLCertVerificationError as exc:
        raw.close()
        raise DeploymentError(f"the certificate at {kit.coordinator} is not the consortium's "
                              f"coordinator ({exc.verify_message}; expected name "
                              f"{kit.server_name!r}, issued by {kit.ca_cert})") from exc
    except (OSError, ssl.SSLError) as exc:
        raw.close()
        raise DeploymentError(f"TLS with the coordinator gateway at {kit.coordinator} "
                              f"failed: {exc}") from exc
    except (ValueError, TypeError) as exc:  # a NUL or a bad DNS label (UnicodeError)
        raw.close()
        raise DeploymentError(f"the member kit's server name {kit.server_name!r} for the "
                              f"coordinator at {kit.coordinator} cannot be used ({exc}); fix "
                              "gateway.server_name in kit.toml, or re-import the bundle") \
            from exc
    try:
        yield tls
    finally:
        tls.close()


def peer_certificate(kit: MemberKit, *, timeout: float = 10.0) -> x509.Certificate:
    """The certificate the coordinator gateway at ``kit.coordinator`` presents right now."""
    with connect(kit, timeout=timeout) as tls:
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise DeploymentError(f"the coordinator gateway at {kit.coordinator} sent no certificate")
    return x509.load_der_x509_certificate(der)


def get(kit: MemberKit, path: str, *, timeout: float = 10.0) -> tuple[int, bytes]:
    """``GET path`` on the coordinator gateway over :func:`connect`: ``(status, body)``."""
    with connect(kit, timeout=timeout) as tls:
        try:
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {kit.server_name}\r\n"
                        "User-Agent: xsilo\r\nConnection: close\r\n\r\n".encode("ascii"))
            response = http.client.HTTPResponse(tls, method="GET")  # type: ignore[arg-type]
            response.begin()
            body = response.read(MAX_BODY + 1)
        except (OSError, ssl.SSLError, http.client.HTTPException, ValueError) as exc:
            raise DeploymentError(f"GET {path} at the coordinator gateway {kit.coordinator} "
                                  f"failed: {exc}") from exc
    if len(body) > MAX_BODY:
        raise DeploymentError(f"GET {path} at {kit.coordinator}: the answer is over "
                              f"{MAX_BODY} bytes; refused")
    return response.status, body
