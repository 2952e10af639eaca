"""The coordinator gateway's node-key bindings: each enrolled silo's client-certificate
subject bound to its Flower node key (a request whose ``flwr-public-key`` header is not
exactly that key gets 401). A silo whose binding cannot be used is left out, with a line
saying why, never the gateway for every silo."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cryptography.exceptions import UnsupportedAlgorithm

from deploy.gateway.conf import check_binding
from deploy.pki.certs import flower_public_key_header
from deploy.pki.messages import parse_node_public_key
from xsilo.errors import ConfigError, EnrollmentError

if TYPE_CHECKING:
    from deploy.pki.authority import Pki

__all__ = ["left_out", "node_key_bindings"]


def node_key_bindings(pki: Pki) -> tuple[dict[str, str], list[str]]:
    """The bindings nginx can use, and one line per enrolled silo left out: a node-key file
    that cannot be read or parsed, or a subject or key that cannot be written into the
    config, refuses that silo (no key bound: 401), not the gateway for every silo. Each
    ``nodes/<silo>.pub`` is read on its own (``silo_bindings`` would read them all at
    once, and one damaged file would stop the rest)."""
    bindings, problems = {}, []
    for name, path, rec in pki.enrolled_silos():
        try:
            line = path.read_text(encoding="utf-8")
        except (OSError, UnicodeError) as exc:
            problems.append(left_out(name, f"its node key {path} cannot be read: {exc}",
                                     "restore that file from your backup of the PKI "
                                     f"directory, or revoke it (`xsilo pki revoke {name}`)"))
            continue
        try:
            key = flower_public_key_header(parse_node_public_key(line))
            check_binding(rec.subject, key)
        except (ConfigError, EnrollmentError, UnsupportedAlgorithm, ValueError,
                TypeError) as exc:  # UnsupportedAlgorithm: an unknown OpenSSH key type
            problems.append(left_out(name, f"its node-key binding cannot be used: {exc}",
                                     f"revoke it (`xsilo pki revoke {name}`) and have it "
                                     "enroll again with a valid name and organization"))
            continue
        bindings[rec.subject] = key
    return bindings, problems


def left_out(name: str, why: str, fix: str) -> str:
    """The problem line for a silo the gateway leaves out: who, why, and the fix."""
    return f"silo {name} is refused by the gateway ({why}); {fix}"
