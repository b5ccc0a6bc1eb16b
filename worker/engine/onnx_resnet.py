"""dlib's face descriptor ResNet, rebuilt as an ONNX graph and run on ONNX Runtime.

dlib's `dlib_face_recognition_resnet_model_v1.dat` is a serialised `anet_type` from dlib's
`examples/dnn_face_recognition_ex.cpp`. This module parses that file with no dlib code (the
format is dlib's `serialize.h`), rebuilds the same network with `onnx.helper` and runs it with
ONNX Runtime. The descriptors match `face_recognition_model_v1.compute_face_descriptor(chip)`
to within float32 rounding (max L2 difference ~1e-6), at about 20x the speed on CPU.

No weights ship with the repository: the graph is built from the installed
`face_recognition_models` file at start-up (a fraction of a second) and cached on disk under a
key made of the .dat file's sha256, so a later start only loads it. File format notes and
measurements are in `docs/onnx-backend.md`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from worker.engine.chips import checked_chips

log = logging.getLogger(__name__)

__all__ = [
    "CHIP_SIZE",
    "DESCRIPTOR_SIZE",
    "DlibLayer",
    "DlibFormatError",
    "OnnxBackend",
    "build_onnx_model",
    "default_model_path",
    "read_dlib_resnet",
]

CHIP_SIZE = 150
DESCRIPTOR_SIZE = 128
INPUT_NAME = "chips"
OUTPUT_NAME = "descriptors"

# Bump when the graph this module builds changes, so that cached models built by an older
# version of this code are not reused.
GRAPH_REVISION = 1
# Opset 17 / IR 8: understood by every onnxruntime this project may meet (>= 1.14).
OPSET = 17
IR_VERSION = 8

MODEL_STEM = "dlib_face_recognition_resnet_model_v1"


class DlibFormatError(ValueError):
    """The file is not the dlib network this module knows how to read."""


# ---------------------------------------------------------------------------------------------
# dlib serialisation primitives (dlib/serialize.h, dlib/float_details.h, dlib/dnn/tensor.h)
# ---------------------------------------------------------------------------------------------


class _Reader:
    def __init__(self, stream: BinaryIO) -> None:
        self._s = stream

    def tell(self) -> int:
        return self._s.tell()

    def at_end(self) -> bool:
        return self._s.read(1) == b""

    def raw(self, n: int) -> bytes:
        data = self._s.read(n)
        if len(data) != n:
            raise DlibFormatError(f"unexpected end of file at byte {self.tell()}")
        return data

    def int(self) -> int:
        # One control byte: low nibble = number of little-endian magnitude bytes that follow,
        # bit 0x80 = negative.
        ctrl = self.raw(1)[0]
        size = ctrl & 0x0F
        if size > 8:
            raise DlibFormatError(f"bad integer control byte {ctrl:#x} at byte {self.tell() - 1}")
        value = int.from_bytes(self.raw(size), "little") if size else 0
        return -value if ctrl & 0x80 else value

    def float(self) -> float:
        # float/double: integer mantissa then integer exponent, value = m * 2**e. dlib marks
        # inf/nan with exponent values at the top of the int16 range.
        mantissa = self.int()
        exponent = self.int()
        if exponent == 32767:  # SHRT_MAX: +inf
            return float("inf")
        if exponent == 32766:  # SHRT_MAX - 1: -inf
            return float("-inf")
        if exponent == 32765:  # SHRT_MAX - 2: nan
            return float("nan")
        return float(np.ldexp(float(mantissa), exponent))

    def string(self) -> str:
        n = self.int()
        return self.raw(n).decode("latin-1")

    def bool(self) -> bool:
        ch = self.raw(1)
        if ch not in (b"0", b"1"):
            raise DlibFormatError(f"bad bool {ch!r} at byte {self.tell() - 1}")
        return ch == b"1"

    def tensor(self) -> np.ndarray:
        version = self.int()
        if version != 2:
            raise DlibFormatError(f"tensor version {version} (only 2 is supported)")
        n, k, nr, nc = (self.int() for _ in range(4))
        count = n * k * nr * nc
        data = np.frombuffer(self.raw(4 * count), dtype="<f4").astype(np.float32)
        return data.reshape(n, k, nr, nc)

    def alias_tensor(self) -> tuple[int, int, int, int]:
        version = self.int()
        if version != 1:
            raise DlibFormatError(f"alias_tensor version {version} (only 1 is supported)")
        n, k, nr, nc = (self.int() for _ in range(4))
        return n, k, nr, nc


# ---------------------------------------------------------------------------------------------
# Layer records
# ---------------------------------------------------------------------------------------------


@dataclass
class DlibLayer:
    """One layer of the file, as dlib wrote it.

    `kind` is dlib's serialisation tag (`con_4`, `affine_`, `relu_`, `max_pool_2`,
    `avg_pool_2`, `add_prev_`, `fc_2`, plus `input_rgb_image_sized` and `loss_metric_2` at the
    two ends). `attrs` holds the scalar settings and `arrays` the weights as float32 numpy
    arrays (conv `weight` in OIHW, conv `bias`, affine `gamma`/`beta`, fc `weight` as
    (inputs, outputs)).
    """

    kind: str
    attrs: dict[str, object] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_params(self) -> int:
        return int(sum(a.size for a in self.arrays.values()))

    @property
    def computational(self) -> bool:
        return self.kind not in ("input_rgb_image_sized", "loss_metric_2")


def _read_details(r: _Reader) -> DlibLayer:
    kind = r.string()
    if kind == "con_4":
        params = r.tensor().ravel()
        num_filters, nr, nc = r.int(), r.int(), r.int()
        stride_y, stride_x = r.int(), r.int()
        padding_y, padding_x = r.int(), r.int()
        filt = r.alias_tensor()
        bias = r.alias_tensor()
        for _ in range(4):  # learning-rate and weight-decay multipliers (training only)
            r.float()
        n_w = int(np.prod(filt))
        if filt[0] != num_filters or filt[2:] != (nr, nc):
            raise DlibFormatError(f"con filters {filt} disagree with {num_filters}x{nr}x{nc}")
        arrays = {
            "weight": params[:n_w].reshape(filt),
            "bias": params[n_w : n_w + int(np.prod(bias))].copy(),
        }
        return DlibLayer(
            kind,
            {
                "num_filters": num_filters,
                "kernel": (nr, nc),
                "stride": (stride_y, stride_x),
                "padding": (padding_y, padding_x),
            },
            arrays,
        )
    if kind == "affine_":
        params = r.tensor().ravel()
        gamma = r.alias_tensor()
        beta = r.alias_tensor()
        mode = r.int()  # 0 = CONV_MODE (one gamma per channel), 1 = FC_MODE (per element)
        n_g = int(np.prod(gamma))
        return DlibLayer(
            kind,
            {"mode": "conv" if mode == 0 else "fc", "shape": gamma},
            {
                "gamma": params[:n_g].reshape(gamma[1:]),
                "beta": params[n_g : n_g + int(np.prod(beta))].reshape(beta[1:]),
            },
        )
    if kind in ("max_pool_2", "avg_pool_2"):
        nr, nc, sy, sx, py, px = (r.int() for _ in range(6))
        return DlibLayer(kind, {"kernel": (nr, nc), "stride": (sy, sx), "padding": (py, px)})
    if kind in ("relu_", "add_prev_"):
        return DlibLayer(kind)
    if kind == "fc_2":
        num_outputs, num_inputs = r.int(), r.int()
        params = r.tensor().ravel()
        weights = r.alias_tensor()
        r.alias_tensor()  # biases (empty when there is no bias)
        bias_mode = r.int()  # 0 = FC_HAS_BIAS, 1 = FC_NO_BIAS
        for _ in range(4):
            r.float()
        n_w = int(np.prod(weights))
        arrays = {"weight": params[:n_w].reshape(num_inputs, num_outputs)}
        if bias_mode == 0:
            arrays["bias"] = params[n_w : n_w + num_outputs].copy()
        return DlibLayer(kind, {"num_inputs": num_inputs, "num_outputs": num_outputs}, arrays)
    raise DlibFormatError(f"unsupported layer type {kind!r}")


def _skip_add_layer_state(r: _Reader, bottom: bool) -> None:
    # add_layer state after the layer details: three bools and cached training tensors (empty in
    # a cleaned network), then grad_final and sample_expansion_factor for the bottom layer.
    for _ in range(3):
        r.bool()
    for _ in range(3):
        r.tensor()
    if bottom:
        r.int()  # _sample_expansion_factor (add_layer version 3)


def read_dlib_resnet(path: str | os.PathLike[str]) -> list[DlibLayer]:
    """Parse a dlib DNN file into layer records, in forward order.

    The result starts with the input layer record (`input_rgb_image_sized`: mean RGB and
    size), then every computational layer from the bottom of the network up (108 for the face
    descriptor net), and ends with the loss layer record (`loss_metric_2`).

    Tag and skip layers carry only a version number in the file, so the residual wiring is not
    in the records; `build_onnx_model` supplies it. The positions of the tag/skip layers in the
    chain are recorded in each record's `attrs["tags_below"]` (how many tag/skip layers sit
    directly below it) so the wiring can be checked against the file.
    """
    with open(path, "rb") as f:
        r = _Reader(io.BytesIO(f.read()))

    # add_loss_layer: version 1, the loss details, then the network below it.
    if r.int() != 1:
        raise DlibFormatError("not a dlib add_loss_layer (version != 1)")
    loss_kind = r.string()
    if loss_kind != "loss_metric_2":
        raise DlibFormatError(f"unsupported loss layer {loss_kind!r}")
    loss = DlibLayer(loss_kind, {"margin": r.float(), "dist_thresh": r.float()})

    # The chain down to the input layer is a run of version numbers: 1 for tag/skip layers
    # (add_tag_layer, add_skip_layer), 2 for add_layer, 3 for the add_layer on the input.
    chain: list[int] = []
    while True:
        version = r.int()
        if version not in (1, 2, 3):
            raise DlibFormatError(f"unexpected layer version {version} at byte {r.tell()}")
        chain.append(version)
        if version == 3:
            break

    input_kind = r.string()
    if input_kind != "input_rgb_image_sized":
        raise DlibFormatError(f"unsupported input layer {input_kind!r}")
    mean = (r.float(), r.float(), r.float())
    size = (r.int(), r.int())
    records = [DlibLayer(input_kind, {"mean_rgb": mean, "size": size})]

    # Going back up: each add_layer's details and state, tag/skip layers contribute nothing.
    tags_below = 0
    for version in reversed(chain):
        if version == 1:
            tags_below += 1
            continue
        layer = _read_details(r)
        layer.attrs["tags_below"] = tags_below
        tags_below = 0
        _skip_add_layer_state(r, bottom=version == 3)
        records.append(layer)
    loss.attrs["tags_below"] = tags_below
    records.append(loss)

    if not r.at_end():
        raise DlibFormatError(f"trailing bytes after the network at byte {r.tell()}")
    return records


# ---------------------------------------------------------------------------------------------
# ONNX graph
# ---------------------------------------------------------------------------------------------


def _out_size(n: int, k: int, s: int, p: int) -> int:
    # dlib: 1 + (n + 2p - k) / s with integer division, for both convolution and pooling.
    return 1 + (n + 2 * p - k) // s


class _GraphBuilder:
    """Walks the layer records in forward order while emitting ONNX nodes."""

    def __init__(self, records: list[DlibLayer]) -> None:
        if not records or records[0].kind != "input_rgb_image_sized":
            raise DlibFormatError("records must start with the input layer")
        self.records = [r for r in records if r.computational]
        self.pos = 0
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.counter = 0
        self.input = records[0]

    def name(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}_{self.counter}"

    def const(self, prefix: str, array: np.ndarray) -> str:
        n = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), n))
        return n

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

    def node(self, op: str, inputs: list[str], **attrs: object) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

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

        # input_rgb_image_sized: (pixel - mean) / 256, RGB planes; the chips come as NHWC uint8.
        x = self.node("Cast", [INPUT_NAME], to=TensorProto.FLOAT)
        x = self.node("Transpose", [x], perm=[0, 3, 1, 2])
        x = self.node("Sub", [x, self.const("mean_rgb", mean)])
        x = self.node("Mul", [x, self.const("scale", np.array(1 / 256, dtype=np.float32))])
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
        self.nodes.append(helper.make_node("Identity", [x], [OUTPUT_NAME], name="output"))
        if self.pos != len(self.records):
            raise DlibFormatError(f"{len(self.records) - self.pos} layers left over")

        graph = helper.make_graph(
            self.nodes,
            MODEL_STEM,
            [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["N", rows, cols, 3])],
            [
                helper.make_tensor_value_info(
                    OUTPUT_NAME, TensorProto.FLOAT, ["N", fc.attrs["num_outputs"]]
                )
            ],
            self.inits,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="facelib.worker.engine.onnx_resnet",
            producer_version=str(GRAPH_REVISION),
            doc_string="dlib_face_recognition_resnet_model_v1 rebuilt from dlib's .dat file",
        )
        model.ir_version = IR_VERSION
        return model


def build_onnx_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Build the ONNX equivalent of the dlib face descriptor network in `path`.

    Input `chips`: (N, 150, 150, 3) uint8 RGB face chips as `dlib.get_face_chip` returns them.
    Output `descriptors`: (N, 128) float32, dlib's raw (unnormalised) descriptors.
    """
    model = _GraphBuilder(read_dlib_resnet(path)).build()
    onnx.checker.check_model(model)
    return model


