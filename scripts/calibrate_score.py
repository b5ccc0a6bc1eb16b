"""Calibrate the 0-100 score on LFW with this project's engine, for one embedding model.

Embeds every LFW image through the production path (`FaceEngine.analyze(bytes, "recognize")`),
caches the embeddings, measures the cosine distance of every different-person pair (impostors,
about 40 million, blockwise in float32) and of every same-person pair (genuine), and writes the
monotone distance -> score table that `shared/score.py` reads:

    score = 40 - 10 * log10(FAR)   (70 <=> FAR 1e-3, 80 <=> 1e-4, 90 <=> 1e-5, 100 <=> 1e-6)

    uv run python scripts/calibrate_score.py [--lfw ../shared/faces/lfw]
        [--cache var/lfw-embeddings.npz] [--backend onnx|dlib] [--out shared/calibration.json]
        [--model dlib|mobilefacenet] [--fit-folds 1-4] [--check-folds 5-7]

`--model mobilefacenet` (installed with `facelib models install mobilefacenet
--accept-license`) calibrates that model's table, shared/calibration-mobilefacenet.json, fitted
on the people of folds 1-4 and checked on the disjoint people of folds 5-7: the script prints
how far the measured FAR at scores 70, 80 and 90 lands from the promise on the held-out folds.
dlib's shipped table is fitted on folds 1-7 (the default for `--model dlib`, so that a re-run
reproduces it); `--fit-folds 1-4` gives dlib the same held-out check.

The first run embeds 9,021 images (a few minutes on 2 cores with the ONNX backend); later runs
read the cache. With --model mobilefacenet one pass embeds every image with dlib's model and
with MobileFaceNet aligned on both landmark sets (68 and 5 points), all into the same cache.
docs/score-calibration.md and docs/models.md have the method and the measured tables.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing as mp
import os
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODEL = "dlib_face_recognition_resnet_model_v1"
MIN_SUPPORT = 20  # impostor pairs at or below a knot's distance for it to be read empirically
SCORES = list(range(40, 101))  # knots for every score 40..100 (FAR 1 .. 1e-6)
TABLE_SCORES = (60, 70, 80, 90, 100)
CLOSEST = 8  # nearest impostor pairs listed (duplicates and label noise show here)
BLOCK = 1024  # rows per block of the all-pairs distance matrix (1024 x 9021 float32 = 37 MB)


# -- embedding ----------------------------------------------------------------------------------

_engine = None
_mfn5 = None  # MobileFaceNet aligned on dlib's 5 points, beside the engine's 68-point one
EXTRA_KEY = "extra__{model}__{landmarks}"  # cache key of an optional model's embeddings


def _init_worker(backend: str, extras: bool) -> None:
    global _engine, _mfn5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # face_recognition_models imports pkg_resources
        from worker.engine import EngineConfig, get_engine
        from worker.engine.backends import make_extra_model

        config = EngineConfig(
            backend=backend,
            backend_threads=1,
            extra_models=("mobilefacenet",) if extras else (),
            mobilefacenet_landmarks="68",
        )
        _engine = get_engine(config)
        _mfn5 = make_extra_model("mobilefacenet", landmarks="5") if extras else None


def _embed_one(path: str) -> tuple[np.ndarray | None, float, int, str, dict]:
    """(embedding, descriptor norm, 0, "", extras) or (None, 0, errcode, errmsg, {}) for one
    image file; extras: the optional models' embeddings by cache key."""
    from shared.errors import FaceLibError
    from worker.engine.decode import decode_image

    data = Path(path).read_bytes()
    try:
        analysis = _engine.analyze(data, "recognize")
    except FaceLibError as exc:
        return None, 0.0, exc.errcode, exc.errmsg, {}
    face = analysis.faces[0]
    extras = {}
    if "mobilefacenet" in face.embeddings:
        extras[EXTRA_KEY.format(model="mobilefacenet", landmarks="68")] = face.embeddings[
            "mobilefacenet"
        ]
        # The engine's 5 landmarks are in full-resolution coordinates: align on a full decode.
        rgb = decode_image(data, max_pixels=50_000_000).rgb
        raw = _mfn5.embed(_mfn5.chip(rgb, face.landmarks)[np.newaxis])[0]
        extras[EXTRA_KEY.format(model="mobilefacenet", landmarks="5")] = raw / np.linalg.norm(raw)
    return face.embedding.astype(np.float32), face.quality["descriptor_norm"], 0, "", extras


