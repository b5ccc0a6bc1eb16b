"""1:N behaviour of the calibrated score on LFW folds 1-7: strangers matched against a library of N.

Uses the embeddings cached by scripts/calibrate_score.py (embeds them first when the cache is
absent) and the score of shared/calibration.json (run calibrate_score.py first).

1. Stranger table: N people enrolled (one photo each, their first), probes are photos of people
   NOT enrolled; a probe "is given a match" when its best score over the gallery reaches the
   threshold. Share of probes matched at 70, 80 and 90, and in the `gallery` decision mode.
2. Gallery decision mode (issue #8) for N = 1,000: isMatch only when the gallery false-match rate
   1 - (1 - FAR(score))^N is at most 1%; strangers matched and enrolled people's second photos
   correctly matched, against the seed's fixed threshold 70 (and 80).

    uv run python scripts/gallery_table.py [--repeats 5] [--seed 8] [--probes 2000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from calibrate_score import load_embeddings  # noqa: E402

from shared.score import calibration, gallery_false_match_rate  # noqa: E402

THRESHOLDS = (70, 80, 90)
MAX_FALSE_MATCH = 0.01  # gallery mode: isMatch only when the gallery false-match rate <= 1%
SWEEP = (75, 85, 88, 95)  # more fixed thresholds at N = 1,000, to show the trade-off
PER_PERSON_CAP = 5  # probe photos per stranger at most, so a few people with 100+ photos
# (George W Bush has 236 in folds 1-7) do not make up a large share of the probes


def scores_of(distances: np.ndarray) -> np.ndarray:
    cal = calibration()
    return np.clip(np.interp(distances, cal["_d"], cal["_s"]), 0.0, 100.0)


def gallery_threshold(n_faces: int, max_rate: float = MAX_FALSE_MATCH) -> float:
    """The lowest score whose gallery false-match rate over n_faces is at most max_rate."""
    lo, hi = 0.0, 200.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if gallery_false_match_rate(mid, n_faces) <= max_rate:
            hi = mid
        else:
            lo = mid
    return hi


def best_matches(
    emb: np.ndarray, probes: np.ndarray, gallery: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each probe, (index into `gallery` of its nearest face, that face's score)."""
    dist = 1.0 - emb[probes] @ emb[gallery].T
    best = np.argmin(dist, axis=1)
    return best, scores_of(dist[np.arange(len(probes)), best])


def stranger_probes(
    rng: np.random.Generator, photos: dict[str, list[int]], people: list[str], count: int
) -> np.ndarray:
    """Up to `count` photos of `people`, at most PER_PERSON_CAP of each, drawn at random."""
    pool: list[int] = []
    for p in people:
        imgs = photos[p]
        if len(imgs) > PER_PERSON_CAP:
            imgs = list(rng.choice(imgs, PER_PERSON_CAP, replace=False))
        pool += imgs
    pool_arr = np.array(pool)
    if len(pool_arr) <= count:
        return pool_arr
    return rng.choice(pool_arr, count, replace=False)


