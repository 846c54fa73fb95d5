"""Speed of exact automorphism groups: twin reduction + nauty versus nauty on the raw graph.

Run: ``python benchmarks/automorphism_speed.py [--raw-timeout 120] [--skip-resnet]``

1. MLP 784-1024-1024-1024-10 (the paper's MNIST-scale MLP): full group with twin reduction (target <= 2 s),
   then the same exact pipeline without twin reduction in a subprocess capped at ``--raw-timeout`` seconds;
   prints both times and their ratio (a lower bound on the ratio when the raw run hits the cap).
2. A ResNet-18-shaped CNN (11.7M parameters, BatchNorm, plain nn modules; target <= 5 s).

Times are wall-clock seconds on this machine's CPU; graph construction is reported separately from the
group computation.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch
import torch.nn as nn


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(784, 1024),
        nn.ReLU(),
        nn.Linear(1024, 1024),
        nn.ReLU(),
        nn.Linear(1024, 1024),
        nn.ReLU(),
        nn.Linear(1024, 10),
    )


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x if self.downsample is None else self.downsample(x)
        return self.relu(out + short)


class ResNet18(nn.Module):
    """The torchvision ResNet-18 layout (11,689,512 parameters for 1000 classes)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, c = [], 64
        for i, w in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(c, w, stride), BasicBlock(w, w, 1)))
            c = w
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _group(model, input_shape=None, reduce=True) -> dict:
    import symgraph
    from symgraph.automorphisms import compute_group

    t0 = time.perf_counter()
    g = symgraph.parameter_graph(model, input_shape=input_shape)
    t1 = time.perf_counter()
    aut = compute_group(g, reduce)
    t2 = time.perf_counter()
    return {
        "build_s": t1 - t0,
        "group_s": t2 - t1,
        "log10_order": aut.log10_order,
        "nodes": g.num_nodes,
        "edges": g.num_edges,
        "quotient_nodes": aut.quotient.n,
        "timing": aut.timing,
        "factors": aut.factors[:6],
    }


def _raw_child() -> None:
    torch.set_num_threads(1)
    print(json.dumps(_group(mlp(), reduce=False)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--raw-timeout", type=float, default=120.0)
    p.add_argument("--skip-resnet", action="store_true")
    p.add_argument("--raw-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.raw_child:
        _raw_child()
        return 0
    torch.set_num_threads(1)
    red = _group(mlp())
    print(
        f"MLP 784-1024-1024-1024-10: {red['nodes']} nodes, {red['edges']} edges; "
        f"build {red['build_s']:.2f} s; group with twin reduction {red['group_s']:.3f} s "
        f"(quotient {red['quotient_nodes']} nodes); log10|Aut| = {red['log10_order']:.2f}"
    )
    t0 = time.perf_counter()
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--raw-child"], capture_output=True, text=True, timeout=args.raw_timeout
        )
        raw = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"  raw graph (no twin reduction): group {raw['group_s']:.2f} s, log10|Aut| = "
            f"{raw['log10_order']:.2f}; speed-up of twin reduction: {raw['group_s'] / red['group_s']:.1f}x"
        )
        if abs(raw["log10_order"] - red["log10_order"]) > 1e-9:
            print("  MISMATCH between raw and reduced orders")
            return 1
    except subprocess.TimeoutExpired:
        waited = time.perf_counter() - t0
        print(
            f"  raw graph (no twin reduction): did not finish within {waited:.0f} s; "
            f"speed-up of twin reduction > {waited / red['group_s']:.0f}x"
        )
    if not args.skip_resnet:
        res = _group(ResNet18(), input_shape=(1, 3, 64, 64))
        n_params = sum(p.numel() for p in ResNet18().parameters())
        print(
            f"ResNet-18 ({n_params} parameters): {res['nodes']} nodes, {res['edges']} edges; build "
            f"{res['build_s']:.2f} s; group {res['group_s']:.3f} s (quotient {res['quotient_nodes']} nodes); "
            f"log10|Aut| = {res['log10_order']:.2f}"
        )
        print(f"  timing: {', '.join(f'{k} {v:.3f} s' for k, v in res['timing'].items())}")
        print(f"  factors: {res['factors']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
