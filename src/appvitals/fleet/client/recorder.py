"""The pure part of an agent: turns what a session does into numbered wire lines.

A `Recorder` holds one session's id, its next `seq` and its current stage; each call
returns one protocol struct. It does no I/O, so the `Agent` (which spools and uploads the
lines) and the pure fleet generator (`generate_lines`) build identical lines from it.
"""

from __future__ import annotations

from collections.abc import Callable

from appvitals.fleet.wire.protocol import AttrValue, EndLine, EventLine, SampleLine, SessionLine


class Recorder:
    """Builds the numbered lines of one session: `seq` counts from 0 across all kinds."""

    def __init__(self, session_id: str, client_id: str, clock: Callable[[], float], first_seq: int = 0) -> None:
        self.session_id = session_id
        self.client_id = client_id
        self.clock = clock
        self.next_seq = first_seq
        self.stage_attrs: dict[str, AttrValue] = {}

    def _stamp(self, ts: float | None) -> tuple[int, int]:
        seq = self.next_seq
        self.next_seq += 1
        return int(round((self.clock() if ts is None else ts) * 1000)), seq

    def session(self, attrs: dict[str, AttrValue], ts: float | None = None) -> SessionLine:
        """The `session` line that opens the session."""
        ms, seq = self._stamp(ts)
        return SessionLine(session_id=self.session_id, ts=ms, seq=seq, client_id=self.client_id, attrs=dict(attrs))

    def set_stage(self, name: str | None, attrs: dict[str, AttrValue] | None = None) -> None:
        """Attach `stage` (and `attrs`) to every following sample; None clears the stage."""
        self.stage_attrs = {} if name is None else {"stage": name, **(attrs or {})}

    def sample(self, cpu: float, values: dict[str, float] | None = None, ts: float | None = None) -> SampleLine:
        """One CPU sample, carrying the current stage attrs."""
        ms, seq = self._stamp(ts)
        return SampleLine(
            session_id=self.session_id, ts=ms, seq=seq, cpu=round(max(float(cpu), 0.0), 1),
            values=dict(values or {}), attrs=dict(self.stage_attrs),
        )

    def event(self, name: str, attrs: dict[str, AttrValue] | None = None, ts: float | None = None) -> EventLine:
        """One lifecycle event."""
        ms, seq = self._stamp(ts)
        return EventLine(session_id=self.session_id, ts=ms, seq=seq, name=name, attrs=dict(attrs or {}))

    def end(self, reason: str | None = "exit", ts: float | None = None) -> EndLine:
        """The `end` line that closes the session."""
        ms, seq = self._stamp(ts)
        return EndLine(session_id=self.session_id, ts=ms, seq=seq, reason=reason)