def fmt_pct(values: list[float]) -> str:
    mean = float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.2%}"
    return f"{mean:.2%} ({min(values):.2%}–{max(values):.2%})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lfw", type=Path, default=REPO.parent / "shared" / "faces" / "lfw")
    ap.add_argument("--cache", type=Path, default=REPO / "var" / "lfw-embeddings.npz")
    ap.add_argument("--backend", choices=("onnx", "dlib"), default="onnx")
    ap.add_argument("--seed", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5, help="random draws per row (mean, range)")
    ap.add_argument("--probes", type=int, default=2000, help="stranger probes per draw")
    ap.add_argument("--largest", type=int, default=2900, help="N enrolled for the largest row")
    args = ap.parse_args()
    t0 = time.perf_counter()

    data = load_embeddings(args.lfw, args.cache, args.backend)
    emb = data["embeddings"]
    photos: dict[str, list[int]] = {}
    order = np.lexsort((data["image_ids"], data["names"]))  # by person, then image number
    for i in order:
        photos.setdefault(str(data["names"][i]), []).append(int(i))
    people = sorted(photos)
    cal = calibration()
    print(f"## 1:N on LFW folds 1-7 ({len(emb)} images of {len(people)} people)\n")
    print(f"- calibration: backend {cal.get('backend')}, {cal.get('data')}")
    print(
        f"- seed {args.seed}, {args.repeats} draws per row: mean (min–max); "
        f"probes capped at {PER_PERSON_CAP} photos per stranger\n"
    )

    # -- 1. strangers against a library of N ---------------------------------------------------
    sizes = (100, 1000, args.largest)
    print("### Strangers given a match (best score over N enrolled people ≥ threshold)\n")
    head = " | ".join(f"≥ {t}" for t in THRESHOLDS)
    print(f"| N enrolled | probes | {head} | gallery mode (score needed) |")
    print("|---:|---:|" + "---:|" * len(THRESHOLDS) + "---:|")
    for n in sizes:
        hits: dict[str, list[float]] = {str(t): [] for t in THRESHOLDS} | {"gallery": []}
        n_probes = []
        for r in range(args.repeats):
            rng = np.random.default_rng([args.seed, n, r])
            perm = [people[i] for i in rng.permutation(len(people))]
            enrolled, others = perm[:n], perm[n:]
            gallery = np.array([photos[p][0] for p in enrolled])
            probes = stranger_probes(rng, photos, others, args.probes)
            _, best = best_matches(emb, probes, gallery)
            for t in THRESHOLDS:
                hits[str(t)].append(float(np.mean(best >= t)))
            hits["gallery"].append(float(np.mean(best >= gallery_threshold(n))))
            n_probes.append(len(probes))
        cells = " | ".join(fmt_pct(hits[str(t)]) for t in THRESHOLDS)
        print(
            f"| {n:,} | {int(np.mean(n_probes)):,} | {cells} | "
            f"{fmt_pct(hits['gallery'])} (≥ {gallery_threshold(n):.1f}) |"
        )
    print(
        f"\nThe largest row enrols {args.largest:,} of the {len(people):,} people and probes with "
        f"photos of the other {len(people) - args.largest:,} (at most {PER_PERSON_CAP} each)."
    )

    # -- 2. gallery decision mode at N = 1,000 --------------------------------------------------
    n = 1000
    multi = [p for p in people if len(photos[p]) >= 2]
    t_gal = gallery_threshold(n)
    modes = {
        "seed, score ≥ 70": 70.0,
        "seed, score ≥ 80": 80.0,
        f"**gallery** (≤ 1% false-match rate ⇒ score ≥ {t_gal:.1f})": t_gal,
    } | {f"fixed score ≥ {t}": float(t) for t in SWEEP}
    res: dict[str, dict[str, list[float]]] = {
        m: {"stranger": [], "correct": [], "wrong": []} for m in modes
    }
    counts = []
    for r in range(args.repeats):
        rng = np.random.default_rng([args.seed, 1_000_000, r])
        enrolled = [multi[i] for i in rng.choice(len(multi), n, replace=False)]
        chosen = set(enrolled)
        strangers = [p for p in people if p not in chosen]
        gallery = np.array([photos[p][0] for p in enrolled])
        second = np.array([photos[p][1] for p in enrolled])
        probes = stranger_probes(rng, photos, strangers, args.probes)
        _, s_best = best_matches(emb, probes, gallery)
        g_idx, g_best = best_matches(emb, second, gallery)
        right = g_idx == np.arange(n)
        for m, t in modes.items():
            res[m]["stranger"].append(float(np.mean(s_best >= t)))
            res[m]["correct"].append(float(np.mean(right & (g_best >= t))))
            res[m]["wrong"].append(float(np.mean(~right & (g_best >= t))))
        counts.append((len(probes), len(second)))
    print(
        f"\n### Decision modes, N = {n:,} enrolled (people with ≥ 2 photos, of {len(multi):,}); "
        f"{counts[0][0]:,} stranger probes, {counts[0][1]:,} second photos per draw\n"
    )
    print(
        "| mode | strangers matched (target < 2%) | second photos correctly matched "
        "(target ≥ 90%) | second photos matched to a wrong person |"
    )
    print("|---|---:|---:|---:|")
    for m in modes:
        print(
            f"| {m} | {fmt_pct(res[m]['stranger'])} | {fmt_pct(res[m]['correct'])} | "
            f"{fmt_pct(res[m]['wrong'])} |"
        )

    # -- 3. the score gallery mode asks for, by library size ------------------------------------
    print("\n### Score the gallery mode needs (false-match rate ≤ 1%)\n")
    print("| faces in the library | score needed | per-comparison FAR |")
    print("|---:|---:|---:|")
    for faces in (1, 10, 100, 1_000, 10_000, 100_000, 1_000_000):
        t = gallery_threshold(faces)
        note = " (above 100, the score's ceiling: never a match)" if t > 100 else ""
        print(f"| {faces:,} | {t:.1f}{note} | {10 ** ((40 - t) / 10):.1e} |")
    print(f"\n(total {time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
