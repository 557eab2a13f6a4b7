"""The one interface the collector and the report talk to: `Warehouse`.

Schema, identical in every backend (column types are the backend's nearest match):

    sessions(session_id, client_id, ts, seq, attr_keys, attr_values)
    samples (session_id, ts, seq, cpu, attrs, vals)
    events  (session_id, ts, seq, name, attr_keys, attr_values)
    ends    (session_id, ts, seq, reason)

- `ts` is integer Unix epoch milliseconds; `seq` is the line's seq or -1 when it had none.
- session and event attrs are two parallel arrays of strings (keys, values); numbers and
  booleans are kept as their JSON text ("57", "true"), so numeric attrs can be cast back at
  query time. Arrays work on every ClickHouse release (Map does not exist before 21.1).
- sample attrs and extra values are one JSON object text each (keys sorted, '{}' when
  empty): samples are most of the data, and one short string is cheaper to write and to
  group by than two arrays (docs/warehouse.md, "Why samples differ").
- Session attrs are never copied onto samples: they are joined at query time, so samples
  that arrive before their session line still count.
- `(session_id, seq)` is unique across all four tables, whatever the ts: a line whose key is
  stored already is a duplicate, counted and not stored again.

Every ability a caller may use is declared here, with a default for a backend that lacks
it (`takes_arrow`, `roll_up`, `rollup_state`, `pending_lines`, `sync`): callers never probe
a warehouse with hasattr/getattr. A third backend is one new module implementing the
abstract methods and passing tests/fleet/warehouse/test_conformance.py.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Union

import msgspec

from appvitals.fleet.wire.protocol import AnyLine

if TYPE_CHECKING:  # pyarrow is the collector extra's; a ClickHouse-only reader needs none of it
    from appvitals.fleet.wire.arrow import ArrowBatch

#: What `insert_many` takes per batch: decoded wire lines, or (only when the backend's
#: `takes_arrow` is True) an `ArrowBatch` the collector's decode workers built from them.
Batch = Union[Sequence[AnyLine], "ArrowBatch"]


class InsertResult(msgspec.Struct):
    """What one durable insert did."""

    accepted: int = 0
    duplicates: int = 0


class RollupState(NamedTuple):
    """Which sample buckets a backend keeps rolled up (see docs/warehouse.md, "Rollup")."""

    bucket_ms: int  # the width of a bucket
    watermark: int  # buckets below this one are rolled up ...
    dirty: list[int]  # ... except these (late samples since; redone at the next roll_up)


class Warehouse(abc.ABC):
    """Where the collector stores wire lines and where reports read them."""

    #: the SQL dialect `query` speaks
    dialect: ClassVar[str]
    #: True when `insert_many` also accepts `ArrowBatch` batches (the collector then runs
    #: decode worker processes that build them); False: it gets lists of lines only
    takes_arrow: ClassVar[bool] = False

    def insert(self, lines: Sequence[AnyLine]) -> InsertResult:
        """Store lines durably, skipping lines whose (session_id, seq) is stored already."""
        return self.insert_many([lines])[0]

    @abc.abstractmethod
    def insert_many(self, batches: Sequence[Batch]) -> list[InsertResult]:
        """Store several batches in one durable write; one result per batch, in order.

        Each batch is a list of decoded lines, or an `ArrowBatch` when `takes_arrow`. A
        line whose (session_id, seq) is stored already, or appears earlier in the same
        write, is a duplicate: counted, not stored. Lines without seq have no key."""

    @abc.abstractmethod
    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        """Run one read-only SQL statement in this backend's dialect and return its rows."""

    @abc.abstractmethod
    def apply_retention(self, days: int) -> None:
        """Drop data older than `days` days."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections and files."""

    def roll_up(self, now_ms: int | None = None) -> int:
        """One bounded step of rolling samples up for the report; how many buckets it did
        (0: nothing to do, or this backend keeps no rollup). The collector calls it from
        its writer thread every minute, and again at once while it returns more than 0."""
        return 0

    def rollup_state(self) -> RollupState | None:
        """The rolled-up buckets the report may read, or None when this backend keeps none."""
        return None

    def pending_lines(self) -> int:
        """Lines acknowledged but not yet readable (a backend with a write-behind log); 0 here."""
        return 0

    def sync(self, timeout: float = 10.0) -> bool:
        """Wait until every acknowledged line is readable; False after `timeout` seconds."""
        return True

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Warehouse]:
        """A reader for several statements in a row that share temporary tables (`CREATE TEMP
        TABLE`), gone when the block ends; it has this warehouse's `dialect` and `query`. The
        report keeps its per-report tables there. This default (a backend without private
        temporary tables) is the warehouse itself."""
        yield self
