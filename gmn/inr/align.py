"""Weight matching of stacked INRs onto one reference INR (Table 3's "MLP + Alignment", paper Sec. 4.3).

Every network of a stack of SIREN parameters is aligned to the same reference network with
:func:`symgraph.align.weight_matching` (the weight matching behind :func:`symgraph.align`): the permutation
of its hidden neurons that maximises ``<theta_ref, Phi(P) theta>`` over the exact automorphism group of the
SIREN's parameter graph. The group is computed once and reused for every network; each aligned network is
``Phi(P)`` of the original, so it computes the same function.

Example
-------
>>> import torch
>>> from gmn.inr.fit import init_siren_params
>>> p = init_siren_params(3, 1, (4, 4), 1, 30.0, generator=torch.Generator().manual_seed(0))
>>> res = align_to_reference(p, {k: v[0] for k, v in p.items()}, (4, 4))
>>> bool((res.objective_after >= res.objective_before - 1e-9).all())
True
>>> all(torch.equal(res.params[k][0], v[0]) for k, v in p.items())  # the reference aligns onto itself
True
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

import symgraph
from symgraph.align import weight_matching
from symgraph.models.siren import SIREN

from .fit import stack, unstack

__all__ = ["AlignedINRs", "align_to_reference"]


@dataclass(frozen=True)
class AlignedINRs:
    """Result of :func:`align_to_reference`.

    ``params``: the aligned stacked parameters (same keys, shapes and dtypes); ``perms``: LongTensor
    ``[B, N]``, each network's node permutation (an element of the SIREN graph's automorphism group);
    ``objective_before``/``objective_after``: float64 ``[B]`` weight-matching objectives against the reference;
    ``seconds``: wall time of the whole alignment.
    """

    params: dict[str, torch.Tensor]
    perms: torch.Tensor
    objective_before: torch.Tensor
    objective_after: torch.Tensor
    seconds: float


def align_to_reference(
    params: dict[str, torch.Tensor],
    reference: dict[str, torch.Tensor],
    hidden: Sequence[int],
    in_dim: int = 1,
    out_dim: int = 1,
    omega0: float = 30.0,
    max_iter: int = 100,
) -> AlignedINRs:
    """Align every SIREN of the stack ``params`` (``[B, ...]`` per key) to the SIREN ``reference`` (one state_dict).

    The networks are SIRENs ``in_dim -> hidden -> out_dim`` with frequency ``omega0``; weight matching runs in
    float64 over the automorphism group of their parameter graph (computed once), and the aligned parameters
    are returned in the input dtype.
    """
    t0 = time.perf_counter()
    b = next(iter(params.values())).shape[0]
    ref = SIREN(in_dim, tuple(hidden), out_dim, omega0).double()
    ref.load_state_dict({k: v.double() for k, v in reference.items()})
    model = SIREN(in_dim, tuple(hidden), out_dim, omega0).double()
    group = symgraph.automorphism_group(model)
    aligned, perms, before, after = [], [], [], []
    for j in range(b):
        model.load_state_dict({k: v.double() for k, v in unstack(params, j).items()})
        res = weight_matching(ref, model, group=group, max_iter=max_iter, check_structure=False)
        aligned.append(res.aligned.state_dict())
        perms.append(res.perm)
        before.append(res.objective_before)
        after.append(res.objective_after)
    out = {k: v.to(params[k].dtype) for k, v in stack(aligned).items()}
    return AlignedINRs(
        params=out,
        perms=torch.stack(perms) if perms else torch.empty(0, group.graph.num_nodes, dtype=torch.long),
        objective_before=torch.tensor(before, dtype=torch.float64),
        objective_after=torch.tensor(after, dtype=torch.float64),
        seconds=time.perf_counter() - t0,
    )
