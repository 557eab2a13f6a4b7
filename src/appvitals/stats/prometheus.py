"""Prometheus text format 0.0.4 and OpenMetrics 1.0, and a bridge into prometheus_client.

Mapping of appvitals kinds:
- counter    -> counter `<name>_total`
- gauge      -> gauge
- histogram  -> summary: `<name>{quantile="0.5|0.9|0.99"}`, `<name>_count`, `<name>_sum`
                (quantiles from the 1 %-error sketch; min/max as gauges `<name>_min`/`<name>_max`)
- state      -> gauge `<name>{<name>="S"}` 1 for the current state, 0 otherwise; counters
                `<name>_seconds_total{state}` and `<name>_transitions_total{from,to}`
- events     -> counter `<name>_total{type}`
- distinct   -> gauge `<name>{period="day|week|month|all"}`: estimated distinct ids in the current
                UTC day, ISO week, month and since tracking started (HyperLogLog, <= 2 % error)
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from appvitals.stats.registry import Registry
from appvitals.stats.snapshot import MetricSnapshot, Snapshot

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def wants_openmetrics(accept: str | None) -> bool:
    """True when an Accept header prefers OpenMetrics."""
    return bool(accept) and "application/openmetrics-text" in accept  # type: ignore[operator]


def exposition(registry: Registry, accept: str | None = None) -> tuple[bytes, str]:
    """(body, content type) for a scrape, by content negotiation on the Accept header."""
    snap = registry.snapshot()
    if wants_openmetrics(accept):
        return render_openmetrics(snap), OPENMETRICS_CONTENT_TYPE
    return render_text(snap), TEXT_CONTENT_TYPE


def _fmt(value: float) -> str:
    if value is None:
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(value: str, openmetrics: bool) -> str:
    value = value.replace("\\", "\\\\").replace("\n", "\\n")
    return value.replace('"', '\\"') if openmetrics else value


def _labels(labels: dict[str, str], extra: dict[str, str] | None = None) -> str:
    items = list(labels.items()) + list((extra or {}).items())
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in items) + "}"


class _Family:
    """One exposed metric family: name, type, help, unit and samples."""

    def __init__(self, name: str, type_: str, help: str, unit: str = "") -> None:
        self.name, self.type, self.help, self.unit = name, type_, help, unit
        self.samples: list[tuple[str, dict[str, str], float]] = []

    def add(self, suffix: str, labels: dict[str, str], value: float, extra: dict[str, str] | None = None) -> None:
        self.samples.append((self.name + suffix, {**labels, **(extra or {})}, value))


def families(snap: Snapshot) -> Iterator[_Family]:
    """The exposed families of a snapshot, in the order they are written."""
    for m in snap.metrics:
        yield from _metric_families(m)


def _base(name: str) -> str:
    return name[:-6] if name.endswith("_total") else name


def _metric_families(m: MetricSnapshot) -> Iterator[_Family]:
    help_ = m.help or m.name.replace("_", " ")
    if m.kind == "counter":
        fam = _Family(_base(m.name), "counter", help_, m.unit)
        for s in m.series:
            fam.add("_total", s.labels, s.value or 0.0)
        yield fam
    elif m.kind == "gauge":
        fam = _Family(m.name, "gauge", help_, m.unit)
        for s in m.series:
            fam.add("", s.labels, s.value or 0.0)
        yield fam
    elif m.kind == "histogram":
        fam = _Family(m.name, "summary", help_, m.unit)
        lo = _Family(m.name + "_min", "gauge", f"Smallest value of {m.name}", "")
        hi = _Family(m.name + "_max", "gauge", f"Largest value of {m.name}", "")
        for s in m.series:
            for q, v in (("0.5", s.p50), ("0.9", s.p90), ("0.99", s.p99)):
                fam.add("", s.labels, v if v is not None else math.nan, {"quantile": q})
            fam.add("_count", s.labels, s.count or 0)
            fam.add("_sum", s.labels, s.sum or 0.0)
            if s.count:
                lo.add("", s.labels, s.min)
                hi.add("", s.labels, s.max)
        yield fam
        yield lo
        yield hi
    elif m.kind == "state":
        cur = _Family(m.name, "gauge", help_ + " (1 for the current state)")
        secs = _Family(m.name + "_seconds", "counter", f"Seconds spent in each state of {m.name}")
        trans = _Family(m.name + "_transitions", "counter", f"Transitions between states of {m.name}")
        for s in m.series:
            states = sorted(set(s.time_in_state or {}) | ({s.current} if s.current else set()))
            for state in states:
                cur.add("", s.labels, 1.0 if state == s.current else 0.0, {m.name: state})
                secs.add("_total", s.labels, (s.time_in_state or {}).get(state, 0.0), {"state": state})
            for key, n in sorted((s.transitions or {}).items()):
                frm, _, to = key.partition("->")
                trans.add("_total", s.labels, n, {"from": frm, "to": to})
        yield cur
        yield secs
        yield trans
    elif m.kind == "events":
        fam = _Family(_base(m.name), "counter", help_)
        for s in m.series:
            for type_, n in sorted((s.by_type or {}).items()):
                fam.add("_total", s.labels, n, {"type": type_})
        yield fam
    elif m.kind == "distinct":
        fam = _Family(m.name, "gauge", help_ + " (distinct ids, estimated)")
        for s in m.series:
            for period in ("day", "week", "month", "all"):
                fam.add("", s.labels, getattr(s, period) or 0.0, {"period": period})
        yield fam


def render_text(snap: Snapshot) -> bytes:
    """Prometheus text exposition format 0.0.4."""
    out: list[str] = []
    for fam in families(snap):
        name = fam.name + "_total" if fam.type == "counter" else fam.name
        out.append(f"# HELP {name} {_escape_help(fam.help, False)}")
        out.append(f"# TYPE {name} {fam.type}")
        for sample, labels, value in fam.samples:
            out.append(f"{sample}{_labels(labels)} {_fmt(value)}")
    return ("\n".join(out) + "\n").encode() if out else b""


def render_openmetrics(snap: Snapshot) -> bytes:
    """OpenMetrics 1.0 text format."""
    out: list[str] = []
    for fam in families(snap):
        out.append(f"# TYPE {fam.name} {fam.type}")
        if fam.unit and fam.name.endswith("_" + fam.unit):
            out.append(f"# UNIT {fam.name} {fam.unit}")
        out.append(f"# HELP {fam.name} {_escape_help(fam.help, True)}")
        for sample, labels, value in fam.samples:
            out.append(f"{sample}{_labels(labels)} {_fmt(value)}")
    out.append("# EOF")
    return ("\n".join(out) + "\n").encode()


class PrometheusBridge:
    """A prometheus_client collector exposing an appvitals registry:
    `prometheus_client.REGISTRY.register(PrometheusBridge(reg))`."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def describe(self):
        """Nothing up front: metrics are discovered at collect time."""
        return []

    def collect(self):
        """prometheus_client Metric objects built from a fresh snapshot."""
        from prometheus_client.metrics_core import Metric

        for fam in families(self.registry.snapshot()):
            metric = Metric(fam.name, fam.help, fam.type, fam.unit if fam.name.endswith("_" + fam.unit) else "")
            for sample, labels, value in fam.samples:
                metric.add_sample(sample, labels, value)
            yield metric


def register_into(registry: Registry, prometheus_registry=None) -> PrometheusBridge:
    """Register an appvitals registry into a prometheus_client registry (default: the global one)."""
    if prometheus_registry is None:
        from prometheus_client import REGISTRY as prometheus_registry
    bridge = PrometheusBridge(registry)
    prometheus_registry.register(bridge)
    return bridge
