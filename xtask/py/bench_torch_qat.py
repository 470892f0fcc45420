"""PyTorch's own eager-mode QAT (torch.ao.quantization) on the MobileNet-v1 of `bench_train`: the peer's
QAT/float step ratio, on the same device, for docs/benchmarks.md.

    python bench_torch_qat.py --device cpu|cuda --width 0.25 --batch 64 --steps 20 --threads 2

The net is the zoo's `MobileNetV1 { width, blocks: 5 }` for 28x28x1 inputs: 3x3 stem conv+BN+ReLU6 to
round(32*width) channels, five depthwise-separable blocks (dw 3x3 conv+BN+ReLU6, pw 1x1 conv+BN+ReLU6;
64, 128 s2, 128, 256 s2, 256 channels times width, at least 4), global average pooling, linear to 10
classes. Inputs are random (the step time does not depend on the values). A step is forward,
cross-entropy, backward and SGD (momentum 0.9); float and QAT steps interleave, medians are reported.

QAT: conv+BN pairs fused to `ConvBn2d` (eager mode fuses ReLU, not ReLU6, so ReLU6 stays a module),
QuantStub/DeQuantStub around the net, the default QAT qconfig of the `x86` backend (per-channel weight
fake quant, per-tensor activation fake quant with moving-average min/max observers), `prepare_qat`.
Needs torch (any 2.x); `--device cuda` needs a CUDA build and a GPU.
"""

import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.ao.quantization as tq


def scaled(c, width):
    return max(int(round(c * width)), 4)


class ConvBnAct(nn.Sequential):
    def __init__(self, cin, cout, k, stride, groups=1):
        super().__init__(
            nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(),
        )


class MobileNetV1(nn.Module):
    BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1)]

    def __init__(self, width):
        super().__init__()
        c = scaled(32, width)
        layers = [ConvBnAct(1, c, 3, 1)]
        for cout, s in self.BLOCKS:
            co = scaled(cout, width)
            layers += [ConvBnAct(c, c, 3, s, groups=c), ConvBnAct(c, co, 1, 1)]
            c = co
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c, 10)
        self.quant = tq.QuantStub()
        self.dequant = tq.DeQuantStub()

    def forward(self, x):
        x = self.quant(x)
        x = self.features(x)
        x = x.mean((2, 3))
        x = self.fc(x)
        return self.dequant(x)

    def fuse(self):
        for m in self.features:
            tq.fuse_modules_qat(m, [["0", "1"]], inplace=True)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    torch.manual_seed(0)
    float_net = MobileNetV1(a.width).to(dev).train()
    torch.manual_seed(0)
    qat_net = MobileNetV1(a.width).train()
    qat_net.fuse()
    qat_net.qconfig = tq.get_default_qat_qconfig("x86")
    tq.prepare_qat(qat_net, inplace=True)
    qat_net = qat_net.to(dev)
    nets = {"float": float_net, "qat": qat_net}
    opts = {k: torch.optim.SGD(n.parameters(), lr=0.01, momentum=0.9) for k, n in nets.items()}
    x = torch.randn(a.batch, 1, 28, 28, device=dev)
    y = torch.randint(0, 10, (a.batch,), device=dev)
    times = {k: [] for k in nets}
    for r in range(a.steps + 5):
        order = list(nets) if r % 2 == 0 else list(reversed(list(nets)))
        for k in order:
            sync(dev)
            t0 = time.perf_counter()
            loss = nn.functional.cross_entropy(nets[k](x), y)
            opts[k].zero_grad()
            loss.backward()
            opts[k].step()
            loss.item()
            sync(dev)
            if r >= 5:
                times[k].append(time.perf_counter() - t0)
    f = statistics.median(times["float"])
    q = statistics.median(times["qat"])
    print(
        f"torch {torch.__version__} | eager QAT (torch.ao, x86 qconfig) | MobileNet-v1 a{a.width} b5 28x28x1 | "
        f"batch {a.batch} | device {dev} | {torch.get_num_threads()} threads | {a.steps} interleaved steps"
    )
    print(f"float: {f * 1e3:8.2f} ms/step")
    print(f"  qat: {q * 1e3:8.2f} ms/step {q / f:.2f}x float")


if __name__ == "__main__":
    main()