def lfw_images(lfw: Path) -> list[tuple[str, int, Path]]:
    """(person, image number, path) of every LFW image listed by people.csv, in a fixed order."""
    out = []
    with (lfw / "people.csv").open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            name = row["name"]
            for k in range(1, int(row["images"]) + 1):
                out.append((name, k, lfw / "images" / name / f"{name}_{k:04d}.jpg"))
    return sorted(out, key=lambda t: (t[0], t[1]))


def embed_lfw(lfw: Path, backend: str, workers: int, extras: bool = False) -> dict[str, np.ndarray]:
    images = lfw_images(lfw)
    t0 = time.perf_counter()
    ctx = mp.get_context("fork")
    results = []
    with ctx.Pool(workers, initializer=_init_worker, initargs=(backend, extras)) as pool:
        paths = [str(p) for _, _, p in images]
        for i, res in enumerate(pool.imap(_embed_one, paths, chunksize=16), 1):
            results.append(res)
            if i % 500 == 0 or i == len(paths):
                rate = i / (time.perf_counter() - t0)
                print(f"  embedded {i}/{len(paths)} ({rate:.1f} img/s)", file=sys.stderr)
    ok = [i for i, r in enumerate(results) if r[0] is not None]
    bad = [i for i, r in enumerate(results) if r[0] is None]
    extra_keys = sorted(results[ok[0]][4]) if ok else []
    return {
        **{k: np.stack([results[i][4][k] for i in ok]).astype(np.float32) for k in extra_keys},
        "names": np.array([images[i][0] for i in ok]),
        "image_ids": np.array([images[i][1] for i in ok], dtype=np.int32),
        "embeddings": np.stack([results[i][0] for i in ok]).astype(np.float32),
        # length of the raw descriptor before the engine's normalisation: raw = unit * norm
        "descriptor_norms": np.array([results[i][1] for i in ok], dtype=np.float32),
        "refused_names": np.array([images[i][0] for i in bad], dtype=str),
        "refused_image_ids": np.array([images[i][1] for i in bad], dtype=np.int32),
        "refused_errcodes": np.array([results[i][2] for i in bad], dtype=np.int32),
        "refused_errmsgs": np.array([results[i][3] for i in bad], dtype=str),
        "backend": np.array(backend),
        "embed_seconds": np.array(time.perf_counter() - t0),
    }


def load_embeddings(
    lfw: Path,
    cache: Path,
    backend: str = "onnx",
    workers: int = 2,
    model: str = "dlib",
    landmarks: str | None = None,
) -> dict[str, np.ndarray]:
    """The cached LFW embeddings for `backend`, embedding (and caching) them when absent.

    With `model` other than dlib, "embeddings" holds that model's (aligned on `landmarks`, by
    default the one the model uses in the engine) and "dlib_embeddings" dlib's, same images."""
    key = None
    if model != "dlib":
        from worker.engine.mobilefacenet import DEFAULT_LANDMARKS

        key = EXTRA_KEY.format(model=model, landmarks=landmarks or DEFAULT_LANDMARKS)
    data = None
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        if str(data["backend"]) != backend or "descriptor_norms" not in data:
            print(f"cache {cache} is for another backend or version, re-embedding", file=sys.stderr)
            data = None
        elif key is not None and key not in data:
            print(f"cache {cache} has no {model} embeddings, re-embedding", file=sys.stderr)
            data = None
    if data is None:
        print(
            f"embedding LFW from {lfw} with backend {backend}"
            + (f" and {model}" if key else "")
            + f" ({workers} processes)",
            file=sys.stderr,
        )
        data = embed_lfw(lfw, backend, workers, extras=key is not None)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(cache, **data)
    if key is not None:
        data = dict(data)
        data["dlib_embeddings"] = data["embeddings"]
        data["embeddings"] = data[key]
    return data


def people_folds(lfw: Path) -> dict[str, int]:
    with (lfw / "people.csv").open(newline="", encoding="utf-8") as fh:
        return {row["name"]: int(row["fold"]) for row in csv.DictReader(fh)}


# -- pair distances -----------------------------------------------------------------------------


