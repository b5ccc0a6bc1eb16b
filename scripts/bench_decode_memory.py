"""Peak memory of decoding one image, per pixel, by format and mode: the figures behind
shared/imaging.py's bytes-per-pixel table (FACELIB_MAX_DECODE_BYTES).

Each case runs in a fresh process: it builds a flat W x W image (it compresses to a few KB, as
an attacker's would), then decodes it once through the engine's decoder
(worker/engine/decode.py) or the upload re-encoder (shared/files/uploads.py) with the budget off,
and reports the growth of the process's peak RSS (VmHWM) over pixels, next to the estimate
the budget uses. Then it shows what the default budget does with the audit's image: a 16-bit
greyscale PNG of 4990 x 4990.

    uv run python scripts/bench_decode_memory.py            # 3000 x 3000, ~1 min
    uv run python scripts/bench_decode_memory.py --side 4990
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CASES = [
    ("PNG", "I;16"),
    ("PNG", "L"),
    ("PNG", "RGB"),
    ("PNG", "RGBA"),
    ("PNG", "LA"),
    ("PNG", "P"),
    ("BMP", "RGB"),
    ("WEBP", "RGB"),
    ("WEBP", "RGBA"),
    ("JPEG", "RGB"),
    ("JPEG", "L"),
    ("JPEG", "CMYK"),
]

# VmHWM, the peak RSS of this process image: ru_maxrss would carry the parent's over the exec
_ONE = """
import json, sys
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
sys.path.insert(0, sys.argv[3])
from shared.imaging import decode_cost, open_checked
from worker.engine.decode import decode_image
from shared.files.uploads import prepare_upload
data = open(sys.argv[1], "rb").read()
with open_checked(data, max_pixels=10**12, min_side=1) as header:
    estimate = decode_cost(header)
before = peak()
if sys.argv[2] == "engine":
    # draft_long_side None: a JPEG decodes at full size, the costliest case
    decode_image(data, max_pixels=10**12, max_decode_bytes=10**12)
else:
    prepare_upload(data, max_bytes=10**12, max_pixels=10**12, max_side=10**6, quality=90,
                   max_decode_bytes=10**12)
print(json.dumps({"bytes": len(data), "peak": peak() - before, "estimate": estimate}))
"""


def flat_image(fmt: str, mode: str, side: int) -> bytes:
    """A flat image: a few KB compressed, full size decoded (made here, decoded elsewhere, so
    that making it does not raise the decoding process's peak)."""
    import io

    import numpy as np
    from PIL import Image

    if mode == "I;16":
        im = Image.frombytes(mode, (side, side), np.full((side, side), 40000, np.uint16).tobytes())
    else:
        im = Image.new(mode, (side, side), 90)
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def measure(path: Path, pipeline: str) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", _ONE, str(path), pipeline, str(ROOT)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=3000)
    args = parser.parse_args()
    px = args.side * args.side
    print(f"{args.side} x {args.side} images; peak RSS growth of one decode, bytes per pixel")
    print(f"{'format':6} {'mode':5} {'file':>9} {'engine':>7} {'upload':>7} {'estimate':>9}")
    worst = 0.0
    for fmt, mode in CASES:
        with tempfile.NamedTemporaryFile() as f:
            f.write(flat_image(fmt, mode, args.side))
            f.flush()
            engine = measure(Path(f.name), "engine")
            upload = measure(Path(f.name), "upload")
        est = engine["estimate"] / px
        worst = max(worst, engine["peak"] / engine["estimate"], upload["peak"] / upload["estimate"])
        print(
            f"{fmt:6} {mode:5} {engine['bytes']:>9} {engine['peak'] / px:7.1f}"
            f" {upload['peak'] / px:7.1f} {est:9.0f}"
        )
    print(f"largest measured / estimated: {worst:.2f}")

    sys.path.insert(0, str(ROOT))
    from shared.errors import FaceLibError
    from shared.imaging import DEFAULT_MAX_DECODE_BYTES
    from worker.engine.decode import decode_image

    data = flat_image("PNG", "I;16", 4990)
    try:
        decode_image(data, max_pixels=25_000_000)
        print("16-bit 4990 x 4990 PNG: decoded (budget too high?)")
    except FaceLibError as err:
        print(f"16-bit PNG of 4990 x 4990, {len(data)} bytes, default budget "
              f"{DEFAULT_MAX_DECODE_BYTES // 2**20} MB: errcode {err.errcode}: {err.errmsg}")  # fmt: skip


if __name__ == "__main__":
    main()
