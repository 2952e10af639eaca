"""What this silo agreed to when it joined a run, kept in its workspace.

A silo that joined a run under secure aggregation refuses a clear round of it; one that
joined under differential privacy refuses a round without DP terms, or with other DP terms
than those its join accepted (its ε projection, and so its consent, rested on them). These
facts must outlive the run's Flower context, which a SuperNode restart empties and a
context that no longer authenticates clears: a coordinator could otherwise drop DP or
masking from the next round after any restart. So they live in
``workspace/joined/<Flower run id>.json`` (owner-only, replaced atomically), and a restart
or a re-key forgets nothing.

A record also names the coordinator's run token (:attr:`xsilo.terms.JoinTerms.run_token`).
A join under the same Flower run id with another token is another run (the in-process
engine numbers every run 1) and replaces the record; a train message of the run under
another token than its join's is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xsilo.errors import ConfigError, ProtocolError
from xsilo.files import atomic_write
from xsilo.terms import TrainTerms

__all__ = ["NOT_JOINED", "Joined", "check_joined", "joined", "remember_join", "remember_secure"]

DIRECTORY = "joined"


@dataclass(frozen=True)
class Joined:
    """This silo's join of one run (``on_record`` false: it never joined the run)."""

    run_token: str | None = None
    secure_aggregation: bool = False
    dp_table: dict[str, Any] | None = None  # the DP table the join accepted
    dp_run: str | None = None  # the name the run's privacy history is kept under
    on_record: bool = True

    def to_json(self) -> str:
        return json.dumps({"run_token": self.run_token,
                           "secure_aggregation": self.secure_aggregation,
                           "dp_table": self.dp_table, "dp_run": self.dp_run}, sort_keys=True)


NOT_JOINED = Joined(on_record=False)


def _path(workspace: Path, run_id: int | str) -> Path:
    name = "".join(c for c in str(run_id) if c.isdigit())[:24] or "run"
    return Path(workspace) / DIRECTORY / f"{name}.json"


def joined(workspace: Path, run_id: int | str) -> Joined:
    """The join on record for Flower run ``run_id`` (:data:`NOT_JOINED` when there is none)."""
    path = _path(workspace, run_id)
    if not path.exists():
        return NOT_JOINED
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        token, secure, table = data["run_token"], data["secure_aggregation"], data["dp_table"]
        dp_run = data.get("dp_run")  # absent in a record written before it was kept
        if not (token is None or isinstance(token, str)) or not isinstance(secure, bool) or \
                not (table is None or isinstance(table, dict)) or \
                not (dp_run is None or isinstance(dp_run, str)):
            raise TypeError("a field has the wrong type")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise ConfigError(f"join record {path} is unreadable ({exc}); it holds what this "
                          "silo agreed to for the run (secure aggregation, DP): restore it "
                          "from backup, or remove it and leave the run") from exc
    return Joined(token, secure, table, dp_run)


def remember_join(workspace: Path, run_id: int | str, *, run_token: str | None,
                  secure_aggregation: bool, dp_table: dict[str, Any] | None,
                  dp_run: str | None = None) -> Joined:
    """Record an accepted join. For the same run (same token) nothing agreed is ever
    dropped: secure aggregation stays on, and the first DP table (and the name its
    history is kept under) stated stays the one."""
    before = joined(workspace, run_id)
    if before.on_record and before.run_token == run_token:
        secure_aggregation = secure_aggregation or before.secure_aggregation
        if before.dp_table is not None:
            dp_table, dp_run = before.dp_table, before.dp_run
    record = Joined(run_token, secure_aggregation, None if dp_table is None else dict(dp_table),
                    dp_run)
    atomic_write(_path(workspace, run_id), record.to_json(), mode=0o600)
    return record


def remember_secure(workspace: Path, run_id: int | str) -> None:
    """A key request came for a run this silo joined: it is a secure run, whatever its join
    said (a key request for a run never joined records nothing: its rounds are refused)."""
    before = joined(workspace, run_id)
    if before.on_record and not before.secure_aggregation:
        remember_join(workspace, run_id, run_token=before.run_token, secure_aggregation=True,
                      dp_table=before.dp_table, dp_run=before.dp_run)


def check_joined(record: Joined, terms: TrainTerms, *, secure: bool | None) -> None:
    """Refuse (ProtocolError) a round that breaks the run's join: a run this silo never
    joined (or whose join it refused), another run token, a clear round of a secure run, a
    round of a DP run without DP terms, with other ones, or keeping its ε under another
    name (a fresh history would escape the run's own cap)."""
    where = f"round {terms.server_round}"
    if not record.on_record:
        raise ProtocolError(f"{where} is of a run this silo has not joined (no join of it on "
                            "record: the join was refused, or never asked); a silo trains "
                            "only under terms it accepted at join")
    if record.run_token is not None and terms.run_token != record.run_token:
        raise ProtocolError(f"{where} names run token {terms.run_token!r}, but this silo "
                            f"joined this Flower run as run {record.run_token!r}; a run's "
                            "rounds keep the identity their join stated")
    if record.secure_aggregation and secure is False:
        raise ProtocolError("this silo joined the run with secure aggregation but the "
                            "train message has no mask request; refusing to send the "
                            "update in the clear")
    if record.dp_table is None:
        return
    if terms.dp is None:
        raise ProtocolError(f"this silo joined the run under differential privacy but "
                            f"{where}'s terms carry no DP terms; refusing to send an update "
                            "without its clipping and accounting")
    stated = dict(terms.dp.table)
    changed = sorted(k for k in set(stated) | set(record.dp_table)
                     if stated.get(k) != record.dp_table.get(k))
    if changed:
        pairs = ", ".join(f"{k}: {record.dp_table.get(k)!r} → {stated.get(k)!r}"
                          for k in changed)
        raise ProtocolError(f"{where}'s DP table differs from the one this silo joined the "
                            f"run under ({pairs}); the silo consented to the join's privacy "
                            "terms and refuses to send an update under others")
    if record.dp_run is not None and terms.dp.run != record.dp_run:
        raise ProtocolError(f"{where} keeps its privacy accounting under {terms.dp.run!r:.80}, "
                            f"but this silo joined the run under {record.dp_run!r}: a new name "
                            "would start a fresh history, past the run's own max_epsilon")
