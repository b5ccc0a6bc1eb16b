"""How the TFLite->ONNX conversion's PReLU form changes MobileFaceNet's speed, against dlib's ONNX.

Converts the installed model's verified source file four ways (TF's five-op PReLU kept as
exported; fused into ONNX PRelu; fused into two per-channel-scale forms, the second of which
the installer uses),
checks each against the installed graph's output, and times one face on one thread,
interleaved with dlib's ResNet on ONNX Runtime in the same process.

    uv run python scripts/bench_tflite_onnx.py [--repeats 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shared.models import MOBILEFACENET, installed  # noqa: E402
from worker.engine.onnx.backend import OnnxBackend  # noqa: E402
from worker.engine.tflite_onnx import convert_tflite, operator_counts  # noqa: E402
from worker.model_install import CHECK_FILE  # noqa: E402


def session(model_bytes: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    found = installed("mobilefacenet")
    if found is None:
        sys.exit("install it first: facelib models install mobilefacenet --accept-license")
    data = found.source_path.read_bytes()
    with np.load(CHECK_FILE) as z:
        crop = z["crops"][:1]
    ref = session(found.onnx_path.read_bytes()).run(None, {"chips": crop})[0]
    s = MOBILEFACENET
    variants = {
        "five-op PReLU as exported": dict(fuse_prelu=False),
        "fused into ONNX PRelu": dict(prelu_form="prelu"),
        "fused, a z + (1 - a) relu(z) as scales": dict(prelu_form="scales"),
        "fused, z + (1 - a) relu(-z) as scales (installed)": dict(prelu_form="relu_neg"),
    }
    runs = {}
    for label, kw in variants.items():
        model = convert_tflite(data, mean=s.input_mean, std=s.input_std, **kw)
        sess = session(model.SerializeToString())
        out = sess.run(None, {"chips": crop})[0]
        cos = float((out @ ref.T)[0, 0] / np.linalg.norm(out) / np.linalg.norm(ref))
        runs[label] = (sess, cos, len(model.graph.node), operator_counts(model))
    dlib = OnnxBackend(threads=1)
    chip150 = np.zeros((1, 150, 150, 3), np.uint8)
    chip150[:, 19:131, 19:131] = crop  # a real face's pixels in a dlib-sized chip
    dlib.embed(chip150)
    times: dict[str, list[float]] = {k: [] for k in [*runs, "dlib ResNet on ONNX Runtime"]}
    for _ in range(args.repeats):
        for label, (sess, *_rest) in runs.items():
            t = time.perf_counter()
            sess.run(None, {"chips": crop})
            times[label].append(time.perf_counter() - t)
        t = time.perf_counter()
        dlib.embed(chip150)
        times["dlib ResNet on ONNX Runtime"].append(time.perf_counter() - t)
    base = statistics.median(times["dlib ResNet on ONNX Runtime"])
    print(f"one face, 1 thread, median (min) of {args.repeats}, interleaved\n")
    print("| graph | nodes | cosine vs installed | ms | vs dlib ONNX |")
    print("|---|---:|---:|---:|---:|")
    for label, ts in times.items():
        med, low = statistics.median(ts) * 1e3, min(ts) * 1e3
        nodes = f"{runs[label][2]}" if label in runs else ""
        cos = f"{runs[label][1]:.7f}" if label in runs else ""
        print(f"| {label} | {nodes} | {cos} | {med:.2f} ({low:.2f}) | {med / base / 1e3:.2f}x |")


if __name__ == "__main__":
    main()
