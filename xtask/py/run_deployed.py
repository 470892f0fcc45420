#!/usr/bin/env python3
"""Run a deployed model (.tflite in LiteRT, .onnx in onnxruntime) over a batch of images.

Used by `cargo xtask quantize` to measure the top-1 of the files it writes in their own runtimes.

    run_deployed.py --model model.tflite --runtime litert_ref|litert_xnnpack \
        --input images.npy --out preds.json
    run_deployed.py --model model.onnx --runtime onnxruntime --input images.npy --out preds.json

`images.npy` is the f32 NHWC batch the qat runtime sees (the deployed files take it as is and
quantize it themselves). Writes `{"runtime": ..., "version": ..., "predictions": [argmax, ...]}`.
Only numpy, ai-edge-litert and onnxruntime are needed (the peers venv of `cargo xtask setup`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np

BATCH = 256


def litert(model: Path, resolver_name: str) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    import ai_edge_litert
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = {"litert_ref": OpResolverType.BUILTIN_REF, "litert_xnnpack": OpResolverType.AUTO}[resolver_name]
    interp = Interpreter(model_path=str(model), num_threads=1, experimental_op_resolver_type=resolver)
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    shape: list[int] = []

    def run(x: np.ndarray) -> np.ndarray:
        if list(x.shape) != shape:
            interp.resize_tensor_input(inp["index"], list(x.shape), strict=True)
            interp.allocate_tensors()
            shape[:] = list(x.shape)
        interp.set_tensor(inp["index"], x.astype(inp["dtype"]))
        interp.invoke()
        return np.array(interp.get_tensor(out["index"]))

    return getattr(ai_edge_litert, "__version__", "unknown"), run


def onnxruntime(model: Path) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return ort.__version__, lambda x: sess.run(None, {name: x})[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--runtime", choices=["litert_ref", "litert_xnnpack", "onnxruntime"], required=True)
    ap.add_argument("--input", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    x = np.load(args.input)
    if args.runtime == "onnxruntime":
        version, run = onnxruntime(args.model)
    else:
        version, run = litert(args.model, args.runtime)
    preds: list[int] = []
    for start in range(0, len(x), BATCH):
        y = run(np.ascontiguousarray(x[start : start + BATCH]))
        preds.extend(int(p) for p in np.argmax(y.reshape(len(y), -1), axis=1))
    args.out.write_text(json.dumps({"runtime": args.runtime, "version": version, "predictions": preds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
