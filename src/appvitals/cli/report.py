"""`vitals report`: the drill-down report, from a warehouse or a running collector (wraps fleet.report.build_report)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request

import click
import msgspec

from appvitals.cli.app import BadUsage, VitalsError

DEFAULT_URL = "http://127.0.0.1:8420"


@click.command("report")
@click.option("--db", "db", metavar="FILE", help="Read a DuckDB warehouse file directly (no collector may hold it open).")
@click.option("--url", "url", metavar="URL", help=f"Ask a running collector (default: {DEFAULT_URL}).")
@click.option("--clickhouse", "clickhouse", metavar="URL", help="Read a ClickHouse warehouse: clickhouse://host:9000/db.")
@click.option("--since", default="12h", show_default=True, help="Window start: '12h', '2 days ago', ISO 8601...")
@click.option("--until", default=None, help="Window end (default: now).")
@click.option("--threshold", default=30.0, show_default=True, type=float, help="A phase is high when its mean passes this.")
@click.option("--metric", default="cpu", show_default=True, help="'cpu', or the name of a sample `values` entry.")
@click.option("--min-support", "min_support", default=None, type=float,
              help="Least high sessions a combination must hold: a share below 1 (default 0.01) or a count.")
@click.option("--min-risk-ratio", "min_risk_ratio", default=None, type=float,
              help="Least risk ratio a combination must reach (default 2): how many times more often it is high.")
@click.option("--max-order", "max_order", default=None, type=click.IntRange(1, 3),
              help="Most attribute values in one combination (default 3).")
@click.option("--fdr", default=None, type=float, help="False discovery rate of the explanations (default 0.01).")
@click.option("--where", "where", multiple=True, metavar="KEY=VALUE",
              help="Drill into a subset (repeatable): app_version=6.04, stage=indexing, file_name_length>=42.")
@click.option("--compare", default=None, metavar="A,B", help="Two versions to put side by side.")
@click.option("--token", default=lambda: os.environ.get("VITALS_READ_TOKEN"), help="Read token for --url (or VITALS_READ_TOKEN).")
@click.option("--json", "as_json", is_flag=True, help="Print only the report as JSON.")
def command(db, url, clickhouse, since, until, threshold, metric, min_support, min_risk_ratio, max_order, fdr, where,
            compare, token, as_json) -> None:
    """Which versions, stages and attributes make CPU high: the drill-down report."""
    from appvitals.fleet.analysis.report import ReportError, build_report

    if sum(bool(x) for x in (db, url, clickhouse)) > 1:
        raise BadUsage("give one of --db, --url or --clickhouse")
    import math

    if not math.isfinite(threshold) or threshold < 0:
        raise BadUsage("--threshold must be a finite number >= 0")
    if min_support is not None and min_support <= 0:
        raise BadUsage("--min-support must be > 0")
    pick = [v.strip() for v in compare.split(",") if v.strip()] if compare else None
    if pick is not None and len(pick) != 2:
        raise BadUsage("--compare wants two versions: A,B")
    kwargs = dict(since=since, until=until, metric=metric, threshold=threshold, min_support=min_support,
                  min_risk_ratio=min_risk_ratio, max_order=max_order, fdr=fdr, where=list(where) or None, compare=pick)
    if db or clickhouse:
        wh = _open(db, clickhouse)
        try:
            report = build_report(wh, **kwargs)
        except ReportError as exc:
            raise BadUsage(str(exc))
        finally:
            wh.close()
        where = None
    else:
        where = (url or DEFAULT_URL).rstrip("/")
        report = fetch_report(where, token=token, **kwargs)
    if as_json:
        click.echo(msgspec.json.encode(report).decode())
        return
    from rich.console import Console

    print_report(report, Console(), since=since, dashboard=f"{where}/" if where else None)


def _open(db: str | None, clickhouse: str | None):
    if clickhouse:
        if not clickhouse.startswith("clickhouse://"):
            raise BadUsage("--clickhouse wants a URL like clickhouse://127.0.0.1:9000/default")
        import logging

        logging.getLogger("clickhouse_driver").setLevel(logging.ERROR)
        from appvitals.fleet.warehouse import open_warehouse

        try:
            return open_warehouse(clickhouse)
        except Exception as exc:
            raise VitalsError(f"cannot open ClickHouse {clickhouse}: {exc}")
    if not os.path.exists(db):
        raise VitalsError(f"no such warehouse file: {db}")
    from appvitals.fleet.warehouse import open_warehouse

    try:
        return open_warehouse(db)
    except Exception as exc:
        msg = str(exc).splitlines()[0]
        if "lock" in msg.lower():
            raise VitalsError(f"{db} is held open by a running collector; ask it with --url instead")
        raise VitalsError(f"cannot open {db}: {msg}")


def fetch_report(url: str, token: str | None = None, **kwargs):
    """GET {url}/v1/report with the report's parameters and decode it into a Report."""
    from appvitals.fleet.analysis.report import Report

    query = {k: v for k, v in kwargs.items() if v is not None and k not in ("compare", "where")}
    if kwargs.get("compare"):
        query["compare"] = ",".join(kwargs["compare"])
    pairs = list(query.items()) + [("where", w) for w in kwargs.get("where") or []]
    req = urllib.request.Request(f"{url}/v1/report?{urllib.parse.urlencode(pairs)}")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            message = exc.reason
        if exc.code == 400:
            raise BadUsage(message)
        raise VitalsError(f"{url}: HTTP {exc.code}: {message}")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise VitalsError(f"cannot reach the collector at {url}: {reason} (start one with `vitals serve`, or use --db)")
    try:
        return msgspec.json.decode(body, type=Report)
    except msgspec.DecodeError as exc:
        raise VitalsError(f"{url}: not a report: {exc}")


