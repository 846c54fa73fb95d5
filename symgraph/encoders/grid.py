"""Spatial parameter grids (paper appendix B, Fig. 7 right): a 2-D grid of feature vectors read by bilinear
interpolation at the input coordinates, as in grid-based implicit neural representations.

Encoding: one fixed node per grid position (role ``position``; they are like inputs: moving a grid entry to
another position changes the function), one node per feature channel, and one edge per grid entry
``grid[f, y, x]``: ``position(y, x) -> feature f``. The coordinates steer the interpolation, so the
coordinate input nodes get parameter-free edges to the feature nodes.

Analytic symmetry: the feature channels may be permuted (S_F) together with the columns of the layer that
reads them.

Example
-------
>>> import symgraph
>>> from symgraph.models import GridINR
>>> g = symgraph.parameter_graph(GridINR(features=2, resolution=(2, 2), hidden=(3,)))
>>> len(g.edge_param.edges_of("grid.grid")), int(g.role_mask("position").sum())
(8, 4)
"""

from __future__ import annotations

from ..builder import Features, SymmetryDecl
from ..errors import ShapeMismatchError
from ..graph import declare_vocabulary
from ..models.grid import GridLookup
from ..registry import register_encoder

declare_vocabulary(edges={"grid": ("entry", "coord")}, node_kinds=("grid",))

__all__ = ["encode_grid_lookup"]


@register_encoder(GridLookup)
def encode_grid_lookup(ctx, op, module: GridLookup, args):
    """Coordinates (B, 2) -> interpolated features (B, F): grid entries as edges from position nodes."""
    coords = ctx.features(args[0], axis=-1)
    if coords.size != 2:
        raise ShapeMismatchError("2-D coordinates", f"{coords.size}", ctx.where())
    b = ctx.builder
    F, H, W = module.grid.shape
    pos = b.add_nodes(H * W, "position", "grid", f"{op.target} grid positions", module=op.target, level=0)
    feats = ctx.new_hidden(F, "grid", f"{op.target} features", coords.nodes, extra=(H, W, module.align_corners))
    color = b.edge_color(("grid", "entry"))

    def fill(s, d, c):
        s.view(F, H * W).copy_(pos.view(1, H * W).expand(F, H * W))
        d.view(F, H * W).copy_(feats.view(F, 1).expand(F, H * W))
        c.fill_(color)

    b.add_edge_block(module.grid.numel(), fill, module.grid, f"{op.target}.grid")
    ctx.identity_edges(coords.nodes.repeat(F), feats.repeat_interleave(2), ("grid", "coord"))
    b.declare(SymmetryDecl("perm", feats, f"S_{F} on {op.target} feature channels", module=op.target))
    shape = tuple(op.shape)
    return Features(feats, shape, len(shape) - 1, None, 1, owned=op.num_users == 1)
