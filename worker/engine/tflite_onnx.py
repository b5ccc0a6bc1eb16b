"""A TFLite float graph rebuilt as an ONNX graph, in pure Python (no TensorFlow).

The `tflite` package parses the flatbuffer; this module rebuilds the graph with `onnx.helper`
(through `GraphEmitter`), the way `worker.engine.onnx.graph` rebuilds dlib's network. It covers
the operators a float32 MobileFaceNet export uses (CONV_2D, DEPTHWISE_CONV_2D, ADD, SUB, MUL,
RELU, RELU6, ABS, PRELU, RESHAPE, MEAN over H and W) and refuses anything else with the
operator's name, so a graph it cannot represent exactly is never half converted.

Layout: TFLite computes in NHWC; ONNX Runtime's fast convolution kernels want NCHW. The graph
is converted to NCHW once, at the input, and stays NCHW: weights are transposed when the graph
is built, per-channel constants are reshaped to (C, 1, 1), and the only run-time transposes are
the one at the input (and one before a RESHAPE that is not a plain flatten of 1x1 maps).
TF's PReLU export (relu(x) + alpha * (x - |x|) * 0.5, as RELU, ABS, SUB, MUL, ADD) is fused back
into one activation, written in the form ONNX Runtime's blocked layout keeps (see `prelu`).

The ONNX graph takes uint8 RGB chips (N, H, W, 3), any batch size, and applies the input
normalisation `(pixel - mean) / std` given by the caller; its one output is the graph's output
as a float32 (N, D) matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from worker.engine.onnx.graph import GraphEmitter

__all__ = [
    "GRAPH_REVISION",
    "TfliteConversionError",
    "TfliteGraphInfo",
    "convert_tflite",
    "operator_counts",
    "read_graph_info",
]

# Bump when the graph this module builds changes: installed models carry it in their file name.
GRAPH_REVISION = 2
# The graph's input is GraphEmitter's `chips` (uint8 NHWC); its output is called:
OUTPUT_NAME = "embeddings"

# TFLite enums (schema.fbs), spelled out so that the converter reads as the schema does.
_FLOAT32 = 0  # TensorType.FLOAT32
_INT32 = 2  # TensorType.INT32
_SAME, _VALID = 0, 1  # Padding
_ACT_NONE, _ACT_RELU, _ACT_RELU6 = 0, 1, 3  # ActivationFunctionType
PRELU_FORMS = ("relu_neg", "scales", "prelu")


class TfliteConversionError(ValueError):
    """The TFLite graph uses something this converter does not represent exactly."""


@dataclass(frozen=True)
class TfliteGraphInfo:
    """What the flatbuffer says about its one subgraph."""

    input_name: str
    input_shape: tuple[int, ...]  # NHWC as stored (the batch is made dynamic in ONNX)
    input_range: tuple[float, float] | None  # the input tensor's min/max record, if any
    output_name: str
    output_shape: tuple[int, ...]
    operators: dict[str, int]  # operator name -> count
    description: str


def _op_names() -> dict[int, str]:
    from tflite.utils import BUILTIN_OPCODE2NAME

    return dict(BUILTIN_OPCODE2NAME)


def _load(data: bytes):
    import tflite

    if len(data) < 8 or data[4:8] != b"TFL3":
        raise TfliteConversionError("not a TFLite flatbuffer (no TFL3 identifier)")
    model = tflite.Model.GetRootAs(data, 0)
    if model.SubgraphsLength() != 1:
        raise TfliteConversionError(f"{model.SubgraphsLength()} subgraphs; only 1 is supported")
    return model


def _opcode(model, op) -> str:
    code = model.OperatorCodes(op.OpcodeIndex())
    # Builtin codes above 127 live in BuiltinCode; older files only fill the deprecated byte.
    builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
    name = _op_names().get(builtin)
    if name is None or name == "CUSTOM":
        raise TfliteConversionError(f"custom or unknown operator code {builtin}")
    return name


def read_graph_info(data: bytes) -> TfliteGraphInfo:
    """Input, output and operator census of a TFLite file, without converting it."""
    model = _load(data)
    g = model.Subgraphs(0)
    if g.InputsLength() != 1 or g.OutputsLength() != 1:
        raise TfliteConversionError("the graph must have exactly one input and one output")
    t_in, t_out = g.Tensors(g.Inputs(0)), g.Tensors(g.Outputs(0))
    rng = None
    q = t_in.Quantization()
    if q is not None and q.MinLength() == 1 and q.MaxLength() == 1:
        rng = (float(q.Min(0)), float(q.Max(0)))
    ops: dict[str, int] = {}
    for i in range(g.OperatorsLength()):
        name = _opcode(model, g.Operators(i))
        ops[name] = ops.get(name, 0) + 1
    return TfliteGraphInfo(
        input_name=t_in.Name().decode(),
        input_shape=tuple(int(v) for v in t_in.ShapeAsNumpy()),
        input_range=rng,
        output_name=t_out.Name().decode(),
        output_shape=tuple(int(v) for v in t_out.ShapeAsNumpy()),
        operators=ops,
        description=(model.Description() or b"").decode("utf-8", "replace"),
    )


@dataclass
class _Op:
    kind: str
    inputs: list[int]
    outputs: list[int]
    options: object | None


class _Converter(GraphEmitter):
    def __init__(self, data: bytes, prelu_form: str = "relu_neg") -> None:
        super().__init__()
        if prelu_form not in PRELU_FORMS:
            raise ValueError(f"prelu_form must be one of {PRELU_FORMS}")
        self.prelu_form = prelu_form
        self.tfl = _load(data)
        self.g = self.tfl.Subgraphs(0)
        self.names: dict[int, str] = {}  # TFLite tensor index -> ONNX value name
        self.rank: dict[int, int] = {}  # rank of each converted activation (4 = NCHW)
        self.ops = [self._read_op(i) for i in range(self.g.OperatorsLength())]
        # Which operators read each tensor: the PReLU fusion must own its intermediates.
        self.readers: dict[int, list[int]] = {}
        for k, op in enumerate(self.ops):
            for t in op.inputs:
                self.readers.setdefault(t, []).append(k)
        for t in self.g.OutputsAsNumpy():
            self.readers.setdefault(int(t), []).append(-1)

    # -- reading ---------------------------------------------------------------------------------

    def _read_op(self, i: int) -> _Op:
        import tflite

        op = self.g.Operators(i)
        kind = _opcode(self.tfl, op)
        table = op.BuiltinOptions()
        options = None
        cls = {
            "CONV_2D": tflite.Conv2DOptions,
            "DEPTHWISE_CONV_2D": tflite.DepthwiseConv2DOptions,
            "ADD": tflite.AddOptions,
            "SUB": tflite.SubOptions,
            "MUL": tflite.MulOptions,
            "RESHAPE": tflite.ReshapeOptions,
            "MEAN": tflite.ReducerOptions,
        }.get(kind)
        if cls is not None and table is not None:
            options = cls()
            options.Init(table.Bytes, table.Pos)
        inputs = [int(t) for t in op.InputsAsNumpy()] if op.InputsLength() else []
        outputs = [int(t) for t in op.OutputsAsNumpy()]
        return _Op(kind, inputs, outputs, options)

    def tensor(self, index: int):
        return self.g.Tensors(index)

    def shape(self, index: int) -> tuple[int, ...]:
        t = self.tensor(index)
        return tuple(int(v) for v in t.ShapeAsNumpy()) if t.ShapeLength() else ()

    def const_data(self, index: int) -> np.ndarray | None:
        """The constant data of tensor `index`, or None for an activation."""
        t = self.tensor(index)
        buf = self.tfl.Buffers(t.Buffer())
        if buf is None or buf.DataLength() == 0:
            if buf is not None and buf.Offset() > 1:
                raise TfliteConversionError(
                    "tensors stored outside the flatbuffer are not supported"
                )
            return None
        if t.Sparsity() is not None:
            raise TfliteConversionError(f"sparse tensor {t.Name().decode()!r}")
        q = t.Quantization()
        if q is not None and (q.ScaleLength() or q.ZeroPointLength()):
            raise TfliteConversionError(f"quantised tensor {t.Name().decode()!r}")
        dtype = {_FLOAT32: "<f4", _INT32: "<i4"}.get(t.Type())
        if dtype is None:
            raise TfliteConversionError(
                f"tensor {t.Name().decode()!r} has TFLite type {t.Type()}; only float32/int32"
            )
        raw = buf.DataAsNumpy().tobytes()
        return np.frombuffer(raw, dtype=dtype).astype(dtype[1:]).reshape(self.shape(index))

    # -- values ----------------------------------------------------------------------------------

    def value(self, index: int) -> str:
        if index not in self.names:
            raise TfliteConversionError(
                f"tensor {self.tensor(index).Name().decode()!r} is read before it is written, "
                "or is a constant where an activation is expected"
            )
        return self.names[index]

    def operand(self, index: int, like: int) -> str:
        """An elementwise operand: the activation, or the constant laid out like `like`."""
        if index in self.names:
            return self.names[index]
        c = self.const_data(index)
        if c is None:
            return self.value(index)
        if self.rank.get(like) == 4 and c.ndim >= 1:
            # An NHWC-broadcastable constant: make it 4-D NHWC, then NCHW.
            c4 = c.reshape((1,) * (4 - c.ndim) + c.shape).transpose(0, 3, 1, 2)
            c = c4.reshape(c4.shape[1:]) if c4.shape[0] == 1 else c4
        return self.const("c", c.astype(np.float32))

    def activation(self, x: str, code: int) -> str:
        if code == _ACT_NONE:
            return x
        if code == _ACT_RELU:
            return self.node("Relu", [x])
        if code == _ACT_RELU6:
            return self.node(
                "Clip", [x, self.const("lo", np.float32(0)), self.const("hi", np.float32(6))]
            )
        raise TfliteConversionError(f"fused activation {code} is not supported")

    @staticmethod
    def pads(
        size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
        dilation: tuple[int, int], padding: int,
    ) -> list[int]:  # fmt: skip
        """ONNX pads [top, left, bottom, right] equal to TF's SAME/VALID (SAME puts the odd
        pixel at the bottom/right, which ONNX's auto_pad SAME_UPPER also does; explicit pads
        keep the graph independent of that reading)."""
        if padding == _VALID:
            return [0, 0, 0, 0]
        if padding != _SAME:
            raise TfliteConversionError(f"padding {padding} is not supported")
        before, after = [], []
        for n, k, s, d in zip(size, kernel, stride, dilation, strict=True):
            out = -(-n // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
            before.append(total // 2)
            after.append(total - total // 2)
        return [before[0], before[1], after[0], after[1]]

    # -- operators ---------------------------------------------------------------------------------

    def conv(self, op: _Op, depthwise: bool) -> None:
        o = op.options
        x, w_idx = op.inputs[0], op.inputs[1]
        w = self.const_data(w_idx)
        if w is None:
            raise TfliteConversionError("convolution weights must be constants")
        n, h, wd, c = self.shape(x)
        stride = (o.StrideH(), o.StrideW())
        dilation = (o.DilationHFactor() or 1, o.DilationWFactor() or 1)
        if depthwise:
            # TFLite depthwise weights: (1, KH, KW, C * multiplier) -> ONNX (C*m, 1, KH, KW).
            kh, kw, cm = w.shape[1], w.shape[2], w.shape[3]
            if cm % c:
                raise TfliteConversionError("depthwise channels do not divide the input's")
            weight = w.reshape(kh, kw, cm).transpose(2, 0, 1)[:, None]
            group = c
        else:
            # TFLite conv weights: OHWI -> ONNX OIHW.
            kh, kw = w.shape[1], w.shape[2]
            if w.shape[3] != c:
                raise TfliteConversionError(f"conv expects {w.shape[3]} channels, gets {c}")
            weight = w.transpose(0, 3, 1, 2)
            group = 1
        inputs = [self.value(x), self.const("W", weight.astype(np.float32))]
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            b = self.const_data(op.inputs[2])
            if b is None:
                raise TfliteConversionError("convolution bias must be a constant")
            inputs.append(self.const("B", b.astype(np.float32)))
        y = self.node(
            "Conv",
            inputs,
            kernel_shape=[kh, kw],
            strides=list(stride),
            dilations=list(dilation),
            group=group,
            pads=self.pads((h, wd), (kh, kw), stride, dilation, o.Padding()),
        )
        self.set(op.outputs[0], self.activation(y, o.FusedActivationFunction()), 4)

    def elementwise(self, op: _Op) -> None:
        onnx_op = {"ADD": "Add", "SUB": "Sub", "MUL": "Mul"}[op.kind]
        a, b = op.inputs
        like = a if a in self.names else b
        y = self.node(onnx_op, [self.operand(a, like), self.operand(b, like)])
        act = op.options.FusedActivationFunction() if op.options is not None else _ACT_NONE
        self.set(op.outputs[0], self.activation(y, act), self.rank.get(like, 0))

    def unary(self, op: _Op) -> None:
        onnx_op = {"RELU": "Relu", "ABS": "Abs"}.get(op.kind)
        x = op.inputs[0]
        if op.kind == "RELU6":
            y = self.activation(self.value(x), _ACT_RELU6)
        else:
            y = self.node(onnx_op, [self.value(x)])
        self.set(op.outputs[0], y, self.rank.get(x, 0))

    def prelu(self, x: int, alpha: np.ndarray, out: int) -> None:
        alpha = alpha.astype(np.float32)
        v = self.value(x)
        if self.rank.get(x) != 4 or alpha.ndim != 1 or self.prelu_form == "prelu":
            slope = alpha.reshape(-1, 1, 1) if self.rank.get(x) == 4 and alpha.ndim else alpha
            y = self.node("PRelu", [v, self.const("slope", slope)])
            self.set(out, y, self.rank.get(x, 0))
            return
        # ONNX Runtime's PRelu kernel forces a reorder out of its blocked NCHWc layout and back
        # around every call; per-channel scales written as BatchNormalization run as NCHWc 1x1
        # depthwise convolutions, which fuse a following Relu and a following Add. Exact up to
        # float rounding (var = 1 - eps makes the divisor sqrt(var + eps) 1).
        if self.prelu_form == "relu_neg":
            # prelu(z) = z + (1 - a) * relu(-z): two passes, the Relu fused into the first
            # (scale -1), the Add into the second (scale 1 - a).
            n = self.node("Relu", [self.batchnorm(v, -np.ones_like(alpha))])
            self.set(out, self.node("Add", [v, self.batchnorm(n, 1.0 - alpha)]), 4)
            return
        # "scales": prelu(z) = a * z + (1 - a) * relu(z): three passes.
        r = self.node("Relu", [v])
        p = self.batchnorm(v, alpha)
        q = self.batchnorm(r, 1.0 - alpha)
        self.set(out, self.node("Add", [p, q]), 4)

    def batchnorm(self, x: str, scale: np.ndarray) -> str:
        eps = 1e-5
        zeros = np.zeros_like(scale, dtype=np.float32)
        inputs = [
            x,
            self.const("bn_scale", scale.astype(np.float32)),
            self.const("bn_bias", zeros),
            self.const("bn_mean", zeros),
            self.const("bn_var", np.full_like(zeros, 1.0 - eps)),
        ]
        return self.node("BatchNormalization", inputs, epsilon=eps)

    def reshape(self, op: _Op) -> None:
        x = op.inputs[0]
        target = self.shape(op.outputs[0])
        src = self.shape(x)
        if self.rank.get(x) == 4 and len(target) == 2 and src[1] == src[2] == 1:
            # (N, 1, 1, C) -> (N, C): in NCHW that is a flatten, no transpose needed.
            self.set(op.outputs[0], self.node("Flatten", [self.value(x)], axis=1), 2)
            return
        v = self.value(x)
        if self.rank.get(x) == 4:
            v = self.node("Transpose", [v], perm=[0, 2, 3, 1])
        shape = np.array([0, *target[1:]] if target and src and target[0] == src[0] else target)
        y = self.node("Reshape", [v, self.const("shape", shape.astype(np.int64))])
        self.set(op.outputs[0], y, len(target))

    def mean(self, op: _Op) -> None:
        x = op.inputs[0]
        axes = self.const_data(op.inputs[1])
        keep = bool(op.options.KeepDims()) if op.options is not None else False
        if self.rank.get(x) != 4 or axes is None or sorted(int(a) for a in axes.ravel()) != [1, 2]:
            raise TfliteConversionError("MEAN is supported over H and W of a 4-D tensor only")
        y = self.node("GlobalAveragePool", [self.value(x)])
        if keep:
            self.set(op.outputs[0], y, 4)
        else:
            self.set(op.outputs[0], self.node("Flatten", [y], axis=1), 2)

    def set(self, index: int, name: str, rank: int) -> None:
        self.names[index] = name
        self.rank[index] = rank

    # -- PReLU pattern -----------------------------------------------------------------------------

    def match_prelu(self, k: int) -> tuple[int, np.ndarray, int, set[int]] | None:
        """At op k = RELU(x): RELU(x) + c * (x - ABS(x)) in the next ops -> (x, 2c, out, ops)."""
        relu = self.ops[k]
        x = relu.inputs[0]
        readers = self.readers.get(x, [])
        found: dict[str, int] = {}
        for j in readers:
            if self.ops[j].kind in ("ABS", "SUB") and j != k:
                found[self.ops[j].kind] = j
        if set(found) != {"ABS", "SUB"} or len(readers) != 3:
            return None
        abs_op, sub_op = self.ops[found["ABS"]], self.ops[found["SUB"]]
        if sub_op.inputs != [x, abs_op.outputs[0]]:
            return None
        mul_k = self.readers.get(sub_op.outputs[0], [])
        if len(mul_k) != 1 or self.ops[mul_k[0]].kind != "MUL":
            return None
        mul = self.ops[mul_k[0]]
        other = [t for t in mul.inputs if t != sub_op.outputs[0]]
        c = self.const_data(other[0]) if len(other) == 1 else None
        add_k = self.readers.get(mul.outputs[0], [])
        if c is None or len(add_k) != 1 or self.ops[add_k[0]].kind != "ADD":
            return None
        add = self.ops[add_k[0]]
        if sorted(add.inputs) != sorted([relu.outputs[0], mul.outputs[0]]):
            return None
        if self.readers.get(relu.outputs[0], []) != [add_k[0]] or self.readers.get(
            abs_op.outputs[0], []
        ) != [found["SUB"]]:
            return None
        for o in (mul, add):
            if o.options is not None and o.options.FusedActivationFunction() != _ACT_NONE:
                return None
        # relu(x) + c (x - |x|) = max(x, 0) + 2c min(x, 0): PRelu with slope 2c.
        return x, 2.0 * c, add.outputs[0], {k, found["ABS"], found["SUB"], mul_k[0], add_k[0]}

    # -- the graph ---------------------------------------------------------------------------------

    def build(self, mean: float, std: float, fuse_prelu: bool) -> onnx.ModelProto:
        g = self.g
        if g.InputsLength() != 1 or g.OutputsLength() != 1:
            raise TfliteConversionError("the graph must have exactly one input and one output")
        in_idx, out_idx = int(g.Inputs(0)), int(g.Outputs(0))
        in_t = self.tensor(in_idx)
        if in_t.Type() != _FLOAT32:
            raise TfliteConversionError("only float32 inputs are supported")
        n, h, w, c = self.shape(in_idx)
        # uint8 NHWC chips -> float, NCHW, (pixel - mean) / std.
        x = self.normalised_chips(("mean", np.float32(mean)), ("inv_std", np.float32(1.0 / std)))
        self.set(in_idx, x, 4)

        done: set[int] = set()
        for k, op in enumerate(self.ops):
            if k in done:
                continue
            if fuse_prelu and op.kind == "RELU":
                m = self.match_prelu(k)
                if m is not None:
                    xi, slope, out, used = m
                    self.prelu(xi, slope, out)
                    done |= used
                    continue
            if op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                self.conv(op, depthwise=op.kind == "DEPTHWISE_CONV_2D")
            elif op.kind in ("ADD", "SUB", "MUL"):
                self.elementwise(op)
            elif op.kind in ("RELU", "RELU6", "ABS"):
                self.unary(op)
            elif op.kind == "PRELU":
                alpha = self.const_data(op.inputs[1])
                if alpha is None:
                    raise TfliteConversionError("PRELU alpha must be a constant")
                self.prelu(op.inputs[0], alpha.reshape(-1), op.outputs[0])
            elif op.kind == "RESHAPE":
                self.reshape(op)
            elif op.kind == "MEAN":
                self.mean(op)
            else:
                raise TfliteConversionError(f"operator {op.kind} is not supported")
            done.add(k)

        y = self.value(out_idx)
        if self.rank.get(out_idx) == 4:
            y = self.node("Transpose", [y], perm=[0, 2, 3, 1])
        return self.model(
            y,
            graph_name="tflite_graph",
            chip_shape=(h, w, c),
            output_name=OUTPUT_NAME,
            output_dims=list(self.shape(out_idx)[1:]),
            producer_name="facelib.worker.engine.tflite_onnx",
        )


def convert_tflite(
    data: bytes,
    *,
    mean: float,
    std: float,
    fuse_prelu: bool = True,
    prelu_form: str = "relu_neg",
) -> onnx.ModelProto:
    """The ONNX graph of the TFLite flatbuffer `data`.

    Input `chips`: (N, H, W, C) uint8 (the TFLite input's H, W, C), normalised in the graph as
    (pixel - mean) / std. Output `embeddings`: the TFLite output with a dynamic batch.
    `fuse_prelu` folds TF's five-op PReLU back into one activation, written as `prelu_form`:
    "relu_neg" (z + (1 - a) relu(-z), two passes ONNX Runtime keeps in its NCHWc layout; the
    fastest), "scales" (a z + (1 - a) relu(z), three passes) or "prelu" (ONNX's PRelu node).
    Raises TfliteConversionError for anything not represented exactly.
    """
    model = _Converter(data, prelu_form).build(mean, std, fuse_prelu)
    onnx.checker.check_model(model)
    return model


def operator_counts(model: onnx.ModelProto) -> dict[str, int]:
    """ONNX node census, for reports."""
    out: dict[str, int] = {}
    for node in model.graph.node:
        out[node.op_type] = out.get(node.op_type, 0) + 1
    return out
