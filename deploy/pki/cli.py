"""``xsilo pki …`` (coordinator operator) and the silo-side enrollment commands.

``pki_app`` is mounted as ``xsilo pki``; ``enroll_cmd``, ``import_cmd`` and ``renew_cmd``
are plain typer-typed functions mounted as ``xsilo silo enroll | import-bundle | renew``.
Errors are raised as :mod:`xsilo.errors` exceptions (the root CLI prints one red line).
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from deploy.pki.enrollment import enroll, import_bundle, install_renewal, make_renewal_request
from deploy.pki.messages import read_request
from deploy.pki.authority import DEFAULT_PKI_DIR, Pki
from xsilo.errors import EnrollmentError

__all__ = ["enroll_cmd", "import_cmd", "pki_app", "renew_cmd"]

pki_app = typer.Typer(help="The consortium PKI (coordinator operator): CA, approvals, "
                      "revocation, renewal.", no_args_is_help=True)
_out = Console(emoji=False, highlight=False)  # ":CD:" in a fingerprint is not an emoji

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
        return typer.prompt("CA key passphrase", hide_input=True).encode()
    return None


@pki_app.command("init")
def init_cmd(
    pki_dir: Path = PkiDir,
    curve: str = typer.Option("P-384", help="P-256 or P-384."),
    organization: str = typer.Option(None, help="Consortium name in certificate subjects."),
    common_name: str = typer.Option("xsilo consortium CA", help="CA subject CN."),
    days: int = typer.Option(3650, help="CA lifetime in days."),
    encrypt: bool = typer.Option(False, "--encrypt/--no-encrypt",
                                 help="Protect the CA key with a passphrase (prompted)."),
    passphrase_file: Path = PassFile,
) -> None:
    """Create the consortium root CA, an empty index and an empty CRL."""
    pw = _read_passphrase_file(passphrase_file) if passphrase_file else None
    if encrypt and pw is None:
        pw = typer.prompt("New CA key passphrase", hide_input=True,
                          confirmation_prompt=True).encode()
    pki = Pki.init(pki_dir, common_name=common_name, organization=organization, curve=curve,
                   days=days, passphrase=pw)
    _out.print(f"CA created in [bold]{pki.root}[/] (key {pki.ca_key_path}, mode 0600)")
    _out.print(f"CA fingerprint (give it to every silo by phone or letter):\n"
               f"  [bold green]{pki.ca_fingerprint}[/]", soft_wrap=True)


@pki_app.command("issue-coordinator")
def issue_coordinator_cmd(
    host: list[str] = typer.Option([], "--host", help="DNS name silos dial (repeatable)."),
    ip: list[str] = typer.Option([], "--ip", help="IP address SAN (repeatable)."),
    port: int = typer.Option(8443, help="Public port of the coordinator gateway."),
    address: str = typer.Option(None, help="host:port silos dial (default: first --host:port)."),
    days: int = typer.Option(365, help="Certificate lifetime in days."),
    pki_dir: Path = PkiDir, passphrase_file: Path = PassFile,
) -> None:
    """Issue the coordinator gateway's server certificate and the SuperLink's loopback one."""
    pki = Pki(pki_dir)
    files = pki.issue_coordinator(hosts=[*host, *ip], address=address, port=port, days=days,
                                  passphrase=_passphrase(pki, passphrase_file))
    _out.print(f"gateway certificate {files.server_cert}; silos dial [bold]{files.address}[/] "
               f"and verify the name [bold]{files.server_name}[/]")
    _out.print(f"SuperLink loopback certificate {files.superlink_cert}")


def _show_request(path: Path) -> None:
    req = read_request(path)
    table = Table(title=f"enrollment request {path}", show_header=False)
    for key, value in (("kind", req.kind), ("silo", req.name), ("subject", req.subject),
                       ("TLS key SHA-256", req.tls_key_fingerprint),
                       ("node key", req.node_key_fingerprint),
                       *((f"contact.{k}", v) for k, v in req.contact.items()),
                       ("created", req.created)):
        table.add_row(key, value)
    _out.print(table)


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
    name: str = typer.Argument(..., help="Silo name."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    pki_dir: Path = PkiDir, passphrase_file: Path = PassFile,
) -> None:
    """Revoke a silo: CRL re-issued, node key moved to revoked/ (unregister it)."""
    pki = Pki(pki_dir)
    if not yes and not typer.confirm(f"Revoke every certificate of {name!r}?"):
        raise EnrollmentError(f"not revoked: {name}")
    records = pki.revoke(name, passphrase=_passphrase(pki, passphrase_file))
    _out.print(f"revoked {name}: serials {', '.join(r.serial for r in records)}")
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
def crl_cmd(pki_dir: Path = PkiDir, passphrase_file: Path = PassFile) -> None:
    """Re-issue the CRL with a fresh nextUpdate (run daily, then reload the gateway)."""
    pki = Pki(pki_dir)
    pki.publish_crl(_passphrase(pki, passphrase_file))
    _out.print(f"CRL {pki.crl_path} valid until {pki.crl_next_update():%Y-%m-%d %H:%M} UTC")


def _table(pki: Pki, title: str, *, warn_days: int) -> Table:
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
               warn_days: int = typer.Option(7, help="Warn when expiry is this close.")) -> None:
    """Every issued certificate with its expiry; warns about those expiring soon."""
    pki = Pki(pki_dir)
    _out.print(_table(pki, f"certificates in {pki.root}", warn_days=warn_days))
    for rec, _state, warn in pki.status(warn_days=warn_days):
        if warn:
            _out.print(f"[bold yellow]warning:[/] {rec.name} ({rec.kind}) expires "
                       f"{rec.not_after}: `xsilo pki renew {rec.name}`")
    _out.print(f"CRL valid until {pki.crl_next_update():%Y-%m-%d %H:%M} UTC; CA "
               f"{pki.ca_fingerprint}")


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
    _out.print(table)


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
