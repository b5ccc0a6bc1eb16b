"""The ONNX Runtime descriptor backend against dlib itself, on real photos.

Chips are made exactly as the engine makes them (dlib HOG detector, 5-point landmarks,
`dlib.get_face_chip(size=150, padding=0.25)`); the reference descriptors come from dlib's own
`compute_face_descriptor`. The LFW part needs the team kit beside the repository
(`../shared/faces/lfw`) and is skipped without it.
"""

from __future__ import annotations

import collections
from pathlib import Path

import dlib
import numpy as np
import pytest
from PIL import Image

from shared.settings import load_settings
from tests.conftest import FACES, LFW
from worker.engine import EngineConfig, FaceEngine
from worker.engine.models import (
    RESNET_MODEL_NAME,
    face_recognition_model_path,
    shape_predictor_5_path,
)
from worker.engine.onnx.backend import OnnxBackend
from worker.engine.onnx.graph import build_onnx_model
from worker.engine.onnx.parser import read_dlib_resnet

LFW_IMAGES = LFW / "images"
LFW_PHOTOS = 200

# dlib and the ONNX graph sum in different orders; float32 rounding leaves ~1e-6.
MAX_L2 = 1e-5


@pytest.fixture(scope="module")
def dlib_models():
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(shape_predictor_5_path())
    facerec = dlib.face_recognition_model_v1(face_recognition_model_path())
    return detector, predictor, facerec


def chips_from(paths: list[Path], detector, predictor) -> np.ndarray:
    chips = []
    for path in paths:
        img = np.asarray(Image.open(path).convert("RGB"))
        # Upsample only when the plain pass finds nothing (small faces): same faces, less time.
        for box in detector(img, 0) or detector(img, 1):
            chips.append(dlib.get_face_chip(img, predictor(img, box), size=150, padding=0.25))
    return np.stack(chips)


@pytest.fixture(scope="module")
def sample_chips(dlib_models) -> np.ndarray:
    paths = sorted(p for p in FACES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    chips = chips_from(paths, *dlib_models[:2])
    assert len(chips) >= len(paths)  # every sample photo holds at least one face
    return chips


@pytest.fixture(scope="module")
def backend(tmp_path_factory) -> OnnxBackend:
    return OnnxBackend(threads=1, cache_dir=str(tmp_path_factory.mktemp("model-cache")))


def dlib_descriptors(facerec, chips: np.ndarray) -> np.ndarray:
    return np.array(facerec.compute_face_descriptor(list(chips)), dtype=np.float64)


def max_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b.astype(np.float64), axis=1).max())


# --- the reader ------------------------------------------------------------------------------


def test_reader_finds_every_layer_of_the_resnet():
    records = read_dlib_resnet(face_recognition_model_path())

    assert records[0].kind == "input_rgb_image_sized"
    assert records[0].attrs["size"] == (150, 150)
    np.testing.assert_allclose(records[0].attrs["mean_rgb"], (122.782, 117.001, 104.298), atol=1e-4)
    assert records[-1].kind == "loss_metric_2"

    layers = [r for r in records if r.computational]
    assert len(layers) == 108
    assert collections.Counter(r.kind for r in layers) == {
        "con_4": 29,
        "affine_": 29,
        "relu_": 29,
        "add_prev_": 14,
        "avg_pool_2": 5,
        "max_pool_2": 1,
        "fc_2": 1,
    }
    assert sum(r.num_params for r in records) == 5_614_592

    first_conv = layers[0]
    assert first_conv.arrays["weight"].shape == (32, 3, 7, 7)
    assert first_conv.attrs["stride"] == (2, 2) and first_conv.attrs["padding"] == (0, 0)
    fc = layers[-1]
    assert fc.arrays["weight"].shape == (256, 128) and "bias" not in fc.arrays
    assert all(r.attrs["mode"] == "conv" for r in layers if r.kind == "affine_")
    assert all(a.dtype == np.float32 for r in records for a in r.arrays.values())


