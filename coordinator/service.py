"""``xsilo coordinator install-service``: systemd units for a coordinator home.

Three units and two timers (:mod:`deploy.service` renders them):

* ``xsilo-coordinator.service`` — ``xsilo coordinator start --home HOME`` as a dedicated
  account, writing only the home and the PKI directory (CRL re-issue);
* ``xsilo-coordinator-crl.timer`` — ``xsilo pki crl`` daily, when this host can unlock the
  CA key without a person (an unencrypted key, or a passphrase file); with an encrypted key
  and no passphrase file, or the CA key kept offline, there is none and the reminder below
  names the CRL when it is due;
* ``xsilo-coordinator-certs.timer`` — ``xsilo coordinator status --home HOME --check``
  daily: fails (``systemctl --failed``, the journal) when a certificate expires within
  ``--warn-days`` or the CRL is due, with the command that fixes it.
"""

from __future__ import annotations

import pwd
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from coordinator.home import CoordinatorHome
from deploy.service import (DEFAULT_UNIT_DIR, Service, Timer, enable_commands, render_units,
                            write_units, xsilo_executable)

__all__ = ["coordinator_service", "install_service_cmd"]

_out = Console(highlight=False)


def coordinator_service(home: CoordinatorHome, *, user: str, xsilo: Path,
                        passphrase_file: Path | None = None, name: str = "xsilo-coordinator",
                        warn_days: float = 14) -> tuple[Service, list[str]]:
    """The coordinator's service and timers, and notes for the operator (what was left out
    and why)."""
    exe = str(xsilo)
    start = [exe, "coordinator", "start", "--home", str(home.root)]
    if passphrase_file is not None:
        start += ["--passphrase-file", str(passphrase_file)]
    writable = [home.root, home.runs]
    notes: list[str] = []
    timers = [Timer("certs", "xsilo coordinator certificate and CRL reminder",
                    (exe, "coordinator", "status", "--home", str(home.root),
                     "--warn-days", f"{warn_days:g}", "--check"))]
    if home.gateway is not None:
        writable.append(home.gateway.pki)
        crl = _crl_timer(home, exe, passphrase_file, notes)
        if crl is not None:
            timers.insert(0, crl)
    else:
        notes.append(f"{home.root} has no [gateway] (no consortium PKI): no CRL timer")
    svc = Service(
        name=name, description=f"xsilo coordinator (SuperLink + mTLS gateway) of {home.root}",
        argv=tuple(start), user=user, working_directory=home.root, writable=tuple(writable),
        timers=tuple(timers),
        bind_low_port=home.gateway is not None and home.gateway.port < 1024,
        header=f"Written by `xsilo coordinator install-service` for {home.root}.")
    return svc, notes


def _crl_timer(home: CoordinatorHome, exe: str, passphrase_file: Path | None,
               notes: list[str]) -> Timer | None:
    from deploy.pki.authority import Pki

    pki = Pki(home.gateway.pki)  # type: ignore[union-attr]
    secret = passphrase_file or home.gateway.passphrase_file  # type: ignore[union-attr]
    if not pki.ca_key_path.is_file():
        notes.append(f"the CA key is not on this host ({pki.ca_key_path}): no CRL timer. "
                     "Re-issue the CRL on the CA host and bring it here before it lapses "
                     "(docs/operations.md, \"CA key custody\"); the reminder timer warns")
        return None
    if pki.ca_key_encrypted and secret is None:
        notes.append(f"the CA key {pki.ca_key_path} is encrypted and no --passphrase-file was "
                     "given: no CRL timer (the running coordinator cannot re-issue it either). "
                     "Re-issue it by hand (`xsilo pki crl`) at least daily; the reminder "
                     "timer warns when it is due")
        return None
    argv = [exe, "pki", "crl", "--pki-dir", str(pki.root)]
    if secret is not None:
        argv += ["--passphrase-file", str(secret)]
    return Timer("crl", "xsilo consortium CRL re-issue", tuple(argv), writable=(pki.root,))


def _account_exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True


def install_service_cmd(
    home: Path = typer.Option(Path("."), "--home", help="Coordinator home (has "
                              "coordinator.toml)."),
    user: str = typer.Option("xsilo", "--user", help="The dedicated account the service "
                             "runs as (created by the printed useradd if missing)."),
    output_dir: Path = typer.Option(DEFAULT_UNIT_DIR, "--output-dir",
                                    help="Where to write the unit files."),
    passphrase_file: Optional[Path] = typer.Option(
        None, "--passphrase-file", help="The CA key's passphrase file (0600, owned by --user), "
        "for the service and the CRL timer (default: [gateway] passphrase_file)."),
    name: str = typer.Option("xsilo-coordinator", "--name", help="Unit name."),
    warn_days: float = typer.Option(14, "--warn-days", help="The reminder fails this many "
                                    "days before a certificate expires."),
    xsilo: Optional[Path] = typer.Option(None, "--xsilo", help="The xsilo executable the "
                                         "units run (default: this installation's)."),
) -> None:
    """Write systemd units that run `xsilo coordinator start` as a service, with a daily CRL
    re-issue and a certificate reminder; print the commands that enable them."""
    h = CoordinatorHome.load(home)
    pass_path = passphrase_file.expanduser().resolve() if passphrase_file else None
    svc, notes = coordinator_service(h, user=user, xsilo=xsilo or xsilo_executable(),
                                     passphrase_file=pass_path, name=name, warn_days=warn_days)
    for path in write_units(render_units(svc), output_dir):
        _out.print(f"wrote {path}")
    for note in notes:
        _out.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    owned = [h.root] + ([h.gateway.pki] if h.gateway is not None else [])
    _out.print("as root, enable them with:")
    for cmd in enable_commands(svc, output_dir, owned=owned,
                               account_exists=_account_exists(user)):
        _out.print(f"  {escape(cmd)}", soft_wrap=True)
    _out.print(f"start runs as that account: sudo -u {user} {escape(str(svc.argv[0]))} "
               f"coordinator run --home {escape(str(h.root))} …", soft_wrap=True)
