"""Write a CIFAR-shaped image folder (32x32 RGB PNGs, one subfolder per class) for input benchmarks.

    python experiments/write_png_folder.py /tmp/pngs --per_class=1000

Noise images with a class-coloured stripe: PNG decodes noise more slowly than natural photos, so the
measured decode cost is an upper bound for CIFAR.
"""
import argparse
import pathlib

import numpy as np
from PIL import Image


def main():
    p = argparse.ArgumentParser()
    p.add_argument("root")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--per_class", type=int, default=1000)
    p.add_argument("--size", type=int, default=32)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    for label in range(args.classes):
        folder = pathlib.Path(args.root) / f"class{label:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(args.per_class):
            pixels = rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
            pixels[:4] = 25 * label
            Image.fromarray(pixels).save(folder / f"{i:05d}.png")
    print(f"wrote {args.classes * args.per_class} images to {args.root}")


if __name__ == "__main__":
    main()
