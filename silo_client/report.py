"""A silo's own report: what left this site, per run and round, from its own records.

Pure: the silo's workspace in, one self-contained HTML page out (:mod:`xsilo.report_html`).
It reads, never writes, the egress ledger (``workspace/egress.jsonl``, verified here as
``xsilo silo ledger verify`` does), the site's ε tally (``workspace/privacy-tally.json``), the
per-run DP-SGD accountants (``workspace/privacy/dpsgd-*.json``) and the site policy's cap.

What the ledger records per message — kind, tensors (shape, dtype), a SHA-256 of the
payload (arrays *and* metric values), masking, clip norm, noise σ, the run's ε, and an
``extra`` record (the join reply, secure-aggregation record kinds and share counts, a
refusal's reason) — is what this report shows. The metric values themselves are covered by
the payload hash but not stored in the ledger, so they cannot be shown here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from silo_client.config import SiloConfig
from silo_client.ledger import LEDGER_FILE, verify_ledger
from silo_client.policy import PrivacyTally, SitePolicy
from silo_client.privacy import TALLY_FILE
from strategies.dp import Accountant
from xsilo.errors import ConfigError
from xsilo.report_html import Series, bar_chart, line_chart, page, table

__all__ = ["REPORT_FILE", "LedgerEntry", "read_entries", "render_silo_report"]

REPORT_FILE = "silo-report.html"
_REFUSAL = ".refusal"


@dataclass(frozen=True)
class LedgerEntry:
    """One ledger line, as far as it could be read (``readable`` False: shown as such)."""

    seq: int | None
    time: str
    run: str
    server_round: int
    kind: str
    values: int
    nbytes: int
    masked: bool
    clip_norm: float | None
    noise_sigma: float | None
    epsilon: float | None
    extra: Mapping[str, Any]
    readable: bool = True

    @property
    def refusal(self) -> bool:
        return self.kind.endswith(_REFUSAL)


def _size(tensors: Mapping[str, Any]) -> tuple[int, int]:
    values = nbytes = 0
    for spec in tensors.values():
        count = int(np.prod(spec["shape"])) if spec["shape"] else 1
        values += count
        try:
            nbytes += count * np.dtype(spec["dtype"]).itemsize
        except TypeError:
            pass  # an unknown dtype name: its values are counted, its bytes are not
    return values, nbytes


def read_entries(path: Path) -> list[LedgerEntry]:
    """Every line of the ledger at ``path`` (an unreadable line becomes a marker entry)."""
    out = []
    with Path(path).open("rb") as fh:
        for raw in fh:
            try:
                e = json.loads(raw)
                values, nbytes = _size(e.get("tensors") or {})
                out.append(LedgerEntry(
                    seq=e.get("seq"), time=str(e.get("timestamp", ""))[:19].replace("T", " "),
                    run=str(e.get("run_id")), server_round=int(e.get("server_round") or 0),
                    kind=str(e.get("message_type")), values=values, nbytes=nbytes,
                    masked=bool(e.get("masked")), clip_norm=e.get("clip_norm"),
                    noise_sigma=e.get("noise_sigma"), epsilon=e.get("epsilon"),
                    extra=e.get("extra") or {}))
            except (ValueError, TypeError, KeyError, AttributeError):
                out.append(LedgerEntry(None, "", "?", 0, "<unreadable line>", 0, 0, False,
                                       None, None, None, {}, readable=False))
    return out


def _by_run(entries: Sequence[LedgerEntry]) -> dict[str, list[LedgerEntry]]:
    runs: dict[str, list[LedgerEntry]] = {}
    for e in entries:
        if e.readable:
            runs.setdefault(e.run, []).append(e)
    return runs


def _kinds(entries: Sequence[LedgerEntry]) -> str:
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.kind] = counts.get(e.kind, 0) + 1
    return ", ".join(f"{k} ×{n}" if n > 1 else k for k, n in sorted(counts.items()))


def _kib(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"


def _extra(e: LedgerEntry) -> str:
    shown = {k: v for k, v in e.extra.items() if k != "record_sha256"}
    text = json.dumps(shown, sort_keys=True, default=str) if shown else ""
    return text if len(text) <= 160 else text[:157] + "..."


def _runs_section(runs: Mapping[str, list[LedgerEntry]]) -> str:
    if not runs:
        return '<p class="empty">The ledger holds no messages: nothing has left this site.</p>'
    rows = []
    for run, entries in runs.items():
        eps = [e.epsilon for e in entries if isinstance(e.epsilon, int | float)]
        rounds = sorted({e.server_round for e in entries if e.server_round > 0})
        rows.append([run, entries[0].time, entries[-1].time, len(entries),
                     f"{rounds[0]}–{rounds[-1]}" if rounds else "none", _kinds(entries),
                     sum(e.values for e in entries), _kib(sum(e.nbytes for e in entries)),
                     sum(e.masked for e in entries), sum(e.refusal for e in entries),
                     max(eps) if eps else None])
    return table(["run (Flower id)", "first", "last", "messages", "rounds", "kinds",
                  "values", "tensor bytes", "masked", "refusals", "ε (ledger)"], rows,
                 left={0, 1, 2, 5})


def _round_rows(entries: Sequence[LedgerEntry]) -> list[list[Any]]:
    by_round: dict[int, list[LedgerEntry]] = {}
    for e in entries:
        by_round.setdefault(e.server_round, []).append(e)
    rows = []
    for rnd, group in sorted(by_round.items()):
        eps = [e.epsilon for e in group if isinstance(e.epsilon, int | float)]
        rows.append([rnd if rnd else "join / setup", _kinds(group), sum(e.values for e in group),
                     _kib(sum(e.nbytes for e in group)),
                     "yes" if any(e.masked for e in group) else "no",
                     next((e.clip_norm for e in group if e.clip_norm is not None), None),
                     next((e.noise_sigma for e in group if e.noise_sigma is not None), None),
                     max(eps) if eps else None,
                     "; ".join(filter(None, (_extra(e) for e in group)))[:300]])
    return rows


def _per_run_sections(runs: Mapping[str, list[LedgerEntry]]) -> list[tuple[str, str]]:
    out = []
    for run, entries in runs.items():
        rows = _round_rows(entries)
        rounds = [r for r in sorted({e.server_round for e in entries}) if r > 0]
        sent = [float(sum(e.nbytes for e in entries if e.server_round == r)) for r in rounds]
        plots = [bar_chart(f"tensor bytes sent per round (run {run})", rounds,
                           {"bytes": sent}, y_label="bytes")]
        eps = [(r, max((e.epsilon for e in entries if e.server_round == r
                        and isinstance(e.epsilon, int | float)), default=None)) for r in rounds]
        if any(v is not None for _, v in eps):
            plots.append(line_chart(f"ε spent in run {run}", [Series("ε (this silo)", eps)],
                                    y_label="ε"))
        body = (f'<div class="plots">{"".join(plots)}</div>'
                + table(["round", "kinds", "values", "tensor bytes", "masked", "clip norm",
                         "noise σ", "ε after", "extra"], rows, left={0, 1, 8}))
        out.append((f"Run {run}: what left, round by round", body))
    return out


def _refusals(entries: Sequence[LedgerEntry]) -> str:
    refused = [e for e in entries if e.readable and e.refusal]
    if not refused:
        return "<p>None: this silo refused nothing.</p>"
    return table(["time", "run", "round", "message", "refusal"],
                 [[e.time, e.run, e.server_round, e.kind[: -len(_REFUSAL)],
                   _reason(e.extra.get("reason"))] for e in refused], left=5)


def _reason(raw: Any) -> str:
    """A refusal's reason as the silo sent it: ``Type[reason]: message``."""
    try:
        body = json.loads(raw)
        return f"{body['type']}[{body['reason']}]: {body['message']}"
    except (TypeError, ValueError, KeyError):
        return "" if raw is None else str(raw)


