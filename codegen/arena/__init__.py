"""The arena executor: a graph run on generated kernels with every tensor where the allocator model puts it.

:mod:`.plan` turns the allocator model's record into offsets in one compute buffer and checks a placement;
:mod:`.lower` turns each node into pool jobs of its kernel; :mod:`.executor` holds the buffers and runs the jobs
(``Arena.run``: one C call; ``Arena.run_checked``: node by node, poisoning freed memory and checking live
tensors); :mod:`.layer` builds the benchmarked MLA layer (K/V build + attention) as a graph.
"""

from mlaref.codegen.arena.executor import DEFAULT_OPTIONS, POISON, Arena
from mlaref.codegen.arena.layer import layer_graph, layer_values
from mlaref.codegen.arena.lower import KERNEL_OPS, NoKernel
from mlaref.codegen.arena.plan import Placement, PlanError, check_placement, placement

__all__ = ["Arena", "DEFAULT_OPTIONS", "POISON", "KERNEL_OPS", "NoKernel", "Placement", "PlanError",
           "check_placement", "placement", "layer_graph", "layer_values"]
