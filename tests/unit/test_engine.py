"""The face engine on real photos (tests/fixtures/faces, copies of the team's samples)."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from shared.errors import E, FaceLibError
from tests.conftest import FACES, ROOT, face_bytes
from worker.engine import (
    Analysis,
    EngineConfig,
    FaceEngine,
    get_engine,
    make_backend,
)

ORIENTATION = 0x0112  # EXIF tag


@pytest.fixture(scope="module")
def engine() -> FaceEngine:
    return get_engine(EngineConfig())


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def raw(analysis: Analysis) -> np.ndarray:
    """The raw dlib descriptor, on which dlib's 0.6 threshold is defined."""
    face = analysis.faces[0]
    return face.embedding.astype(np.float64) * face.quality["descriptor_norm"]


def unit_distance(a: Analysis, b: Analysis) -> float:
    return float(np.linalg.norm(a.faces[0].embedding - b.faces[0].embedding))


def refused(engine: FaceEngine, data: bytes, purpose: str = "register") -> FaceLibError:
    with pytest.raises(FaceLibError) as info:
        engine.analyze(data, purpose)  # type: ignore[arg-type]
    return info.value


@pytest.fixture(scope="module")
def obama_1(engine: FaceEngine) -> Analysis:
    return engine.analyze(face_bytes("obama_1.jpg"), "register")


# -- identity ---------------------------------------------------------------------------------


def test_same_person_matches_and_different_people_do_not(
    engine: FaceEngine, obama_1: Analysis
) -> None:
    obama_2 = engine.analyze(face_bytes("obama_2.jpg"), "recognize")
    biden = engine.analyze(face_bytes("biden_1.jpg"), "recognize")
    assert np.linalg.norm(raw(obama_1) - raw(obama_2)) < 0.6
    assert np.linalg.norm(raw(obama_1) - raw(biden)) > 0.6
    assert np.linalg.norm(raw(obama_2) - raw(biden)) > 0.6
    # The same order holds for the unit embeddings the service stores and searches (cosine).
    assert unit_distance(obama_1, obama_2) < unit_distance(obama_1, biden)


def test_analysis_records_unit_embedding_model_backend_and_geometry(obama_1: Analysis) -> None:
    face = obama_1.faces[0]
    assert face.embedding.dtype == np.float32 and face.embedding.shape == (128,)
    assert abs(float(np.linalg.norm(face.embedding)) - 1.0) < 1e-5
    assert obama_1.model == "dlib_face_recognition_resnet_model_v1"
    assert obama_1.backend == "dlib"
    assert (obama_1.width, obama_1.height) == Image.open(FACES / "obama_1.jpg").size
    assert obama_1.face_count == 1 and obama_1.rotation == 0
    left, top, right, bottom = face.box
    assert 0 <= left < right <= obama_1.width and 0 <= top < bottom <= obama_1.height
    assert face.landmarks.shape == (5, 2)
    assert np.all((face.landmarks[:, 0] > left) & (face.landmarks[:, 0] < right))
    for key in ("size_px", "blur", "pose", "out_of_frame", "det_score", "descriptor_norm"):
        assert isinstance(face.quality[key], float)
    assert set(obama_1.timings) >= {"decode", "detect", "landmarks", "embed"}


def test_engine_is_cached_per_process_and_config(engine: FaceEngine) -> None:
    assert get_engine(EngineConfig()) is engine
    with pytest.raises(ValueError, match="unknown embedding backend"):
        make_backend("tensorflow")


def test_onnx_backend_gives_the_dlib_embedding(obama_1: Analysis) -> None:
    # ONNX is the service's default backend (FACELIB_EMBEDDING_BACKEND): if it cannot load,
    # this fails with the reason (BackendUnavailableError), it never skips.
    onnx_engine = get_engine(EngineConfig(backend="onnx"))
    seen = onnx_engine.analyze(face_bytes("obama_1.jpg"), "register")
    assert seen.backend == "onnx" and seen.model == obama_1.model
    assert unit_distance(seen, obama_1) < 1e-4


# -- several faces ----------------------------------------------------------------------------


def test_two_people_refused_for_registration_largest_used_for_recognition(
    engine: FaceEngine,
) -> None:
    data = face_bytes("two_people_obama_biden.jpg")
    assert refused(engine, data).err is E.MULTIPLE_FACES
    seen = engine.analyze(data, "recognize")
    assert seen.face_count == 2 and len(seen.faces) == 1
    left, top, right, bottom = seen.faces[0].box
    assert left > seen.width / 2  # the larger face is the one on the right of this photo


