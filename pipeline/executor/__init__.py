"""The Ray executor: knows the cluster; stages do not.

``executor`` (lifecycle and sizing), ``loop`` (the scheduling loop), ``pools`` (a stage's actors),
``state`` (work under way as types), ``recovery`` (what a lost call's videos become), ``deadlines`` (time
limits), ``sizing`` (widths from nodes and measured costs), ``actor`` (what runs on workers), ``cluster``
(joining a cluster).
"""
from pipeline.executor.cluster import ensure_ray
from pipeline.executor.executor import RayExecutor, executor_for, release_parked
from pipeline.executor.loop import ModelLoadError

__all__ = ["ModelLoadError", "RayExecutor", "ensure_ray", "executor_for", "release_parked"]
