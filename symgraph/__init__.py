"""symgraph: parameter graphs, computation graphs and exact permutation-symmetry groups of PyTorch models.

>>> import torch.nn as nn, symgraph
>>> g = symgraph.parameter_graph(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
>>> g
NeuralGraph(kind='parameter', num_nodes=11, num_edges=26, node_colors=4, edge_colors=2)
"""

from . import encoders as _encoders  # noqa: F401  (registers built-in encoders)
from .align import align  # the function; the package symgraph.align holds it and the CLI
from .automorphisms.group import AutomorphismGroup, automorphism_group
from .build import parameter_graph
from .builder import Features, GraphBuilder, SymmetryDecl
from .computation import ComputationGraph, computation_graph
from .draw import draw
from .errors import (
    ModelLoadError,
    ShapeMismatchError,
    SymgraphError,
    TraceError,
    UnsupportedModuleError,
)
from .graph import NeuralGraph, NodeGroup, ParamSlot
from .permute import check_function_preservation, permute_model
from .registry import register_encoder, register_encoder_by_name, register_function
from .trace import ModelSpec, OpSpec, trace_model

__all__ = [
    "parameter_graph",
    "draw",
    "computation_graph",
    "ComputationGraph",
    "automorphism_group",
    "AutomorphismGroup",
    "permute_model",
    "check_function_preservation",
    "align",
    "NeuralGraph",
    "NodeGroup",
    "ParamSlot",
    "GraphBuilder",
    "Features",
    "SymmetryDecl",
    "ModelSpec",
    "OpSpec",
    "trace_model",
    "register_encoder",
    "register_encoder_by_name",
    "register_function",
    "SymgraphError",
    "UnsupportedModuleError",
    "ShapeMismatchError",
    "TraceError",
    "ModelLoadError",
]

__version__ = "0.1.0"
