"""What the operators tell about the data they read and write: Airflow assets for the four tables, and
OpenLineage datasets and facets.

The output URI is a run's param, so the tables' assets are known only at run time: the publishing task
lists an ``AssetAlias`` in its outlets and adds one ``Asset`` per table to it (``tables_alias``); a
downstream DAG schedules on the alias, or on the table assets once it knows their URIs. OpenLineage (the
``apache-airflow-providers-openlineage`` provider) is imported only when it asks for lineage.
"""
from __future__ import annotations

from typing import Any, Mapping
from urllib.parse import urlsplit

from airflow.sdk import AssetAlias


def tables_alias(dag_id: str) -> AssetAlias:
    """The alias through which ``dag_id``'s publishing task updates the four tables' assets."""
    return AssetAlias(f"{dag_id}.tables")


def dataset_name(uri: str) -> tuple[str, str]:
    """OpenLineage's (namespace, name) of a URI: ``("s3://bucket", "key")``; ``("file", "/path")`` for a
    local path, as its naming conventions say."""
    parts = urlsplit(uri)
    if parts.scheme in ("", "file"):
        return "file", parts.path.rstrip("/") or "/"
    return f"{parts.scheme}://{parts.netloc}", parts.path.strip("/")


def run_lineage(
    input_uri: str, tables: Mapping[str, str], versions: Mapping[str, int], models: Mapping[str, Any],
    profile: str, config_fingerprint: str,
):
    """An ``OperatorLineage``: the input read, the tables written (Delta Lake, each at its version after the
    run when known), and the models that wrote them as the ``reelscope_models`` run facet."""
    from airflow.providers.openlineage.extractors.base import OperatorLineage
    from openlineage.client.event_v2 import InputDataset, OutputDataset
    from openlineage.client.facet_v2 import dataset_version_dataset, storage_dataset

    from operators.facets import ModelsRunFacet

    outputs = []
    for table, uri in tables.items():
        facets: dict[str, Any] = {"storage": storage_dataset.StorageDatasetFacet(storageLayer="delta",
                                                                                fileFormat="parquet")}
        if table in versions:
            facets["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=str(versions[table]))
        outputs.append(OutputDataset(*dataset_name(uri), facets=facets))
    refs = {role: {"ref": spec.get("ref"), "revision": spec.get("revision")} for role, spec in models.items()}
    return OperatorLineage(
        inputs=[InputDataset(*dataset_name(input_uri))],
        outputs=outputs,
        run_facets={"reelscope_models": ModelsRunFacet(models=refs, profile=profile,
                                                       configFingerprint=config_fingerprint)},
    )
