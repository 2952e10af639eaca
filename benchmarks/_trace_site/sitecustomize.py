"""Hop timestamps of a deployed round, for ``benchmarks/round_trip.py`` and
``benchmarks/round_cpu.py`` (not part of xsilo).

Put on ``PYTHONPATH`` with ``XSILO_TRACE_FILE`` set, Python runs this at the start of every
process of a local deployment (SuperLink, ServerApp, SuperNodes, the silos' warm ClientApp
servers, whose forks inherit it). As each Flower 1.42 module below is imported, the
functions a message passes through (and the HTTP servers, for each request) are
wrapped to append one JSON line per event to the file (one ``write`` of a short line on an
``O_APPEND`` file: lines of concurrent processes do not interleave). Nothing changes what
the functions do.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import sys
import time

_FILE = os.environ.get("XSILO_TRACE_FILE")


def _emit(event: str, **fields) -> None:
    line = json.dumps({"event": event, "pid": os.getpid(), **fields}) + "\n"
    fd = os.open(_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _meta(message) -> dict:
    m = message.metadata
    return {"id": m.message_id, "type": m.message_type, "group": m.group_id,
            "reply_to": m.reply_to_message_id}


def _grid(module) -> None:  # the ServerApp's pushes and pulls (flwr.superlink.grid.http_grid)
    cls = module.HttpGrid
    push, pull = cls.push_messages, cls.pull_messages

    def push_messages(self, messages):
        messages = list(messages)
        start = time.time()
        ids = list(push(self, messages))
        _emit("coord.push", start=start, end=time.time(),
              messages=[{"id": i, "type": m.metadata.message_type, "group": m.metadata.group_id}
                        for i, m in zip(ids, messages)])
        return ids

    def pull_messages(self, message_ids):
        replies = list(pull(self, message_ids))
        if replies:
            _emit("coord.pulled", at=time.time(), replies=[_meta(r) for r in replies])
        return replies

    push_messages.__wrapped__, pull_messages.__wrapped__ = push, pull  # xsilo's pins read
    cls.push_messages, cls.pull_messages = push_messages, pull_messages


def _supernode(module) -> None:  # flwr.supernode.start_client_internal
    pull_and_store, push_messages = module._pull_and_store_message, module._push_messages

    def traced_pull(*args, receive, **kwargs):
        got: list = []

        def receiving():
            out = receive()
            if out is not None:
                got.append(out[0])
                _emit("node.got", at=time.time(), **_meta(out[0]))
            return out

        result = pull_and_store(*args, receive=receiving, **kwargs)
        if got:
            _emit("node.stored", at=time.time(), id=got[0].metadata.message_id)
        return result

    def traced_push(*args, send, **kwargs):
        sent: list[str] = []

        def sending(message, *rest):
            sent.append(message.metadata.reply_to_message_id)
            return send(message, *rest)

        push_messages(*args, send=sending, **kwargs)
        if sent:
            _emit("node.pushed", at=time.time(), reply_to=sent)

    traced_pull.__wrapped__, traced_push.__wrapped__ = pull_and_store, push_messages
    module._pull_and_store_message, module._push_messages = traced_pull, traced_push


def _clientapp(module) -> None:  # flwr.supernode.runtime.run_clientapp
    pull_task_input, push_message = module.pull_task_input, module.push_message

    def traced_pull(client):
        start = time.time()
        out = pull_task_input(client)
        _emit("app.pull", start=start, end=time.time(), **_meta(out[0]))
        return out

    def traced_push(client, message, context):
        start = time.time()
        push_message(client, message, context)
        _emit("app.push", start=start, end=time.time(),
              reply_to=message.metadata.reply_to_message_id)

    traced_pull.__wrapped__, traced_push.__wrapped__ = pull_task_input, push_message
    module.pull_task_input, module.push_message = traced_pull, traced_push


def _http_server(module) -> None:  # uvicorn.protocols.http.httptools_impl: the HTTP server of
    cycle = module.RequestResponseCycle.__init__  # the SuperLink and of each SuperNode's
    # Runtime API (the pid tells them apart), one cycle per request

    def traced_init(self, scope, *args, **kwargs):
        _emit("http.request", at=time.time(), path=scope.get("path", "?"))
        cycle(self, scope, *args, **kwargs)

    traced_init.__wrapped__ = cycle
    module.RequestResponseCycle.__init__ = traced_init


_PATCHES = {"flwr.superlink.grid.http_grid": _grid,
            "flwr.supernode.start_client_internal": _supernode,
            "flwr.supernode.runtime.run_clientapp": _clientapp,
            "uvicorn.protocols.http.httptools_impl": _http_server}


class _Loader(importlib.abc.Loader):
    def __init__(self, loader, patch) -> None:
        self._loader, self._patch = loader, patch

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        self._patch(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in _PATCHES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader, _PATCHES[name])
        return spec


if _FILE:
    sys.meta_path.insert(0, _Finder())
