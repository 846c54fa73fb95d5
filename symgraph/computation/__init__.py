"""Computation graphs (paper Sec. 2.1.1, appendix C.1): one graph compiler with the parameter graph.

A computation graph has **one node per scalar neuron**: every input scalar (``C*H*W`` nodes for an image),
every output scalar of a linear or convolutional layer (one node per channel *and* spatial position), one bias
node per layer (activation 1), plus parameter-free nodes for residual sums, average pooling and elementwise
ops whose input is also used elsewhere. Edges carry weight values; a parameter scalar appears on *every* edge
that uses it (a convolution weight on one edge per spatial position), and the per-edge array ``edge_class``
records which parameter scalar that is (the weight-sharing partition ``S`` of appendix C.1). Parameter-free
edges (residual: 1 or -1, average pooling: 1/P, identity: 1) are constants, ``edge_class == -1``.

Edge colours are *structural* (layer kind, kernel position, residual/pooling constant), the same keys as the
parameter graph's where the layer exists there. They deliberately do **not** encode the weight-sharing class:
an automorphism must map classes onto classes (C.2, property 3), not fix each class. Colouring edges by class
would make every colour-preserving automorphism fix every weight, i.e. kill the hidden-neuron symmetries of an
MLP. Property 3 is checked by :meth:`ComputationGraph.respects_weight_sharing` (and hence by
``is_automorphism``), and :meth:`ComputationGraph.sharing_graph` builds a plain coloured graph (shared edges
subdivided and tied to one node per class) whose automorphisms are exactly the neural DAG automorphisms, for
nauty.

Node colours are ``(role, kind, activations)`` with role input/hidden/output/bias, as in the parameter graph.
``activations`` is the chain of elementwise ops applied to the node's pre-activation, in order (SIREN:
``("mul(30)", "sin")``), named by :mod:`symgraph.activations` exactly as in the parameter graph. Eq. 7 has no
nonlinearity on output nodes; here a node's chain applies whatever its role (a model ending in a sigmoid).

Node ids are sorted by topological level (``node_layer``): level 0 holds the input nodes (ids ``0..d_in-1``,
in the row-major order of one input sample) and the bias nodes; every edge goes from a lower to a higher level.
The evaluator (Eq. 7) therefore runs one sparse matmul per level. Output nodes are listed in output order by
``output_index`` (ascending ids for the usual models, but not after a transpose).

Layout: :mod:`.graph` (the data model, :class:`ComputationGraph`), :mod:`.lowering` (the lowering registry,
keyed like the encoder registry, and the walk over the same trace as the parameter graph's), :mod:`.layers`
(the built-in lowerings), :mod:`.evaluate` (Eq. 7), :mod:`.homomorphism` (the map onto the parameter graph,
C.5); the sharing graph for nauty is :mod:`symgraph.automorphisms.sharing`.

Example
-------
>>> import torch, torch.nn as nn, symgraph
>>> model = nn.Sequential(nn.Conv2d(1, 2, 2, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3)).double()
>>> x = torch.randn(5, 1, 4, 4, dtype=torch.float64)
>>> cg = symgraph.computation_graph(model, x)
>>> cg.num_nodes, cg.num_edges   # 16 in + 8 conv + 3 out + 2 bias; 2*4*4 + 8 + 3*8 + 3
(29, 67)
>>> bool((cg(x) - model(x)).abs().max() < 1e-12)
True
"""

from ..activations import activation_function
from .graph import ComputationGraph, SharedEdgeParamIndex
from .lowering import (
    LoweringContext,
    Neurons,
    computation_graph,
    lowering_for_function,
    lowering_for_module,
    register_lowering,
    register_lowering_by_name,
    register_lowering_function,
)

__all__ = [
    "ComputationGraph",
    "SharedEdgeParamIndex",
    "computation_graph",
    "activation_function",
    "LoweringContext",
    "Neurons",
    "register_lowering",
    "register_lowering_by_name",
    "register_lowering_function",
    "lowering_for_module",
    "lowering_for_function",
]