def test_dominant_face_with_a_small_background_face_registers(
    engine: FaceEngine, obama_1: Analysis
) -> None:
    canvas = Image.open(FACES / "obama_1.jpg").convert("RGB")
    # A second person with a face about 0.57x the width (0.33x the area) of the main one.
    other = Image.open(FACES / "biden_2.jpg").convert("RGB")
    other = other.resize((380, 380), Image.Resampling.LANCZOS)
    canvas.paste(other, (0, canvas.height - 380))
    seen = engine.analyze(encode(canvas, "JPEG", quality=95), "register")
    assert seen.face_count == 2
    assert unit_distance(seen, obama_1) < 0.1


# -- formats and orientation ------------------------------------------------------------------


def test_rgba_png_works(engine: FaceEngine) -> None:
    seen = engine.analyze(face_bytes("rgba_32bit.png"), "register")
    same_photo_as_jpeg = engine.analyze(face_bytes("obama_2.jpg"), "register")
    assert unit_distance(seen, same_photo_as_jpeg) < 0.1


@pytest.fixture(scope="module")
def upright_jpeg() -> bytes:
    return encode(Image.open(FACES / "obama_small.jpg").convert("RGB"), "JPEG", quality=95)


def test_exif_rotated_copy_gives_nearly_the_same_embedding(
    engine: FaceEngine, upright_jpeg: bytes
) -> None:
    upright = Image.open(io.BytesIO(upright_jpeg))
    # Stored turned a quarter counter-clockwise, tagged "rotate 90 CW to display" (6).
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    tagged = engine.analyze(encode(stored, "JPEG", quality=95, exif=exif), "register")
    reference = engine.analyze(upright_jpeg, "register")
    assert (tagged.width, tagged.height) == upright.size
    assert tagged.rotation == 0
    assert unit_distance(tagged, reference) < 0.1


def test_rotated_copy_without_exif_is_found_by_the_rotation_retry(
    engine: FaceEngine, upright_jpeg: bytes
) -> None:
    untagged = Image.open(io.BytesIO(upright_jpeg)).transpose(Image.Transpose.ROTATE_270)
    data = encode(untagged, "JPEG", quality=95)
    seen = engine.analyze(data, "register")
    assert seen.rotation == 90  # the engine turned it back a quarter counter-clockwise
    assert unit_distance(seen, engine.analyze(upright_jpeg, "register")) < 0.1
    # Without the retry, HOG (upright faces only) sees no face.
    no_retry = FaceEngine(EngineConfig(try_rotations=False))
    assert refused(no_retry, data).err is E.NO_FACE


@pytest.mark.parametrize("fmt", ["grayscale JPEG", "16-bit PNG", "BMP", "WebP"])
def test_other_formats_decode(engine: FaceEngine, fmt: str) -> None:
    rgb = Image.open(FACES / "obama_small.jpg").convert("RGB")
    gray = rgb.convert("L")
    if fmt == "grayscale JPEG":
        data = encode(gray, "JPEG", quality=95)
    elif fmt == "16-bit PNG":
        wide = (np.asarray(gray).astype(np.uint16) * 257).astype(np.uint16)
        data = encode(Image.fromarray(wide), "PNG")
        assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    elif fmt == "BMP":
        data = encode(rgb, "BMP")
    else:
        data = encode(rgb, "WEBP", quality=95)
    seen = engine.analyze(data, "register")
    lossless = gray if fmt in ("grayscale JPEG", "16-bit PNG") else rgb
    reference = engine.analyze(encode(lossless, "PNG"), "register")
    # 16-bit samples are scaled to 8 bits, not clipped (clipping would give a white image).
    assert unit_distance(seen, reference) < 0.1


def test_large_jpeg_decodes_reduced_without_losing_the_face(engine: FaceEngine) -> None:
    big = Image.open(FACES / "obama_1.jpg").convert("RGB")
    big = big.resize((big.width * 3, big.height * 3), Image.Resampling.BICUBIC)  # 2730x3411
    seen = engine.analyze(encode(big, "JPEG", quality=90), "register")
    assert (seen.width, seen.height) == big.size
    assert seen.faces[0].quality["chip_source_px"] >= 150
    assert seen.faces[0].quality["size_px"] > 3 * 250


