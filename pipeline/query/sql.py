"""DuckDB over the four tables, registered as views over exactly the committed files.

Remote outputs are read through their fsspec filesystem (``register_filesystem``), so no DuckDB extension
(httpfs) has to be downloaded and the same storage options as the writer apply.
"""
from __future__ import annotations

import base64
import datetime as dt
import decimal
import math

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.query import QueryError, Snapshot
from pipeline.safe_text import json_line, safe, safe_text
from schemas import TABLES


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _embedding_dims(snapshot: Snapshot) -> set[int]:
    dims = set()
    for m, path in zip(snapshot.manifests, snapshot.paths("keyframes")):
        if m.files["keyframes"].rows == 0:  # no vector there (a shard none of whose videos decoded)
            continue
        if m.embedding_dim is None:  # a manifest that does not say: ask the file's own schema
            with snapshot.output.fs.open(path, "rb") as f:
                dims.add(pq.read_schema(f).field("embedding").type.list_size)
        else:
            dims.add(m.embedding_dim)
    return dims


# What a read-only query may be; ``EXPLAIN ANALYZE`` runs its statement, which the lock below also covers.
READ_ONLY_STATEMENTS = frozenset({"SELECT", "EXPLAIN"})


def connect(snapshot: Snapshot, allow_writes: bool = False) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with ``videos``, ``keyframes``, ``segments`` and ``summaries`` as views; unless
    ``allow_writes``, it can open the committed files and nothing else (see ``_lock_down``)."""
    con = duckdb.connect()
    if not snapshot.is_local:
        con.register_filesystem(snapshot.output.fs)
    # DuckDB refuses hive partitioning when only some files sit under key=value folders.
    hive = all(m.partition for m in snapshot.manifests)
    dims = _embedding_dims(snapshot)
    for table in TABLES:
        files = ", ".join(_literal(f) for f in snapshot.urls(table))
        select = "*"
        if table == "keyframes" and len(dims) == 1:
            # Parquet stores fixed-size lists as plain lists; the array type is what the vector functions take.
            select = f"* REPLACE (embedding::FLOAT[{next(iter(dims))}] AS embedding)"
        con.execute(
            f"CREATE VIEW {table} AS SELECT {select} FROM read_parquet([{files}], "
            f"union_by_name = true, hive_partitioning = {str(hive).lower()})"
        )
    if not allow_writes:
        _lock_down(con, snapshot)
    return con


def _lock_down(con: duckdb.DuckDBPyConnection, snapshot: Snapshot) -> None:
    """DuckDB's own guard, locked so no statement can lift it: file access only to the committed files, so
    nothing writes or reads another file (``COPY … TO``, ``ATTACH``, ``read_csv('/etc/…')``) and no
    extension is installed or loaded, whatever statement gets past the statement-type check."""
    allowed = ", ".join(_literal(u) for table in TABLES for u in snapshot.urls(table))
    con.execute(f"SET allowed_paths = [{allowed}]")
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
