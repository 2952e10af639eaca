"""The account nginx's workers run as when root starts a gateway: ``$XSILO_GATEWAY_USER``
(``user`` or ``user:group``), else ``nobody`` with a warning. Both names go into nginx's
``user`` line unquoted, so each is checked as a plain account name and must exist."""

from __future__ import annotations

import grp
import logging
import os
import pwd
import re

from xsilo.errors import DeploymentError

__all__ = ["warn_if_shared", "worker_account"]

log = logging.getLogger(__name__)

# nginx reads `user USER GROUP;` bare: names as useradd/groupadd make them, nothing more.
_ACCOUNT = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
_ACCOUNT_FIX = "set XSILO_GATEWAY_USER=USER or USER:GROUP naming an existing account"


def worker_account() -> tuple[str, str] | None:
    """The account nginx workers run as when nginx is started by root (``None`` otherwise):
    ``$XSILO_GATEWAY_USER`` (``user`` or ``user:group``), else ``nobody``; both names
    checked (they go into the config unquoted) and both must exist."""
    if os.geteuid() != 0:
        return None
    user, _, group = os.environ.get("XSILO_GATEWAY_USER", "").partition(":")
    user = _account_name(user or "nobody", "account")
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise DeploymentError(f"XSILO_GATEWAY_USER names account {user!r}, which does not "
                              "exist; create it (useradd --system --no-create-home "
                              f"{user}) or unset the variable") from None
    if not group:
        try:
            group = grp.getgrgid(entry.pw_gid).gr_name
        except KeyError:
            group = "nogroup"
    try:
        grp.getgrnam(_account_name(group, "group"))
    except KeyError:
        raise DeploymentError(f"XSILO_GATEWAY_USER: group {group!r} does not exist; create "
                              f"it (groupadd --system {group}) or {_ACCOUNT_FIX}") from None
    return user, group


def _account_name(name: str, what: str) -> str:
    """``name`` if nginx can be given it as is (it goes into the ``user`` line unquoted)."""
    if not _ACCOUNT.fullmatch(name):
        raise DeploymentError(f"XSILO_GATEWAY_USER: {what} {name!r} is not an account name: "
                              "use up to 32 letters, digits, '_', '.' and '-', starting with "
                              f"a letter or '_'; {_ACCOUNT_FIX}")
    return name


def warn_if_shared(account: tuple[str, str] | None, name: str) -> None:
    if account is not None and account[0] == "nobody":
        log.warning("%s gateway: nginx workers run as `nobody`, an account other daemons "
                    "share; a process running as nobody could trace them and read the "
                    "gateway's TLS key from their memory. Create a dedicated account and set "
                    "XSILO_GATEWAY_USER=NAME (docs/security.md).", name)
