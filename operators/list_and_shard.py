"""List the media of a run, plan its shards and write one shard plan per shard."""
from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator

from operators.common import as_bool, or_none, resolve_storage_options


class ListAndShardOperator(BaseOperator):
    """Calls ``pipeline.orchestrate.list_and_shard``, which also records the resolved configuration (the
    ``config_file`` is read here, on the worker, and nowhere else).

    Returns the counts (media, pending, skipped, shards) and pushes the plan URI under the XCom key ``plan``
    and the counts under ``counts``. With ``interval_start`` and ``interval_end`` only the media of that
    interval are listed, into the interval's ``dt=`` partition, which ``replace_partition`` replaces whole
    when the run is published.
    """

    template_fields = (
        "input_uri", "output_uri", "run_key", "profile", "config_file", "shard_size", "force", "retry_failed",
        "storage_options", "aws_conn_id", "interval_start", "interval_end", "layout", "replace_partition",
    )
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        input_uri: str,
        output_uri: str,
        run_key: str = "{{ dag.dag_id }}__{{ run_id }}",
        profile: str = "tiny",
        config_file: str | None = None,
        shard_size: int | str | None = None,
        force: bool | str = False,
        retry_failed: bool | str = False,
        storage_options: Any = None,
        aws_conn_id: str | None = None,
        interval_start: Any = None,
        interval_end: Any = None,
        layout: str = "auto",
        replace_partition: bool | str = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.input_uri, self.output_uri, self.run_key = input_uri, output_uri, run_key
        self.profile, self.config_file, self.shard_size, self.force = profile, config_file, shard_size, force
        self.retry_failed = retry_failed
        self.storage_options, self.aws_conn_id = storage_options, aws_conn_id
        self.interval_start, self.interval_end, self.layout = interval_start, interval_end, layout
        self.replace_partition = replace_partition

    def execute(self, context) -> dict:
        from pipeline.orchestrate import list_and_shard

        start, end = or_none(self.interval_start), or_none(self.interval_end)
        result = list_and_shard(
            str(self.input_uri),
            str(self.output_uri),
            str(self.run_key),
            profile=str(self.profile),
            config_file=or_none(self.config_file),
            shard_size=int(self.shard_size) if or_none(self.shard_size) is not None else None,
            force=as_bool(self.force),
            retry_failed=as_bool(self.retry_failed),
            storage_options=resolve_storage_options(self.aws_conn_id, self.storage_options),
            interval=(start, end) if start is not None and end is not None else None,
            layout=str(self.layout),
            replace_partition=as_bool(self.replace_partition),
        )
        counts = {k: result[k] for k in ("media", "pending", "skipped", "shards")}
        ti = context["ti"]
        ti.xcom_push(key="plan", value=result["plan"])
        ti.xcom_push(key="counts", value=counts)
        return counts

    def get_openlineage_facets_on_complete(self, task_instance):
        """The input listed (the run's tables come with ``run_plan`` and ``validate_and_publish``)."""
        from airflow.providers.openlineage.extractors.base import OperatorLineage
        from openlineage.client.event_v2 import InputDataset

        from operators.lineage import dataset_name

        return OperatorLineage(inputs=[InputDataset(*dataset_name(str(self.input_uri)))])
