"""Imported once by the silo SuperExec's forkserver (``deploy.launch.executor``), before any fork.

* Turns core dumps and ptrace off for the server, so every task process forked from it is
  non-dumpable from its first instruction (task processes hold the silo's protocol keys).
* Makes each task's pull of its message retry a missing object after 0.05 s, not 1 s
  (:mod:`deploy.launch.pulls`): the SuperNode hands out the task before the message's
  objects have arrived.
* Imports the silo's own modules named in ``$XSILO_WARM_PRELOAD`` (comma-separated: the
  model module of the silo's spec). A module that fails to import is reported on stderr and
  skipped: the task process then imports it itself and fails with the usual typed error
  reply, rather than the server dying (``multiprocessing`` only tolerates ImportError).
"""

from __future__ import annotations

import importlib
import os
import sys

from flwr.supercore.utils import disable_process_dumping
from flwr.supernode.runtime import run_clientapp

from deploy.launch.pulls import quicken

PRELOAD_ENV = "XSILO_WARM_PRELOAD"

disable_process_dumping(strict=False)
quicken(run_clientapp, "pull_and_inflate_object_from_tree", "pull_task_input")

for _name in filter(None, os.environ.get(PRELOAD_ENV, "").split(",")):
    try:
        importlib.import_module(_name)
    except BaseException as _exc:  # noqa: BLE001 - never let a silo module kill the server
        print(f"deploy.launch.warm: not preloading {_name!r} ({type(_exc).__name__}: {_exc}); "
              "each ClientApp process will import it itself", file=sys.stderr, flush=True)