def all_pair_distances(emb: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine distances of every unordered pair (i < j): (impostor, genuine), float32, unsorted.

    Blockwise: one BLOCK x N slab of the distance matrix at a time, so the peak is the output
    (4 bytes a pair, ~160 MB for 40 M pairs) plus a few slabs.
    """
    n = len(emb)
    labels = np.asarray(labels)
    same_total = int(sum(c * (c - 1) // 2 for c in Counter(labels.tolist()).values()))
    impostor = np.empty(n * (n - 1) // 2 - same_total, dtype=np.float32)
    genuine = np.empty(same_total, dtype=np.float32)
    ni = ng = 0
    for start in range(0, n, BLOCK):
        stop = min(n, start + BLOCK)
        dist = 1.0 - emb[start:stop] @ emb.T  # (b, n) float32
        rows = np.arange(start, stop)[:, None]
        upper = np.arange(n)[None, :] > rows
        same = labels[start:stop, None] == labels[None, :]
        imp = dist[upper & ~same]
        gen = dist[upper & same]
        impostor[ni : ni + imp.size] = imp
        genuine[ng : ng + gen.size] = gen
        ni += imp.size
        ng += gen.size
    assert ni == impostor.size and ng == genuine.size
    return impostor, genuine


# -- knots --------------------------------------------------------------------------------------


def far_of_score(score: float) -> float:
    return 10 ** ((40.0 - score) / 10.0)


def distance_at_far(imp_sorted: np.ndarray, far: float) -> float:
    """The distance d with exactly floor(far * P) impostor pairs at or below it (so FAR(d) <= far):
    the midpoint between the k-th and (k+1)-th smallest impostor distances."""
    p = imp_sorted.size
    k = math.floor(far * p + 1e-9)
    if k >= p:
        return float(imp_sorted[-1])
    if k <= 0:
        return float(imp_sorted[0]) / 2
    return float(imp_sorted[k - 1] + imp_sorted[k]) / 2


def tail_fit(imp_sorted: np.ndarray) -> tuple[float, float, float, float]:
    """Straight line log10 FAR = a + b * d over the last well-supported decade (MIN_SUPPORT ..
    10 * MIN_SUPPORT impostor pairs), for FARs below what the pairs measure. (a, b, d_lo, d_hi)."""
    p = imp_sorted.size
    k = np.arange(MIN_SUPPORT, 10 * MIN_SUPPORT + 1)
    d = imp_sorted[k - 1].astype(np.float64)
    b, a = np.polyfit(d, np.log10(k / p), 1)
    return float(a), float(b), float(d[0]), float(d[-1])


def build_knots(imp_sorted: np.ndarray) -> tuple[list[list[float]], dict]:
    p = imp_sorted.size
    a, b, d_lo, d_hi = tail_fit(imp_sorted)
    knots: list[list[float]] = []
    extrapolated = []
    for s in sorted(SCORES, reverse=True):  # 100 first: distances rise as scores fall
        far = far_of_score(s)
        if far * p >= MIN_SUPPORT:
            d = distance_at_far(imp_sorted, far)
        else:
            d = (math.log10(far) - a) / b
            extrapolated.append(s)
        knots.append([round(d, 5), float(s)])
    # Strictly rising distances (ties can only come from rounding or flat stretches).
    for i in range(1, len(knots)):
        if knots[i][0] <= knots[i - 1][0]:
            knots[i][0] = round(knots[i - 1][0] + 1e-5, 5)
    d_max = float(imp_sorted[-1])
    end = 1.0 if d_max < 1.0 else 2.0
    knots = [[0.0, 100.0], *knots, [end, 0.0]]
    if knots[1][0] <= 0:
        raise ValueError("score-100 distance is not above 0")
    info = {
        "tail_fit": {"a": a, "b": b, "d_range": [d_lo, d_hi]},
        "extrapolated_scores": sorted(extrapolated),
        "max_impostor_distance": d_max,
        "zero_at": end,
    }
    return knots, info


def score_of(distances: np.ndarray, knots: list[list[float]]) -> np.ndarray:
    k = np.asarray(knots, dtype=np.float64)
    return np.clip(np.interp(distances, k[:, 0], k[:, 1]), 0.0, 100.0)


# -- reports ------------------------------------------------------------------------------------


def pair_accuracy(
    lfw: Path, data: dict[str, np.ndarray], thresholds: dict[str, tuple[str, float]]
) -> dict:
    """Verification accuracy on pairs.csv (folds 1-7) at each threshold: ("cos", d) on the unit
    embeddings, or ("raw_l2", t) on dlib's raw descriptors (unit * norm, face_recognition's 0.6).
    `accuracy` is over pairs whose two images were embedded; `accuracy_all` counts a pair with a
    refused image as "not the same person" (what the service would answer)."""
    index = {
        (str(n), int(i)): k
        for k, (n, i) in enumerate(zip(data["names"], data["image_ids"], strict=True))
    }
    emb, norms = data["embeddings"], data["descriptor_norms"]
    cos, raw, same, ok = [], [], [], []
    with (lfw / "pairs.csv").open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            a = index.get((row["name1"], int(row["image1"])))
            b = index.get((row["name2"], int(row["image2"])))
            same.append(row["kind"] == "same")
            ok.append(a is not None and b is not None)
            if a is None or b is None:
                cos.append(np.inf)
                raw.append(np.inf)
                continue
            cos.append(1.0 - float(emb[a] @ emb[b]))
            raw.append(float(np.linalg.norm(emb[a] * norms[a] - emb[b] * norms[b])))
    y, ok_arr = np.array(same), np.array(ok)
    dist = {"cos": np.array(cos), "raw_l2": np.array(raw)}
    out: dict = {"pairs": len(y), "with_refused_image": int((~ok_arr).sum())}
    for label, (kind, t) in thresholds.items():
        pred = dist[kind] <= t
        yo, po = y[ok_arr], pred[ok_arr]
        out[label] = {
            "kind": kind,
            "threshold": t,
            "accuracy": float(np.mean(po == yo)),
            "accuracy_all": float(np.mean(pred == y)),
            "tar": float(np.mean(po[yo])),
            "far": float(np.mean(po[~yo])),
        }
    # The best single cosine threshold on these pairs (chosen on them: an optimistic reference).
    d, yo = dist["cos"][ok_arr], y[ok_arr]
    cands = np.sort(d)
    accs = [np.mean((d <= t) == yo) for t in cands]
    k = int(np.argmax(accs))
    out["best_cosine"] = {"threshold": float(cands[k]), "accuracy": float(accs[k])}
    return out


def raw_l2_rates(data: dict[str, np.ndarray], threshold: float = 0.6) -> tuple[float, float]:
    """(impostor FAR, genuine TAR) over all pairs at dlib's raw-descriptor L2 `threshold`."""
    raw = data["embeddings"] * data["descriptor_norms"][:, None]
    sq = np.sum(raw * raw, axis=1)
    labels = data["names"]
    n = len(raw)
    imp = gen = imp_n = gen_n = 0
    for start in range(0, n, BLOCK):
        stop = min(n, start + BLOCK)
        d2 = sq[start:stop, None] + sq[None, :] - 2.0 * raw[start:stop] @ raw.T
        upper = np.arange(n)[None, :] > np.arange(start, stop)[:, None]
        same = labels[start:stop, None] == labels[None, :]
        hit = d2 <= threshold**2
        imp += int(np.count_nonzero(hit & upper & ~same))
        gen += int(np.count_nonzero(hit & upper & same))
        imp_n += int(np.count_nonzero(upper & ~same))
        gen_n += int(np.count_nonzero(upper & same))
    return imp / imp_n, gen / gen_n


