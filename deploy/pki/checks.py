"""The PKI's input checks: every value an operator types or a silo sends, checked whole.

Each check is a pure function that returns the value it accepts (``name = check_name(name)``)
or raises :class:`~xsilo.errors.EnrollmentError` naming the option, the value, the rule and
the fix. Nothing here reads or writes a file, so :mod:`~deploy.pki.authority` and
:mod:`~deploy.pki.enrollment` can run every check before they change anything (a refused
command leaves the PKI directory or the kit as it was), and :mod:`~deploy.pki.messages`
applies the same rules to a request that crossed from a silo.

Names, organizations and hosts end up in certificate subjects, file names and nginx
configuration, which is why the patterns are strict and always matched whole.
"""

from __future__ import annotations

import ipaddress
import re

from deploy.gateway.conf import check_hostport
from xsilo.errors import ConfigError, EnrollmentError

__all__ = [
    "CURVES",
    "MAX_CRL_DAYS",
    "MAX_DAYS",
    "check_address",
    "check_common_name",
    "check_contact",
    "check_crl_days",
    "check_crl_seconds",
    "check_curve",
    "check_days",
    "check_hosts",
    "check_name",
    "check_new_passphrase",
    "check_organization",
    "check_port",
    "coordinator_server_name",
]

CURVES = ("P-256", "P-384")
MAX_DAYS = 36500  # a certificate's lifetime: beyond ~100 years is a typo, not a plan
# Validators match the whole string (fullmatch): `$` would also match before a final "\n".
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_ORG = re.compile(r"(?:[A-Za-z0-9.'()&-](?:[A-Za-z0-9 .'()&-]{0,62}[A-Za-z0-9.'()&-])?)?")
_EMAIL = re.compile(r"[^@\s\"\\]+@[^@\s\"\\]+\.[^@\s\"\\]+")
_CONTACT_KEYS = ("email", "person", "phone")
_CONTACT_MAX = 128  # characters of one contact field
_HOST = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


