"""Pass names that several passes' ordering declarations share (see ``segc.pass_order``)."""

from __future__ import annotations

#: The passes that rewrite the graph for a target; ``cleanup`` runs after all of them.
REWRITES: tuple[str, ...] = (
    "fix_input_shapes", "simplify", "fold_resize_scales", "resize_broadcast", "resize_to_nearest", "prune_outputs",
    "expand_functions", "rewrite_deform_conv", "convert_opset", "set_shape_range",
)
