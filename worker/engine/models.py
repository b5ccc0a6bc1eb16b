"""Where dlib's model files are: the ones the `face_recognition_models` package ships."""

from __future__ import annotations

import warnings
from types import ModuleType

# The name of dlib's ResNet face descriptor model, whichever backend runs it.
RESNET_MODEL_NAME = "dlib_face_recognition_resnet_model_v1"


def _models() -> ModuleType:
    with warnings.catch_warnings():
        # face_recognition_models imports pkg_resources, deprecated but present (setuptools<81).
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        import face_recognition_models

    return face_recognition_models


def shape_predictor_5_path() -> str:
    """dlib's 5-point landmark model (eye corners and nose base), the one face chips align on."""
    return _models().pose_predictor_five_point_model_location()


def face_recognition_model_path() -> str:
    """dlib's ResNet face descriptor model, `dlib_face_recognition_resnet_model_v1`."""
    return _models().face_recognition_model_location()


def shape_predictor_68_path() -> str:
    """dlib's 68-point landmark model (eyes, brows, nose, mouth, jaw): MobileFaceNet's alignment."""
    return _models().pose_predictor_model_location()
