"""``python -m pipeline.orchestrate run-plan PLAN_URI``: what a Ray Job runs for a whole planned run.

The plan holds the run's configuration; credentials come from the environment where the job runs (its
runtime environment); ``--storage-options`` carries the rest (endpoint, region) as JSON.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from pipeline.orchestrate.plan import outcome_table, run_plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.orchestrate")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run-plan", help="Run every shard of a plan written by list-and-shard, as written.")
    run.add_argument("plan_uri")
    run.add_argument("--storage-options", default="{}", help="fsspec storage options as JSON.")
    run.add_argument("--ray-address", default=None)
    run.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = run_plan(args.plan_uri, json.loads(args.storage_options), args.ray_address, args.cache_dir)
    log = logging.getLogger("pipeline.orchestrate")
    log.info("shards:\n%s", outcome_table(result["shards"]))
    log.info("totals %s", json.dumps(result["totals"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