def _pct(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.1f}%" if 0 < x < 0.1 else f"{100 * x:.0f}%"


def _attrs(attrs: dict[str, str]) -> str:
    return ", ".join(f"{k} {v}" if v[:1] in "<>" else f"{k} = {v}" for k, v in attrs.items())


def print_report(report, console, since: str | None = None, dashboard: str | None = None, limit: int = 10) -> None:
    """Render a Report with Rich: headline, drill-down tree, explanations, two versions, worst sessions."""
    from rich.table import Table
    from rich.tree import Tree

    r = report
    span = f"the last {since}" if since and since[0].isdigit() else f"{r.window.since} – {r.window.until}"
    if len(r.path) > 1:  # the drill path, each step with its exact counts
        console.print("\n" + "  ›  ".join(
            f"{s.label} ({_pct(s.high_share)} of {s.sessions:,} high, {s.high_clients:,} of {s.clients:,} clients)"
            for s in r.path))
    console.print(
        f"\nOf [bold]{r.sessions:,}[/] sessions in {span}, [bold red]{_pct(r.high_share)}[/] "
        f"({r.high_sessions:,}) had {r.metric} over {r.threshold:g}% in some stage, "
        f"on {r.high_clients:,} of {r.clients:,} clients."
    )
    if not r.sessions:
        console.print("[dim]No samples in this window.[/]")
        return
    for note in r.notes:
        console.print(f"[yellow]Note:[/] {note}.")

    def add(branch, node) -> None:
        for child in node.children:
            text = (
                f"[bold]{_pct(child.share_of_parent)}[/] of those: [cyan]{child.label}[/] — "
                f"{_pct(child.high_share)} of its {child.sessions:,} high, risk ×{child.risk_ratio or 0:.1f}, "
                f"{child.high_clients:,} clients affected"
            )
            add(branch.add(text), child)

    scope = "" if r.tree.label == "all sessions" else f" ({r.tree.label})"
    tree = Tree(f"{_pct(r.tree.high_share)} of {r.tree.sessions:,} sessions{scope} had {r.metric} over {r.threshold:g}%")
    add(tree, r.tree)
    console.print(tree)

    if r.explanations:
        table = Table(title="What makes it high (best first)", title_justify="left")
        for col, kw in (("#", {"justify": "right"}), ("combination", {}), ("sessions", {"justify": "right"}),
                        ("high", {"justify": "right"}), ("risk ratio", {"justify": "right"}), ("p", {"justify": "right"})):
            table.add_column(col, **kw)
        for i, e in enumerate(r.explanations[:limit], 1):
            table.add_row(str(i), _attrs(e.attrs), f"{e.sessions:,}", _pct(e.high_share), f"{e.risk_ratio:.1f}×",
                          f"{e.p_value:.1g}")
        console.print(table)
    else:
        console.print("[green]No attribute combination stands out above the significance bar.[/]")

    c = r.compare
    if c.a is not None:
        sides = [s for s in (c.a, c.b) if s is not None]
        table = Table(title=f"{c.key} side by side", title_justify="left")
        table.add_column("")
        for s in sides:
            table.add_column(s.version, justify="right")
        table.add_row("sessions", *[f"{s.sessions:,}" for s in sides])
        table.add_row("high", *[_pct(s.high_share) for s in sides])
        table.add_row(f"mean {r.metric}", *["–" if s.mean is None else f"{s.mean:.1f}" for s in sides])
        for stage in sorted({k for s in sides for k in s.by_stage}):
            table.add_row(f"high while {stage}",
                          *[_pct(s.by_stage[stage].high_share) if stage in s.by_stage else "–" for s in sides])
        console.print(table)

    if r.worst_sessions:
        table = Table(title="Sessions to open", title_justify="left")
        for col in ("session", "attrs", "mean", "max", "high during"):
            table.add_column(col, justify="right" if col in ("mean", "max") else "left", overflow="fold")
        for w in r.worst_sessions[:5]:
            table.add_row(w.session_id, ", ".join(f"{v}" for v in w.attrs.values()), f"{w.mean:.1f}", f"{w.max:.1f}",
                          "; ".join(w.high_phases[:3]) + ("; …" if len(w.high_phases) > 3 else ""))
        console.print(table)
    if dashboard:
        console.print(f"Dashboard: [link={dashboard}]{dashboard}[/link]  (session pages: {dashboard}#/session/ID)")
