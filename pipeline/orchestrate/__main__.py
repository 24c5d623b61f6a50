"""``python -m pipeline.orchestrate run-shard SHARD_LIST``: what a Ray Job runs for one shard.

Credentials come from the environment where the job runs; ``--storage-options`` carries the rest
(endpoint, region) as JSON.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from pipeline.orchestrate.plan import run_shard


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.orchestrate")
    commands = parser.add_subparsers(dest="command", required=True)
    shard = commands.add_parser("run-shard", help="Run one shard plan written by list-and-shard, as written.")
    shard.add_argument("shard_uri")
    shard.add_argument("--storage-options", default="{}", help="fsspec storage options as JSON.")
    shard.add_argument("--ray-address", default=None)
    shard.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    counts = run_shard(args.shard_uri, json.loads(args.storage_options), args.ray_address, args.cache_dir)
    logging.getLogger("pipeline.orchestrate").info("counts %s", json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