# --- who: silo names, organizations, contacts --------------------------------------------
def check_name(name: str) -> str:
    """Validate a silo name (it becomes a certificate CN, a file name and an nginx map key)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise EnrollmentError(
            f"silo name {name!r} is invalid: use 1-63 lowercase letters, digits and '-', "
            "starting with a letter or digit (e.g. 'hospital-a')")
    return name


def check_organization(org: str | None) -> str | None:
    """Validate an organization name (it goes into the certificate subject)."""
    if org is not None and (not isinstance(org, str) or not _ORG.fullmatch(org)):
        raise EnrollmentError(f"organization {org!r} is invalid: use at most 64 letters, "
                              "digits, spaces and . ' ( ) & -, with no space at either end "
                              "(no commas: nginx must read the subject exactly as written)")
    return org or None


def check_contact(contact: object) -> dict[str, str]:
    """Validate a request's contact fields (the operator reads them beside the fingerprints):
    ``email`` required, ``person`` and ``phone`` optional, each one printable line."""
    if not isinstance(contact, dict):
        raise EnrollmentError("contact must be an object with email, person and phone")
    unknown = sorted(str(k) for k in contact if k not in _CONTACT_KEYS)
    if unknown:
        raise EnrollmentError(f"contact field(s) {', '.join(map(repr, unknown))} are not "
                              f"accepted; use {', '.join(_CONTACT_KEYS)}")
    out: dict[str, str] = {}
    for key in _CONTACT_KEYS:
        value = contact.get(key)
        if value is None or value == "":
            continue
        if (not isinstance(value, str) or not value.isprintable() or value != value.strip()
                or not 0 < len(value) <= _CONTACT_MAX):
            raise EnrollmentError(
                f"contact.{key} {str(value)[:_CONTACT_MAX]!r} is invalid: give one line of "
                f"at most {_CONTACT_MAX} printable characters, no control characters and no "
                "space at either end")
        out[key] = value
    if not _EMAIL.fullmatch(out.get("email", "")):
        raise EnrollmentError(f"contact.email {out.get('email', '')!r} is missing or not an "
                              "address; give one like it@hospital-a.example")
    return out


# --- keys and lifetimes ----------------------------------------------------------------
def check_curve(curve: str) -> str:
    """A key curve this PKI makes keys on: one of :data:`CURVES`."""
    if curve not in CURVES:
        raise EnrollmentError(f"curve {curve!r} is not supported: use P-256 or P-384")
    return curve


def check_days(days: int, what: str = "--days") -> int:
    """A certificate lifetime in days: 1 to :data:`MAX_DAYS`."""
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise EnrollmentError(f"{what} {days!r} is not a lifetime in days: give 1 to "
                              f"{MAX_DAYS} (e.g. 365)")
    return days


def check_new_passphrase(passphrase: bytes | None) -> bytes | None:
    """The passphrase for a new CA key: ``None`` (unencrypted, on purpose) or non-empty,
    since an empty one would silently store the key in the clear."""
    if passphrase is not None and not passphrase:
        raise EnrollmentError("the passphrase for the new CA key is empty, which would "
                              "store the key unencrypted: give a non-empty passphrase, or "
                              "pass no passphrase at all (`--no-encrypt`) to mean it")
    return passphrase


MAX_CRL_DAYS = 366  # a CRL is re-issued well within this; beyond it is a typo


def check_crl_seconds(seconds: int) -> int:
    """A CRL validity in seconds: 1 to :data:`MAX_CRL_DAYS` days."""
    if isinstance(seconds, bool) or not isinstance(seconds, int) or \
            not 1 <= seconds <= MAX_CRL_DAYS * 86400:
        raise EnrollmentError(f"CRL validity {seconds!r:.40} s: give a whole number of seconds "
                              f"from 1 to {MAX_CRL_DAYS * 86400} ({MAX_CRL_DAYS} days)")
    return seconds


def check_crl_days(days: int) -> int:
    """A CRL validity in days: 1 to :data:`MAX_CRL_DAYS`."""
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_CRL_DAYS:
        raise EnrollmentError(f"CRL validity {days!r:.40} days: give a whole number of days "
                              f"from 1 to {MAX_CRL_DAYS} (default 3)")
    return days


def check_common_name(name: str) -> str:
    """The CA's subject CN: 1 to 64 printable characters (X.509's upper bound)."""
    if not isinstance(name, str) or not 1 <= len(name) <= 64 or not name.isprintable():
        raise EnrollmentError(f"CA name {name!r:.80} is invalid: give 1 to 64 printable "
                              "characters (e.g. 'Example consortium CA')")
    return name


# --- where: the coordinator's names and address ------------------------------------------
def check_hosts(hosts: list[str]) -> list[str]:
    """The coordinator certificate's names: at least one, each a DNS name or IP address."""
    if not hosts:
        raise EnrollmentError("issue-coordinator needs at least one --host or --ip")
    return [_check_host(h) for h in hosts]


def _check_host(host: str) -> str:
    if _is_ip(host) or (isinstance(host, str) and len(host) <= 253 and _HOST.fullmatch(host)):
        return host
    hint = (f"; write a non-ASCII name in its ASCII form ({host.encode('idna').decode()!r})"
            if _idna(host) else "")
    raise EnrollmentError(f"--host {host!r} is not a DNS name or IP address: use letters, "
                          f"digits, '-' and '.' (e.g. fl.example.org){hint}")


def _idna(host: str) -> bool:
    try:
        return host.encode("idna") != host.encode()
    except (UnicodeError, ValueError):
        return False


def check_port(port: int) -> int:
    """The coordinator gateway's port: 1 to 65535."""
    if not 0 < port < 65536:
        raise EnrollmentError(f"--port {port}: give a port in 1-65535 (e.g. 8443)")
    return port


def check_address(address: str) -> str:
    """The address silos' gateways will dial: what their config accepts, checked here."""
    try:
        return check_hostport(address, "--address")
    except ConfigError as exc:
        raise EnrollmentError(str(exc)) from None


def coordinator_server_name(address: str, hosts: list[str]) -> str:
    """The name silos verify the coordinator by: the address's host, which must be among
    ``hosts``; for an IP address, the first DNS name among ``hosts`` (nginx does not match
    IP SANs)."""
    host = address.rsplit(":", 1)[0].strip("[]")
    if host not in hosts:
        raise EnrollmentError(f"address host {host!r} is not among the certificate names {hosts}")
    if not _is_ip(host):
        return host
    names = [h for h in hosts if not _is_ip(h)]
    if not names:
        raise EnrollmentError("add a DNS name with --host: gateways verify the coordinator by "
                              "name (nginx does not match IP SANs)")
    return names[0]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False
