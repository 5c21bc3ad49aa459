"""Activation layouts by propagation.

Layouts are inferred by propagation: ``Conv``, pooling and normalization ops read and write
NCHW, ``Transpose`` permutes a layout, elementwise ops, ``Concat``, ``Pad``, ``Resize``... keep
it. The propagation runs forwards and backwards until nothing changes, so the NHWC tensors
between the Transposes that tf2onnx puts around convolutions come out NHWC. Where no op tells,
the static shape decides (:func:`shape_layout`). A layout is a string of axis letters
(``"NCHW"``, ``"NHWC"``); other layouts (tokens) can be added without changing the manifest
format.
"""

from __future__ import annotations

from collections.abc import Sequence

from .graph import Dim, Graph, attribute

__all__ = ["SUPPORTED_LAYOUTS", "detect_layouts", "shape_layout"]

#: Activation layouts the runtime understands.
SUPPORTED_LAYOUTS = ("NCHW", "NHWC")
# ops whose first input and first output are NCHW (rank 4)
_NCHW_OPS = frozenset({
    "Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool", "LpPool",
    "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "BatchNormalization",
    "InstanceNormalization", "LRN", "MaxRoiPool", "DepthToSpace", "SpaceToDepth",
})
# ops whose rank-4 inputs and outputs all share one layout
_SAME_LAYOUT_OPS = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu",
    "Selu", "Celu", "Gelu", "Erf", "Mish", "Softplus", "Softsign", "Identity", "Dropout", "Cast",
    "CastLike", "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "Abs",
    "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sign",
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Concat", "Pad", "Resize",
    "Upsample", "Slice", "Split", "Tile", "Expand", "LayerNormalization", "Softmax",
    "LogSoftmax",
})
# ops among _SAME_LAYOUT_OPS whose other inputs are not activations
_FIRST_INPUT_OPS = frozenset({
    "Pad", "Slice", "Tile", "Expand", "Resize", "Upsample", "LayerNormalization", "Softmax",
    "LogSoftmax",
})

def _permute(layout: str, perm: Sequence[int]) -> str:
    return "".join(layout[p] for p in perm)


def _inverse(perm: Sequence[int]) -> list[int]:
    inverse = [0] * len(perm)
    for i, p in enumerate(perm):
        inverse[p] = i
    return inverse


def shape_layout(
    shape: tuple[Dim, ...] | None, image: bool = False
) -> str | None:
    """Guess NCHW/NHWC from a rank-4 shape when no op tells, or None.

    Square spatial dims decide (``[N, 768, 7, 7]`` is NCHW, ``[N, 1, 1, 768]`` NHWC); for an
    image input (``image=True``) so do 1, 3 or 4 channels on one side only.
    """
    if shape is None or len(shape) != 4:
        return None
    _, d1, d2, d3 = shape
    if d2 == d3 and d1 != d2 and d2 is not None:
        return "NCHW"
    if d1 == d2 and d3 != d1 and d1 is not None:
        return "NHWC"
    if image and isinstance(d1, int) and isinstance(d3, int):
        if d1 in (1, 3, 4) and d3 not in (1, 3, 4):
            return "NCHW"
        if d3 in (1, 3, 4) and d1 not in (1, 3, 4):
            return "NHWC"
    return None


def detect_layouts(g: Graph) -> dict[str, str]:
    """Layouts of the rank-4 tensors of a shape-inferred graph, by propagation.

    Returns:
        tensor name -> axis string such as ``"NCHW"`` or ``"NHWC"`` for every rank-4 tensor
        whose layout the graph's ops determine (see the module docstring).
    """
    layouts: dict[str, str] = {}

    def rank4(name: str) -> bool:
        return bool(name) and g.rank(name) == 4

    def assign(name: str, layout: str) -> bool:
        if not rank4(name) or name in layouts:
            return False
        layouts[name] = layout
        return True

    changed = True
    while changed:
        changed = False
        for node in g.nodes:
            op = node.op_type
            if node.domain not in ("", "ai.onnx"):
                continue
            if op in _NCHW_OPS:
                changed |= assign(node.input[0], "NCHW")
                changed |= assign(node.output[0], "NCHW")
            elif op == "Transpose":
                x, y = node.input[0], node.output[0]
                perm = attribute(node, "perm")
                if not (rank4(x) and rank4(y)):
                    continue
                perm = list(perm) if perm is not None else [3, 2, 1, 0]
                if x in layouts:
                    changed |= assign(y, _permute(layouts[x], perm))
                elif y in layouts:
                    changed |= assign(x, _permute(layouts[y], _inverse(perm)))
            elif op == "MatMul" and rank4(node.input[0]) and g.rank(node.input[1]) == 2:
                # channels-last Linear on a rank-4 tensor (ConvNeXt blocks): layout kept
                x, y = node.input[0], node.output[0]
                if layouts.get(x, "").endswith("C"):
                    changed |= assign(y, layouts[x])
                elif layouts.get(y, "").endswith("C"):
                    changed |= assign(x, layouts[y])
            elif op in _SAME_LAYOUT_OPS or (
                op.startswith("Reduce") and attribute(node, "keepdims", 1) == 1
            ):
                names = [n for n in [*node.input, *node.output] if rank4(n)]
                if op.startswith("Reduce") or op in _FIRST_INPUT_OPS:
                    names = [n for n in (node.input[0], node.output[0]) if rank4(n)]
                known = next((layouts[n] for n in names if n in layouts), None)
                if known is not None:
                    for name in names:
                        if name not in g.initializers and name not in g.constant_tensors:
                            changed |= assign(name, known)
    return layouts
