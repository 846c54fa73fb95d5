"""gmn: graph metanetworks (paper Sec. 2.3) over symgraph parameter graphs, baselines and training.

>>> import torch.nn as nn, symgraph, gmn
>>> from torch_geometric.data import Batch
>>> data = gmn.graph_to_data(symgraph.parameter_graph(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))))
>>> gmn.GMN(hidden_dim=16, num_layers=2, out_dim=1)(Batch.from_data_list([data])).shape
torch.Size([1, 1])
"""

from .data import GraphDataset, graph_to_data, weight_statistics
from .layers import ConcatMLP, GMNLayer
from .models import GMN, FeatureEncoder, GMNEdgeHead, edge_output_to_state_dict, split_edge_output
from .train import evaluate, regression_metrics, train_regressor

__all__ = [
    "graph_to_data",
    "weight_statistics",
    "GraphDataset",
    "GMNLayer",
    "ConcatMLP",
    "GMN",
    "GMNEdgeHead",
    "FeatureEncoder",
    "edge_output_to_state_dict",
    "split_edge_output",
    "train_regressor",
    "evaluate",
    "regression_metrics",
]