def _privacy(workspace: Path, policy: SitePolicy) -> str:
    parts = []
    tally_path = workspace / TALLY_FILE
    if tally_path.exists():
        tally = PrivacyTally(tally_path)
        rows = [[run, v["round"], v["epsilon"]] for run, v in sorted(tally.runs.items())]
        parts.append(table(["run (DP token)", "last round", "ε spent"], rows))
        parts.append(f"<p>Site total: <b>{tally.total():.4g}</b> (runs add up); site policy "
                     f"cap max_epsilon: {_cap(policy.max_epsilon)}.</p>")
    else:
        parts.append("<p>Silo-level DP: no privacy tally (no DP run has trained here).</p>")
    dpsgd = _dpsgd_rows(workspace / "privacy")
    if dpsgd:
        parts.append("<p>Record-level DP-SGD accountants (this silo's own, per run):</p>")
        parts.append(table(["accountant file", "last round", "ε", "δ"], dpsgd))
    return "\n".join(parts)


def _cap(v: float | None) -> str:
    return "none" if v is None else f"{v:.4g}"


def _dpsgd_rows(folder: Path) -> list[list[Any]]:
    rows = []
    for path in sorted(folder.glob("dpsgd-*.json")) if folder.is_dir() else []:
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            acct = Accountant.from_state_dict(state["accountant"])
            eps = acct.epsilon()
            rows.append([path.name, state.get("last_round"),
                         eps if math.isfinite(eps) else None, acct.delta])
        except (ValueError, KeyError, TypeError, ConfigError) as exc:
            rows.append([path.name, None, None, f"unreadable ({type(exc).__name__})"])
    return rows


def _integrity(ledger: Path) -> str:
    result = verify_ledger(ledger)
    if result.ok:
        return (f'<p class="status-completed">Chain intact: {result.entries} entries, head '
                f"<code>{escape(result.head[:16])}…</code>.</p>")
    return (f'<p class="status-failed">Chain broken at line {result.line}: '
            f"{escape(str(result.reason))} ({result.entries} entries before it are intact). "
            "The rows below are as the file holds them; investigate before trusting them.</p>")


def render_silo_report(config: SiloConfig) -> str:
    """This silo's report as one HTML document (see the module docstring)."""
    workspace = config.workspace
    ledger = workspace / LEDGER_FILE
    policy = SitePolicy.load(config.policy_file) if config.policy_file else SitePolicy()
    entries = read_entries(ledger) if ledger.is_file() else []
    runs = _by_run(entries)
    integrity = (_integrity(ledger) if ledger.is_file()
                 else f'<p class="empty">No ledger at {escape(str(ledger))}: this silo has '
                      "sent nothing yet.</p>")
    note = ("<p class=\"note\">From the egress ledger: every message this silo sent, written "
            "before it was sent. Sizes are the tensors' shapes × dtypes; metric values are "
            "covered by each entry's payload SHA-256 but not stored in the ledger.</p>")
    sections = [("Ledger", integrity + note),
                ("Runs", _runs_section(runs)),
                *_per_run_sections(runs),
                ("Refusals", _refusals(entries)),
                ("Privacy spent", _privacy(workspace, policy))]
    return page(f"xsilo silo report: {config.name}", sections,
                subtitle=f"Workspace <code>{escape(str(workspace))}</code>")
