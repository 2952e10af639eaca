"""Why a silo gateway cannot reach the coordinator, read from what nginx says.

A SuperNode behind the silo gateway sees none of it: for any upstream failure nginx answers
502, which Flower retries (``Connection attempt failed``) for as long as it takes. The
cause — the coordinator's name does not resolve, its certificate does not carry the name
the kit expects, is revoked, or nothing answers at its address — is only in the gateway's
``error.log`` (or, for a name nginx cannot resolve, in ``nginx -t``'s complaint at start).
These functions turn those lines into one sentence naming the cause and the fix; ``xsilo
silo start`` says them as they happen (:class:`UpstreamWatch`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from xsilo.tail import Tail

__all__ = ["UpstreamWatch", "explain_upstream", "unresolved_upstream"]

_HOST_NOT_FOUND = re.compile(r'host not found in upstream "([^"]+)"')
_MISMATCH = re.compile(r'upstream SSL certificate does not match "([^"]+)"')
_VERIFY = re.compile(r"upstream SSL certificate verify error: \((\d+):([^)]*)\)")
_UPSTREAM = re.compile(r'upstream: "https://([^/"]+)')
_CONNECT = re.compile(r"connect\(\) failed \((\d+): ([^)]*)\) while connecting to upstream")
REPEAT_AFTER = 600.0  # s: a cause that persists is said again this often


def _split(address: str) -> tuple[str, str]:
    host, _, port = address.rpartition(":")
    return (host.strip("[]"), port) if host else (address, "")


def unresolved_upstream(nginx_output: str) -> str | None:
    """The cause and fix when ``nginx -t`` failed because it cannot resolve the coordinator's
    name (nginx resolves it once, when it starts); None for any other complaint."""
    found = _HOST_NOT_FOUND.search(nginx_output)
    if found is None:
        return None
    host, port = _split(found.group(1))
    return (f"this host cannot resolve the coordinator's name {host!r} (nginx: host not found "
            f"in upstream \"{found.group(1)}\"), so the silo gateway cannot start. Every silo "
            f"host must resolve it: add it to this site's DNS, or add a line `<coordinator IP> "
            f"{host}` to /etc/hosts; check with `getent hosts {host}`, then start the silo "
            f"again. Keep the name: the coordinator's certificate is checked against it.")


def _verify_error(code: int, text: str, where: str, coordinator: str,
                  name: str) -> tuple[str, str]:
    """``where``: the address nginx dialled; ``coordinator``: the kit's ``host:port``."""
    if code == 23:
        return "revoked", (
            f"the coordinator gateway at {where} presents a revoked certificate (it is "
            "in this silo's CRL): its operator issues a new one (`xsilo pki issue-coordinator`); "
            "the silo continues by itself once it is served")
    if code == 12:
        return "crl", (
            "this silo's CRL has lapsed, so its gateway refuses every coordinator certificate: "
            "`xsilo silo start` installs a fresh one as soon as the coordinator serves one "
            "(its operator: `xsilo pki crl`)")
    if code == 10:
        return "expired", (
            f"the coordinator gateway at {where} presents an expired certificate: its "
            "operator re-issues it (`xsilo pki issue-coordinator`)")
    return f"verify-{code}", (
        f"the coordinator gateway at {where} presents a certificate this silo cannot "
        f"verify against the consortium CA ({text}): this silo reaches another host under "
        f"that address (check `getent hosts {_split(coordinator)[0]}`), or the consortium "
        f"changed its CA (enroll again); the kit expects the name {name!r}")


def explain_upstream(line: str, *, coordinator: str, server_name: str) -> tuple[str, str] | None:
    """``(cause, sentence)`` for one silo-gateway ``error.log`` line that says why the
    coordinator could not be reached, else None. ``cause`` is a short key, for saying each
    cause once."""
    upstream = _UPSTREAM.search(line)
    where = upstream.group(1) if upstream else coordinator
    if (found := _MISMATCH.search(line)) is not None:
        name = found.group(1)
        host = _split(coordinator)[0]
        return "name", (
            f"the certificate of the coordinator gateway at {where} does not carry the name "
            f"{name!r} this silo expects (server_name in its kit.toml, from the bundle), so the "
            f"silo gateway refuses it and every SuperNode request gets 502 (Flower retries). "
            f"Either {host!r} leads this host somewhere else (check DNS or /etc/hosts: "
            f"`getent hosts {host}`), or the coordinator's certificate lacks the name: its "
            f"operator re-issues it with it (`xsilo pki issue-coordinator --host {name}`, "
            f"`--ip` for an address), and the silo continues by itself once it is served")
    if (found := _VERIFY.search(line)) is not None:
        return _verify_error(int(found.group(1)), found.group(2), where, coordinator,
                             server_name)
    if (found := _CONNECT.search(line)) is not None:
        errno, text = int(found.group(1)), found.group(2)
        why = ("nothing listens there: the coordinator is down or its gateway's port is "
               "another" if errno == 111 else
               "this host has no route there: check this site's network and firewall")
        return f"connect-{errno}", (
            f"the silo gateway cannot connect to the coordinator gateway at {where} ({text}): "
            f"{why}; the SuperNode retries until it can")
    if "upstream timed out" in line and "while connecting to upstream" in line:
        return "timeout", (
            f"the coordinator gateway at {where} does not answer connections (timed out): a "
            "firewall on the way drops them (a silo needs outbound TCP to the coordinator's "
            "gateway port only), or the link is down; the SuperNode retries until it can")
    return None


class UpstreamWatch:
    """Reads a silo gateway's ``error.log`` from where it stands now; :meth:`poll` returns
    the sentence for each upstream failure seen since, each cause once (again after
    ``repeat_after`` seconds if it persists)."""

    def __init__(self, error_log: Path, *, coordinator: str, server_name: str,
                 repeat_after: float = REPEAT_AFTER,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.error_log, self.coordinator, self.server_name = error_log, coordinator, server_name
        self.repeat_after, self.clock = repeat_after, clock
        self._tail = Tail(error_log)
        self._said: dict[str, float] = {}
        self.last: str | None = None  # the latest cause seen, said or not

    def poll(self) -> list[str]:
        out = []
        for line in (raw.decode(errors="replace") for raw in self._tail.lines()):
            found = explain_upstream(line, coordinator=self.coordinator,
                                     server_name=self.server_name)
            if found is None:
                continue
            cause, sentence = found
            self.last = sentence
            now = self.clock()
            if cause not in self._said or now - self._said[cause] >= self.repeat_after:
                self._said[cause] = now
                out.append(sentence)
        return out
