"""Validate a finished run's tables against its plan and publish it; free the output; maintain the tables."""
from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator

from operators.common import resolve_storage_options


class _OnPlan(BaseOperator):
    """An operator on a listed run: ``plan_uri`` (templated, or an XComArg such as ``listing.output["plan"]``)
    and the storage settings to read it with."""

    template_fields = ("plan_uri", "storage_options", "aws_conn_id")

    def __init__(
        self, *, plan_uri: Any, storage_options: Any = None, aws_conn_id: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.plan_uri, self.storage_options, self.aws_conn_id = plan_uri, storage_options, aws_conn_id

    def _options(self) -> dict:
        return resolve_storage_options(self.aws_conn_id, self.storage_options)


class ValidateAndPublishOperator(_OnPlan):
    """Calls ``pipeline.orchestrate.validate_and_publish`` on ``plan_uri``, which validates the run's tables under
    its lease, publishes a partition replacement, and releases the lease last; returns the run manifest's URI.
    Fails without retrying, listing the problems, when a schema or an input does not add up.

    Once published, a run that changed the tables (it processed videos, or replaced its partition) updates
    the four tables' assets through each ``AssetAlias`` among its ``outlets`` (``operators.lineage``), with
    the published table versions, the run id and the partition as the events' ``extra``; OpenLineage gets
    the same tables and versions."""

    ui_color = "#e6f4ea"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._lineage: tuple | None = None  # (manifest, plan) once published, for OpenLineage

    def execute(self, context) -> str:
        from airflow.sdk import Asset, AssetAlias
        from airflow.sdk.exceptions import AirflowFailException

        from pipeline.orchestrate import ValidationError, read_record, validate_and_publish
        from schemas.run import RunManifest, RunPlan

        opts = self._options()
        try:
            uri = validate_and_publish(str(self.plan_uri), opts)
        except ValidationError as exc:
            # Tables that do not add up stay that way; retrying would only delay the alarm.
            raise AirflowFailException(str(exc)) from exc
        manifest = read_record(uri, RunManifest, opts)
        self._lineage = (manifest, read_record(str(self.plan_uri), RunPlan, opts))
        if manifest.processed or manifest.replaced_partition:
            for alias in (o for o in self.outlets if isinstance(o, AssetAlias)):
                for table, table_uri in manifest.tables.items():
                    extra = {"table": table, "version": manifest.versions[table], "versions": dict(manifest.versions),
                             "run_id": manifest.run_id, "partition": manifest.partition, "manifest": uri}
                    context["outlet_events"][alias].add(Asset(uri=table_uri), extra=extra)
        return uri

    def get_openlineage_facets_on_complete(self, task_instance):
        from operators.lineage import run_lineage

        manifest, plan = self._lineage
        return run_lineage(manifest.input_uri, manifest.tables, manifest.versions, plan.config.get("models", {}),
                           manifest.profile, manifest.config_fingerprint)


class ReleaseOutputOperator(_OnPlan):
    """Calls ``pipeline.orchestrate.release_run`` on ``plan_uri``: the run's teardown, which frees the output
    from its lease even when shards failed (validation frees it after a run that succeeded)."""

    ui_color = "#f1f3f4"

    def execute(self, context) -> None:
        from pipeline.orchestrate import release_run

        release_run(str(self.plan_uri), self._options())


class MaintainOperator(_OnPlan):
    """Calls ``pipeline.orchestrate.maintain_output`` on the output of ``plan_uri``: compaction of the small
    files one commit per shard leaves, and vacuum of files older than ``retention_hours`` that no version
    needs (readers pinned to a recent version read on)."""

    template_fields = (*_OnPlan.template_fields, "retention_hours")
    ui_color = "#fef7e0"

    def __init__(self, *, retention_hours: Any = 168, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.retention_hours = retention_hours

    def execute(self, context) -> dict:
        from pipeline.orchestrate import maintain_output

        return maintain_output(str(self.plan_uri), self._options(), float(self.retention_hours))