def test_graph_has_the_declared_interface():
    model = build_onnx_model(face_recognition_model_path())
    (inp,) = model.graph.input
    (out,) = model.graph.output
    assert inp.name == "chips"
    assert [d.dim_value or d.dim_param for d in inp.type.tensor_type.shape.dim] == [
        "N",
        150,
        150,
        3,
    ]
    assert out.name == "descriptors"
    assert [d.dim_value or d.dim_param for d in out.type.tensor_type.shape.dim] == ["N", 128]
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops["Conv"] == 29
    # Zero-extension where a residual join's inputs differ: channels in three downsampling
    # joins (32->64, 64->128, 128->256), height/width in the two whose strided conv rounds down
    # below the pooled side (3x3 vs 4x4, 1x1 vs 2x2); the 128->256 join pads both inputs.
    assert ops["Pad"] == 5


# --- equality with dlib ----------------------------------------------------------------------


def test_matches_dlib_on_the_sample_photos(dlib_models, sample_chips, backend):
    reference = dlib_descriptors(dlib_models[2], sample_chips)
    out = backend.embed(sample_chips)

    assert out.shape == (len(sample_chips), 128) and out.dtype == np.float32
    assert max_l2(out, reference) < MAX_L2


@pytest.mark.lfw
def test_matches_dlib_on_lfw_photos(dlib_models, backend):
    if not LFW_IMAGES.is_dir():
        pytest.skip(
            f"LFW not found at {LFW_IMAGES} (the team kit ../shared is not beside the repo)"
        )
    photos = sorted(LFW_IMAGES.glob("*/*.jpg"))
    photos = photos[:: max(1, len(photos) // LFW_PHOTOS)][:LFW_PHOTOS]
    chips = chips_from(photos, *dlib_models[:2])
    assert len(chips) >= 0.9 * len(photos)

    reference = dlib_descriptors(dlib_models[2], chips)
    assert max_l2(backend.embed(chips), reference) < MAX_L2


def test_batch_rows_do_not_depend_on_the_batch(sample_chips, backend):
    whole = backend.embed(sample_chips)
    singles = np.concatenate([backend.embed(c[None]) for c in sample_chips[:5]])
    assert max_l2(singles, whole[:5]) < MAX_L2


def test_two_threads_give_the_same_descriptors(sample_chips, backend):
    two = OnnxBackend(threads=2, cache_dir=str(backend.cache_dir))
    assert max_l2(two.embed(sample_chips), backend.embed(sample_chips)) < MAX_L2


# --- cache and API ---------------------------------------------------------------------------


def test_second_start_loads_the_cached_model(tmp_path, sample_chips):
    first = OnnxBackend(cache_dir=str(tmp_path))
    assert not first.loaded_from_cache
    assert first.cache_path.is_file() and first.model_sha256 in first.cache_path.name

    second = OnnxBackend(cache_dir=str(tmp_path))
    assert second.loaded_from_cache
    np.testing.assert_array_equal(second.embed(sample_chips), first.embed(sample_chips))

    assert first.name == "onnx"
    assert first.version == f"{RESNET_MODEL_NAME}/onnx-{first.model_sha256[:12]}"


def test_cache_dir_comes_from_the_settings(tmp_path, env):
    assert load_settings().model_cache_dir is None  # the backend's default, ~/.cache/facelib
    env.setenv("FACELIB_MODEL_CACHE", str(tmp_path / "env-cache"))
    s = load_settings()
    # as the worker builds its engine: the setting passed in, the engine reads no environment
    engine = FaceEngine(EngineConfig(backend="onnx", model_cache_dir=s.model_cache_dir))
    assert engine.backend.cache_path.parent == tmp_path / "env-cache"
    assert engine.backend.cache_path.is_file()


def test_damaged_cache_file_is_rebuilt(tmp_path, sample_chips):
    good = OnnxBackend(cache_dir=str(tmp_path))
    good.cache_path.write_bytes(b"not an onnx model")

    rebuilt = OnnxBackend(cache_dir=str(tmp_path))
    assert not rebuilt.loaded_from_cache
    np.testing.assert_array_equal(rebuilt.embed(sample_chips[:2]), good.embed(sample_chips[:2]))
    assert OnnxBackend(cache_dir=str(tmp_path)).loaded_from_cache


def test_embed_checks_its_input(backend, sample_chips):
    assert backend.embed(np.zeros((0, 150, 150, 3), np.uint8)).shape == (0, 128)
    with pytest.raises(ValueError, match="batch"):
        backend.embed(sample_chips[0])
    with pytest.raises(ValueError, match="150"):
        backend.embed(np.zeros((1, 160, 160, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        backend.embed(sample_chips[:1].astype(np.float32))