def closest_impostors(emb: np.ndarray, labels: np.ndarray, upto: float) -> list[tuple]:
    """(distance, name_i, index_i, name_j, index_j) of every impostor pair with distance <= upto."""
    out = []
    for start in range(0, len(emb), BLOCK):
        dist = 1.0 - emb[start : start + BLOCK] @ emb.T
        for r, c in zip(*np.nonzero(dist <= upto), strict=True):
            i, j = start + int(r), int(c)
            if i < j and labels[i] != labels[j]:
                out.append((float(dist[r, c]), i, j))
    return sorted(out)


def fold_stability(
    data: dict[str, np.ndarray], folds: dict[str, int], thresholds: dict[int, float]
) -> list[dict]:
    """FAR and TAR at the given thresholds within folds 1-3 and within folds 4-7 separately."""
    rows = []
    for label, group in (("folds 1-3", {1, 2, 3}), ("folds 4-7", {4, 5, 6, 7})):
        mask = np.array([folds[str(n)] in group for n in data["names"]])
        imp, gen = all_pair_distances(data["embeddings"][mask], data["names"][mask])
        row = {"group": label, "images": int(mask.sum()), "impostor": imp.size}
        row["genuine"] = gen.size
        for s, t in thresholds.items():
            row[f"far{s}"] = float(np.count_nonzero(imp <= t)) / imp.size
            row[f"tar{s}"] = float(np.count_nonzero(gen <= t)) / gen.size
        rows.append(row)
    return rows


