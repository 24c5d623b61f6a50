"""Pool widths from the live nodes and measured costs: every GPU used, the slowest stage widest, CPUs kept
for decodes, nothing placed where it does not fit."""
from __future__ import annotations

from pipeline.executor.sizing import Demand, Node, bottleneck_s, decode_reserve, decode_slots, widths

GPU_STAGES = [("asr", 0.3), ("caption", 0.3), ("embedding", 0.1), ("summary", 0.3)]


def _demands(costs: dict[str, float], cap: int = 1000) -> list[Demand]:
    return [Demand(name, 0.25, gpus, costs.get(name, 1.0), cap) for name, gpus in GPU_STAGES]


def _gpus_used(width: dict[str, int]) -> float:
    return sum(width[name] * gpus for name, gpus in GPU_STAGES)


def test_every_gpu_of_every_node_is_used():
    for n in (1, 2, 4):
        nodes = [Node(f"n{i}", 16, 2) for i in range(n)]
        width = widths(_demands({}), nodes, decode_cpus=0.5)
        # What is left on each node is less than the smallest share (0.1 GPU).
        assert _gpus_used(width) > 2 * n - 0.1 * n - 1e-6, (n, width)
        assert all(w >= 1 for w in width.values())


def test_the_slowest_stage_gets_the_most_actors():
    width = widths(_demands({"asr": 4.0, "caption": 1.0, "embedding": 0.2, "summary": 1.0}), [Node("a", 16, 4)], 0.5)
    assert width["asr"] == max(width.values()) and width["asr"] >= 2 * width["caption"], width
    # Rebalanced widths lower the time per video of the slowest stage against one actor each.
    demands = _demands({"asr": 4.0})
    assert bottleneck_s(demands, width) < bottleneck_s(demands, {name: 1 for name, _ in GPU_STAGES})


def test_decodes_keep_their_cpus_and_a_head_without_cpus_takes_no_actor():
    assert decode_reserve(8, 0.5) == 2.0 and decode_reserve(2, 0.5) == 0.5 and decode_reserve(0, 0.5) == 0
    nodes = [Node("head", 0, 0), Node("w", 2, 0)]
    cpu = [Demand(name, 0.25, 0.0, 1.0, 1000) for name, _ in GPU_STAGES]
    width = widths(cpu, nodes, decode_cpus=0.5)
    assert sum(width.values()) * 0.25 <= 2 - decode_reserve(2, 0.5)  # 1.5 CPUs: six actors at most
    assert sum(width.values()) == 6 and decode_slots(nodes, 0.5) == 1


def test_a_stage_never_gets_more_actors_than_its_batches():
    width = widths(_demands({"asr": 10.0}, cap=2), [Node("a", 64, 8)], 0.5)
    assert max(width.values()) == 2


def test_a_stage_that_fits_nowhere_still_gets_one_actor_to_wait_for():
    width = widths([Demand("big", 4.0, 2.0, 1.0, 8)], [Node("a", 2, 1)], 0.5)
    assert width == {"big": 1}


def test_a_fractional_gpu_share_is_placed_on_one_gpu():
    """Two GPUs with 0.6 taken on each have 0.8 left in all but no room for a 0.5 share."""
    width = widths([Demand("a", 0.1, 0.6, 1.0, 2), Demand("b", 0.1, 0.5, 5.0, 8)], [Node("n", 8, 2)], 0.5)
    assert width == {"a": 2, "b": 1} or width == {"a": 1, "b": 2}, width
    width = widths([Demand("whole", 1, 1.0, 1.0, 8)], [Node("n", 8, 2.5)], 0.5)
    assert width == {"whole": 2}
