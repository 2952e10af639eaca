"""Approved code only: the app bundles this silo runs, and the gate that enforces the list.

Every run carries an app bundle (FAB), and Flower's SuperNode would install it and import
the ClientApp it names, as the silo's user, beside the silo's records and keys — whoever can
start a run chooses that code. A silo runs only the bundles it approved:

* **the default**, approved by the install itself: the bundle this xsilo release's
  ``xsilo coordinator run`` submits (the run stub, :data:`deploy.launch.fab.XSILO_APP`),
  which the silo builds and hashes itself (:func:`~deploy.launch.fab.xsilo_app_hash`;
  Flower's build is deterministic). Its components are the installed coordinator and silo;
* **the site's approvals**, ``<workspace>/approved-apps.json`` (:data:`APPROVALS_FILE`),
  added with ``xsilo silo approve-app`` (a ``.fab`` file, an app directory or a hash, with
  a note), listed with ``xsilo silo apps``::

      {"version": 1, "apps": [{"hash": "<sha256 of the FAB, 64 hex>", "note": "…",
        "approved_by": "alice@host", "approved_at": "2026-…Z", "source": "hash",
        "app": "@publisher/name==1.0" or null}]}

:func:`admit` is the warm executor's app gate (``deploy.launch.runner``): for every task,
before anything of the bundle is extracted or imported, it hashes the bundle's bytes and

* runs the **installed** ClientApp (``silo_client.client_app:app``) for the default bundle
  — nothing of the bundle is used, it carries no code;
* runs the bundle's own ClientApp for another approved bundle (the site reviewed exactly
  those bytes), installed from the verified bytes;
* answers anything else with a typed refusal — ``PolicyRefusal[approved_apps]`` naming the
  silo, the code the coordinator parses — records it in the egress ledger
  (``<type>.refusal`` with the bundle's hash) and logs it; nothing of the bundle runs.

Flower's own executor (``executor = "flower"``) cannot do this (:func:`check_executor`).
"""

from __future__ import annotations

import getpass
import json
import logging
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploy.launch.fab import (XSILO_APP, build_fab, fab_app_id, fab_digest, normalize_fab_hash,
                               xsilo_app_hash)
from silo_client.config import SiloConfig, load_silo_config
from silo_client.ledger import LEDGER_FILE, EgressLedger, payload_digest
from silo_client.policy import SitePolicy
from xsilo.errors import ConfigError, PolicyRefusal
from xsilo.files import atomic_write
from xsilo.protocol import CONFIG, ERROR_CODES
from xsilo.terms import server_round_of

if TYPE_CHECKING:  # Flower's runtime: imported by the warm server, not by the silo's CLI
    from flwr.app import Context, Message

    from deploy.launch.runner import Handler, Task

__all__ = ["APPROVALS_FILE", "Approval", "admit", "approvals_path", "approve", "approved_apps",
           "check_executor", "fab_of", "find_approval", "load_approvals"]

log = logging.getLogger(__name__)

APPROVALS_FILE = "approved-apps.json"  # in the silo's workspace ([silo] workspace)
REASON = "approved_apps"  # the PolicyRefusal reason of a refused bundle


@dataclass(frozen=True)
class Approval:
    """One app bundle this silo runs, by the SHA-256 of its bytes."""

    fab_hash: str
    note: str
    approved_by: str
    approved_at: str
    source: str  # "default", "hash", "file:<name>" or "dir:<path>"
    app: str | None = None  # "@publisher/name==version", when known
    default: bool = False  # the install's own: this release's run stub

    @classmethod
    def from_json(cls, data: Any, *, where: str) -> Approval:
        if not isinstance(data, dict) or not all(
                isinstance(data.get(k), str) for k in ("hash", "note", "approved_by",
                                                       "approved_at", "source")):
            raise ConfigError(f"{where}: every entry of \"apps\" needs string fields hash, "
                              f"note, approved_by, approved_at and source; found {data!r}")
        app = data.get("app")
        return cls(fab_hash=normalize_fab_hash(data["hash"]), note=data["note"],
                   approved_by=data["approved_by"], approved_at=data["approved_at"],
                   source=data["source"], app=app if isinstance(app, str) else None)

    def to_json(self) -> dict[str, Any]:
        return {"hash": self.fab_hash, "note": self.note, "approved_by": self.approved_by,
                "approved_at": self.approved_at, "source": self.source, "app": self.app}


def approvals_path(config: SiloConfig) -> Path:
    """Where ``config``'s silo keeps its approvals (its workspace)."""
    return config.workspace / APPROVALS_FILE


