"""The silo's SuperExec: Flower's SuperExec loop, with ClientApp processes forked warm.

Flower's SuperNode starts a new ``flwr-clientapp`` process for every message it receives,
and each one spends about a second of CPU importing Flower (its CLI pulls in FastAPI,
SQLAlchemy and Alembic) and xsilo before it reads the message. With a handful of silos
on a small machine that start-up, not the model, sets the round time.

``python -m deploy.launch.executor`` is what a silo's SuperNode runs instead, in Flower's own
``--isolation process`` mode (the SuperNode serves its Runtime API; an external SuperExec
launches the tasks). It runs Flower's SuperExec loop unchanged (``run_superexec``: task
polling, parent-process monitor, signal handling) with one difference, the executor:

* a ``multiprocessing`` *forkserver* is started once, a fresh interpreter that imports
  Flower's ClientApp runtime and the installed xsilo silo (plus the modules named with
  ``--preload``, e.g. the silo's model code) and then does nothing else — it opens no
  connection, reads no message and holds no key;
* every ClientApp task is a new process forked from that server, which runs xsilo's task
  runner (:mod:`deploy.launch.runner`) with the task's token: it speaks the Runtime API as
  ``flwr-clientapp`` does, but never installs or imports the run's app bundle itself — the
  silo's app gate (``--app-gate``, e.g. ``silo_client.apps:admit``) checks the bundle's
  hash against the silo's approved apps first and answers with the installed xsilo
  ClientApp, an approved app, or a typed refusal.

So each message still gets its own process (no state survives between messages except
Flower's ``context.state``, as before), but the process starts with its imports done. The
server and so every task process are non-dumpable (no core dumps, no ptrace by other users'
processes: ``deploy.launch.warm``), and the SuperNode and this SuperExec share a random secret
(``--auth-secret-file``, Flower's HMAC SuperExec auth), so no other local process can take
the SuperNode's tasks.
Tasks of any other type go to Flower's subprocess executor. ``executor = "flower"`` in
``silo.toml`` keeps Flower's stock SuperExec (which runs any bundle: see docs/security.md).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import multiprocessing.forkserver
import os
import sys
from typing import Sequence

from flwr.supercore.constant import TaskType
from flwr.supercore.superexec.executor import LaunchResult, SubprocessExecutor

__all__ = ["DEFAULT_PRELOAD", "ForkserverExecutor", "main"]

log = logging.getLogger(__name__)

# What every ClientApp process imports anyway: Flower's ClientApp runtime (the bulk of the
# start-up cost) and the silo as installed (the app's component points here; Flower's
# ``load_app`` reuses a module that is already imported).
DEFAULT_PRELOAD = (
    "flwr.supernode.runtime.run_clientapp",
    "flwr.supercore.tls",
    "flwr.supercore.utils",
    "flwr.cli.build",  # the gate builds the xsilo run stub to know its hash
    "silo_client.client_app",
    "deploy.launch.executor",
    "deploy.launch.runner",
)
# Imported last: makes the server non-dumpable, then imports the silo's own modules.
_WARM = "deploy.launch.warm"


def _run_task(runtime_api_address: str, token: str, insecure: bool,
              root_certificates_path: str | None, parent_pid: int | None, gate: str) -> None:
    """One task, in a process forked from the warm server (deploy.launch.runner)."""
    from flwr.supercore.tls import validate_and_resolve_root_certificates

    from deploy.launch.runner import run_task

    # Non-dumpable already: inherited from the server (deploy.launch.warm), before the first byte.
    run_task(runtime_api_address, token, gate_ref=gate, insecure=insecure,
             certificates=validate_and_resolve_root_certificates(root_certificates_path, insecure),
             parent_pid=parent_pid)


class ForkserverExecutor(SubprocessExecutor):
    """A Flower SuperExec executor that forks ClientApp processes from a warm forkserver.

    Flower's subprocess executor with ``launch`` / ``reconcile`` / ``close`` replaced for
    ClientApp tasks; every other task type, and the capacity calls, are Flower's.
    """

    def __init__(self, modules: Sequence[str] = (), gate: str = "") -> None:
        """``modules``: the silo's own modules to import in the server (its model code).
        ``gate``: the silo's app gate, ``MODULE:ATTR`` (:mod:`deploy.launch.runner`); its
        module is preloaded too. Without one every task is answered with an error (nothing
        of the run's app ever runs unchecked).

        One forkserver per process (``multiprocessing`` keeps one): the first executor of a
        process decides what it preloads.
        """
        from deploy.launch.warm import PRELOAD_ENV

        self._ctx = multiprocessing.get_context("forkserver")
        self._gate = gate
        # Flower's and xsilo's modules go through multiprocessing's own preload; the silo's
        # through deploy.launch.warm, which survives a module that fails to import.
        os.environ[PRELOAD_ENV] = ",".join(modules)
        gate_module = gate.partition(":")[0]
        self._ctx.set_forkserver_preload(
            [*DEFAULT_PRELOAD, *([gate_module] if gate_module else []), _WARM])
        # Start the server (and its imports) now, not on the first message.
        multiprocessing.forkserver.ensure_running()
        self._children: list[multiprocessing.process.BaseProcess] = []

    def launch(self, spec):  # noqa: ANN001, ANN201 - Flower's ExecutionSpec / LaunchResult
        if spec.task_type != TaskType.CLIENT_APP:
            return super().launch(spec)
        process = self._ctx.Process(
            target=_run_task, name="flwr-clientapp",
            args=(spec.runtime_api_address, spec.token, spec.insecure,
                  spec.root_certificates_path, spec.parent_pid, self._gate))
        try:
            process.start()
        except Exception as exc:  # noqa: BLE001 - reported to Flower's task-expiry handling
            return LaunchResult.failed(f"could not fork a ClientApp process: {exc}")
        self._children.append(process)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Forget (and reap) the task processes that have ended."""
        alive = []
        for process in self._children:
            try:
                if process.is_alive():
                    alive.append(process)
                    continue
                process.close()
            except (OSError, ValueError):
                pass
        self._children = alive

    def close(self) -> None:
        for process in self._children:
            try:
                if process.is_alive():
                    process.terminate()
            except (OSError, ValueError):  # the forkserver is gone; its group is stopped anyway
                pass
        self._children = []
        super().close()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m deploy.launch.executor --runtime-api-address HOST:PORT [--parent-pid PID]``."""
    from flwr.supercore.superexec import run_superexec as flower_superexec
    from flwr.supercore.utils import disable_process_dumping

    ap = argparse.ArgumentParser(prog="python -m deploy.launch.executor", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runtime-api-address", required=True,
                    help="the SuperNode's Runtime API, HOST:PORT (its --port)")
    ap.add_argument("--parent-pid", type=int, default=None,
                    help="exit when this process (the SuperNode) exits")
    ap.add_argument("--preload", nargs="*", default=[],
                    help="more modules for the warm server to import (the silo's model code)")
    ap.add_argument("--auth-secret-file", default=None,
                    help="the secret shared with the SuperNode (its --superexec-auth-secret-file)")
    ap.add_argument("--app-gate", required=True, metavar="MODULE:ATTR",
                    help="the silo's app gate, which decides what answers each task from its "
                         "app bundle's hash (silo_client.apps:admit)")
    args = ap.parse_args(argv)

    if not hasattr(flower_superexec, "get_executor"):  # pinned Flower; fail loudly if not
        sys.exit("deploy.launch.executor: this Flower version's SuperExec has no get_executor hook; "
                 "set `executor = \"flower\"` in silo.toml to use Flower's own SuperExec")
    disable_process_dumping(strict=False)
    secret = None
    if args.auth_secret_file:
        from flwr.supercore.auth.superexec_secret import load_superexec_auth_secret

        try:
            secret = load_superexec_auth_secret(args.auth_secret_file)
        except ValueError as exc:
            sys.exit(f"deploy.launch.executor: {exc}")
    executor = ForkserverExecutor(args.preload, gate=args.app_gate)
    # The one seam: Flower's loop builds its executor with get_executor(); hand it ours.
    flower_superexec.get_executor = lambda *_a, **_k: executor
    flower_superexec.run_superexec(
        runtime_api_address=args.runtime_api_address,
        insecure=True,  # the Runtime API is the SuperNode's loopback port, as Flower's own
        superexec_auth_secret=secret,  # HMAC on AcquireTask: no other local process gets tasks
        parent_pid=args.parent_pid,
    )


if __name__ == "__main__":
    main()
