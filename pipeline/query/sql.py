"""DuckDB over the four tables of a snapshot: views over the Delta tables at their pinned versions.

The tables are read as pyarrow datasets (``Snapshot.dataset``), which carry their own filesystem: local,
S3 and any other store delta-rs opens are read the same way, with the writer's storage options, and no
DuckDB extension (``delta``, ``httpfs``) has to be downloaded. DuckDB scans a registered dataset through
pyarrow, so its own file access stays off (``_lock_down``).
"""
from __future__ import annotations

import base64
import datetime as dt
import decimal
import math

import duckdb
import pyarrow as pa

from pipeline.query import QueryError, Snapshot
from pipeline.safe_text import json_line, safe, safe_text
from schemas import TABLES

# What a read-only query may be; ``EXPLAIN ANALYZE`` runs its statement, which the lock below also covers.
READ_ONLY_STATEMENTS = frozenset({"SELECT", "EXPLAIN"})


def connect(snapshot: Snapshot, allow_writes: bool = False) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with ``videos``, ``keyframes``, ``segments`` and ``summaries`` as views over the
    snapshot's tables; unless ``allow_writes``, it opens no file and changes nothing (see ``_lock_down``)."""
    con = duckdb.connect()
    try:
        dim = snapshot.embedding_dim
        for table in TABLES:
            # A view over the dataset itself (the view holds it): no other name to read the rows by.
            rows = con.from_arrow(snapshot.present(table))
            if table == "keyframes" and dim:
                # Delta stores the vectors as plain lists; the array type is what the vector functions take.
                rows = rows.project(f"* REPLACE (embedding::FLOAT[{dim}] AS embedding)")
            rows.create_view(table)
        if not allow_writes:
            _lock_down(con)
    except BaseException:
        con.close()
        raise
    return con


def _lock_down(con: duckdb.DuckDBPyConnection) -> None:
    """DuckDB's own guard, locked so no statement can lift it: no file access at all (the datasets are
    scanned by pyarrow, not by DuckDB), so nothing writes or reads a file (``COPY … TO``, ``ATTACH``,
    ``read_csv('/etc/…')``) and no extension is installed or loaded, whatever statement gets past the
    statement-type check."""
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def run_sql(con: duckdb.DuckDBPyConnection, query: str, allow_writes: bool = False) -> pa.Table:
    """Run exactly one statement, only a query unless ``allow_writes``; its rows as an Arrow table (empty for
    statements that return none)."""
    try:
        statements = con.extract_statements(query)
        if len(statements) != 1:
            raise QueryError(f"sql runs exactly one statement; this text holds {len(statements)}")
        kind = statements[0].type.name
        if not allow_writes and kind not in READ_ONLY_STATEMENTS:
            raise QueryError(f"sql is read-only: a {kind} statement is refused (--allow-writes lifts this)")
        relation = con.sql(query)
        return relation.to_arrow_table() if relation is not None else pa.table({})
    except duckdb.Error as exc:
        hint = "; sql is read-only (--allow-writes lifts this)" if isinstance(exc, duckdb.PermissionException) else ""
        raise QueryError(str(exc).strip().splitlines()[0] + hint) from None


def _jsonable(value):
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None  # strict JSON has no NaN or Infinity
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def json_lines(table: pa.Table):
    """One JSON object per row; binary columns (JPEG images) as base64, times as ISO 8601."""
    for batch in table.to_batches():
        for row in batch.to_pylist():
            yield json_line(_jsonable(row))


def _cell(value) -> str:
    if isinstance(value, bytes):
        return f"<{len(value) / 1024:.1f} kB>"
    if isinstance(value, (list, tuple)) and len(value) > 6:
        return "[" + ", ".join(_cell(v) for v in value[:3]) + f", … {len(value)} items]"
    if isinstance(value, float):
        return f"{value:.6g}"
    if value is None:
        return "NULL"
    text = safe(value)
    return text if len(text) <= 200 else text[:199] + "…"


def print_rows(console, table: pa.Table, max_rows: int) -> None:
    from rich.table import Table
    from rich.text import Text

    out = Table(header_style="bold")
    for name in table.column_names:  # a column name is the user's text too: ``AS "[/x]"`` is not markup
        out.add_column(safe_text(name), overflow="fold")
    for row in table.slice(0, max_rows).to_pylist():
        out.add_row(*(Text(_cell(v)) for v in row.values()))
    console.print(out)
    more = f", {max_rows} shown (--max-rows)" if table.num_rows > max_rows else ""
    console.print(f"{table.num_rows} row{'s' if table.num_rows != 1 else ''}{more}", highlight=False)
