"""Which coordinator is this silo talking to? (for site-policy fingerprint pinning)"""

from __future__ import annotations

import hashlib
import socket
import ssl
from pathlib import Path

from xsilo.errors import DeploymentError

__all__ = ["coordinator_fingerprint"]


def coordinator_fingerprint(site_dir: Path, superlink: str | None,
                            root_certificates: Path | None) -> str:
    """SHA-256 (hex) of the certificate the coordinator presents **now**.

    In a member kit (``kit.toml`` next to ``silo.toml``) the SuperNode talks to the local
    gateway, which verifies the coordinator's CA, name and CRL but cannot pin a fingerprint
    (nginx has no upstream pinning); so the silo dials the kit's coordinator address itself
    (:mod:`deploy.pki.link`: its client certificate presented, the peer verified against
    the consortium CA and the kit's server name) and hashes the certificate it gets — not
    the one recorded at enrollment, which a re-issued or substituted certificate would not
    change. Otherwise it is read from the TLS peer at ``superlink``, verified against
    ``root_certificates``. Either way an unreachable or unverifiable peer is a
    :class:`DeploymentError`.
    """
    if (Path(site_dir) / "kit.toml").is_file():
        from deploy.pki.certs import fingerprint
        from deploy.pki.kit import load_kit
        from deploy.pki.link import peer_certificate

        return fingerprint(peer_certificate(load_kit(Path(site_dir))))
    if not superlink or not root_certificates:
        raise DeploymentError("cannot determine the coordinator's certificate: silo.toml has "
                              "no superlink/root_certificates")
    host, _, port = superlink.rpartition(":")
    ctx = ssl.create_default_context(cafile=str(root_certificates))
    try:
        with socket.create_connection((host, int(port)), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        raise DeploymentError(f"cannot read the coordinator certificate at {superlink}: {exc}") from exc
    return hashlib.sha256(der).hexdigest()
