"""Throughput of a folder of images: the ``onnxcam explain`` CLI against Ray Data with 1 and 2
actors (explainer.ray_data), on one machine, same bundle, same images, same outputs.

Usage (needs the ``ray`` extra)::

    python benchmarks/bench_ray.py BUNDLE_DIR [--images 64] [--size 320 240] [--top-k 1]

Images are synthetic photos-like pictures written to a temporary folder. Each configuration
writes the overlay PNG and the heatmaps of every image. Ray's own start (``ray.init``) is
timed apart; the Ray times include starting the actors and loading the bundle in each.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_images(folder: Path, count: int, size: tuple[int, int]) -> list[str]:
    """Smooth random pictures (gradients and blobs), PNG, ``size`` = (width, height)."""
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    paths = []
    for i in range(count):
        rng = np.random.default_rng(i)
        img = np.stack([yy, xx, 0.5 + 0.5 * np.sin(5 * xx + i)], -1)
        for _ in range(4):
            cy, cx, r = rng.uniform(0.1, 0.9, 2).tolist() + [rng.uniform(0.05, 0.2)]
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
            img = img * (1 - blob) + blob * rng.uniform(0, 1, 3)
        path = folder / f"img{i:04d}.png"
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(path)
        paths.append(str(path))
    return paths


def run_cli(bundle: str, folder: Path, out: Path, top_k: int, batch: int) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "explainer.cli", "explain", bundle, str(folder),
                    "--out", str(out), "--top-k", str(top_k), "--batch-size", str(batch),
                    "--save-npy", "--quiet"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def run_ray(bundle: str, paths: list[str], out: Path, top_k: int, batch: int,
            actors: int, cpus: int) -> float:
    import ray

    from explainer.ray_data import explain_dataset

    start = time.perf_counter()
    table = ray.data.from_items([{"path": p} for p in paths])
    rows = explain_dataset(table, bundle, out, top_k=top_k, concurrency=actors,
                           num_cpus=cpus // actors, batch_size=batch).take_all()
    elapsed = time.perf_counter() - start
    assert sum(row["status"] == "ok" for row in rows) == len(paths)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, nargs=2, default=(320, 240), metavar=("W", "H"))
    parser.add_argument("--top-k", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = make_images(root / "images", args.images, tuple(args.size))
        print(f"{args.images} images {args.size[0]}x{args.size[1]}, top-{args.top_k}, batch "
              f"{args.batch_size}, {args.cpus} CPUs, load average {os.getloadavg()[0]:.1f}")
        results = {"CLI (1 process)": run_cli(args.bundle, root / "images", root / "cli",
                                              args.top_k, args.batch_size)}
        import ray

        start = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, configure_logging=False,
                 log_to_driver=False)
        print(f"ray.init: {time.perf_counter() - start:.1f} s (not counted below)")
        for actors in (1, 2):
            results[f"Ray Data, {actors} actor(s)"] = run_ray(
                args.bundle, paths, root / f"ray{actors}", args.top_k, args.batch_size, actors,
                args.cpus)
        ray.shutdown()
        print(f"load average after: {os.getloadavg()[0]:.1f}")
        print("| run | seconds | images/s |\n|---|---|---|")
        for name, seconds in results.items():
            print(f"| {name} | {seconds:.1f} | {args.images / seconds:.1f} |")


if __name__ == "__main__":
    main()
