#!/usr/bin/env python3
"""Time one exported model in the peer runtimes: onnxruntime int8 (QDQ), onnxruntime f32, LiteRT
int8 (default resolver: the XNNPACK delegate).

    bench_models.py DIR --batches 1 64 --threads 1 2 --min-time 0.5 --out DIR/peers.json [--engines ort_int8 ...]

DIR holds `model.onnx` (QDQ), `model.float.onnx` and `model.tflite`, all with the same NHWC
input. For every (engine, batch, threads) the model is run on a random batch until `--min-time`
seconds have passed (after a warm-up run), `--rounds` times; the best round's mean call time is
kept and reported as microseconds per image. Writes one JSON object:

    {"engines": {"ort_int8": {"version": "...", "cells": [{"batch": 1, "threads": 1,
     "us_per_image": 123.4, "calls": 500}, ...]}, ...}}

Only numpy, onnxruntime and ai-edge-litert are needed (the venv of `cargo xtask setup`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np


def best_us_per_image(call: Callable[[], Any], batch: int, min_time: float, rounds: int) -> tuple[float, int]:
    """Best-of-`rounds` mean call time in µs per image, and the calls of that round."""
    call()  # warm-up (allocation, kernel selection)
    best, calls_best = float("inf"), 0
    for _ in range(rounds):
        calls, start = 0, time.perf_counter()
        while True:
            call()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                break
        per_call = elapsed / calls
        if per_call < best:
            best, calls_best = per_call, calls
    return best * 1e6 / batch, calls_best


def ort_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def bench_ort(path: Path, shape: list[int], batch: int, threads: int, a: argparse.Namespace) -> tuple[float, int]:
    sess = ort_session(path, threads)
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).uniform(-1, 1, size=[batch, *shape]).astype(np.float32)
    return best_us_per_image(lambda: sess.run(None, {name: x}), batch, a.min_time, a.rounds)


def bench_litert(path: Path, shape: list[int], batch: int, threads: int, a: argparse.Namespace) -> tuple[float, int]:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_path=str(path), num_threads=threads, experimental_op_resolver_type=OpResolverType.AUTO)
    inp = interp.get_input_details()[0]
    interp.resize_tensor_input(inp["index"], [batch, *shape], strict=True)
    interp.allocate_tensors()
    x = np.random.default_rng(0).uniform(-1, 1, size=[batch, *shape]).astype(np.float32)

    def call() -> None:
        interp.set_tensor(inp["index"], x)
        interp.invoke()

    return best_us_per_image(call, batch, a.min_time, a.rounds)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--shape", type=int, nargs="+", required=True, help="per-image input shape (NHWC without N)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--min-time", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--engines", nargs="+", choices=["ort_int8", "ort_f32", "litert_int8"], help="engines to time (default: all)"
    )
    a = ap.parse_args()

    import ai_edge_litert
    import onnxruntime as ort

    engines: dict[str, tuple[str, Callable[..., tuple[float, int]], Path]] = {
        "ort_int8": (ort.__version__, bench_ort, a.dir / "model.onnx"),
        "ort_f32": (ort.__version__, bench_ort, a.dir / "model.float.onnx"),
        "litert_int8": (getattr(ai_edge_litert, "__version__", "unknown"), bench_litert, a.dir / "model.tflite"),
    }
    out: dict[str, Any] = {"engines": {}}
    for name, (version, fn, path) in engines.items():
        if a.engines is not None and name not in a.engines:
            continue
        cells = []
        for batch in a.batches:
            for threads in a.threads:
                us, calls = fn(path, a.shape, batch, threads, a)
                cells.append({"batch": batch, "threads": threads, "us_per_image": us, "calls": calls})
        out["engines"][name] = {"version": version, "cells": cells}
    a.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
