"""The SQL spellings of each warehouse backend, next to the backends.

The report's SQL (fleet/analysis) is written once against `Dialect`; each backend names its
dialect in `Warehouse.dialect`, and `dialect_for(name)` finds the object here. A third
backend adds its subclass to `DIALECTS` (and nothing in the report changes).

`DuckDBDialect` spells current DuckDB; `ClickHouseDialect` spells SQL that ClickHouse 18.16
(Debian's server: no Map, no window functions, no CTEs, one JOIN per SELECT) and current
ClickHouse both run.
"""

from __future__ import annotations

from collections.abc import Sequence


class Dialect:
    """The few SQL spellings that differ between backends (DuckDB's by default)."""

    name = "duckdb"
    ctes = True  # WITH ... AS MATERIALIZED (...): one statement can share its building blocks
    final = False  # tables are read with FINAL (copies collapsed only at the next merge)
    memory_limit_sql = "SELECT current_setting('memory_limit')"  # '' when there is no such setting

    def lit(self, value: str) -> str:
        """A string literal."""
        return "'" + str(value).replace("'", "''") + "'"

    def attr(self, key: str, keys: str = "attr_keys", values: str = "attr_values") -> str:
        """Value of one attr from the parallel arrays, '' when absent."""
        return f"coalesce({values}[list_indexof({keys}, {self.lit(key)})], '')"

    def attr_number(self, key: str, keys: str = "attr_keys", values: str = "attr_values") -> str:
        """An attr as a float, NULL when absent or not a number (no '' detour: failed casts are slow)."""
        return f"TRY_CAST({values}[list_indexof({keys}, {self.lit(key)})] AS DOUBLE)"

    def json_path(self, key: str) -> str:
        """A JSONPath naming one key, as a string literal."""
        return self.lit('$."' + key.replace("\\", "\\\\").replace('"', '\\"') + '"')

    def sattr(self, key: str, column: str = "attrs") -> str:
        """Value of one sample attr from the JSON object text, as text ('' when absent): a JSON
        string's content, or a number's or boolean's JSON text ('47', 'true')."""
        return f"coalesce(json_extract_string({column}, {self.json_path(key)}), '')"

    def sattr_number(self, key: str, column: str = "attrs") -> str:
        """A sample attr as a float, NULL when absent or not a number."""
        return f"TRY_CAST(json_extract_string({column}, {self.json_path(key)}) AS DOUBLE)"

    def table(self, name: str) -> str:
        """A table to count from."""
        return f"{name} FINAL" if self.final else name

    def number(self, expr: str) -> str:
        """A string cast to a float, NULL when it is not a number."""
        return f"TRY_CAST({expr} AS DOUBLE)"

    def idiv(self, a: str, b: int) -> str:
        """Integer division (floor for the non-negative numbers used here)."""
        return f"(({a}) // {b})"

    def concat(self, *parts: str) -> str:
        """String concatenation."""
        return parts[0] if len(parts) == 1 else "concat(" + ", ".join(parts) + ")"

    def in_list(self, expr: str, values: Sequence[str]) -> str:
        """`expr IN (...)`, false for an empty list."""
        if not values:
            return "(1 = 0)"
        return f"{expr} IN (" + ", ".join(self.lit(v) for v in values) + ")"

    left_join = "LEFT JOIN"
    inner_join = "INNER JOIN"

    def array_join(self, table_sql: str, where: str, limit: int | None = None) -> str:
        """Rows (k, v) of every attr of the rows of `table_sql` matching `where`."""
        lim = f" LIMIT {limit}" if limit else ""
        return (
            f"SELECT unnest(attr_keys) AS k, unnest(attr_values) AS v FROM "
            f"(SELECT attr_keys, attr_values FROM {table_sql} WHERE {where}{lim})"
        )

    def explode(self, select: str, array_items: Sequence[str], source: str, alias: str) -> str:
        """SELECT `select`, one row per element of the array `array_items` (named `alias`) per row of `source`."""
        return f"SELECT {select}, unnest([{', '.join(array_items)}]) AS {alias} FROM ({source})"

    def quantiles(self, expr: str, qs: Sequence[float]) -> str:
        """An array of quantiles of expr: the element at 1-based position ceil(q * n) of the sorted values."""
        return f"quantile_disc({expr}, [{', '.join(str(q) for q in qs)}])"

    def hash_of(self, columns: Sequence[str]) -> str:
        """A 64-bit hash of several columns."""
        return f"hash({', '.join(columns)})"

    def rows_of(self, literals: Sequence[str], alias: str) -> str:
        """SELECT one row per literal, in column `alias` (no row when there is none)."""
        if not literals:
            return f"SELECT {self.lit('')} AS {alias} WHERE 1 = 0"
        return f"SELECT unnest([{', '.join(literals)}]) AS {alias}"

    def any_value(self, expr: str) -> str:
        """Any one value of expr in the group (all equal where it is used)."""
        return f"any_value({expr})"

    def count_distinct(self, expr: str) -> str:
        return f"count(DISTINCT {expr})"

    def count_distinct_if(self, expr: str, cond: str) -> str:
        """Distinct values of expr over the rows where cond holds."""
        return f"count(DISTINCT {expr}) FILTER (WHERE {cond})"

    def if_null(self, expr: str, default: str) -> str:
        """expr, or default when it is NULL."""
        return f"coalesce({expr}, {default})"

    def as_mask(self, expr: str) -> str:
        """expr as a 64-bit integer to hold bits (signed on DuckDB, unsigned on ClickHouse)."""
        return f"CAST({expr} AS BIGINT)"

    def bit_or_agg(self, expr: str) -> str:
        """The bitwise OR of expr over the group."""
        return f"bit_or({expr})"

    def bit_at(self, expr: str, bit: int) -> str:
        """Bit number `bit` of the integer expr, as 0 or 1."""
        return f"(({expr} >> {int(bit)}) & 1)"


