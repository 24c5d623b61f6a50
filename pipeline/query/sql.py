"""DuckDB over the four tables, registered as views over exactly the committed files.

Remote outputs are read through their fsspec filesystem (``register_filesystem``), so no DuckDB extension
(httpfs) has to be downloaded and the same storage options as the writer apply.
"""
from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.query import QueryError, Snapshot
from schemas import TABLES


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _embedding_dims(snapshot: Snapshot) -> set[int]:
    dims = set()
    for m, path in zip(snapshot.manifests, snapshot.paths("keyframes")):
        if m.get("embedding_dim") is None:  # a manifest that does not say: ask the file's own schema
            with snapshot.output.fs.open(path, "rb") as f:
                dims.add(pq.read_schema(f).field("embedding").type.list_size)
        else:
            dims.add(m["embedding_dim"])
    return dims


def connect(snapshot: Snapshot) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with ``videos``, ``keyframes``, ``segments`` and ``summaries`` as views."""
    con = duckdb.connect()
    if not snapshot.is_local:
        con.register_filesystem(snapshot.output.fs)
    # DuckDB refuses hive partitioning when only some files sit under key=value folders.
    hive = all(m.get("partition") for m in snapshot.manifests)
    dims = _embedding_dims(snapshot)
    for table in TABLES:
        files = ", ".join(_literal(f) for f in snapshot.urls(table))
        select = "*"
        if table == "keyframes" and len(dims) == 1:
            # Parquet stores fixed-size lists as plain lists; the array type is what the vector functions take.
            select = f"* REPLACE (embedding::FLOAT[{dims.pop()}] AS embedding)"
        con.execute(
            f"CREATE VIEW {table} AS SELECT {select} FROM read_parquet([{files}], "
            f"union_by_name = true, hive_partitioning = {str(hive).lower()})"
        )
    return con


def run_sql(con: duckdb.DuckDBPyConnection, query: str) -> pa.Table:
    """Run one statement; its rows as an Arrow table (empty for statements that return none)."""
    try:
        relation = con.sql(query)
        return relation.to_arrow_table() if relation is not None else pa.table({})
    except duckdb.Error as exc:
        raise QueryError(str(exc).strip().splitlines()[0]) from None
