"""Reading dlib's face descriptor network from its model file, with no dlib code.

dlib's `dlib_face_recognition_resnet_model_v1.dat` is a serialised `anet_type` from dlib's
`examples/dnn_face_recognition_ex.cpp`, written by dlib's `serialize.h`. `read_dlib_resnet`
turns it into layer records (kind, settings, float32 weights) in forward order; `graph.py`
builds the ONNX graph from them. The file format is described in docs/onnx-backend.md.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

__all__ = ["DlibFormatError", "DlibLayer", "read_dlib_resnet"]


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
    in the records; `graph.build_onnx_model` supplies it. The positions of the tag/skip layers
    in the chain are recorded in each record's `attrs["tags_below"]` (how many tag/skip layers
    sit directly below it) so the wiring can be checked against the file.
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