class DuckDBDialect(Dialect):
    """DuckDB (the embedded warehouse)."""


class ClickHouseDialect(Dialect):
    """ClickHouse, 18.16 and later."""

    name = "clickhouse"
    ctes = False
    memory_limit_sql = ""
    final = True  # copies that two racing collectors both stored count once
    left_join = "ANY LEFT JOIN"
    inner_join = "ANY INNER JOIN"

    def lit(self, value: str) -> str:
        return "'" + str(value).replace("\\", "\\\\").replace("'", "''") + "'"

    def attr(self, key: str, keys: str = "attr_keys", values: str = "attr_values") -> str:
        return f"{values}[indexOf({keys}, {self.lit(key)})]"

    def attr_number(self, key: str, keys: str = "attr_keys", values: str = "attr_values") -> str:
        return f"toFloat64OrNull({values}[indexOf({keys}, {self.lit(key)})])"

    def sattr(self, key: str, column: str = "attrs") -> str:
        raw = f"visitParamExtractRaw({column}, {self.lit(key)})"
        return f"if(substring({raw}, 1, 1) = '\"', visitParamExtractString({column}, {self.lit(key)}), {raw})"

    def sattr_number(self, key: str, column: str = "attrs") -> str:
        return f"toFloat64OrNull({self.sattr(key, column)})"

    def number(self, expr: str) -> str:
        return f"toFloat64OrNull({expr})"

    def idiv(self, a: str, b: int) -> str:
        return f"intDiv({a}, {b})"

    def array_join(self, table_sql: str, where: str, limit: int | None = None) -> str:
        lim = f" LIMIT {limit}" if limit else ""
        return (
            f"SELECT k, v FROM (SELECT attr_keys, attr_values FROM {table_sql} WHERE {where}{lim}) "
            "ARRAY JOIN attr_keys AS k, attr_values AS v"
        )

    def explode(self, select: str, array_items: Sequence[str], source: str, alias: str) -> str:
        return f"SELECT {select}, {alias} FROM ({source}) ARRAY JOIN [{', '.join(array_items)}] AS {alias}"

    def quantiles(self, expr: str, qs: Sequence[float]) -> str:
        # DuckDB's quantile_disc takes the element at 1-based position ceil(q * n) of the sorted
        # values; ClickHouse's quantilesExact takes floor(q * n) + 1, one further on exact
        # multiples. Spelled out, so both backends cut numbers at the same edges.
        picks = ", ".join(
            f"{'(arraySort(groupArray(' + expr + ')) AS _qsorted)' if i == 0 else '_qsorted'}"
            f"[toUInt64(greatest(1, ceil({q} * length(_qsorted))))]"
            for i, q in enumerate(qs)
        )
        return f"[{picks}]"

    def hash_of(self, columns: Sequence[str]) -> str:
        return f"cityHash64({', '.join(columns)})"

    def rows_of(self, literals: Sequence[str], alias: str) -> str:
        if not literals:
            return f"SELECT {self.lit('')} AS {alias} WHERE 1 = 0"
        return f"SELECT arrayJoin([{', '.join(literals)}]) AS {alias}"

    def any_value(self, expr: str) -> str:
        return f"any({expr})"

    def count_distinct(self, expr: str) -> str:
        return f"uniqExact({expr})"

    def count_distinct_if(self, expr: str, cond: str) -> str:
        return f"uniqExactIf({expr}, {cond})"

    def if_null(self, expr: str, default: str) -> str:
        return f"ifNull({expr}, {default})"

    def as_mask(self, expr: str) -> str:
        return f"toUInt64({expr})"

    def bit_or_agg(self, expr: str) -> str:
        return f"groupBitOr({expr})"

    def bit_at(self, expr: str, bit: int) -> str:
        return f"bitAnd(bitShiftRight({expr}, {int(bit)}), 1)"


DIALECTS: dict[str, type[Dialect]] = {"duckdb": DuckDBDialect, "clickhouse": ClickHouseDialect}


def dialect_for(name: str) -> Dialect:
    """The dialect a warehouse names in `Warehouse.dialect`."""
    try:
        return DIALECTS[name]()
    except KeyError:
        raise ValueError(f"no SQL dialect {name!r} (known: {', '.join(sorted(DIALECTS))})") from None
