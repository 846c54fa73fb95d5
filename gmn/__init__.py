"""gmn: graph metanetworks (paper Sec. 2.3) over symgraph parameter graphs, baselines and training.

Every metanet (:class:`GMN` and the baselines, built by name with :func:`gmn.metanets.build`) takes a
:class:`WeightSpaceBatch` of :func:`graph_to_data` outputs; :mod:`gmn.engine` trains any of them.

>>> import torch.nn as nn, symgraph, gmn
>>> data = gmn.graph_to_data(symgraph.parameter_graph(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))))
>>> gmn.GMN(hidden_dim=16, num_layers=2, out_dim=1)(gmn.WeightSpaceBatch.from_data_list([data])).shape
torch.Size([1, 1])
"""

from . import engine, metanets
from .data import GraphDataset, graph_to_data, standardise, tensor_mean_std, weight_statistics
from .errors import MetanetOutputError, UnsupportedArchitectureError
from .layers import ConcatMLP, GMNLayer
from .models import GMN, FeatureEncoder, GMNEdgeHead, edge_output_to_state_dict, split_edge_output
from .train import evaluate, regression_metrics, train_regressor
from .weight_space import ChainSpec, WeightSpaceBatch, WeightSpaceData, weight_space_loader

__all__ = [
    "graph_to_data",
    "weight_statistics",
    "tensor_mean_std",
    "standardise",
    "GraphDataset",
    "WeightSpaceData",
    "WeightSpaceBatch",
    "ChainSpec",
    "weight_space_loader",
    "UnsupportedArchitectureError",
    "MetanetOutputError",
    "GMNLayer",
    "ConcatMLP",
    "GMN",
    "GMNEdgeHead",
    "FeatureEncoder",
    "edge_output_to_state_dict",
    "split_edge_output",
    "metanets",
    "engine",
    "train_regressor",
    "evaluate",
    "regression_metrics",
]
