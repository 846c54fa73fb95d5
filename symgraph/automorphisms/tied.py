"""Tied parameters (weight sharing, appendix C.2): does every automorphism keep tied entries equal?

A model can hold one tensor under several state_dict names (GPT-2's ``lm_head.weight`` is
``transformer.wte.weight``). The parameter graph then carries the tensor twice, once per use, and a graph
automorphism is only a symmetry of the *model* if Φ keeps the copies equal: it must map the set of edges that
share entry ``k`` onto the set that shares some entry ``k'`` (the weight-sharing condition). This holds for the
whole group when it holds for each generator (partition-preserving permutations are closed under composition),
so checking the generators is exact. :class:`symgraph.builder.GraphBuilder` joins the second name's copy to the
first by parameter-free share edges (ends paired as they are, or crosswise for a table read the other way
round, such as an embedding reused as a head); where no one-to-one pairing of the ends exists it adds none,
and this check (run by :func:`symgraph.automorphism_group`) refuses a group that breaks the tie.

A module applied several times (ALBERT's shared layer, one ``nn.Linear`` called twice) holds one tensor under
one name with one slot per use (:class:`symgraph.builder.GraphBuilder` joins the uses by share edges, so its
group keeps the sharing by construction); ``sharing_violations`` checks those uses too.

Example
-------
>>> import torch.nn as nn, symgraph
>>> class Tied(nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.emb, self.head = nn.Embedding(6, 4), nn.Linear(4, 6, bias=False)
...         self.head.weight = self.emb.weight
...     def forward(self, ids):
...         return self.head(self.emb(ids).relu())
>>> import torch
>>> m = Tied()
>>> aut = symgraph.automorphism_group(m, example_input=torch.zeros(1, 3, dtype=torch.long))
>>> tied_parameters(m)
[('emb.weight', 'head.weight')]
>>> sharing_violations(aut.graph, aut.generators, tied_parameters(m))
[]
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["tied_parameters", "sharing_violations"]


def tied_parameters(model: nn.Module) -> list[tuple[str, ...]]:
    """Groups of state_dict names that are the same tensor (same storage, offset, shape and strides)."""
    groups: dict[tuple, list[str]] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if not isinstance(t, torch.Tensor) or t.numel() == 0 or t.device.type == "meta":
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        groups.setdefault(key, []).append(name)
    return [tuple(names) for names in groups.values() if len(names) > 1]


def sharing_violations(graph, generators: torch.Tensor, tied: list[tuple[str, ...]]) -> list[str]:
    """One line per tied group that some generator breaks (an empty list: the whole group keeps the sharing).

    ``generators`` are node permutations ``[k, N]`` of ``graph`` (``perm[i]`` = image of ``i``). Besides the
    groups in ``tied``, every parameter with several slots in ``graph`` (one per use) is checked.
    """
    slots: dict[str, list] = {}
    for s in graph.slots:  # a parameter used several times has one slot per use (same name)
        slots.setdefault(s.name, []).append(s)
    in_tied = {n for group in tied for n in group}
    groups = [tuple(g) for g in tied] + [(n,) for n, ss in slots.items() if len(ss) > 1 and n not in in_tied]
    if not groups:
        return []
    out: list[str] = []
    edge_cls = torch.arange(graph.num_edges, dtype=torch.long)
    node_cls = torch.arange(graph.num_nodes * max(1, len(graph.node_weight_columns)), dtype=torch.long)
    n_cols = max(1, len(graph.node_weight_columns))
    base = max(edge_cls.numel(), node_cls.numel())
    checks: list[tuple[str, tuple[str, ...], list]] = []
    for group in groups:
        members = [u for n in group for u in slots.get(n, [])]
        locs = {u.location for u in members}
        if len(members) < 2:
            continue
        if len(locs) != 1 or "extra" in locs:
            out.append(f"tied parameters {', '.join(group)} are stored in different ways ({', '.join(sorted(locs))})")
            continue
        loc = locs.pop()
        n = members[0].numel
        ids = base + torch.arange(n)
        base += n
        for s in members:
            if loc == "edge":
                edge_cls[s.start : s.start + n] = ids
            else:
                node_cls[(torch.arange(s.start, s.start + n)) * n_cols + s.column] = ids
        checks.append((loc, group, members))
    for perm in torch.as_tensor(generators, dtype=torch.long).reshape(-1, graph.num_nodes):
        eperm = graph.edge_permutation(perm)
        einv = torch.empty_like(eperm)
        einv[eperm] = torch.arange(eperm.numel())
        new_edge = edge_cls[einv]  # the class of the value each edge holds after Phi
        ninv = torch.empty_like(perm)
        ninv[perm] = torch.arange(perm.numel())
        new_node = node_cls.view(graph.num_nodes, n_cols)[ninv].reshape(-1)
        for loc, group, members in list(checks):
            first = members[0]
            if loc == "edge":
                ref = new_edge[first.start : first.start + first.numel]
                bad = any(not torch.equal(new_edge[s.start : s.start + s.numel], ref) for s in members[1:])
            else:
                pos = lambda s: torch.arange(s.start, s.start + s.numel) * n_cols + s.column  # noqa: E731
                ref = new_node[pos(first)]
                bad = any(not torch.equal(new_node[pos(s)], ref) for s in members[1:])
            if bad:
                what = f"tied parameters {', '.join(group)}" if len(group) > 1 else f"shared parameter {group[0]}"
                out.append(
                    f"{what}: an automorphism of the graph moves their copies "
                    "differently, so it is not a symmetry of the model (the weight-sharing condition fails)"
                )
                checks.remove((loc, group, members))
    return out
