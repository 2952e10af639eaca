"""systemd units for a coordinator or a silo host (pure functions: settings in, text out).

``xsilo coordinator install-service`` and ``xsilo silo install-service`` describe what runs
(:class:`Service`, :class:`Timer`) and :func:`render_units` writes the unit files:

* ``NAME.service`` — the long-running ``xsilo coordinator start`` / ``xsilo silo start``
  (both serve in the foreground until SIGTERM, which they turn into an orderly stop of
  every child: so ``Type=simple`` and ``KillMode=mixed``, the main process alone gets the
  SIGTERM and the rest a SIGKILL only if it is still there after ``TimeoutStopSec``);
* ``NAME-JOB.service`` + ``NAME-JOB.timer`` — a daily one-shot job (the CRL re-issue, the
  certificate reminder, which exits non-zero when something needs doing, so the job shows
  in ``systemctl --failed``).

Every service runs as one dedicated account with the same hardening: nothing of the file
system is writable but the paths given (``ProtectSystem=strict`` + ``ReadWritePaths``), a
private ``/tmp``, no new privileges, no kernel tunables, modules, logs or clock, no
namespaces but the user and network ones the coordinator's private SuperLink (and a silo's
private uplink) is made of. Left out: ``MemoryDenyWriteExecute`` (cffi callbacks and
torch's JIT need writable executable memory), ``CapabilityBoundingSet`` (it would also
bound the capabilities inside the user namespace, where the SuperLink's bridge brings its
loopback up), and ``SystemCallFilter``, ``PrivateUsers`` and ``ProtectProc`` (not tried
against the namespaces xsilo makes and enters: a wrong system-call list kills the service
with SIGSYS). The tests check the units with ``systemd-analyze verify``; they do not run
them under systemd.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from xsilo.errors import ConfigError
from xsilo.files import atomic_write

__all__ = ["DEFAULT_UNIT_DIR", "HARDENING", "Service", "Timer", "enable_commands",
           "render_units", "systemd_quote", "write_units", "xsilo_executable"]

DEFAULT_UNIT_DIR = Path("/etc/systemd/system")

# The sandbox every xsilo unit gets (docstring: what is left out and why).
HARDENING: tuple[tuple[str, str], ...] = (
    ("NoNewPrivileges", "yes"),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "read-only"),
    ("PrivateTmp", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("ProtectClock", "yes"),
    ("ProtectHostname", "yes"),
    ("RestrictNamespaces", "user net"),
    ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6 AF_NETLINK"),
    ("RestrictSUIDSGID", "yes"),
    ("RestrictRealtime", "yes"),
    ("LockPersonality", "yes"),
    ("SystemCallArchitectures", "native"),
    ("UMask", "0077"),
)
_ACCOUNT = re.compile(r"[a-z_][a-z0-9_-]{0,31}")  # fullmatch: `$` allows a final "\n"
_UNIT = re.compile(r"[A-Za-z0-9:_.\\-]{1,200}")
# Flower must not phone home from a service either (federation.cli sets them too; a unit
# says so where an operator looks).
_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
        "PYTHONUNBUFFERED": "1"}


@dataclass(frozen=True)
class Timer:
    """A daily one-shot job of a service: ``NAME-JOB.service`` started by ``NAME-JOB.timer``."""

    job: str            # unit name suffix, e.g. "crl"
    description: str
    argv: tuple[str, ...]
    writable: tuple[Path, ...] = ()   # what the job may write (the CRL job: the PKI dir)
    on_calendar: str = "daily"


@dataclass(frozen=True)
class Service:
    """The long-running xsilo process of a host and its daily jobs."""

    name: str           # unit base name, e.g. "xsilo-coordinator"
    description: str
    argv: tuple[str, ...]
    user: str
    working_directory: Path
    writable: tuple[Path, ...]
    timers: tuple[Timer, ...] = ()
    private_devices: bool = True      # False on a silo whose model uses a GPU
    bind_low_port: bool = False       # a gateway on a port below 1024
    environment: Mapping[str, str] = field(default_factory=dict)
    header: str = ""                  # first comment line: who wrote it, from what

    def __post_init__(self) -> None:
        if not _UNIT.fullmatch(self.name) or self.name.startswith("-"):
            raise ConfigError(f"unit name {self.name!r}: use letters, digits and -_.: only "
                              "(e.g. xsilo-coordinator)")
        if not _ACCOUNT.fullmatch(self.user):
            raise ConfigError(f"--user {self.user!r} is not a valid account name (lower-case "
                              "letters, digits, - and _, e.g. xsilo)")
        if self.user == "root":
            raise ConfigError("--user root: the service must run as a dedicated account "
                              "(e.g. --user xsilo); root would void every sandbox setting")
        for path in (self.working_directory, *self.writable,
                     *(p for t in self.timers for p in t.writable)):
            if not Path(path).is_absolute():
                raise ConfigError(f"{path}: unit paths must be absolute")


def systemd_quote(word: str | Path) -> str:
    """One word of an ``ExecStart=`` or path list, quoted for systemd: ``%`` (specifiers)
    and ``$`` (variables) doubled, and double quotes around anything with a space, quote or
    backslash. A control character (a newline would end the setting) is a ConfigError."""
    text = _one_line("word", str(word)).replace("%", "%%").replace("$", "$$")
    if text and not re.search(r"[\s\"'\\;]", text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _outermost(paths: Sequence[Path]) -> list[Path]:
    """``paths`` without those inside another one of them (order kept)."""
    kept: list[Path] = []
    for path in sorted({Path(p) for p in paths}, key=lambda p: len(p.parts)):
        if not any(path.is_relative_to(outer) for outer in kept):
            kept.append(path)
    return [p for p in dict.fromkeys(Path(q) for q in paths) if p in kept]


def _paths(paths: Sequence[Path]) -> str:
    """The list for ``ReadWritePaths=``."""
    return " ".join(systemd_quote(p) for p in _outermost(paths))


def _service_lines(svc: Service, *, argv: Sequence[str], writable: Sequence[Path],
                   oneshot: bool) -> list[str]:
    lines = ["[Service]", f"Type={'oneshot' if oneshot else 'simple'}", f"User={svc.user}",
             f"ExecStart={' '.join(systemd_quote(a) for a in argv)}",
             f"WorkingDirectory={systemd_quote(svc.working_directory)}",
             # a home the account can write: whatever a library keeps under ~ stays here
             f"Environment={systemd_quote('HOME=' + str(svc.working_directory))}"]
    lines += [f"Environment={systemd_quote(f'{k}={v}')}"
              for k, v in {**_ENV, **svc.environment}.items()]
    if oneshot:  # a job that hangs (a passphrase prompt, say) ends and shows as failed
        lines += ["TimeoutStartSec=10min"]
    else:
        lines += ["Restart=on-failure", "RestartSec=10s", "KillMode=mixed",
                  "TimeoutStopSec=60s"]
    lines += [f"ReadWritePaths={_paths(writable)}"]
    lines += [f"{key}={value}" for key, value in HARDENING]
    if svc.private_devices:
        lines.append("PrivateDevices=yes")
    if svc.bind_low_port and not oneshot:
        lines.append("AmbientCapabilities=CAP_NET_BIND_SERVICE")
    return lines


def _one_line(what: str, text: str) -> str:
    """``text`` for a unit's free-text setting or comment; a control character (a newline
    would start a setting of the text's choosing, such as a root ``ExecStartPre=+``) is a
    ConfigError."""
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ConfigError(f"the unit's {what} {text!r:.120} contains a control character; it "
                          "cannot go into a systemd unit (a silo name or path with a newline "
                          "in it: rename it)")
    return text


def render_units(svc: Service) -> dict[str, str]:
    """Unit file name → text, for the service and each of its timers."""
    _one_line("description", svc.description)
    _one_line("header", svc.header or "")
    for timer in svc.timers:
        _one_line("timer description", f"{timer.description} {timer.on_calendar}")
    head = [f"# {svc.header}" if svc.header else "# Written by xsilo.",
            "# Regenerate it with the same command rather than editing it."]
    units = {f"{svc.name}.service": "\n".join([
        *head, "[Unit]", f"Description={svc.description}",
        "Wants=network-online.target", "After=network-online.target time-sync.target", "",
        *_service_lines(svc, argv=svc.argv, writable=svc.writable, oneshot=False), "",
        "[Install]", "WantedBy=multi-user.target", ""])}
    for timer in svc.timers:
        base = f"{svc.name}-{timer.job}"
        if not _UNIT.fullmatch(base):
            raise ConfigError(f"timer job name {timer.job!r}: letters, digits and -_. only")
        units[f"{base}.service"] = "\n".join([
            *head, "[Unit]", f"Description={timer.description}",
            "After=network-online.target time-sync.target", "",
            *_service_lines(svc, argv=timer.argv,
                            writable=timer.writable or (svc.working_directory,),
                            oneshot=True), ""])
        units[f"{base}.timer"] = "\n".join([
            *head, "[Unit]", f"Description={timer.description} ({timer.on_calendar})", "",
            "[Timer]", f"OnCalendar={timer.on_calendar}", "RandomizedDelaySec=1h",
            "Persistent=true", f"Unit={base}.service", "",
            "[Install]", "WantedBy=timers.target", ""])
    return units


def write_units(units: Mapping[str, str], out_dir: Path) -> list[Path]:
    """Write each unit (0644: systemd and operators read them; they hold no secret)."""
    out_dir = Path(out_dir)
    written = []
    for name, text in units.items():
        atomic_write(out_dir / name, text, mode=0o644)
        written.append(out_dir / name)
    return written


def enable_commands(svc: Service, out_dir: Path, *, owned: Sequence[Path],
                    account_exists: bool) -> list[str]:
    """The commands an administrator runs (as root) to put the units to work."""
    cmds = []
    if not account_exists:
        cmds.append(f"useradd --system --home-dir {shlex.quote(str(svc.working_directory))} "
                    f"--shell /usr/sbin/nologin {svc.user}")
    if owned:
        cmds.append(f"chown -R {svc.user}: " + " ".join(shlex.quote(str(p))
                                                        for p in _outermost(owned)))
    out_dir = Path(out_dir).absolute()
    if out_dir != DEFAULT_UNIT_DIR:
        files = " ".join(shlex.quote(str(out_dir / n)) for n in render_units(svc))
        cmds.append(f"cp {files} {DEFAULT_UNIT_DIR}/")
    cmds.append("systemctl daemon-reload")
    cmds.append("systemctl enable --now " + " ".join(
        [f"{svc.name}.service", *(f"{svc.name}-{t.job}.timer" for t in svc.timers)]))
    return cmds


def xsilo_executable() -> Path:
    """The ``xsilo`` of the running interpreter's environment (absolute, symlinks kept: a
    unit that names ``/opt/xsilo/venv/bin/xsilo`` follows an upgrade that re-points the
    ``venv`` link)."""
    beside = Path(os.path.abspath(sys.executable)).parent / "xsilo"
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("xsilo")
    if found is None:
        raise ConfigError("cannot find the `xsilo` executable of this installation: pass "
                          "--xsilo /path/to/venv/bin/xsilo")
    return Path(os.path.abspath(found))
