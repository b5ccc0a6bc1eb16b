"""dlib's face descriptor ResNet, rebuilt as an ONNX graph and run on ONNX Runtime.

- `parser.py`: reads dlib's `dlib_face_recognition_resnet_model_v1.dat` (dlib's `serialize.h`
  format) into layer records, with no dlib code;
- `graph.py`: builds the same network with `onnx.helper` (and `GraphEmitter`, which the TFLite
  converter shares);
- `backend.py`: `OnnxBackend`, the graph cached on disk and run on ONNX Runtime.

The descriptors equal dlib's to float32 rounding; docs/onnx-backend.md has the format notes and
the measurements. Import the submodules: this package imports nothing itself, so the TFLite
converter can use `graph` without loading ONNX Runtime.
"""
