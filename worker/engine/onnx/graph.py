"""Building the ONNX graph of dlib's face descriptor ResNet from the parsed layer records.

`build_onnx_model(path)` reads dlib's .dat file (`parser.py`) and rebuilds the same network with
`onnx.helper`: the wiring of dlib's `anet_type` is encoded here and checked against the tag/skip
counts the file records, so a different network is refused, never mis-built. docs/onnx-backend.md
lists what has to match dlib exactly. `GraphEmitter` is the naming and emitting both this
builder and the TFLite converter (`worker/engine/tflite_onnx.py`) use.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from worker.engine.models import RESNET_MODEL_NAME
from worker.engine.onnx.parser import DlibFormatError, DlibLayer, read_dlib_resnet

__all__ = [
    "GRAPH_REVISION",
    "INPUT_NAME",
    "IR_VERSION",
    "OPSET",
    "OUTPUT_NAME",
    "GraphEmitter",
    "build_onnx_model",
]

# Bump when the graph this module builds changes, so that cached models built by an older
# version of this code are not reused.
GRAPH_REVISION = 1
# Opset 17 / IR 8: understood by every onnxruntime this project may meet (>= 1.14).
OPSET = 17
IR_VERSION = 8
# The input of every graph built here: (N, H, W, 3) uint8 RGB face chips.
INPUT_NAME = "chips"
# dlib's network's output: (N, 128) float32 raw descriptors.
OUTPUT_NAME = "descriptors"


class GraphEmitter:
    """An ONNX graph being written: fresh value names, initialisers, nodes, and the two ends
    every face network here shares (uint8 NHWC chips in, one float matrix out)."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.counter = 0

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}_{self.counter}"

    def const(self, prefix: str, array: np.ndarray) -> str:
        """A new initialiser holding `array`; its name."""
        name = self.fresh(prefix)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], out: str | None = None, **attrs: object) -> str:
        """A new node; the name of its one output."""
        out = out or self.fresh(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def normalised_chips(self, mean: tuple[str, np.ndarray], scale: tuple[str, np.ndarray]) -> str:
        """The input chips as float NCHW `(pixel - mean) * scale`; `mean` and `scale` are
        (initialiser name prefix, value) pairs."""
        x = self.node("Cast", [INPUT_NAME], to=TensorProto.FLOAT)
        x = self.node("Transpose", [x], perm=[0, 3, 1, 2])
        x = self.node("Sub", [x, self.const(*mean)])
        return self.node("Mul", [x, self.const(*scale)])

    def model(
        self,
        y: str,
        *,
        graph_name: str,
        chip_shape: tuple[int, int, int],
        output_name: str,
        output_dims: list[int],
        **model_fields: str,
    ) -> onnx.ModelProto:
        """The model whose output `output_name` (N, *output_dims) float32 is the value `y`."""
        self.nodes.append(helper.make_node("Identity", [y], [output_name], name="output"))
        graph = helper.make_graph(
            self.nodes,
            graph_name,
            [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["N", *chip_shape])],
            [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", *output_dims])],
            self.inits,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], **model_fields
        )
        model.ir_version = IR_VERSION
        return model


def _out_size(n: int, k: int, s: int, p: int) -> int:
    # dlib: 1 + (n + 2p - k) / s with integer division, for both convolution and pooling.
    return 1 + (n + 2 * p - k) // s


