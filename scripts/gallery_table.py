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
        [--model mobilefacenet] [--cache var/lfw-embeddings.npz]

With `--model NAME` (an installed optional model, docs/models.md) every table is printed for
dlib's model and for NAME, each with its own calibration table (shared/calibration-NAME.json),
on the same images, and a side-by-side summary follows: LFW pairs accuracy (folds 1-3,
threshold chosen on the other two folds), TAR at FAR 1e-3 / 1e-4 over all pairs of folds 1-7,
and the 1:N trade-off at N = 1,000 with the threshold that lets at most 1% / 2% of strangers
match (chosen on the strangers themselves: the models' ability, independent of calibration).
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


def scores_of(distances: np.ndarray, model: str | None = None) -> np.ndarray:
    cal = calibration(model)
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
    emb: np.ndarray, probes: np.ndarray, gallery: np.ndarray, model: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """For each probe, (index into `gallery` of its nearest face, that face's score)."""
    dist = 1.0 - emb[probes] @ emb[gallery].T
    best = np.argmin(dist, axis=1)
    return best, scores_of(dist[np.arange(len(probes)), best], model)


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


def draw_gallery(
    args, repeat: int, n: int, multi: list, people: list, photos: dict
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Repeat `repeat` of the N = `n` draw: n people with two photos enrolled by their first,
    their second photos as genuine probes, and stranger probes from everyone else."""
    rng = np.random.default_rng([args.seed, 1_000_000, repeat])
    enrolled = [multi[i] for i in rng.choice(len(multi), n, replace=False)]
    chosen = set(enrolled)
    strangers = [p for p in people if p not in chosen]
    gallery = np.array([photos[p][0] for p in enrolled])
    second = np.array([photos[p][1] for p in enrolled])
    return gallery, second, stranger_probes(rng, photos, strangers, args.probes)


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
    ap.add_argument("--model", default="dlib", help="an optional model to report beside dlib's")
    args = ap.parse_args()
    t0 = time.perf_counter()

    if args.model == "dlib":
        data = load_embeddings(args.lfw, args.cache, args.backend)
        runs = [("dlib", data["embeddings"])]
    else:
        data = load_embeddings(args.lfw, args.cache, args.backend, model=args.model)
        runs = [("dlib", data["dlib_embeddings"]), (args.model, data["embeddings"])]
    photos: dict[str, list[int]] = {}
    order = np.lexsort((data["image_ids"], data["names"]))  # by person, then image number
    for i in order:
        photos.setdefault(str(data["names"][i]), []).append(int(i))
    people = sorted(photos)
    summaries = {}
    for model, emb in runs:
        report(args, model, emb, photos, people)
        if len(runs) > 1:
            summaries[model] = summary(args, emb, data, photos, people)
    if summaries:
        # Score fusion (issue 15): cosine = a * dlib's + (1 - a) * the other's, which is the
        # cosine of the concatenated vectors [sqrt(a) e1, sqrt(1 - a) e2]; a fitted on folds 1-4.
        alpha = fit_fusion(args.lfw, data["names"], runs[0][1], runs[1][1])
        fused = np.hstack([np.sqrt(alpha) * runs[0][1], np.sqrt(1 - alpha) * runs[1][1]])
        summaries[f"fusion (a = {alpha:.1f})"] = summary(args, fused, data, photos, people)
        print_summary(summaries)
    print(f"\n(total {time.perf_counter() - t0:.1f} s)")


def report(
    args: argparse.Namespace,
    model: str,
    emb: np.ndarray,
    photos: dict[str, list[int]],
    people: list[str],
) -> None:
    cal_model = None if model == "dlib" else model
    cal = calibration(cal_model)
    print(f"## {model}: 1:N on LFW folds 1-7 ({len(emb)} images of {len(people)} people)\n")
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
            _, best = best_matches(emb, probes, gallery, cal_model)
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
        gallery, second, probes = draw_gallery(args, r, n, multi, people, photos)
        _, s_best = best_matches(emb, probes, gallery, cal_model)
        g_idx, g_best = best_matches(emb, second, gallery, cal_model)
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
    print()


def pairs_accuracy_lofo(lfw: Path, emb: np.ndarray, data: dict, folds=(1, 2, 3)) -> float:
    """pairs.csv accuracy on `folds`, each fold's threshold chosen on the other listed folds
    (pairs with a refused image count as "different", as the service would answer)."""
    import csv

    index = {
        (str(n), int(i)): k
        for k, (n, i) in enumerate(zip(data["names"], data["image_ids"], strict=True))
    }
    rows = []
    with (lfw / "pairs.csv").open(newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            if int(r["fold"]) not in folds:
                continue
            a = index.get((r["name1"], int(r["image1"])))
            b = index.get((r["name2"], int(r["image2"])))
            d = 1.0 - float(emb[a] @ emb[b]) if a is not None and b is not None else np.inf
            rows.append((int(r["fold"]), r["kind"] == "same", d))
    f = np.array([r[0] for r in rows])
    y = np.array([r[1] for r in rows])
    d = np.array([r[2] for r in rows])
    correct = 0
    for fold in folds:
        train, test = f != fold, f == fold
        cands = np.unique(d[train & np.isfinite(d)])
        accs = [np.mean((d[train] <= t) == y[train]) for t in cands]
        t = cands[int(np.argmax(accs))]
        correct += int(np.sum((d[test] <= t) == y[test]))
    return correct / len(rows)


def tar_at_far(
    emb: np.ndarray, names: np.ndarray, fars=(1e-3, 1e-4)
) -> tuple[list[float], int, int]:
    from calibrate_score import all_pair_distances

    imp, gen = all_pair_distances(emb, names)
    imp.sort()
    out = []
    for far in fars:
        k = int(far * imp.size)
        t = float(imp[k]) if k < imp.size else float(imp[-1])
        out.append(float(np.mean(gen < t)))
    return out, gen.size, imp.size


def one_to_n(
    args: argparse.Namespace, emb: np.ndarray, photos: dict[str, list[int]], people: list[str]
) -> dict[float, float]:
    """N = 1,000: share of second photos matched to the right person above the threshold that
    lets at most 1% / 2% of stranger probes match (threshold read off the strangers)."""
    n = 1000
    multi = [p for p in people if len(photos[p]) >= 2]
    res: dict[float, list[float]] = {0.01: [], 0.02: []}
    for r in range(args.repeats):
        gallery, second, probes = draw_gallery(args, r, n, multi, people, photos)
        s_sim = (emb[probes] @ emb[gallery].T).max(axis=1)
        g = emb[second] @ emb[gallery].T
        right = g.argmax(axis=1) == np.arange(n)
        g_best = g.max(axis=1)
        for rate in res:
            t = np.quantile(s_sim, 1 - rate, method="higher")  # at most `rate` strangers above
            res[rate].append(float(np.mean(right & (g_best > t))))
    return {rate: float(np.mean(v)) for rate, v in res.items()}


def summary(args, emb, data, photos, people) -> dict:
    tars, n_gen, n_imp = tar_at_far(emb, data["names"])
    return {
        "pairs": pairs_accuracy_lofo(args.lfw, emb, data),
        "tar": tars,
        "counts": (n_gen, n_imp),
        "one_to_n": one_to_n(args, emb, photos, people),
    }


def fit_fusion(lfw: Path, names: np.ndarray, e1: np.ndarray, e2: np.ndarray) -> float:
    """The weight a in {0.1 .. 0.9} whose fused cosine has the best TAR at FAR 1e-4 on the
    people of LFW folds 1-4."""
    import csv

    with (lfw / "people.csv").open(newline="", encoding="utf-8") as fh:
        fit = {r["name"] for r in csv.DictReader(fh) if int(r["fold"]) <= 4}
    mask = np.array([str(n) in fit for n in names])
    best = (-1.0, 0.5)
    for a in np.arange(1, 10) / 10:
        fused = np.hstack([np.sqrt(a) * e1[mask], np.sqrt(1 - a) * e2[mask]])
        tar = tar_at_far(fused, names[mask], fars=(1e-4,))[0][0]
        print(f"  fusion a = {a:.1f}: TAR at FAR 1e-4 on folds 1-4 = {tar:.2%}", file=sys.stderr)
        best = max(best, (tar, float(a)))
    return best[1]


def print_summary(summaries: dict[str, dict]) -> None:
    models = list(summaries)
    n_gen, n_imp = summaries[models[0]]["counts"]
    print("## Side by side (same images, same draws)\n")
    print("| metric | " + " | ".join(models) + " |")
    print("|---|" + "---:|" * len(models))
    rows = [
        ("LFW pairs, folds 1-3, leave-one-fold-out threshold", lambda s: f"{s['pairs']:.2%}"),
        (
            f"TAR at FAR 1e-3 / 1e-4 ({n_gen:,} genuine, {n_imp / 1e6:.1f} M impostor pairs)",
            lambda s: f"{s['tar'][0]:.1%} / {s['tar'][1]:.1%}",
        ),
        (
            "1:N, N = 1,000: right person above threshold, ≤ 1% of strangers match",
            lambda s: f"{s['one_to_n'][0.01]:.1%}",
        ),
        ("same at ≤ 2% of strangers", lambda s: f"{s['one_to_n'][0.02]:.1%}"),
    ]
    for label, fmt in rows:
        print(f"| {label} | " + " | ".join(fmt(summaries[m]) for m in models) + " |")


if __name__ == "__main__":
    main()