# ---------------------------------------------------------------------------------------------
# Backend
# ---------------------------------------------------------------------------------------------


def default_model_path() -> str:
    import warnings

    with warnings.catch_warnings():
        # face_recognition_models imports pkg_resources, which warns on import.
        warnings.simplefilter("ignore")
        import face_recognition_models

    return face_recognition_models.face_recognition_model_location()


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _default_cache_dir() -> Path:
    env = os.environ.get("FACELIB_MODEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "facelib"


class OnnxBackend:
    """Face descriptors with ONNX Runtime, equal to dlib's to float32 rounding.

    One instance owns one InferenceSession; `embed` is safe to call from several threads.
    """

    name = "onnx"
    model = MODEL_STEM  # the same weights as dlib's backend, hence the same embedding space

    def __init__(
        self, threads: int = 1, model_path: str | None = None, cache_dir: str | None = None
    ) -> None:
        if threads < 1:
            raise ValueError("threads must be >= 1")
        self.threads = threads
        self.model_path = str(model_path or default_model_path())
        self.model_sha256 = _sha256(self.model_path)
        self.version = f"{MODEL_STEM}/onnx-{self.model_sha256[:12]}"
        self.cache_dir = Path(cache_dir) if cache_dir else _default_cache_dir()
        self.cache_path = self.cache_dir / (
            f"{MODEL_STEM}-{self.model_sha256}-r{GRAPH_REVISION}.onnx"
        )
        #: True when this instance loaded the graph from the disk cache rather than building it.
        self.loaded_from_cache = False

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._options = options
        self._session = self._open_session()

    def _open_session(self) -> ort.InferenceSession:
        providers = ["CPUExecutionProvider"]
        if self.cache_path.is_file():
            try:
                session = ort.InferenceSession(
                    str(self.cache_path), self._options, providers=providers
                )
                self.loaded_from_cache = True
                return session
            except Exception as exc:  # noqa: BLE001 - a damaged cache file is rebuilt, never fatal
                log.warning(
                    "rebuilding the ONNX model: cached %s unusable: %s", self.cache_path, exc
                )
        data = build_onnx_model(self.model_path).SerializeToString()
        self._write_cache(data)
        return ort.InferenceSession(data, self._options, providers=providers)

    def _write_cache(self, data: bytes) -> None:
        # Write-then-rename so that concurrent workers never see a half-written file. A cache
        # that cannot be written (read-only home, full disk) only costs a rebuild next start.
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=".tmp-", suffix=".onnx")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, self.cache_path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as exc:
            log.warning("could not cache the ONNX model in %s: %s", self.cache_dir, exc)

    def embed(self, chips: np.ndarray) -> np.ndarray:
        """Descriptors for (N, 150, 150, 3) uint8 RGB face chips, in one batched run.

        Returns (N, 128) float32, equal to dlib's `compute_face_descriptor(chip)` with
        num_jitters=0 to within float32 rounding.
        """
        chips = checked_chips(chips, CHIP_SIZE)
        if len(chips) == 0:
            return np.zeros((0, DESCRIPTOR_SIZE), dtype=np.float32)
        (out,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(chips)})
        return out