def dump_json(obj: dict) -> str:
    """JSON with one top-level key per line and one list element (knot, table row) per line."""
    parts = []
    for key, value in obj.items():
        if isinstance(value, list):
            items = ",\n".join(f"  {json.dumps(v)}" for v in value)
            parts.append(f" {json.dumps(key)}: [\n{items}\n ]")
        else:
            parts.append(f" {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def fold_set(text: str) -> set[int]:
    """ "1-4" or "5,6,7" -> {1, 2, 3, 4} / {5, 6, 7}."""
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out |= set(range(int(lo), int(hi or lo) + 1))
    return out


def held_out_check(
    emb: np.ndarray, names: np.ndarray, knot_d: dict[int, float], label: str
) -> dict:
    """Measured FAR and TAR at the fitted knots on other people's photos."""
    imp, gen = all_pair_distances(emb, names)
    imp.sort()
    gen.sort()
    rows = []
    for s in (70, 80, 90):
        k = int(np.searchsorted(imp, knot_d[s], side="right"))
        far = k / imp.size
        rows.append(
            {
                "score": s,
                "far_nominal": far_of_score(s),
                "far_measured": far,
                "impostor_pairs_at_or_below": k,
                "ratio": far / far_of_score(s),
                "tar": float(np.searchsorted(gen, knot_d[s], side="right")) / gen.size,
            }
        )
    return {
        "folds": label,
        "images": len(names),
        "impostor": imp.size,
        "genuine": gen.size,
        "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lfw", type=Path, default=REPO.parent / "shared" / "faces" / "lfw")
    ap.add_argument("--cache", type=Path, default=REPO / "var" / "lfw-embeddings.npz")
    ap.add_argument("--backend", choices=("onnx", "dlib"), default="onnx")
    ap.add_argument("--model", choices=("dlib", "mobilefacenet"), default="dlib")
    ap.add_argument("--landmarks", choices=("68", "5"), help="mobilefacenet alignment")
    ap.add_argument("--fit-folds", help="LFW folds the table is fitted on (dlib: 1-7, else 1-4)")
    ap.add_argument("--check-folds", default="5-7", help="folds the fitted table is checked on")
    ap.add_argument("--out", type=Path, help="default shared/calibration[-MODEL].json")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args()
    from shared.score import calibration_file

    out_path = args.out or calibration_file(args.model)
    fit_folds = fold_set(args.fit_folds or ("1-7" if args.model == "dlib" else "1-4"))
    check_folds = fold_set(args.check_folds)
    model_name = MODEL if args.model == "dlib" else args.model

    t_start = time.perf_counter()
    data = load_embeddings(
        args.lfw, args.cache, args.backend, args.workers, args.model, args.landmarks
    )
    t_embedded = time.perf_counter()
    folds = people_folds(args.lfw)
    all_names, all_emb = data["names"], data["embeddings"]
    fit_mask = np.array([folds[str(n)] in fit_folds for n in all_names])
    names, emb = all_names[fit_mask], all_emb[fit_mask]
    n_people = len(set(names.tolist()))
    refused = Counter(int(c) for c in data["refused_errcodes"])
    fit_label = f"folds {min(fit_folds)}-{max(fit_folds)}"
    print(f"## LFW {fit_label}, model {model_name}, backend {args.backend}\n")
    print(f"- embedded {len(names)} images of {n_people} people", end="")
    print(f" (embedding took {float(data['embed_seconds']):.0f} s when the cache was built)")
    refused_text = ", ".join(f"{c}: {n}" for c, n in sorted(refused.items())) or "none"
    print(f"- refused {len(data['refused_errcodes'])} images, by errcode: {refused_text}")
    for n, i, c, m in zip(
        data["refused_names"],
        data["refused_image_ids"],
        data["refused_errcodes"],
        data["refused_errmsgs"],
        strict=True,
    ):
        print(f"  - {n}_{int(i):04d}: {int(c)} {m}")

    imp, gen = all_pair_distances(emb, names)
    imp.sort()
    gen.sort()
    t_pairs = time.perf_counter()
    print(f"- {imp.size:,} impostor pairs, {gen.size:,} genuine pairs")
    print(f"- closest impostor pairs (cosine), the {CLOSEST} nearest:")
    ids = [f"{n}_{int(i):04d}" for n, i in zip(names, data["image_ids"][fit_mask], strict=True)]
    for d, i, j in closest_impostors(emb, names, float(imp[CLOSEST - 1]))[:CLOSEST]:
        print(f"  - {d:.4f}  {ids[i]}  {ids[j]}")
    print(f"- max impostor distance {imp[-1]:.4f}, max genuine distance {gen[-1]:.4f}\n")

    knots, info = build_knots(imp)
    knot_d = {int(s): d for d, s in knots[1:-1]}

    table = []
    for s in TABLE_SCORES:
        d = knot_d[s]
        table.append(
            {
                "score": s,
                "distance": d,
                "l2": round(math.sqrt(2 * d), 4),
                "far_nominal": far_of_score(s),
                "far_measured": float(np.searchsorted(imp, d, side="right")) / imp.size,
                "impostor_pairs_at_or_below": int(np.searchsorted(imp, d, side="right")),
                "tar": float(np.searchsorted(gen, d, side="right")) / gen.size,
            }
        )
    print(
        "| score | cosine distance | L2 distance | nominal FAR | measured FAR | impostor pairs ≤ d | TAR |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in table:
        print(
            f"| {r['score']} | {r['distance']:.4f} | {r['l2']:.4f} | {r['far_nominal']:.0e} | "
            f"{r['far_measured']:.2e} | {r['impostor_pairs_at_or_below']:,} | {r['tar']:.2%} |"
        )

    thresholds = {"score 70": ("cos", knot_d[70]), "score 80": ("cos", knot_d[80])}
    if args.model == "dlib":  # dlib's own rule, on its raw descriptors
        thresholds |= {"unit L2 0.6": ("cos", 0.6**2 / 2), "raw dlib L2 0.6": ("raw_l2", 0.6)}
    acc = pair_accuracy(args.lfw, data, thresholds)
    print(
        f"\n### pairs.csv verification ({acc['pairs']} pairs; {acc['with_refused_image']} have a "
        "refused image: excluded from 'accuracy', counted as 'different' in 'accuracy, all')\n"
    )
    print("| threshold | value | accuracy | accuracy, all 4,200 | TAR | FAR |")
    print("|---|---:|---:|---:|---:|---:|")
    for label in thresholds:
        r = acc[label]
        value = f"cos {r['threshold']:.4f}" if r["kind"] == "cos" else f"L2 {r['threshold']:.2f}"
        print(
            f"| {label} | {value} | {r['accuracy']:.2%} | {r['accuracy_all']:.2%} | "
            f"{r['tar']:.2%} | {r['far']:.2%} |"
        )
    best = acc["best_cosine"]
    print(
        f"\n(best single cosine threshold on these pairs: {best['threshold']:.4f}, accuracy "
        f"{best['accuracy']:.2%}, score {score_of(np.array([best['threshold']]), knots)[0]:.1f})"
    )

    raw_far = raw_tar = float("nan")
    norms = data["descriptor_norms"]
    if args.model == "dlib":
        raw_far, raw_tar = raw_l2_rates(data)
        print(
            f"(dlib's own L2 0.6 on the raw descriptors, norm {norms.mean():.3f} ± {norms.std():.3f}: "
            f"all-pairs FAR {raw_far:.2e} ≈ score {40 - 10 * math.log10(raw_far):.1f}, TAR {raw_tar:.2%}; "
            "unit-vector L2 0.6 is a much looser threshold)"
        )

    check_mask = np.array([folds[str(n)] in check_folds for n in all_names])
    check_label = f"folds {min(check_folds)}-{max(check_folds)}"
    held_out = not (fit_folds & check_folds)
    check = held_out_check(all_emb[check_mask], all_names[check_mask], knot_d, check_label)
    check["held_out"] = held_out
    print(
        f"\n### the {fit_label} table checked on {check_label} "
        f"({'held out: other people' if held_out else 'NOT held out: the fit saw these people'}; "
        f"{check['images']} images, {check['impostor']:,} impostor pairs)\n"
    )
    print(
        "| score | promised FAR | measured FAR | measured / promised | impostor pairs ≤ d | TAR |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for r in check["rows"]:
        print(
            f"| {r['score']} | {r['far_nominal']:.0e} | {r['far_measured']:.2e} | "
            f"{r['ratio']:.2f}x | {r['impostor_pairs_at_or_below']:,} | {r['tar']:.2%} |"
        )

    stab = fold_stability(data, folds, {70: knot_d[70], 80: knot_d[80]})
    print(f"\n### stability: the {fit_label} thresholds on disjoint halves of folds 1-7\n")
    print(
        "| people of | images | impostor pairs | FAR at 70 (1e-3) | FAR at 80 (1e-4) | TAR at 70 | TAR at 80 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in stab:
        print(
            f"| {r['group']} | {r['images']} | {r['impostor']:,} | {r['far70']:.2e} | {r['far80']:.2e} | "
            f"{r['tar70']:.2%} | {r['tar80']:.2%} |"
        )

    if info["extrapolated_scores"]:
        tail = (
            f"Scores {min(info['extrapolated_scores'])}-{max(info['extrapolated_scores'])} have "
            f"fewer than {MIN_SUPPORT} impostor pairs below them: their distances are extrapolated "
            f"from a straight-line fit of log10 FAR against distance over the last well-supported "
            f"decade ({MIN_SUPPORT}-{10 * MIN_SUPPORT} pairs, d {info['tail_fit']['d_range'][0]:.4f}-"
            f"{info['tail_fit']['d_range'][1]:.4f})."
        )
    else:
        tail = (
            f"Every knot 40-100 is read from the empirical impostor quantiles (at least "
            f"{MIN_SUPPORT} impostor pairs at or below each; score 100 has "
            f"{table[-1]['impostor_pairs_at_or_below']}), no extrapolation; the 90-100 knots rest "
            f"on few pairs (400 and 40) and carry the most sampling noise."
        )
    note = (
        "score = 40 - 10*log10(FAR): knot distance for each score 40..100 is the midpoint between the "
        "k-th and (k+1)-th smallest impostor cosine distance, k = floor(FAR*P), so measured FAR <= "
        f"nominal. {tail} Below 40 (FAR 1, at the largest impostor distance "
        f"{info['max_impostor_distance']:.4f}) the score falls linearly to 0 at distance "
        f"{info['zero_at']:.1f}. Production path: FaceEngine.analyze(bytes, 'recognize'), largest "
        f"face; {len(data['refused_errcodes'])} images refused and excluded. "
        "Written by scripts/calibrate_score.py; see docs/score-calibration.md."
    )
    out = {
        "note": note,
        "model": model_name,
        "backend": args.backend,
        "data": (
            f"LFW {fit_label}, {len(names)} images, {n_people} people, {imp.size} impostor pairs, "
            f"{gen.size} genuine pairs"
        ),
        "refused": {str(c): n for c, n in sorted(refused.items())},
        "knots": knots,
        "table": table,
        "pairs_csv": acc,
        "held_out_check": check,
        "fold_stability": stab,
        "raw_dlib_l2_0.6": {
            "far": raw_far,
            "tar": raw_tar,
            "mean_descriptor_norm": float(norms.mean()),
        },
    }
    if args.model != "dlib":
        from worker.engine.mobilefacenet import DEFAULT_LANDMARKS

        out["landmarks"] = args.landmarks or DEFAULT_LANDMARKS
        del out["raw_dlib_l2_0.6"]
    out_path.write_text(dump_json(out), encoding="utf-8")
    t_end = time.perf_counter()
    print(f"\nknots: 70 -> {knot_d[70]:.4f}, 80 -> {knot_d[80]:.4f}, 90 -> {knot_d[90]:.4f}")
    print(
        f"wrote {out_path} ({len(knots)} knots); load/embed {t_embedded - t_start:.0f} s, "
        f"pairs {t_pairs - t_embedded:.0f} s, total {t_end - t_start:.0f} s"
    )


if __name__ == "__main__":
    main()
