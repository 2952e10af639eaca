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
    """SHA-256 (hex) of the coordinator's certificate.

    In a member kit (``kit.toml`` next to ``silo.toml``) it is the fingerprint recorded at
    enrollment: the SuperNode talks to the local gateway, which verifies the coordinator's
    CA and server name on every connection but cannot pin a fingerprint (nginx has no
    upstream pinning). Otherwise it is read from the TLS peer at ``superlink``, verified
    against ``root_certificates``.
    """
    if (Path(site_dir) / "kit.toml").is_file():
        from deploy.pki.kit import load_kit

        return load_kit(Path(site_dir)).coordinator_sha256
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