def test_small_face_in_a_large_jpeg_is_found_and_decoded_at_full_resolution(
    engine: FaceEngine,
) -> None:
    # A 4000x3000 photo with a ~250 px face: too small for the first detection pass (40 px at
    # 640), found by the second; the 1/2-scale draft decode would upsample its chip, so the
    # engine decodes the full resolution again.
    scene = Image.open(FACES / "obama_1080p.jpg").convert("RGB")
    scene = scene.resize((1536, 864), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (4000, 3000), (90, 100, 110))
    canvas.paste(scene, (1200, 1000))
    seen = engine.analyze(encode(canvas, "JPEG", quality=92), "register")
    face = seen.faces[0]
    assert face.quality["upsampled"] == 1.0
    assert 200 < face.quality["size_px"] < 300
    assert face.quality["chip_source_px"] >= 150
    left, top, _, _ = face.box
    assert 1200 < left < 2736 and 1000 < top < 1864
    direct = engine.analyze(encode(scene, "PNG"), "register")
    assert unit_distance(seen, direct) < 0.1


# -- refusals ---------------------------------------------------------------------------------


def test_faces_cut_by_the_border_are_out_of_frame(engine: FaceEngine) -> None:
    for name in ("obama_partial_face.jpg", "obama_partial_face2.jpg"):
        for purpose in ("register", "recognize"):
            assert refused(engine, face_bytes(name), purpose).err is E.FACE_OUT_OF_FRAME


def test_small_face_is_too_small(engine: FaceEngine) -> None:
    for purpose in ("register", "recognize"):
        assert refused(engine, face_bytes("obama_240p.jpg"), purpose).err is E.FACE_TOO_SMALL


def test_blurred_face_refused_for_registration_only(engine: FaceEngine) -> None:
    im = Image.open(FACES / "obama_1.jpg").convert("RGB")
    data = encode(im.filter(ImageFilter.GaussianBlur(7)), "JPEG", quality=95)
    err = refused(engine, data)
    assert err.err is E.FACE_BLURRY
    assert engine.analyze(data, "recognize").faces[0].quality["blur"] > engine.config.max_blur


def test_no_face(engine: FaceEngine) -> None:
    flat = Image.new("RGB", (400, 300), (120, 130, 140))
    assert refused(engine, encode(flat, "PNG")).err is E.NO_FACE
    assert refused(engine, encode(flat, "PNG"), "recognize").err is E.NO_FACE


def png_bomb(width: int, height: int) -> bytes:
    """A 1-bit PNG of width x height black pixels: a few KB that decode to width*height bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


BAD_INPUTS = {
    "truncated JPEG": (lambda: face_bytes("obama_1.jpg")[:40_000], E.IMAGE_UNDECODABLE),
    "text file": (lambda: b"name,idNum\nnot,an image\n" * 20, E.IMAGE_UNDECODABLE),
    "100-megapixel PNG bomb": (lambda: png_bomb(10_000, 10_000), E.IMAGE_TOO_MANY_PIXELS),
    "empty": (lambda: b"", E.IMAGE_UNDECODABLE),
    "tiny image": (lambda: encode(Image.new("RGB", (40, 40)), "PNG"), E.IMAGE_TOO_SMALL),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_images_fail_fast_with_their_errcode(engine: FaceEngine, case: str) -> None:
    make, expected = BAD_INPUTS[case]
    data = make()
    t = time.perf_counter()
    err = refused(engine, data)
    assert time.perf_counter() - t < 1.0
    assert err.err is expected


_MEMORY_PROBE = """
import json, resource, sys
from pathlib import Path
from shared.errors import FaceLibError
from worker.engine.decode import decode_image
out = {}
for path in sys.argv[1:]:
    data = Path(path).read_bytes()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        decode_image(data, max_pixels=25_000_000, min_side=80)
        code = 0
    except FaceLibError as exc:
        code = exc.errcode
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    out[Path(path).name] = [code, grown]
print(json.dumps(out))
"""


def test_bad_images_are_refused_with_bounded_memory(tmp_path: Path) -> None:
    # Peak RSS is a high-water mark, so measure in a fresh process that has decoded nothing.
    paths = []
    for case in ("truncated JPEG", "text file", "100-megapixel PNG bomb"):
        path = tmp_path / case.replace(" ", "_")
        path.write_bytes(BAD_INPUTS[case][0]())
        paths.append(str(path))
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, *paths],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    results = json.loads(done.stdout)
    assert results["100-megapixel_PNG_bomb"][0] == E.IMAGE_TOO_MANY_PIXELS.code
    for name, (code, grown_kib) in results.items():
        assert code != 0, name
        assert grown_kib < 20 * 1024, f"{name}: peak RSS grew {grown_kib} KiB"
