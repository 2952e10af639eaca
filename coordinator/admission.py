"""Who joins a run: the coordinator's own checks on the silos' join replies.

A silo refuses a run itself (its data, its site policy); these are the refusals the
coordinator makes, each written like a silo's own (``ProtocolError[reason]: …``) so the
operator reads them in the same place: a join reply without an identity or with an
unusable initial model (not numeric and finite: a silo that joins first could make the
run's model NaN), two nodes claiming one silo name (neither is admitted), and a node that
joins under another name than the coordinator home enrolled it with (``enrolled.json``).
Then the admitted silos must agree on the data schema and build the same model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from coordinator.messages import Reply, SiloError
from xsilo.errors import ConfigError, ModelError, ProtocolError

__all__ = ["Member", "admit", "check_agreement"]

log = logging.getLogger(__name__)


@dataclass
class Member:
    """A silo admitted to the run: its node, its name and its data's fingerprint."""

    node_id: int
    name: str
    fingerprint: dict[str, Any]


def _refusal(reason: str, message: str) -> str:
    """A join refusal the coordinator makes itself, written like a silo's own."""
    return str(SiloError(ProtocolError.__name__, reason, message))


def _refuse(refused: dict[str, str], name: str, node: int, why: str) -> None:
    key = name if name not in refused else f"{name} (node {node})"
    refused[key] = why
    log.warning("silo %s (node %d) refused: %s", name, node, why)


def _claimed_twice(admitted: Mapping[int, Reply]) -> dict[str, list[int]]:
    """Silo name → the nodes that claim it, for every name more than one node claims."""
    by_name: dict[str, list[int]] = {}
    for node, reply in sorted(admitted.items()):
        assert reply.info is not None
        by_name.setdefault(reply.info.name, []).append(node)
    return {name: nodes for name, nodes in by_name.items() if len(nodes) > 1}


def _identity_problem(name: str, node: int, enrolled: Mapping[str, int]) -> str | None:
    """Why ``node`` may not join as silo ``name`` (None: it may): the coordinator home
    enrolled that name with another node's key, or this node's key under another name. A
    node it knows nothing of (no enrolment record) is left to the other checks."""
    owner = enrolled.get(name)
    if owner is not None and owner != node:
        return _refusal("identity", (
            f"node {node} joins as silo {name!r}, whose enrolled key is node {owner}'s; a silo "
            f"joins only under the name it enrolled with (find which silo runs node {node}: "
            "`flwr supernode list`, and revoke it if it is not who it says)"))
    own = sorted(n for n, i in enrolled.items() if i == node and n != name)
    if own:
        return _refusal("identity", (
            f"node {node} was enrolled as silo {own[0]!r} but joins as {name!r}; a silo joins "
            f"under the name it enrolled with: set name = {own[0]!r} in its silo.toml"))
    return None


def _model_problem(name: str, model: Mapping[str, np.ndarray]) -> str | None:
    """Why a silo's initial model cannot start the run (None: it can): every tensor must be
    numeric and finite, or a silo that joins first could make the run's model NaN."""
    for key, value in model.items():
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "iuf":
            kind = getattr(value, "dtype", type(value).__name__)
            return _refusal("unusable-model", f"silo {name}'s initial model: tensor {key!r} is "
                            f"{kind}, not numeric; every silo must build the same numeric model")
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            return _refusal("unusable-model", f"silo {name}'s initial model: tensor {key!r} "
                            "holds NaN or Inf; check the silo's model code and its init")
    return None


def admit(replies: Mapping[int, Reply], enrolled: Mapping[str, int]
          ) -> tuple[dict[int, Member], dict[str, dict[str, np.ndarray]], dict[str, str]]:
    """The join replies sorted out: (admitted silos by node, each admitted silo's initial
    model by name, refused silo → why)."""
    refused: dict[str, str] = {}
    admitted: dict[int, Reply] = {}
    for node, reply in sorted(replies.items()):
        name = reply.name or f"node-{node}"
        if reply.error is not None or reply.info is None:
            why = str(reply.error or "the join reply carries no silo identity")
        else:
            why = _model_problem(name, reply.arrays)
        if why is not None:
            _refuse(refused, name, node, why)
            continue
        admitted[node] = reply
    for name, claimants in _claimed_twice(admitted).items():
        _refuse(refused, name, claimants[0], _refusal("duplicate-name", (
            f"nodes {', '.join(map(str, claimants))} all join as silo {name!r}; none of "
            "them is admitted under that name (one is not who it says it is): check "
            f"which node holds {name}'s enrolled key and revoke the other")))
        for node in claimants:
            del admitted[node]
    members: dict[int, Member] = {}
    initial: dict[str, dict[str, np.ndarray]] = {}
    for node, reply in sorted(admitted.items()):
        info = reply.info
        assert info is not None  # admitted above only with one
        why = _identity_problem(info.name, node, enrolled)
        if why is not None:
            _refuse(refused, info.name, node, why)
            continue
        members[node] = Member(node, info.name, dict(info.fingerprint))
        initial[info.name] = reply.arrays
    return members, initial, refused


def check_agreement(members: Mapping[int, Member],
                    initial: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """The admitted silos agree on the data schema (fingerprint digests) and build the same
    model (tensor names, shapes, dtypes): ConfigError / ModelError naming who differs."""
    digests = {m.name: m.fingerprint.get("digest") for m in members.values()}
    if len(set(digests.values())) > 1:
        groups: dict[Any, list[str]] = {}
        for name, d in digests.items():
            groups.setdefault(d, []).append(name)
        raise ConfigError(
            "silos disagree on the data schema (columns, dtypes or label set): "
            + " vs ".join(",".join(sorted(g)) for g in groups.values())
            + "; align their [data.schema] tables before starting the run")
    names = sorted(initial)
    ref_name, ref = names[0], initial[names[0]]
    for name in names[1:]:
        other = initial[name]
        for tensor in list(ref) + [t for t in other if t not in ref]:
            a, b = ref.get(tensor), other.get(tensor)
            if a is None or b is None or a.shape != b.shape:
                raise ModelError(
                    f"model architectures differ: tensor {tensor!r} is "
                    f"{None if a is None else a.shape} at {ref_name} but "
                    f"{None if b is None else b.shape} at {name}; every silo must build "
                    "the same model")
            if a.dtype != b.dtype:  # else the model silently takes one silo's precision
                raise ModelError(
                    f"model dtypes differ: tensor {tensor!r} is {a.shape} {a.dtype} at "
                    f"{ref_name} but {b.shape} {b.dtype} at {name}; every silo must build "
                    "the same model with the same parameter dtypes")
