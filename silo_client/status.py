"""``xsilo silo status``: the silo's certificates and CRL, and what needs doing soon.

What a site's IT checks (and the daily reminder timer of ``xsilo silo install-service``
runs with ``--check``, which exits 1 when anything needs doing): the silo's client
certificate (30 days by default: ``xsilo silo renew``), the consortium CA, and the kit's
CRL, which the running silo keeps fresh from the coordinator — one that lapsed means the
silo gateway refuses the coordinator.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import typer
from cryptography import x509
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from deploy.pki.freshness import Notice, crl_due, read_crl
from deploy.pki.kit import KIT_FILES
from silo_client.config import SiloConfig, load_silo_config
from silo_client.service import kit_of

__all__ = ["certificates", "silo_notices", "status_cmd"]

_out = Console(highlight=False)


def certificates(config: SiloConfig) -> list[tuple[str, Path]]:
    """(role, path) of every certificate this silo depends on."""
    kit = kit_of(config)
    found: list[tuple[str, Path]] = []
    if kit is not None:
        found += [("silo certificate", kit / KIT_FILES["tls_cert"]),
                  ("consortium CA", kit / KIT_FILES["ca"])]
    else:
        if config.identity_certificate is not None:
            found.append(("silo certificate", config.identity_certificate))
        if config.root_certificates is not None:
            found.append(("coordinator CA", config.root_certificates))
    return found


def _crl_path(config: SiloConfig) -> Path | None:
    kit = kit_of(config)
    if kit is not None:
        return kit / KIT_FILES["crl"]
    return config.identity_crl


def _span(delta: dt.timedelta) -> str:
    days = delta.total_seconds() / 86400
    return f"{days:.1f} d" if abs(days) >= 1 else f"{delta.total_seconds() / 3600:.1f} h"


def silo_notices(config: SiloConfig, *, warn_days: float = 14,
                 now: dt.datetime | None = None) -> list[Notice]:
    """What this silo needs done soon: a certificate expiring within ``warn_days`` (or
    expired, or unreadable), and a lapsed or due CRL in its kit."""
    now = now or dt.datetime.now(dt.timezone.utc)
    soon = now + dt.timedelta(days=warn_days)
    kit = kit_of(config)
    renew = (f"xsilo silo renew --kit {kit}" if kit is not None else None)
    out: list[Notice] = []
    for role, path in certificates(config):
        try:
            end = x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc
        except (OSError, ValueError) as exc:
            out.append(Notice("error", f"the {role} {path} is unreadable ({exc})"))
            continue
        if end > soon:
            continue
        level = "error" if end <= now else "warning"
        when = (f"EXPIRED {_span(now - end)} ago" if end <= now else
                f"expires in {_span(end - now)}") + f" ({end:%Y-%m-%d %H:%M} UTC)"
        if role == "silo certificate":
            out.append(Notice(level, f"this silo's certificate {path} {when}; write a renewal "
                                     "request, send it to the coordinator operator and "
                                     "install the bundle they send back "
                                     "(`xsilo silo renew --bundle`)", renew))
        else:
            out.append(Notice(level, f"the {role} {path} {when}: the consortium rotates it "
                                     "(docs/security.md, \"Rotate the CA\")"))
    crl = _crl_path(config)
    if crl is not None:
        out += _crl_notices(crl, now)
    return out


def _crl_notices(path: Path, now: dt.datetime) -> list[Notice]:
    try:
        crl = read_crl(path)
    except (OSError, ValueError) as exc:
        return [Notice("error", f"the CRL {path} is unreadable ({exc})")]
    end = crl.next_update_utc
    if end is None:
        return []
    if end <= now:
        return [Notice("error", f"the CRL {path} LAPSED {_span(now - end)} ago: this silo's "
                                "gateway refuses the coordinator. A running `xsilo silo start` "
                                "installs the coordinator's fresh CRL by itself: is it "
                                "running, and has the coordinator re-issued its CRL?")]
    if crl_due(end, end - crl.last_update_utc, now):
        return [Notice("warning", f"the CRL {path} lapses in {_span(end - now)} and the "
                                  "coordinator has not re-issued it yet (a running silo "
                                  "installs the fresh one within minutes)")]
    return []


def status_cmd(
    config: Path = typer.Option(Path("silo.toml"), "--config", help="The silo's silo.toml."),
    kit: Path = typer.Option(None, "--kit", help="A member kit directory (uses KIT/silo.toml)."),
    warn_days: float = typer.Option(14, "--warn-days", help="Warn about certificates that "
                                    "expire within this many days."),
    check: bool = typer.Option(False, "--check", help="Exit 1 when anything needs doing "
                               "(for a timer or monitoring)."),
) -> None:
    """This silo's certificates and CRL, and what needs doing soon (with the command)."""
    cfg = load_silo_config(kit / "silo.toml" if kit else config)
    table = Table(title=f"silo {cfg.name}")
    for col in ("what", "file", "valid until (UTC)"):
        table.add_column(col)
    for role, path in certificates(cfg):
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
            end = f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M}"
        except (OSError, ValueError):
            end = "unreadable"
        table.add_row(role, str(path), end)
    crl = _crl_path(cfg)
    if crl is not None:
        try:
            nxt = read_crl(crl).next_update_utc
            table.add_row("CRL (next update)", str(crl), f"{nxt:%Y-%m-%d %H:%M}" if nxt else "-")
        except (OSError, ValueError):
            table.add_row("CRL", str(crl), "unreadable")
    _out.print(table)
    notices = silo_notices(cfg, warn_days=warn_days)
    for notice in notices:
        style = "bold red" if notice.level == "error" else "bold yellow"
        _out.print(f"[{style}]{notice.level}:[/] {escape(str(notice))}", soft_wrap=True)
    if not notices:
        _out.print(f"nothing expires within {warn_days:g} days")
    if check and any(n.level in ("warning", "error") for n in notices):
        raise typer.Exit(1)
