"""``xsilo silo install-service``: systemd units for a silo (a member kit or a silo.toml).

* ``xsilo-silo.service`` — ``xsilo silo start --kit KIT`` (or ``--config silo.toml``) as a
  dedicated account that can write only the kit and the workspace: the site's data, its
  model code and the installation are read-only to it;
* ``xsilo-silo-certs.timer`` — ``xsilo silo status … --check`` daily: fails when the silo's
  certificate (or the CA's) expires within ``--warn-days`` or the kit's CRL has lapsed, with
  the command that fixes it.

The silo needs no CRL timer: the running silo fetches the coordinator's CRL by itself.
"""

from __future__ import annotations

import pwd
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from deploy.service import (DEFAULT_UNIT_DIR, Service, Timer, enable_commands, render_units,
                            write_units, xsilo_executable)
from silo_client.config import SiloConfig, load_silo_config
from xsilo.errors import ConfigError

__all__ = ["install_service_cmd", "silo_service"]

_out = Console(highlight=False)


def kit_of(config: SiloConfig) -> Path | None:
    """The member kit a ``silo.toml`` sits in (``kit.toml`` beside it), else None."""
    return config.path.parent if (config.path.parent / "kit.toml").is_file() else None


def silo_service(config: SiloConfig, *, user: str, xsilo: Path, name: str = "xsilo-silo",
                 gpu: bool = False, warn_days: float = 14) -> Service:
    """The silo's service and its reminder timer."""
    exe, kit = str(xsilo), kit_of(config)
    which = ["--kit", str(kit)] if kit is not None else ["--config", str(config.path)]
    writable = (kit, config.workspace) if kit is not None else (config.workspace,)
    reminder = Timer("certs", f"xsilo silo {config.name} certificate reminder",
                     (exe, "silo", "status", *which, "--warn-days", f"{warn_days:g}",
                      "--check"))
    return Service(
        name=name, description=f"xsilo silo {config.name} (silo gateway + SuperNode)",
        argv=(exe, "silo", "start", *which), user=user,
        working_directory=kit or config.workspace,
        writable=tuple(p for p in writable if p is not None), timers=(reminder,),
        private_devices=not gpu,
        header=f"Written by `xsilo silo install-service` for {config.path}.")


def _account_exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True


def install_service_cmd(
    config: Path = typer.Option(Path("silo.toml"), "--config", help="The silo's silo.toml."),
    kit: Path = typer.Option(None, "--kit", help="A member kit directory (uses "
                             "KIT/silo.toml)."),
    user: str = typer.Option("xsilo", "--user", help="The dedicated account the service "
                             "runs as (created by the printed useradd if missing)."),
    output_dir: Path = typer.Option(DEFAULT_UNIT_DIR, "--output-dir",
                                    help="Where to write the unit files."),
    name: str = typer.Option("xsilo-silo", "--name", help="Unit name (one per silo on a "
                             "host)."),
    gpu: bool = typer.Option(False, "--gpu", help="Leave the devices visible (a model that "
                             "trains on a GPU); default: PrivateDevices=yes."),
    warn_days: float = typer.Option(14, "--warn-days", help="The reminder fails this many "
                                    "days before the silo's certificate expires."),
    xsilo: Optional[Path] = typer.Option(None, "--xsilo", help="The xsilo executable the "
                                         "units run (default: this installation's)."),
) -> None:
    """Write systemd units that run `xsilo silo start` as a service, with a daily certificate
    reminder; print the commands that enable them."""
    cfg = load_silo_config(kit / "silo.toml" if kit else config)
    if kit is not None and kit_of(cfg) is None:
        raise ConfigError(f"{kit} is not a member kit (no kit.toml): finish enrollment "
                          "(`xsilo silo import-bundle`) or pass --config silo.toml")
    cfg.workspace.mkdir(parents=True, exist_ok=True, mode=0o700)  # ReadWritePaths must exist
    svc = silo_service(cfg, user=user, xsilo=xsilo or xsilo_executable(), name=name, gpu=gpu,
                       warn_days=warn_days)
    for path in write_units(render_units(svc), output_dir):
        _out.print(f"wrote {path}")
    data = sorted({str(p.parent) for p in (cfg.train, cfg.test) if p is not None})
    _out.print(f"the service reads the data in {escape(', '.join(data))} (read-only to it): "
               f"make it readable by {user}, e.g. `setfacl -R -m u:{user}:rX DIR`",
               soft_wrap=True)
    _out.print("as root, enable them with:")
    for cmd in enable_commands(svc, output_dir, owned=svc.writable,
                               account_exists=_account_exists(user)):
        _out.print(f"  {escape(cmd)}", soft_wrap=True)
