"""The same throwaway Airflow home as tests/dags (set up once, whichever folder is collected first); the Ray
cluster for Ray Jobs is tests/conftest.py's ``ray_jobs``."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dags"))

from airflow_env import configure  # noqa: E402

configure()

