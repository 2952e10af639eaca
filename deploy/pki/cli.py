"""``xsilo pki …`` (coordinator operator) and the silo-side enrollment commands.

``pki_app`` is mounted as ``xsilo pki``; ``enroll_cmd``, ``import_cmd`` and ``renew_cmd``
are plain typer-typed functions mounted as ``xsilo silo enroll | import-bundle | renew``.
Errors are raised as :mod:`xsilo.errors` exceptions (the root CLI prints one red line).
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path

import typer
from rich.console import Console, RenderableType
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from deploy.pki.enrollment import enroll, import_bundle, install_renewal, make_renewal_request
from deploy.pki.messages import read_request
from deploy.pki.authority import DEFAULT_PKI_DIR, Pki
from deploy.pki.checks import MAX_CRL_DAYS
from xsilo.errors import EnrollmentError

__all__ = ["enroll_cmd", "import_cmd", "pki_app", "print_whole", "renew_cmd"]

pki_app = typer.Typer(help="The consortium PKI (coordinator operator): CA, approvals, "
                      "revocation, renewal.", no_args_is_help=True)
_out = Console(emoji=False, highlight=False)  # ":CD:" in a fingerprint is not an emoji


def print_whole(console: Console, table: RenderableType) -> None:
    """Print ``table`` at its natural width, whatever the terminal's: rich would otherwise
    cut the cells that do not fit (``…``) or crop the lines, and fingerprints are compared
    character by character, by phone. The terminal wraps long lines; nothing is lost."""
    wide = console.options.update(max_width=100_000)
    width = max(console.width, Measurement.get(console, wide, table).maximum)
    # console.print(width=…) never exceeds the console's own width: print through a twin
    Console(file=console.file, width=width, color_system=console.color_system,  # type: ignore[arg-type]
            force_terminal=console.is_terminal, no_color=console.no_color, emoji=False,
            highlight=False).print(table, crop=False)

PkiDir = typer.Option(DEFAULT_PKI_DIR, "--pki-dir", help="PKI directory (env XSILO_PKI_DIR).")
PassFile = typer.Option(None, "--passphrase-file",
                        help="File holding the CA key passphrase (else XSILO_CA_PASSPHRASE, "
                             "else a prompt when the key is encrypted).")


def _read_passphrase_file(passphrase_file: Path) -> bytes:
    try:
        return passphrase_file.read_bytes().rstrip(b"\r\n")
    except OSError as exc:
        raise EnrollmentError(f"cannot read --passphrase-file {passphrase_file}: "
                              f"{exc.strerror}; pass a readable file that holds the CA key "
                              "passphrase on its first line") from exc


def _passphrase(pki: Pki, passphrase_file: Path | None) -> bytes | None:
    if passphrase_file is not None:
        return _read_passphrase_file(passphrase_file)
    if os.environ.get("XSILO_CA_PASSPHRASE"):
        return os.environ["XSILO_CA_PASSPHRASE"].encode()
    if pki.ca_key_encrypted:
        return _ask("CA key passphrase", confirm=False)
    return None


def _ask(prompt: str, *, confirm: bool) -> bytes:
    """A passphrase typed at a terminal; without one (a timer, a script) an error naming the
    non-interactive ways, never a prompt that waits for nobody."""
    if not sys.stdin.isatty():
        what = "a passphrase for the new CA key" if confirm else "the CA key's passphrase"
        raise EnrollmentError(
            f"{what} is needed and there is no terminal to ask for it: pass --passphrase-file "
            "FILE (0600, the passphrase on its first line) or set XSILO_CA_PASSPHRASE"
            + ("; `--no-encrypt` stores the CA key in the clear (tests, drills)"
               if confirm else ""))
    return typer.prompt(prompt, hide_input=True, confirmation_prompt=confirm).encode()


@pki_app.command("init")
def init_cmd(
    pki_dir: Path = PkiDir,
    curve: str = typer.Option("P-384", help="P-256 or P-384."),
    organization: str = typer.Option(None, help="Consortium name in certificate subjects."),
    common_name: str = typer.Option("xsilo consortium CA", help="CA subject CN."),
    days: int = typer.Option(3650, help="CA lifetime in days."),
    encrypt: bool = typer.Option(True, "--encrypt/--no-encrypt",
                                 help="Protect the CA key with a passphrase (the default: "
                                 "--passphrase-file, else XSILO_CA_PASSPHRASE, else "
                                 "prompted); --no-encrypt stores it in the clear."),
    crl_hours: float = typer.Option(None, "--crl-hours", help="Validity of every CRL in hours "
                                    "(default 72; short values are for drills and tests)."),
    passphrase_file: Path = PassFile,
) -> None:
    """Create the consortium root CA (its key encrypted with a passphrase unless
    --no-encrypt), an empty index and an empty CRL."""
    if not encrypt and passphrase_file is not None:
        raise EnrollmentError("--no-encrypt and --passphrase-file contradict each other: drop "
                              "one (the CA key is encrypted by default)")
    pw = None
    if encrypt:
        pw = (_read_passphrase_file(passphrase_file) if passphrase_file
              else os.environ.get("XSILO_CA_PASSPHRASE", "").encode()
              or _ask("New CA key passphrase", confirm=True))
        if not pw:  # never an unencrypted key where the operator asked for an encrypted one
            where = f"--passphrase-file {passphrase_file}" if passphrase_file else "it"
            raise EnrollmentError(
                f"the CA key passphrase is empty ({where} holds none): put the passphrase on "
                "the first line of --passphrase-file, or pass --no-encrypt to store the CA "
                "key unencrypted on purpose")
    pki = Pki.init(pki_dir, common_name=common_name, organization=organization, curve=curve,
                   days=days, passphrase=pw, crl_seconds=_seconds(crl_hours))
    how = ("encrypted with its passphrase" if pw else "[bold yellow]NOT encrypted[/]: whoever "
           "can read it can sign certificates")
    _out.print(f"CA created in [bold]{pki.root}[/] (key {pki.ca_key_path}, mode 0600, {how})")
    _out.print(f"CA fingerprint (give it to every silo by phone or letter):\n"
               f"  [bold green]{pki.ca_fingerprint}[/]", soft_wrap=True)


@pki_app.command("issue-coordinator")
def issue_coordinator_cmd(
    host: list[str] = typer.Option([], "--host", help="DNS name silos dial (repeatable; "
                                   "default when re-issuing: the current certificate's)."),
    ip: list[str] = typer.Option([], "--ip", help="IP address SAN (repeatable)."),
    port: int = typer.Option(8443, help="Public port of the coordinator gateway."),
    address: str = typer.Option(None, help="host:port silos dial (default: first --host:port)."),
    days: int = typer.Option(365, help="Certificate lifetime in days."),
    pki_dir: Path = PkiDir, passphrase_file: Path = PassFile,
) -> None:
    """Issue the coordinator gateway's server certificate and the SuperLink's loopback one
    (again: a new key and certificate, the old one superseded; a running coordinator
    reloads its gateway with it)."""
    pki = Pki(pki_dir)
    files = pki.issue_coordinator(hosts=[*host, *ip], address=address, port=port, days=days,
                                  passphrase=_passphrase(pki, passphrase_file))
    _out.print(f"gateway certificate {files.server_cert}; silos dial [bold]{files.address}[/] "
               f"and verify the name [bold]{files.server_name}[/]")
    _out.print(f"SuperLink loopback certificate {files.superlink_cert}")


def _show_request(path: Path) -> None:
    req = read_request(path)
    # Text, never markup: the values come from the silo's file
    table = Table(title=Text(f"enrollment request {path}"), show_header=False)
    for key, value in (("kind", req.kind), ("silo", req.name), ("subject", req.subject),
                       ("TLS key SHA-256", req.tls_key_fingerprint),
                       ("node key", req.node_key_fingerprint),
                       *((f"contact.{k}", v) for k, v in req.contact.items()),
                       ("created", req.created)):
        table.add_row(Text(key), Text(value))
    print_whole(_out, table)  # the fingerprints are read out by phone: never cut


@pki_app.command("approve")
def approve_cmd(
    request: Path = typer.Argument(..., help="The silo's request.json."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    days: int = typer.Option(30, help="Certificate lifetime in days."),
    out: Path = typer.Option(None, help="Bundle path (default PKI_DIR/bundles/NAME.json)."),
    pki_dir: Path = PkiDir, passphrase_file: Path = PassFile,
) -> None:
    """Show a request's subject and key fingerprints, confirm, sign, write the bundle."""
    pki = Pki(pki_dir)
    _show_request(request)
    if not yes and not typer.confirm("Compare the fingerprints with the silo by phone. Sign?"):
        raise EnrollmentError(f"not approved: {request} was left unsigned")
    bundle = pki.approve(request, days=days, passphrase=_passphrase(pki, passphrase_file),
                         out=out)
    _out.print(f"bundle written to [bold]{bundle}[/]; send it to the silo (it is public)")


@pki_app.command("revoke")
def revoke_cmd(
    name: str = typer.Argument(..., help="Silo name, or `coordinator`."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    pki_dir: Path = PkiDir, passphrase_file: Path = PassFile,
) -> None:
    """Revoke a silo (CRL re-issued, node key moved to revoked/: unregister it), or
    `coordinator`: the coordinator gateway's certificate (then issue-coordinator again)."""
    pki = Pki(pki_dir)
    if not yes and not typer.confirm(f"Revoke every certificate of {name!r}?"):
        raise EnrollmentError(f"not revoked: {name}")
    records = pki.revoke(name, passphrase=_passphrase(pki, passphrase_file))
    _out.print(f"revoked {name}: serials {', '.join(r.serial for r in records)}")
    if name == "coordinator":
        _out.print(f"CRL {pki.crl_path} re-issued. Issue a new gateway certificate now: "
                   f"`xsilo pki issue-coordinator --pki-dir {pki.root}` (same names); a running "
                   "coordinator reloads its gateway with it. Until then silos that fetched "
                   "this CRL refuse the coordinator and their SuperNodes keep retrying.",
                   soft_wrap=True)
        return
    _out.print(f"CRL {pki.crl_path} re-issued: reload the coordinator gateway, and unregister "
               f"the node key {pki.root / 'revoked' / (name + '.pub')} from the SuperLink")


@pki_app.command("renew")
def renew_cmd_pki(
    name: str = typer.Argument(..., help="Silo name."),
    days: int = typer.Option(30, help="New lifetime in days."),
    request: Path = typer.Option(None, help="The silo's renew-request.json (checked to match)."),
    out: Path = typer.Option(None, help="Bundle path (default PKI_DIR/bundles/NAME.json)."),
    pki_dir: Path = PkiDir, passphrase_file: Path = PassFile,
) -> None:
    """Re-sign a silo's current key with a fresh validity (no re-enrollment)."""
    pki = Pki(pki_dir)
    bundle = pki.renew(name, days=days, passphrase=_passphrase(pki, passphrase_file), out=out,
                       request=request)
    _out.print(f"renewal bundle [bold]{bundle}[/]: the silo installs it with "
               "`xsilo silo renew --bundle …`")


@pki_app.command("crl")
def crl_cmd(pki_dir: Path = PkiDir, passphrase_file: Path = PassFile,
            hours: float = typer.Option(None, "--hours", help="Validity of this and every later "
                                        "CRL, in hours (kept in pki.json).")) -> None:
    """Re-issue the CRL with a fresh nextUpdate. A running `xsilo coordinator start` reloads
    its gateway with it (and re-issues it by itself when it holds the CA key)."""
    pki = Pki(pki_dir)
    pki.publish_crl(_passphrase(pki, passphrase_file), validity_seconds=_seconds(hours))
    _out.print(f"CRL {pki.crl_path} valid until {pki.crl_next_update():%Y-%m-%d %H:%M:%S} UTC")


def _seconds(hours: float | None) -> int | None:
    if hours is None:
        return None
    if not 0 < hours <= MAX_CRL_DAYS * 24:  # also NaN and infinity
        raise EnrollmentError(f"--hours/--crl-hours {hours!r}: give a positive number of hours, "
                              f"at most {MAX_CRL_DAYS * 24} ({MAX_CRL_DAYS} days)")
    return max(1, round(hours * 3600))


def _table(pki: Pki, title: str, *, warn_days: float) -> Table:
    table = Table(title=title)
    for col in ("name", "kind", "serial", "state", "not after", "days left", "node key"):
        table.add_column(col)
    now = dt.datetime.now(dt.timezone.utc)
    for rec, state, warn in pki.status(warn_days=warn_days):
        left = (rec.expires - now).days
        style = {"revoked": "red", "expired": "dim", "superseded": "dim"}.get(state, "")
        if warn:
            style = "bold yellow"
        table.add_row(rec.name, rec.kind, rec.serial[:16], state, rec.not_after[:16],
                      str(left) if state == "valid" else "-", rec.node_key_sha256 or "-",
                      style=style)
    return table


@pki_app.command("status")
def status_cmd(pki_dir: Path = PkiDir,
               warn_days: float = typer.Option(7, help="Warn when a certificate's expiry is "
                                               "this close (days).")) -> None:
    """Every issued certificate with its expiry; warns, with the fixing command, about
    current certificates expiring within --warn-days and about a CRL due for renewal."""
    from deploy.pki.freshness import pki_notices

    pki = Pki(pki_dir)
    print_whole(_out, _table(pki, f"certificates in {pki.root}", warn_days=warn_days))
    for notice in pki_notices(pki, warn_days=warn_days):
        style = "bold red" if notice.level == "error" else "bold yellow"
        _out.print(f"[{style}]{notice.level}:[/] {escape(str(notice))}", soft_wrap=True)
    _out.print(f"CRL valid until {pki.crl_next_update():%Y-%m-%d %H:%M:%S} UTC; CA "
               f"{pki.ca_fingerprint}", soft_wrap=True)


@pki_app.command("list")
def list_cmd(pki_dir: Path = PkiDir,
             roster: bool = typer.Option(False, "--roster", help=(
                 "Print the members' key fingerprints as the `roster` line a site pins in "
                 "its policy.toml (send it to every site out of band)."))) -> None:
    """Enrolled silos with their current certificate and node key."""
    pki = Pki(pki_dir)
    if roster:
        entries = ", ".join(f'"{name}" = "{fp}"' for name, fp in pki.roster().items())
        print(f"roster = {{ {entries} }}")  # whole, never wrapped: it is copied into TOML
        return
    table = Table(title="silos")
    for col in ("name", "state", "serial", "not after", "node key"):
        table.add_column(col)
    latest = {r.name: (r, s) for r, s, _ in pki.status() if r.kind == "silo"}
    for name, (rec, state) in sorted(latest.items()):
        table.add_row(name, state, rec.serial[:16], rec.not_after[:16], rec.node_key_sha256 or "-")
    print_whole(_out, table)


@pki_app.command("sync")
def sync_cmd(
    pki_dir: Path = PkiDir,
    to: Path = typer.Option(..., "--to", help="The PKI directory to update: a removable "
                            "medium, or the coordinator host's PKI directory."),
) -> None:
    """Copy this PKI directory without its CA key (private/) for an offline CA: CA host →
    medium → coordinator host; files gone from here are removed there."""
    from deploy.pki.offline import sync_public

    report = sync_public(pki_dir, to)
    _out.print(f"{to}: {len(report.written)} file(s) written, {len(report.removed)} removed, "
               f"{report.unchanged} unchanged; no CA key there", soft_wrap=True)
    for name in report.removed:
        _out.print(f"  removed {escape(name)}")


# --- silo side (mounted under `xsilo silo`) --------------------------------------------

def enroll_cmd(
    name: str = typer.Argument(..., help="This silo's name, e.g. hospital-a."),
    kit: Path = typer.Option(..., "--kit", help="Member kit directory to create."),
    email: str = typer.Option(..., help="Contact e-mail of the site's responsible person."),
    person: str = typer.Option(None, help="Contact person."),
    phone: str = typer.Option(None, help="Contact phone (for the fingerprint call)."),
    organization: str = typer.Option(None, help="Institution name."),
) -> None:
    """Generate this silo's keys on site and write the request file to send."""
    path = enroll(name, kit, email=email, person=person, phone=phone, organization=organization)
    req = read_request(path)
    _out.print(f"keys written to {kit} (0600; they never leave this site)")
    _out.print(f"send [bold]{path}[/] to the coordinator operator and read them these "
               f"fingerprints by phone:\n  TLS key  {req.tls_key_fingerprint}\n"
               f"  node key {req.node_key_fingerprint}", soft_wrap=True)


def import_cmd(
    bundle: Path = typer.Argument(..., help="The bundle the operator sent back."),
    kit: Path = typer.Option(..., "--kit", help="The kit directory used for enroll."),
    ca_fingerprint: str = typer.Option(..., "--ca-fingerprint",
                                       help="CA SHA-256 fingerprint received out of band."),
    port: int = typer.Option(9443, help="Loopback port of this silo's gateway."),
) -> None:
    """Check a bundle against the CA fingerprint and complete the member kit."""
    member = import_bundle(bundle, kit, ca_fingerprint, local_port=port)
    _out.print(f"member kit complete: [bold]{member.root}[/] (silo {member.name}, coordinator "
               f"{member.coordinator} as {member.server_name})")


def renew_cmd(
    kit: Path = typer.Option(..., "--kit", help="Member kit directory."),
    bundle: Path = typer.Option(None, "--bundle",
                                help="Install this renewal bundle (else write a request)."),
) -> None:
    """Without --bundle: write a renewal request (same key). With it: install the renewed
    certificate atomically and reload a running silo gateway (training continues)."""
    if bundle is None:
        path = make_renewal_request(kit)
        _out.print(f"renewal request [bold]{path}[/]: send it to the coordinator operator")
        return
    member = install_renewal(bundle, kit)
    _out.print(f"renewed certificate installed in {member.client_cert}")