class _ResNetBuilder(GraphEmitter):
    """Walks the layer records in forward order while emitting ONNX nodes."""

    def __init__(self, records: list[DlibLayer]) -> None:
        super().__init__()
        if not records or records[0].kind != "input_rgb_image_sized":
            raise DlibFormatError("records must start with the input layer")
        self.records = [r for r in records if r.computational]
        self.pos = 0
        self.input = records[0]

    def take(self, kind: str, tags_below: int = 0) -> DlibLayer:
        if self.pos >= len(self.records):
            raise DlibFormatError(f"expected {kind} but the file has no more layers")
        rec = self.records[self.pos]
        if rec.kind != kind:
            raise DlibFormatError(
                f"layer {self.pos}: expected {kind}, file has {rec.kind}; "
                "this is not dlib's face descriptor ResNet"
            )
        if rec.attrs.get("tags_below", 0) != tags_below:
            raise DlibFormatError(
                f"layer {self.pos}: {rec.attrs['tags_below']} tag/skip layers below {rec.kind}, "
                f"expected {tags_below}; this is not dlib's face descriptor ResNet"
            )
        self.pos += 1
        return rec

    # Each method takes (tensor name, (C, H, W)) and returns the same for its output.

    def con(
        self, x: str, shape: tuple[int, int, int], filters: int, k: int, stride: int, tags: int = 0
    ):
        rec = self.take("con_4", tags)
        a = rec.attrs
        if a["num_filters"] != filters or a["kernel"] != (k, k) or a["stride"] != (stride,) * 2:
            raise DlibFormatError(f"layer {self.pos - 1}: unexpected conv settings {a}")
        w = rec.arrays["weight"]
        if w.shape[1] != shape[0]:
            raise DlibFormatError(f"conv expects {w.shape[1]} channels, gets {shape[0]}")
        py, px = a["padding"]
        inputs = [x, self.const("W", w)]
        if "bias" in rec.arrays:
            inputs.append(self.const("B", rec.arrays["bias"]))
        y = self.node(
            "Conv",
            inputs,
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[py, px, py, px],
        )
        return y, (filters, _out_size(shape[1], k, stride, py), _out_size(shape[2], k, stride, px))

    def affine(self, x: str, shape: tuple[int, int, int]):
        rec = self.take("affine_")
        g, b = rec.arrays["gamma"], rec.arrays["beta"]
        if rec.attrs["mode"] == "conv":
            g = g.reshape(-1, 1, 1)
            b = b.reshape(-1, 1, 1)
        else:
            g = g.reshape(shape)
            b = b.reshape(shape)
        if g.shape[0] != shape[0]:
            raise DlibFormatError(f"affine has {g.shape[0]} channels, input {shape[0]}")
        y = self.node("Mul", [x, self.const("gamma", g)])
        return self.node("Add", [y, self.const("beta", b)]), shape

    def relu(self, x: str, shape: tuple[int, int, int]):
        self.take("relu_")
        return self.node("Relu", [x]), shape

    def pool(
        self, kind: str, x: str, shape: tuple[int, int, int], k: int, stride: int, tags: int = 0
    ):
        rec = self.take(kind, tags)
        a = rec.attrs
        if a["kernel"] != (k, k) or a["stride"] != (stride,) * 2:
            raise DlibFormatError(f"layer {self.pos - 1}: unexpected pooling settings {a}")
        py, px = a["padding"]
        if (py, px) != (0, 0):
            # dlib excludes padding from max and average alike; this net has none.
            raise DlibFormatError("padded pooling is not supported")
        op = "MaxPool" if kind == "max_pool_2" else "AveragePool"
        y = self.node(
            op, [x], kernel_shape=[k, k], strides=[stride, stride], pads=[0, 0, 0, 0], ceil_mode=0
        )
        return y, (shape[0], _out_size(shape[1], k, stride, 0), _out_size(shape[2], k, stride, 0))

    def add_prev(self, a: str, sa: tuple[int, int, int], b: str, sb: tuple[int, int, int]):
        self.take("add_prev_")
        out = tuple(max(u, v) for u, v in zip(sa, sb, strict=True))

        # dlib's tt::add zero-extends the smaller tensor in channels, rows and columns (at the
        # end of each axis) before adding.
        def extend(x: str, s: tuple[int, int, int]) -> str:
            if s == out:
                return x
            pads = np.array([0, 0, 0, 0, 0, *(o - v for o, v in zip(out, s, strict=True))])
            return self.node("Pad", [x, self.const("pads", pads.astype(np.int64))], mode="constant")

        return self.node("Add", [extend(a, sa), extend(b, sb)]), out

    def block(self, x: str, shape: tuple[int, int, int], n: int, stride: int):
        # block = affine<con<N,3,3,1,1, relu<affine<con<N,3,3,stride,stride, SUBNET>>>>>, and the
        # SUBNET below it is always tag1 in this net.
        y, s = self.con(x, shape, n, 3, stride, tags=1)
        y, s = self.affine(y, s)
        y, s = self.relu(y, s)
        y, s = self.con(y, s, n, 3, 1)
        return self.affine(y, s)

    def ares(self, x: str, shape: tuple[int, int, int], n: int):
        # relu<add_prev1<block<N,affine,1,tag1<SUBNET>>>>
        y, s = self.block(x, shape, n, 1)
        y, s = self.add_prev(y, s, x, shape)
        return self.relu(y, s)

    def ares_down(self, x: str, shape: tuple[int, int, int], n: int):
        # relu<add_prev2<avg_pool<2,2,2,2, skip1<tag2<block<N,affine,2,tag1<SUBNET>>>>>>>
        y, s = self.block(x, shape, n, 2)
        p, sp = self.pool("avg_pool_2", x, shape, 2, 2, tags=2)  # on skip1<tag2<...>>
        z, sz = self.add_prev(p, sp, y, s)
        return self.relu(z, sz)

    def build(self) -> onnx.ModelProto:
        mean = np.asarray(self.input.attrs["mean_rgb"], dtype=np.float32).reshape(1, 3, 1, 1)
        rows, cols = self.input.attrs["size"]

        # input_rgb_image_sized: (pixel - mean) / 256, RGB planes.
        x = self.normalised_chips(
            ("mean_rgb", mean), ("scale", np.array(1 / 256, dtype=np.float32))
        )
        s = (3, rows, cols)

        x, s = self.con(x, s, 32, 7, 2)
        x, s = self.affine(x, s)
        x, s = self.relu(x, s)
        x, s = self.pool("max_pool_2", x, s, 3, 2)
        levels = [  # alevel4 .. alevel0, bottom up: (filters, downsampling first?, blocks)
            (32, False, 3),
            (64, True, 4),
            (128, True, 3),
            (256, True, 3),
            (256, True, 1),
        ]
        for n, down, count in levels:
            for i in range(count):
                x, s = self.ares_down(x, s, n) if down and i == 0 else self.ares(x, s, n)

        # avg_pool_everything then fc_no_bias: x . W
        rec = self.take("avg_pool_2")
        if rec.attrs["kernel"] != (0, 0):
            raise DlibFormatError("expected avg_pool_everything before the fc layer")
        x = self.node("GlobalAveragePool", [x])
        x = self.node("Flatten", [x], axis=1)
        fc = self.take("fc_2")
        if fc.attrs["num_inputs"] != s[0] * 1 * 1:
            raise DlibFormatError(f"fc expects {fc.attrs['num_inputs']} inputs, gets {s[0]}")
        x = self.node("MatMul", [x, self.const("fc_W", fc.arrays["weight"])])
        if "bias" in fc.arrays:
            x = self.node("Add", [x, self.const("fc_B", fc.arrays["bias"])])
        if self.pos != len(self.records):
            raise DlibFormatError(f"{len(self.records) - self.pos} layers left over")
        return self.model(
            x,
            graph_name=RESNET_MODEL_NAME,
            chip_shape=(rows, cols, 3),
            output_name=OUTPUT_NAME,
            output_dims=[fc.attrs["num_outputs"]],
            producer_name="facelib.worker.engine.onnx.graph",
            producer_version=str(GRAPH_REVISION),
            doc_string=f"{RESNET_MODEL_NAME} rebuilt from dlib's .dat file",
        )


def build_onnx_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Build the ONNX equivalent of the dlib face descriptor network in `path`.

    Input `chips`: (N, 150, 150, 3) uint8 RGB face chips as `dlib.get_face_chip` returns them.
    Output `descriptors`: (N, 128) float32, dlib's raw (unnormalised) descriptors.
    """
    model = _ResNetBuilder(read_dlib_resnet(path)).build()
    onnx.checker.check_model(model)
    return model
