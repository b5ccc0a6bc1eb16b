"""Calibrate the 0-100 score on LFW folds 1-7 with this project's engine.

Embeds every LFW image through the production path (`FaceEngine.analyze(bytes, "recognize")`),
caches the embeddings, measures the cosine distance of every different-person pair (impostors,
about 40 million, blockwise in float32) and of every same-person pair (genuine), and writes the
monotone distance -> score table that `shared/score.py` reads:

    score = 40 - 10 * log10(FAR)   (70 <=> FAR 1e-3, 80 <=> 1e-4, 90 <=> 1e-5, 100 <=> 1e-6)

    uv run python scripts/calibrate_score.py [--lfw ../shared/faces/lfw]
        [--cache var/lfw-embeddings.npz] [--backend onnx|dlib] [--out shared/calibration.json]

The first run embeds 9,021 images (a few minutes on 2 cores with the ONNX backend); later runs
read the cache. docs/score-calibration.md has the method and the measured tables.
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


def _init_worker(backend: str) -> None:
    global _engine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # face_recognition_models imports pkg_resources
        from worker.engine import EngineConfig, get_engine

        _engine = get_engine(EngineConfig(backend=backend, backend_threads=1))


def _embed_one(path: str) -> tuple[np.ndarray | None, float, int, str]:
    """(embedding, descriptor norm, 0, "") or (None, 0, errcode, errmsg) for one image file."""
    from shared.errors import FaceLibError

    data = Path(path).read_bytes()
    try:
        analysis = _engine.analyze(data, "recognize")
    except FaceLibError as exc:
        return None, 0.0, exc.errcode, exc.errmsg
    face = analysis.faces[0]
    return face.embedding.astype(np.float32), face.quality["descriptor_norm"], 0, ""


def lfw_images(lfw: Path) -> list[tuple[str, int, Path]]:
    """(person, image number, path) of every LFW image listed by people.csv, in a fixed order."""
    out = []
    with (lfw / "people.csv").open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            name = row["name"]
            for k in range(1, int(row["images"]) + 1):
                out.append((name, k, lfw / "images" / name / f"{name}_{k:04d}.jpg"))
    return sorted(out, key=lambda t: (t[0], t[1]))


def embed_lfw(lfw: Path, backend: str, workers: int) -> dict[str, np.ndarray]:
    images = lfw_images(lfw)
    t0 = time.perf_counter()
    ctx = mp.get_context("fork")
    results = []
    with ctx.Pool(workers, initializer=_init_worker, initargs=(backend,)) as pool:
        paths = [str(p) for _, _, p in images]
        for i, res in enumerate(pool.imap(_embed_one, paths, chunksize=16), 1):
            results.append(res)
            if i % 500 == 0 or i == len(paths):
                rate = i / (time.perf_counter() - t0)
                print(f"  embedded {i}/{len(paths)} ({rate:.1f} img/s)", file=sys.stderr)
    ok = [i for i, r in enumerate(results) if r[0] is not None]
    bad = [i for i, r in enumerate(results) if r[0] is None]
    return {
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
    lfw: Path, cache: Path, backend: str = "onnx", workers: int = 2
) -> dict[str, np.ndarray]:
    """The cached LFW embeddings for `backend`, embedding (and caching) them when absent."""
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        if str(data["backend"]) == backend and "descriptor_norms" in data:
            return data
        print(f"cache {cache} is for another backend or version, re-embedding", file=sys.stderr)
    print(f"embedding LFW from {lfw} with backend {backend} ({workers} processes)", file=sys.stderr)
    data = embed_lfw(lfw, backend, workers)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(cache, **data)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lfw", type=Path, default=REPO.parent / "shared" / "faces" / "lfw")
    ap.add_argument("--cache", type=Path, default=REPO / "var" / "lfw-embeddings.npz")
    ap.add_argument("--backend", choices=("onnx", "dlib"), default="onnx")
    ap.add_argument("--out", type=Path, default=REPO / "shared" / "calibration.json")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args()

    t_start = time.perf_counter()
    data = load_embeddings(args.lfw, args.cache, args.backend, args.workers)
    t_embedded = time.perf_counter()
    names, emb = data["names"], data["embeddings"]
    n_people = len(set(names.tolist()))
    refused = Counter(int(c) for c in data["refused_errcodes"])
    print(f"## LFW folds 1-7, backend {args.backend}\n")
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
    ids = [f"{n}_{int(i):04d}" for n, i in zip(names, data["image_ids"], strict=True)]
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

    acc = pair_accuracy(
        args.lfw,
        data,
        {
            "score 70": ("cos", knot_d[70]),
            "score 80": ("cos", knot_d[80]),
            "unit L2 0.6": ("cos", 0.6**2 / 2),
            "raw dlib L2 0.6": ("raw_l2", 0.6),
        },
    )
    print(
        f"\n### pairs.csv verification ({acc['pairs']} pairs; {acc['with_refused_image']} have a "
        "refused image: excluded from 'accuracy', counted as 'different' in 'accuracy, all')\n"
    )
    print("| threshold | value | accuracy | accuracy, all 4,200 | TAR | FAR |")
    print("|---|---:|---:|---:|---:|---:|")
    for label in ("score 70", "score 80", "unit L2 0.6", "raw dlib L2 0.6"):
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

    raw_far, raw_tar = raw_l2_rates(data)
    norms = data["descriptor_norms"]
    print(
        f"(dlib's own L2 0.6 on the raw descriptors, norm {norms.mean():.3f} ± {norms.std():.3f}: "
        f"all-pairs FAR {raw_far:.2e} ≈ score {40 - 10 * math.log10(raw_far):.1f}, TAR {raw_tar:.2%}; "
        "unit-vector L2 0.6 is a much looser threshold)"
    )

    folds = people_folds(args.lfw)
    stab = fold_stability(data, folds, {70: knot_d[70], 80: knot_d[80]})
    print("\n### stability: the all-folds thresholds on disjoint halves\n")
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
        "model": MODEL,
        "backend": args.backend,
        "data": (
            f"LFW folds 1-7, {len(names)} images, {n_people} people, {imp.size} impostor pairs, "
            f"{gen.size} genuine pairs"
        ),
        "refused": {str(c): n for c, n in sorted(refused.items())},
        "knots": knots,
        "table": table,
        "pairs_csv": acc,
        "fold_stability": stab,
        "raw_dlib_l2_0.6": {
            "far": raw_far,
            "tar": raw_tar,
            "mean_descriptor_norm": float(norms.mean()),
        },
    }
    args.out.write_text(dump_json(out), encoding="utf-8")
    t_end = time.perf_counter()
    print(f"\nknots: 70 -> {knot_d[70]:.4f}, 80 -> {knot_d[80]:.4f}, 90 -> {knot_d[90]:.4f}")
    print(
        f"wrote {args.out} ({len(knots)} knots); load/embed {t_embedded - t_start:.0f} s, "
        f"pairs {t_pairs - t_embedded:.0f} s, total {t_end - t_start:.0f} s"
    )


if __name__ == "__main__":
    main()