def load_approvals(path: Path) -> tuple[Approval, ...]:
    """The approvals in ``path`` (none when it does not exist); ConfigError when unreadable."""
    path = Path(path)
    if not path.exists():
        return ()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"approved apps {path} cannot be read ({exc}); restore it from "
                          "backup or approve the apps again (xsilo silo approve-app)") from exc
    if not isinstance(data, dict) or data.get("version") != 1 or not isinstance(
            data.get("apps"), list):
        raise ConfigError(f"approved apps {path}: expected {{\"version\": 1, \"apps\": [...]}}")
    return tuple(Approval.from_json(entry, where=str(path)) for entry in data["apps"])


def default_approval() -> Approval:
    """This release's run stub: approved by the install, computed here."""
    return Approval(fab_hash=xsilo_app_hash(), note="this release's `xsilo coordinator run`",
                    approved_by="the xsilo install", approved_at="-", source="default",
                    app=fab_app_id(build_fab(XSILO_APP)), default=True)


def approved_apps(config: SiloConfig) -> tuple[Approval, ...]:
    """Every bundle this silo runs: the default first, then the site's approvals."""
    return (default_approval(), *load_approvals(approvals_path(config)))


def find_approval(config: SiloConfig, fab_hash: str) -> Approval | None:
    """The approval of the bundle whose bytes hash to ``fab_hash``, if there is one."""
    if fab_hash == xsilo_app_hash():
        return default_approval()
    return next((a for a in load_approvals(approvals_path(config)) if a.fab_hash == fab_hash), None)


def approve(config: SiloConfig, fab_hash: str, *, note: str, source: str = "hash",
            app: str | None = None, approved_by: str | None = None) -> Approval:
    """Add the bundle ``fab_hash`` to this silo's approvals (written atomically)."""
    fab_hash = normalize_fab_hash(fab_hash)
    if not note.strip():
        raise ConfigError("an approval needs a note: who reviewed the app and why it may run")
    if fab_hash == xsilo_app_hash():
        raise ConfigError(f"app {fab_hash} is this xsilo release's own run stub: it is "
                          "approved already (`xsilo silo apps` shows it as the default)")
    path = approvals_path(config)
    current = load_approvals(path)
    if any(a.fab_hash == fab_hash for a in current):
        raise ConfigError(f"app {fab_hash} is approved already at this silo ({path})")
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    approval = Approval(fab_hash=fab_hash, note=note.strip(), approved_at=now, source=source,
                        approved_by=approved_by or _operator(), app=app)
    entries = [a.to_json() for a in (*current, approval)]
    atomic_write(path, json.dumps({"version": 1, "apps": entries}, indent=2) + "\n")
    log.info("approved app %s at silo %s: %s", fab_hash, config.name, note)
    return approval


def _operator() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def fab_of(path: Path) -> tuple[str, str, str]:
    """(hash, app id, source) of a ``.fab`` file or of an app directory (built as
    ``flwr run`` builds it)."""
    path = Path(path)
    if path.is_dir():
        content, source = build_fab(path), f"dir:{path.resolve()}"
    elif path.is_file():
        content, source = path.read_bytes(), f"file:{path.name}"
    else:
        raise ConfigError(f"{path} does not exist: pass a .fab file (flwr build) or an app "
                          "directory, or the app's hash with --hash")
    return fab_digest(content), fab_app_id(content), source


# ----------------------------------------------------------------------------- the gate
def admit(task: Task) -> Handler:
    """The warm executor's app gate (module docstring): what answers ``task``."""
    try:
        config = load_silo_config(str(task.context.node_config.get("silo-config", "")))
    except ConfigError as exc:  # no list to check against: nothing runs
        return _refuse(task, None, f"this silo cannot read its configuration ({exc}), so it "
                       "cannot check the run's app; nothing of the app was run")
    if task.fab.hash_str != task.fab_hash:
        return _refuse(task, config, f"run {task.run.run_id}'s app bundle hashes to "
                       f"{task.fab_hash} but arrived named {task.fab.hash_str!r}; a bundle "
                       "whose bytes do not match its name is never run")
    try:
        approval = find_approval(config, task.fab_hash)
    except ConfigError as exc:
        return _refuse(task, config, f"{exc}; until then no app but the default runs")
    label = f"{task.run.fab_id}=={task.run.fab_version}"
    if approval is None:
        return _refuse(task, config, (
            f"silo {config.name} runs only approved apps, and run {task.run.run_id}'s app "
            f"@{label} (sha256 {task.fab_hash}) is not one of them: none of its code ran. "
            "Start runs with `xsilo coordinator run` of the same xsilo release, or have the "
            "silo approve this app after reviewing it (`xsilo silo approve-app --hash "
            f"{task.fab_hash} --note ...`)"))
    if approval.default:
        from silo_client.client_app import app as installed  # preloaded by the warm server

        log.debug("run %s: the default app %s; the installed ClientApp answers",
                  task.run.run_id, task.fab_hash)
        return installed
    log.warning("silo %s runs run %s's approved app @%s (sha256 %s, approved by %s: %s)",
                config.name, task.run.run_id, label, task.fab_hash, approval.approved_by,
                approval.note)
    return _bundle_app(task)


