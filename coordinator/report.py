"""A run's report: one self-contained HTML file from its run directory (``report.html``).

Pure: the run directory in (``config.toml``, ``metrics.jsonl``, ``summary.json``, read by
:mod:`coordinator.run_record`), HTML text out (:func:`render_report`); :func:`write_report`
writes it. Plots are inline SVG
(:mod:`xsilo.report_html`), so the page needs no network and no script. The round loop
writes the report when a run ends (completed, stopped or failed); ``xsilo report RUN_DIR``
renders it again at any time, also for a run that is still going.

The rows are read as written: a run that ended before its first round shows its error and
the silos refused at join; a round number that appears twice (a run resumed from a
checkpoint re-runs the rounds after it) is shown once, with its latest row, and named.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from coordinator.outcome import error_line
from coordinator.run_record import (RunRecord, load_run, number, provenance, time_split,
                                    unique_rounds, utc)
from xsilo.errors import ConfigError
from xsilo.files import atomic_write
from xsilo.report_html import Series, bar_chart, line_chart, page, table

__all__ = ["REPORT_FILE", "render_report", "safe_write_report", "write_report"]

REPORT_FILE = "report.html"

TIME_NOTE = (
    "<p class=\"note\">How a round's wall time is split: <b>computing</b> is the slowest "
    "contributing silo's own time for the round (evaluating the incoming model and training, "
    "as the silo measures and reports it with its update); <b>secure aggregation</b> is "
    "the unmasking and re-key round trips the protocol adds after the masked input; "
    "<b>waiting</b> is the rest of the round's wall time as the coordinator measured it: "
    "messages in flight, Flower's scheduling, ClientApp start-up, the coordinator's "
    "aggregation and checkpoint. A round's computing is what the slowest silo needed; "
    "faster silos waited for it.</p>")


_TIME_COLORS = {"computing": "#1f77b4", "secure aggregation": "#2ca02c", "waiting": "#b0b0b0"}


# ------------------------------------------------------------------------ sections
def _is_regression(rows: Sequence[Mapping[str, Any]]) -> bool:
    return any(r.get("global_mae") is not None or r.get("global_mse") is not None
               or any("mae" in s for s in r.get("silos", {}).values()) for r in rows)


def _silos(run: RunRecord, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    names = {s for r in rows for s in r.get("silos", {})}
    join = run.first("join")
    if join:
        names |= set(join.get("silos", {}))
    return sorted(names)


def _status(run: RunRecord) -> str:
    summary = run.summary or {}
    status = summary.get("status") or (
        "unknown (summary.json is damaged)" if run.summary_problem
        else "running or interrupted (no summary.json)")
    cls = f"status-{summary.get('status', 'unknown' if run.summary_problem else 'running')}"
    parts = [f'<p>Status: <b class="{escape(cls)}">{escape(str(status))}</b>']
    if run.summary_problem:
        parts.append(f"<br>Summary: <code>{escape(run.summary_problem)}</code>")
    line = error_line(summary)
    if line is not None:
        parts.append(f"<br>Error: <code>{escape(line)}</code>")
    if summary.get("stop_reason"):
        parts.append(f"<br>Stopped early ({escape(str(summary['stop_reason']))}): "
                     f"{escape(str(summary.get('stop_message', '')))}")
    parts.append("</p>")
    rows = run.rounds
    trained = [r for r in rows if r.get("round", 0) >= 1]
    failed = summary.get("rounds_failed") or [r["round"] for r in trained
                                              if r.get("status") == "failed"]
    facts = [("rounds requested", summary.get("rounds_requested", run.settings.get("num_rounds"))),
             ("rounds with a row", len(trained)), ("failed rounds", ", ".join(map(str, failed))
                                                     or "none"),
             ("silos", ", ".join(summary.get("silos") or _silos(run, rows)) or "none joined"),
             ("final accuracy", summary.get("final_accuracy")),
             ("final loss", summary.get("final_loss")),
             ("final scores are of the model of round", summary.get("final_round")),
             ("run seconds", summary.get("seconds"))]
    parts.append(table(None, facts))
    _, repeated = unique_rounds(run.events)
    if repeated:
        parts.append(f'<p class="note">Round(s) {", ".join(map(str, repeated))} were written '
                     "more than once (the run was resumed from a checkpoint and re-ran them); "
                     "each is shown with its latest row.</p>")
    parts.extend(_join_notes(run))
    if not trained:
        parts.append('<p class="empty">No training round completed.</p>')
    return "\n".join(parts)


def _join_notes(run: RunRecord) -> list[str]:
    join = run.first("join")
    if not join:
        return ['<p class="note">No silo joined (no join event was written).</p>']
    notes = [f"refused at join: {silo}: {why}"
             for silo, why in sorted(join.get("refused", {}).items())]
    if join.get("silent_nodes"):
        notes.append(f"silent at join: node(s) {', '.join(map(str, join['silent_nodes']))}")
    return [f'<p class="note">{escape(n)}</p>' for n in notes]


def _metric_series(rows: Sequence[Mapping[str, Any]], silos: Sequence[str], glob: str,
                   per: str, validation: str | None) -> list[Series]:
    series = [Series("global", [(r["round"], number(r.get(glob))) for r in rows],
                     color="#000000")]
    if validation is not None and any(r.get("validation") for r in rows):
        series.append(Series("validation",
                             [(r["round"], number((r.get("validation") or {}).get(validation)))
                              for r in rows], dashed=True, color="#6a3d9a"))
    series += [Series(s, [(r["round"], number(r.get("silos", {}).get(s, {}).get(per)))
                          for r in rows]) for s in silos]
    return series


def _quality_plots(run: RunRecord) -> str:
    rows, silos = run.rounds, _silos(run, run.rounds)
    if not rows:
        return '<p class="empty">No rows yet: nothing to plot.</p>'
    note = ("<p class=\"note\">Round r shows model r (after r rounds; 0 is the initial model) "
            "on every silo's local test split; global is the example-weighted mean. "
            "Validation is the coordinator's own held-out set, when the run has one.</p>")
    if _is_regression(rows):
        plots = [line_chart(f"{k.upper()} per round",
                            _metric_series(rows, silos, f"global_{k}", k, k), y_label=k.upper())
                 for k in ("mae", "mse")]
    else:
        plots = [line_chart("accuracy per round",
                            _metric_series(rows, silos, "global_accuracy", "accuracy", "accuracy"),
                            y_label="accuracy", y_range=(0.0, 1.0)),
                 line_chart("loss per round",
                            _metric_series(rows, silos, "global_loss", "loss", "loss"),
                            y_label="loss")]
    train = [(r["round"], number(r.get("train_loss"))) for r in rows if r.get("round", 0) >= 1]
    plots.append(line_chart("training loss (contributors, weighted)",
                            [Series("train loss", train)], y_label="loss"))
    return note + '<div class="plots">' + "\n".join(plots) + "</div>" + _round_table(rows, silos)


def _round_table(rows: Sequence[Mapping[str, Any]], silos: Sequence[str]) -> str:
    regression = _is_regression(rows)
    key, label = ("mae", "MAE") if regression else ("accuracy", "acc")
    glob = "global_mae" if regression else "global_accuracy"
    headers = ["round", f"global {label}", "global loss", "global over",
               *[f"{s} {label}" for s in silos], "validation", "train loss", "status"]
    body = []
    for r in rows:
        val = r.get("validation") or {}
        body.append([r["round"], r.get(glob), r.get("global_loss"), _population(r),
                     *[r.get("silos", {}).get(s, {}).get(key) for s in silos],
                     val.get(key), r.get("train_loss"),
                     r.get("status", "") + (f": {r['reason']}" if r.get("reason") else "")])
    return table(headers, body, left=0)


def _population(row: Mapping[str, Any]) -> str | None:
    """Over which silos the row's global scores are: every silo of the run, or which
    (a partial population: a silo that dropped out cannot make the mean look better)."""
    if "scored_by" not in row:
        return None  # a row written before rows said so
    if not row.get("unscored"):
        return f"all ({len(row['scored_by'])})"
    return (f"partial: {', '.join(row['scored_by']) or 'none'} "
            f"(without {', '.join(row['unscored'])})")


def _privacy(run: RunRecord) -> str:
    rows = run.rounds
    dp = run.settings.get("dp")
    dpsgd = sorted({s for r in rows for s in r.get("dpsgd_epsilon", {})})
    if not dp and not dpsgd:
        return "<p>Differential privacy: off (no <code>[run.dp]</code>, no DP-SGD silo).</p>"
    parts = []
    summary = run.summary or {}
    budget = summary.get("max_epsilon", (dp or {}).get("max_epsilon"))
    delta = summary.get("delta", (dp or {}).get("delta"))
    series = []
    if dp:
        # Model 0 (before any round) has spent nothing.
        points = [(r["round"], 0.0 if r["round"] == 0 and r.get("epsilon") is None
                   else number(r.get("epsilon"))) for r in rows]
        series.append(Series(f"ε (run, δ={delta:g})" if isinstance(delta, float) else "ε (run)",
                             points, color="#6a3d9a"))
    series += [Series(f"DP-SGD {s}", [(r["round"], number(r.get("dpsgd_epsilon", {}).get(s)))
                                      for r in rows], dashed=True) for s in dpsgd]
    hlines = [(float(budget), f"budget ε={budget:g}")] if isinstance(budget, int | float) else []
    parts.append('<div class="plots">' + line_chart("privacy spent (ε) per round", series,
                                                    y_label="ε", hlines=hlines) + "</div>")
    if dp:
        parts.append(f"<p>Run ε after the last released round: <b>{_num(summary.get('epsilon'))}"
                     f"</b> at δ = {_num(delta)}; budget (max_epsilon): {_num(budget)}.</p>")
    if dpsgd:
        parts.append("<p class=\"note\">DP-SGD ε: each silo's own record-level accountant, at "
                     "its own δ, as it reported it.</p>")
    return "\n".join(parts)


def _num(v: Any) -> str:
    return "–" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def _timing(run: RunRecord) -> str:
    rows = run.rounds
    xs, stacks = time_split(rows)
    if not xs:
        return '<p class="empty">No round times yet.</p>'
    chart = bar_chart("round time: computing vs waiting", xs, stacks, y_label="seconds",
                      colors=_TIME_COLORS)
    body = [[x, *[round(v[i], 3) for v in stacks.values()]] for i, x in enumerate(xs)]
    initial = next((r.get("round_seconds") for r in rows if r.get("round") == 0), None)
    join = (f"<p>Join (and secure-aggregation key setup): {_num(initial)} s before round 1.</p>"
            if initial is not None else "")
    return (f'<div class="plots">{chart}</div>{TIME_NOTE}{join}'
            + table(["round", *[f"{k} (s)" for k in stacks]], body, left=0))


def _participation(rows: Sequence[Mapping[str, Any]]) -> str:
    trained = [r for r in rows if r.get("round", 0) >= 1]
    if not trained:
        return '<p class="empty">No training round yet.</p>'
    xs, counts = [], {"contributed": [], "rejected": [], "silent": []}
    body = []
    for r in trained:
        asked = list(r.get("asked") or [])
        contributors = list(r.get("contributors") or [])
        rejected = dict(r.get("rejected") or {})
        silent = sorted(set(asked) - set(contributors) - set(rejected))
        sa = r.get("secure_aggregation") or {}
        rekeyed = sa.get("rekeyed") or {}
        xs.append(r["round"])
        counts["contributed"].append(float(len(contributors)))
        counts["rejected"].append(float(len(rejected)))
        counts["silent"].append(float(len(silent)))
        body.append([r["round"], len(asked) if asked else r.get("participants"), len(contributors),
                     "; ".join(f"{k}: {v}" for k, v in sorted(rejected.items()))[:300] or "none",
                     ", ".join(silent) or "none",
                     f"{rekeyed.get('keyed', 0)}/{rekeyed.get('asked', 0)}" if rekeyed else "–",
                     sa.get("dropped"), _bytes(r.get("bytes", {}).get("sent")),
                     _bytes(r.get("bytes", {}).get("received"))])
    chart = bar_chart("participation per round", xs, counts, y_label="silos",
                      colors={"contributed": "#2ca02c", "rejected": "#d62728",
                              "silent": "#9e9e9e"})
    note = ("<p class=\"note\">asked: silos the round was sent to; rejected: replied with a "
            "refusal or an unusable update (reason shown); silent: no reply before the round "
            "timeout (dropouts). Re-keyed: silos given fresh secure-aggregation keys before the "
            "round (keyed/asked); dropped: masked inputs whose unmasking had to recover them. "
            "Bytes: model, update and secure-aggregation array payloads through the "
            "coordinator's transport (Flower/gRPC/TLS framing not counted).</p>")
    return (f'<div class="plots">{chart}</div>{note}'
            + table(["round", "asked", "contributed", "rejected", "silent", "re-keyed",
                     "secagg dropped", "sent", "received"], body, left=0))


def _bytes(n: Any) -> str | None:
    n = number(n)
    if n is None:
        return None
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return None


def _settings(run: RunRecord) -> str:
    s = run.settings
    if not s:
        return '<p class="empty">config.toml is missing or unreadable.</p>'
    general = [(k, _show(s.get(k))) for k in (
        "name", "num_rounds", "strategy", "min_silos", "expected_silos", "local_epochs",
        "learning_rate", "batch_size", "round_timeout", "join_timeout", "seed") if k in s]
    params = [(k, _show(v)) for k, v in sorted((s.get("strategy_params") or {}).items())]
    shown = table(["parameter", "value"], params) if params else "defaults (none set)"
    parts = ["<h3>Run and strategy</h3>", table(["setting", "value"], general),
             f"<p>Strategy <b>{escape(str(s.get('strategy', '?')))}</b> parameters: {shown}</p>"]
    parts.append("<h3>Secure aggregation</h3>")
    if s.get("secure_aggregation"):
        setup = run.first("secure_aggregation_setup") or {}
        rows = [(k, _show(s.get(k))) for k in ("secagg_threshold", "secagg_clip", "secagg_bits",
                                               "secagg_max_weight")]
        rows += [(f"setup: {k}", _show(v)) for k, v in sorted(setup.items())
                 if k not in ("event", "time")]
        parts.append(table(["setting", "value"], rows))
    else:
        parts.append("<p>off: the coordinator saw every silo's update in the clear.</p>")
    parts.append("<h3>Differential privacy</h3>")
    dp = s.get("dp")
    parts.append(table(["setting", "value"], [(k, _show(v)) for k, v in sorted(dp.items())])
                 if dp else "<p>off</p>")
    exports = list(s.get("exports") or [])
    other = [("exports", ", ".join(exports))] if exports else []
    if "prometheus" in exports:
        other += [(k, _show(s.get(k))) for k in ("prometheus_host", "prometheus_port")]
    if "mlflow" in exports:
        other += [(k, _show(s.get(k)) or "(run directory's mlflow.db)")
                  for k in ("mlflow_tracking_uri", "mlflow_experiment")]
    if s.get("evaluation"):
        other += [(f"evaluation.{k}", _show(v)) for k, v in sorted(s["evaluation"].items())
                  if k != "schema"]
    if other:
        parts += ["<h3>Exports and evaluation</h3>", table(["setting", "value"], other)]
    return "\n".join(parts)


def _show(v: Any) -> str:
    if isinstance(v, Mapping | list | tuple):
        return json.dumps(v, sort_keys=True, default=str)
    return "–" if v is None else str(v)


def _events(run: RunRecord) -> str:
    notable = [e for e in run.events if e.get("event") in ("stop", "export_error", "exports",
                                                            "report_error")]
    if not notable:
        return "<p>None.</p>"
    return table(["time", "event", "details"], [
        (utc(e.get("time")), e.get("event"),
         json.dumps({k: v for k, v in e.items() if k not in ("time", "event")},
                    sort_keys=True, default=str)[:400]) for e in notable])


def render_report(run_dir: Path) -> str:
    """The run's report as one HTML document (see the module docstring)."""
    run = load_run(run_dir)
    name = run.settings.get("name") or Path(run_dir).name
    sections = [
        ("Summary", _status(run)),
        ("Model quality per round", _quality_plots(run)),
        ("Privacy", _privacy(run)),
        ("Round time", _timing(run)),
        ("Participation", _participation(run.rounds)),
        ("Settings", _settings(run)),
        ("Notable events", _events(run)),
        ("Provenance", table(None, provenance(run))),
    ]
    return page(f"xsilo run report: {name}", sections,
                subtitle=f"Run directory <code>{escape(str(Path(run_dir).resolve()))}</code>")


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Render the report and write it (default ``RUN_DIR/report.html``); return the path."""
    html = render_report(run_dir)
    target = Path(out) if out is not None else Path(run_dir) / REPORT_FILE
    try:
        atomic_write(target, html)
    except OSError as exc:
        raise ConfigError(f"cannot write the report to {target} ({exc}); pass --out to a "
                          "writable path") from exc
    return target


def safe_write_report(run_dir: Path, log: Any) -> Path | None:
    """:func:`write_report`, logging (never raising) any failure: a run's end must not fail
    because its report could not be rendered."""
    try:
        return write_report(run_dir)
    except Exception as exc:  # noqa: BLE001 - any rendering bug: log it, the run stands
        log.error("could not write the run report in %s: %s: %s", run_dir,
                  type(exc).__name__, exc, exc_info=True)
        return None
