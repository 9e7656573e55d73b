"""The hand-written baseline `experiment=pets_unet` is compared against (docs/recipes.md).

A short from-scratch script of the kind people write before reaching for a tool: the Pets trimaps read
with PIL, a 16..128-channel depth-4 U-Net, cross-entropy, Adam 1e-3, batch 16, random horizontal flips,
every trainval image, scored at its last epoch on the test list with seg's own metrics.

    python scripts/pets_baseline.py /data/oxford-pets-dev --seed 1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from seg.metrics import SegMetrics

CLASSES = ["pet", "background", "border"]


def read_split(root: Path, name: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float [0, 1] NCHW and trimaps as class ids 0..2, resized to size x size."""
    ids = [line.split()[0] for line in (root / "annotations" / name).read_text().splitlines() if line.strip()]
    images, masks = [], []
    for case in ids:
        image = Image.open(root / "images" / f"{case}.jpg").convert("RGB").resize((size, size), Image.BILINEAR)
        trimap = Image.open(root / "annotations" / "trimaps" / f"{case}.png").resize((size, size), Image.NEAREST)
        images.append(np.asarray(image).transpose(2, 0, 1))
        masks.append(np.asarray(trimap).astype(np.int64) - 1)  # trimap values 1, 2, 3 -> classes 0, 1, 2
    return torch.tensor(np.stack(images)).float() / 255, torch.tensor(np.stack(masks))


def block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class UNet(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128), n_classes: int = 3) -> None:
        super().__init__()
        self.down = nn.ModuleList(block(3 if k == 0 else widths[k - 1], w) for k, w in enumerate(widths))
        levels = range(len(widths) - 1, 0, -1)
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[k], widths[k - 1], 2, stride=2) for k in levels)
        self.dec = nn.ModuleList(block(2 * widths[k - 1], widths[k - 1]) for k in levels)
        self.head = nn.Conv2d(widths[0], n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for k, down in enumerate(self.down):
            x = down(x if k == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips[:-1])):
            x = dec(torch.cat([up(x), skip], 1))
        return self.head(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a Pets folder holding images/ and annotations/")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    x_train, y_train = read_split(args.root, "trainval.txt", args.size)
    x_test, y_test = read_split(args.root, "test.txt", args.size)
    model = UNet()
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    began = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x_train))
        for start in range(0, len(order), args.batch):
            idx = order[start:start + args.batch]
            x, y = x_train[idx], y_train[idx]
            flip = torch.rand(len(idx)) < 0.5
            x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch + 1} loss {loss.item():.4f} {time.time() - began:.0f}s", flush=True)
    model.eval()
    metrics = SegMetrics(n_classes=3, class_names=CLASSES)
    with torch.no_grad():
        for start in range(0, len(x_test), args.batch):
            metrics.update(model(x_test[start:start + args.batch]), y_test[start:start + args.batch])
    result = metrics.compute()
    print({k: round(result[k], 4) for k in ("iou", "iou_pet", "iou_background", "iou_border", "dice")})


if __name__ == "__main__":
    main()