def _bundle_app(task: Task) -> Handler:
    """An approved bundle's own ClientApp, installed from the bytes just verified.

    Installed under a directory named by the bundle's full hash: Flower names an install by
    its first 8 hex digits only, and reuses a directory that exists, so a shared one could
    hold another bundle's files.
    """
    from flwr.cli.install import install_from_fab
    from flwr.clientapp.utils import get_load_client_app_fn
    from flwr.supercore.utils import get_flwr_home

    installed = install_from_fab(task.fab.content, skip_prompt=True,
                                 install_dir=get_flwr_home() / "approved" / task.fab_hash)
    load = get_load_client_app_fn(default_app_ref="", app_path=str(installed), multi_app=True)
    return load(task.run.fab_id, task.run.fab_version, task.fab_hash)


class _Refusal:
    """Answers the task's message with the refusal decided before it was called."""

    def __init__(self, reply: Message) -> None:
        self.reply = reply

    def __call__(self, message: Message, context: Context) -> Message:  # a ClientApp's call
        return self.reply


def _refuse(task: Task, config: SiloConfig | None, text: str) -> Handler:
    """The typed refusal (as client_app's error replies), logged and put in the ledger."""
    from flwr.app import Error, Message

    msg = task.message
    body = {"type": PolicyRefusal.__name__, "reason": REASON, "message": text}
    if config is not None:
        body["silo"] = config.name
    reply = Message(Error(code=ERROR_CODES[PolicyRefusal.__name__], reason=json.dumps(body)),
                    reply_to=msg)
    log.warning("refusing %s of run %s: PolicyRefusal[%s]: %s", msg.metadata.message_type,
                task.run.run_id, REASON, text)
    if config is not None:
        _record(config, task, reply)
    return _Refusal(reply)


def _record(config: SiloConfig, task: Task, reply: Message) -> None:
    """A refusal leaves the site too: one ledger line, with the refused bundle's hash."""
    msg = task.message
    try:
        records = msg.content.config_records
        server_round = server_round_of(dict(records[CONFIG]) if CONFIG in records else {})
    except Exception:  # the round is only for filing; a malformed message files under 0
        server_round = 0
    try:
        EgressLedger(config.workspace / LEDGER_FILE).append(
            run_id=str(msg.metadata.run_id), server_round=server_round,
            message_type=f"{msg.metadata.message_type}.refusal", tensors={},
            payload_sha256=payload_digest({}, {}), masked=False, clip_norm=None,
            noise_sigma=None, epsilon=None,
            extra={"reason": reply.error.reason, "fab_hash": task.fab_hash,
                   "app": f"{task.run.fab_id}=={task.run.fab_version}"})
    except Exception:  # the refusal itself must still go out
        log.error("could not record the refusal in the egress ledger", exc_info=True)


def check_executor(config: SiloConfig, policy: SitePolicy) -> None:
    """Refuse to start a silo whose executor cannot keep to approved code.

    ``executor = "flower"`` lets Flower's SuperNode launch ``flwr-clientapp``, which
    installs and imports whatever bundle a run carries; Flower's only check,
    ``flower-supernode --trusted-entities``, accepts a bundle only with signatures that a
    Flower-Hub-connected SuperLink attaches, never for a bundle ``flwr run`` uploads (see
    docs/security.md). So that executor starts only when the site policy says
    ``allow_unapproved_code = true``, and then with a loud warning.
    """
    if config.executor != "flower":
        if policy.allow_unapproved_code:
            log.warning("%s: allow_unapproved_code has no effect with the %r executor, which "
                        "runs approved apps only", config.name, config.executor)
        return
    if not policy.allow_unapproved_code:
        raise ConfigError(
            f"{config.path}: [silo] executor = \"flower\" runs whatever app a run carries, "
            "as this silo's user, beside its data and keys: Flower can pin apps only with "
            "signatures from a Flower-Hub-connected SuperLink (--trusted-entities), which a "
            "bundle uploaded with `flwr run` never has. Use executor = \"warm\" (the "
            "default; it runs approved apps only), or accept the risk explicitly with "
            "allow_unapproved_code = true in the site policy")
    log.warning("UNSAFE: silo %s runs with executor = \"flower\" and allow_unapproved_code = "
                "true: ANY app a run carries will run here, with access to this silo's data "
                "and keys; its approved-apps list is not enforced", config.name)
