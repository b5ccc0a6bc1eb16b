"""MobileFaceNet's alignment on LFW: dlib's 68 landmarks against its 5, TAR at FAR 1e-3 / 1e-4.

Both embeddings come from the same pass of scripts/calibrate_score.py --model mobilefacenet
(same images, same detections; the cache holds both alignments). Prints TAR at FAR 1e-3 and
1e-4 over every pair of LFW folds 1-7, and over folds 1-4 and 5-7 separately.

    nice -n 10 uv run python scripts/mfn_alignment.py [--cache var/lfw-embeddings.npz]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from calibrate_score import load_embeddings  # noqa: E402
from gallery_table import tar_at_far  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lfw", type=Path, default=REPO.parent / "shared" / "faces" / "lfw")
    ap.add_argument("--cache", type=Path, default=REPO / "var" / "lfw-embeddings.npz")
    args = ap.parse_args()
    with (args.lfw / "people.csv").open(newline="", encoding="utf-8") as fh:
        fold = {r["name"]: int(r["fold"]) for r in csv.DictReader(fh)}
    print("| alignment | folds | images | genuine | impostor | TAR at FAR 1e-3 | TAR at FAR 1e-4 |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for lm in ("68", "5"):
        data = load_embeddings(args.lfw, args.cache, model="mobilefacenet", landmarks=lm)
        names = data["names"]
        for label, keep in (("1-7", range(1, 8)), ("1-4", range(1, 5)), ("5-7", range(5, 8))):
            mask = np.array([fold[str(n)] in keep for n in names])
            (t3, t4), n_gen, n_imp = tar_at_far(data["embeddings"][mask], names[mask])
            print(
                f"| {lm} points | {label} | {mask.sum()} | {n_gen:,} | {n_imp:,} | "
                f"{t3:.2%} | {t4:.2%} |"
            )


if __name__ == "__main__":
    main()
