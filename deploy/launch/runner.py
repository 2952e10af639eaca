"""xsilo's ClientApp task runner: one task, in a process forked from the warm server.

Flower's own ``run_clientapp`` (what ``flwr-clientapp`` runs) installs whatever app bundle
(FAB) the run carries and imports the ClientApp its ``pyproject.toml`` names: the code that
runs beside a silo's records and keys is chosen by whoever started the run. This runner
never installs or imports anything of the bundle itself. It speaks the same Runtime API to
the SuperNode, in this order:

1. pull the task's inputs: the message, the node's context, the run and its FAB;
2. hand them, as a :class:`Task`, to the silo's **app gate** (``--app-gate MODULE:ATTR``,
   imported by the warm server before any fork): the one function that decides, from the
   SHA-256 of the bundle's bytes (:attr:`Task.fab_hash`, computed here, never the hash the
   SuperLink claims), what answers the message — the installed xsilo ClientApp, an app the
   site approved, or a typed refusal; it returns that handler;
3. call the handler and push its reply, then the context (node state) and the task status;
4. exit with Flower's exit codes (0; 1 with ``Exit Code: …`` in the log on failure).

A gate that cannot be imported, or raises, answers with an error reply: nothing runs
(fail closed). Runtime dependency installation is never done here: whatever runs, runs on
the silo's installed packages. The heartbeat, the parent-process monitor (the task ends when the SuperExec
does) and the signal handling (SIGTERM pushes the task's status first) are Flower's, as in
``flwr-clientapp``; the process is non-dumpable because its server is (:mod:`deploy.launch.warm`).
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from flwr.app import Context, Error, Message
from flwr.clientapp.client_app import LoadClientAppError
from flwr.common.constant import ErrorCode, SubStatus
from flwr.supercore.app_utils import start_parent_process_monitor
from flwr.supercore.exit import ExitCode, flwr_exit, register_signal_handlers
from flwr.supercore.fab import Fab
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.run import Run
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.telemetry import EventType
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

from deploy.launch.fab import fab_digest
from xsilo.errors import ConfigError

__all__ = ["Gate", "Handler", "Task", "load_gate", "run_task"]

log = logging.getLogger(__name__)

Handler = Callable[..., Message]
"""What answers a task's message: called as ``handler(message=…, context=…)`` (a ClientApp)."""


@dataclass(frozen=True)
class Task:
    """One ClientApp task as the SuperNode hands it over."""

    message: Message
    context: Context
    run: Run
    fab: Fab

    @functools.cached_property
    def fab_hash(self) -> str:
        """SHA-256 of the bundle's bytes, computed here (``fab.hash_str`` is only a claim)."""
        return fab_digest(self.fab.content)


Gate = Callable[[Task], Handler]
"""The silo's decision on a task: the handler to run (or one that answers with a refusal)."""


def load_gate(ref: str) -> Gate:
    """The gate ``MODULE:ATTR`` names (its module is normally preloaded by the warm server)."""
    module, sep, attr = ref.partition(":")
    if not (module and sep and attr):
        raise ConfigError(f"app gate {ref!r} must be MODULE:ATTR, e.g. silo_client.apps:admit")
    gate = getattr(importlib.import_module(module), attr, None)
    if not callable(gate):
        raise ConfigError(f"app gate {ref!r}: {module} has no callable {attr!r}")
    return gate


class _Status:
    """What the task reports when it ends (pushed by the exit handler, on signals too)."""

    def __init__(self) -> None:
        self.context: Context | None = None
        self.sub_status = SubStatus.FAILED
        self.details = "ClientApp task failed before it pulled its inputs"


def _failure(exc: Exception, message: Message | None) -> tuple[Message | None, str, int]:
    """(error reply, status details, exit code) for a task that raised ``exc``."""
    if isinstance(exc, LoadClientAppError):
        code, reason = ErrorCode.LOAD_CLIENT_APP_EXCEPTION, "the ClientApp could not be loaded"
    else:
        code, reason = ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"{type(exc)}:<'{exc}'>"
    exit_code = (ExitCode.COMMON_APP_IMPORT_ERROR if isinstance(exc, ImportError)
                 else ExitCode.TASK_PROC_EXCEPTION)
    reply = Message(Error(code=code, reason=reason), reply_to=message) if message else None
    return reply, reason, exit_code


def _client(runtime_api_address: str, token: str, insecure: bool,
            certificates: bytes | None) -> tuple[RuntimeHttpClient, Any]:
    retry = make_simple_http_retry_invoker()
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address, insecure=insecure, root_certificates=certificates,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                      RuntimeTokenHttpInterceptor(token)],
        retry_invoker=retry)
    return client, retry


def run_task(runtime_api_address: str, token: str, *, gate_ref: str, insecure: bool = True,
             certificates: bytes | None = None, parent_pid: int | None = None) -> NoReturn:
    """Run one ClientApp task (module docstring) and exit the process."""
    if parent_pid is not None:
        start_parent_process_monitor(parent_pid)
    client, retry = _client(runtime_api_address, token, insecure, certificates)
    status = _Status()
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))

    def on_exit() -> None:
        retry.max_tries = 1  # never hang on the way out
        push_task_output(client=client, context=status.context, sub_status=status.sub_status,
                         details=status.details)
        if heartbeat.is_running:
            heartbeat.stop()
        client.close()

    register_signal_handlers(event_type=EventType.FLWR_CLIENTAPP_RUN_LEAVE,
                             exit_message="Task stopped.", exit_handlers=[on_exit])
    exit_code = ExitCode.SUCCESS
    message = reply = None
    try:
        heartbeat.start()
        message, context, run, fab = pull_task_input(client)
        status.context = context
        handler = load_gate(gate_ref)(Task(message, context, run, fab))
        reply = handler(message=message, context=context)
        status.sub_status, status.details = SubStatus.COMPLETED, ""
    except Exception as exc:  # reported to the coordinator as Flower reports a failed task
        log.error("ClientApp task failed", exc_info=exc)
        reply, status.details, exit_code = _failure(exc, message)
    finally:
        if reply is not None and status.context is not None:
            try:
                push_message(client, reply, status.context)
            except Exception as exc:  # the SuperNode is gone or refused it
                log.error("could not push the reply to the SuperNode", exc_info=exc)
                exit_code = ExitCode.CLIENTAPP_COMMUNICATION_ERROR
    flwr_exit(code=exit_code, emit_telemetry=False)
