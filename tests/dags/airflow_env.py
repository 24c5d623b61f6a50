"""A throwaway Airflow for the tests: its own AIRFLOW_HOME, a SQLite metadata DB, the project's DAGs, and
OpenLineage events written to a file (``lineage_events``).

Airflow reads its home and configuration when it is first imported, so ``configure()`` runs from the
conftests of the Airflow test folders at import time, before any test module imports Airflow.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_MARK = "REELSCOPE_TEST_AIRFLOW_HOME"


def configure() -> None:
    if os.environ.get(_MARK):
        return
    if "airflow" in sys.modules:
        raise RuntimeError("airflow was imported before the test Airflow home was set up")
    home = tempfile.mkdtemp(prefix="reelscope-airflow-")
    atexit.register(shutil.rmtree, home, True)
    os.environ.update(
        {
            _MARK: home,
            "AIRFLOW_HOME": home,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            # dag.test() waits out retry delays in-process; a failing task should fail the test at once.
            "REELSCOPE_RETRIES": "0",
            # The OpenLineage provider's own listener, emitting through its file transport; in a thread, since
            # forking this process (which holds Ray) to emit would be slow and fragile.
            "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
                {"type": "file", "log_file_path": f"{home}/openlineage.jsonl", "append": True}),
            "AIRFLOW__OPENLINEAGE__EXECUTE_IN_THREAD": "True",
            "AIRFLOW__OPENLINEAGE__NAMESPACE": "reelscope-tests",
        }
    )


def lineage_events() -> list[dict]:
    """The OpenLineage events emitted so far in this test session, oldest first."""
    path = Path(os.environ["AIRFLOW_HOME"]) / "openlineage.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []
