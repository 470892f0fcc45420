#!/usr/bin/env python3
"""The PyTorch-made test models of the ONNX importer (`data/torch-models/`).

Run by `cargo xtask torch-models`, which installs the pinned `onnx` package (what
`torch.onnx.export` needs besides torch; `xtask/py/torch-models-requirements.txt`) and runs this
script with the torch 2.13 venv of `cargo xtask setup`.

Three models that PyTorch defines, each exported with a dynamic batch axis by
`torch.onnx.export(..., dynamo=False)` (the TorchScript exporter) twice: at opset 13 in eval mode
(the exporter folds every batch norm that follows a conv into it, what most users get) and at
opset 17 with `training=TrainingMode.PRESERVE` on the eval-mode model (the batch norms stay
`BatchNormalization` nodes, which the importer folds itself):

* `mnist_cnn`: a small CNN (conv + batch norm + ReLU, max pool, depthwise conv + batch norm + ReLU6,
  pointwise conv, max pool, flatten, two linear layers with dropout) trained for two epochs on
  `data/mnist-10k` (input `[N, 1, 28, 28]`, pixels `(p/255 − 0.1307)/0.3081`, stored in the file's
  `metadata_props` as `input_mean` / `input_std`).
* `mobilenet_v2`: torchvision's MobileNetV2 layout (inverted residual blocks, ReLU6, batch norm,
  dropout + linear classifier) at width 0.25 with a last 1×1 conv of 320 channels (torchvision:
  1280), input `[N, 3, 32, 32]`, 10 classes, random weights.
* `resnet18`: torchvision's ResNet-18 layout (7×7 stride-2 stem, 3×3 stride-2 max pool, four stages
  of two basic blocks with downsampling shortcuts, global average pool, linear) with a base width
  of 8 instead of 64, input `[N, 3, 32, 32]`, 10 classes, random weights.

The random models' batch-norm statistics are those of random inputs (a few batches in training
mode), then the affine parameters are randomized: every batch norm folds to something non-trivial
and the activations keep a sane range through the depth. Everything is seeded; the training is on
one CPU thread.
"""

from __future__ import annotations

import argparse
import gzip
import struct
import sys
from pathlib import Path

import torch
import torch.nn as nn

OPSETS = (13, 17)
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


# --------------------------------------------------------------------------- MobileNetV2


def make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's `_make_divisible`: round to a multiple of `divisor`, never 10 % below `v`."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def conv_bn_relu6(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = int(round(cin * expand))
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn_relu6(cin, hidden, kernel=1))
        layers += [
            conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision.models.MobileNetV2 (same blocks, settings and classifier; `last_channel`
    overrides the width of the last 1×1 conv, 1280 in torchvision)."""

    def __init__(self, num_classes: int = 10, width_mult: float = 1.0, last_channel: int | None = None) -> None:
        super().__init__()
        settings = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]
        cin = make_divisible(32 * width_mult)
        self.last_channel = last_channel or make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [conv_bn_relu6(3, cin, stride=2)]
        for t, c, n, s in settings:
            cout = make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        features.append(conv_bn_relu6(cin, self.last_channel, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.last_channel, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(torch.flatten(x, 1))


# --------------------------------------------------------------------------- ResNet-18


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """torchvision.models.resnet18's layout with base width `width` (torchvision: 64)."""

    def __init__(self, num_classes: int = 10, width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, cin = [], width
        for i in range(4):
            cout = width * 2**i
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# --------------------------------------------------------------------------- MNIST CNN


def mnist_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.BatchNorm2d(8),
        nn.ReLU6(),
        nn.Conv2d(8, 16, 1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 7 * 7, 32),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Linear(32, 10),
    )


def read_idx(path: Path, header: int) -> torch.Tensor:
    data = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8)


def load_mnist(d: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = read_idx(d / f"{split}-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28).float() / 255
    y = read_idx(d / f"{split}-labels-idx1-ubyte.gz", 8).long()
    return (x - MNIST_MEAN) / MNIST_STD, y


def train_mnist(data: Path) -> tuple[nn.Module, float]:
    x, y = load_mnist(data, "train")
    xt, yt = load_mnist(data, "t10k")
    torch.manual_seed(0)
    m = mnist_cnn()
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    m.train()
    for _ in range(2):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(m(x[idx]), y[idx]).backward()
            opt.step()
    m.eval()
    with torch.no_grad():
        acc = (m(xt).argmax(1) == yt).float().mean().item()
    return m, acc


# --------------------------------------------------------------------------- random weights


def settle_batch_norms(m: nn.Module, shape: tuple[int, ...], seed: int) -> None:
    """Batch-norm statistics of random inputs (cumulative average), then random affine parameters."""
    g = torch.Generator().manual_seed(seed)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.reset_running_stats()
            mod.momentum = None
    m.train()
    with torch.no_grad():
        for _ in range(4):
            m(torch.randn((16, *shape), generator=g))
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                c = mod.num_features
                mod.weight.copy_(0.5 + torch.rand(c, generator=g))
                mod.bias.copy_(0.2 * torch.randn(c, generator=g))
    m.eval()


# --------------------------------------------------------------------------- export


def export(m: nn.Module, shape: tuple[int, ...], path: Path, opset: int, metadata: dict[str, str]) -> None:
    import onnx  # the pinned package of torch-models-requirements.txt

    mode = torch.onnx.TrainingMode.EVAL if opset == OPSETS[0] else torch.onnx.TrainingMode.PRESERVE
    m.eval()
    torch.onnx.export(
        m,
        torch.zeros((1, *shape)),
        str(path),
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}},
        opset_version=opset,
        training=mode,
        dynamo=False,
    )
    model = onnx.load(str(path))
    for k, v in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    ops = sorted({n.op_type for n in model.graph.node})
    print(f"{path.name}: opset {opset}, {path.stat().st_size} bytes, ops {', '.join(ops)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="the MNIST IDX directory (data/mnist-10k)")
    ap.add_argument("--out", type=Path, required=True, help="output directory (data/torch-models)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)

    cnn, acc = train_mnist(args.data)
    print(f"mnist_cnn: torch float top-1 on {args.data}/t10k: {100 * acc:.2f} %")
    torch.manual_seed(1)
    mobilenet = MobileNetV2(num_classes=10, width_mult=0.25, last_channel=320)
    settle_batch_norms(mobilenet, (3, 32, 32), seed=2)
    torch.manual_seed(3)
    resnet = ResNet18(num_classes=10, width=8)
    settle_batch_norms(resnet, (3, 32, 32), seed=4)

    norm = {"input_mean": str(MNIST_MEAN), "input_std": str(MNIST_STD)}
    for opset in OPSETS:
        export(cnn, (1, 28, 28), args.out / f"mnist_cnn-opset{opset}.onnx", opset, norm)
        export(mobilenet, (3, 32, 32), args.out / f"mobilenet_v2-opset{opset}.onnx", opset, {})
        export(resnet, (3, 32, 32), args.out / f"resnet18-opset{opset}.onnx", opset, {})
    return 0


if __name__ == "__main__":
    sys.exit(main())
