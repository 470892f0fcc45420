#!/usr/bin/env python3
"""Cross-check an exported .tflite / .onnx model in the official runtimes.

Reads a case directory written by qat-export (`qat_export::crosscheck::CaseWriter`):

    manifest.json           what to run and what to compare (see below)
    model.tflite|.onnx      the deployable model (graph outputs only)
    model.debug.*           optional: the same model with every quantized tensor as a graph output
    input.npy               the f32 input batch, NHWC like the qat runtime
    expected/*.npy          the codes our runtime computed, in the file's dtype and layout

manifest.json:

    {"format": "tflite" | "onnx", "model": "model.tflite", "debug_model": "model.debug.tflite" | null,
     "input": {"name": "x", "file": "input.npy"},
     "tensors": [{"name": "conv1", "expected": "expected/000.npy", "output": false,
                  "kind": "codes" | "float", "dequantize": null | {"scale": s, "zero_point": z,
                  "qmin": lo, "qmax": hi}}]}

`kind = codes`: integer codes compared exactly (equal share, max |Δ| in codes). A tensor whose
runtime value is float (a graph output after DEQUANTIZE / DequantizeLinear) and that carries
`dequantize` is mapped back to codes `clamp(round(y / scale) + zero_point, qmin, qmax)` first.
`kind = float`: float values (the f32 ONNX export), reported as max |Δ| and max |Δ| / max |expected|.

Optional manifest keys: `"runtimes": ["litert_ref", ...]` runs only those configurations, and
`"save_outputs": true` saves each runtime's first graph output as `outputs/<runtime>.npy` (the
pipeline's deployed table reads the logits back for top-1 and argmax agreement).

Runtimes: for .tflite, LiteRT with reference kernels (`OpResolverType.BUILTIN_REF`), LiteRT's
optimized builtin kernels without delegates (`BUILTIN_WITHOUT_DEFAULT_DELEGATES`) and LiteRT's
default (`AUTO`: the XNNPACK delegate); for .onnx, onnxruntime with all graph optimizations, with
its default settings and with `session.x64quantprecision` (see ORT_CONFIGS).
Intermediate tensors come from `experimental_preserve_all_tensors` where it works (no delegate),
and otherwise from the debug model, whose graph outputs are every quantized tensor; the deploy
model's own outputs are always compared too, and `debug_outputs_equal` says whether exposing the
intermediates changed them.

Writes one JSON object:

    {"runtimes": {"litert_ref": {"version": "...", "ops": {"CONV_2D": 3, ...},
                                 "tensors": {"conv1": {"equal": 1.0, "max_abs_diff": 0,
                                             "elements": 512, "source": "deploy"}}, ...}}}

Only numpy, ai-edge-litert and onnxruntime are needed (the venv of `cargo xtask setup`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

Values = dict[str, np.ndarray]


def compare(spec: dict[str, Any], expected: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    """Equal share and max |Δ| of one tensor (codes), or float error (kind = float)."""
    if got.shape != expected.shape:
        return {"error": f"shape {list(got.shape)} != expected {list(expected.shape)}"}
    n = int(expected.size)
    if spec.get("kind", "codes") == "float":
        diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
        scale = float(np.max(np.abs(expected))) if n else 0.0
        max_diff = float(diff.max()) if n else 0.0
        return {"elements": n, "max_abs_diff": max_diff, "max_rel_diff": max_diff / max(scale, 1e-12)}
    deq = spec.get("dequantize")
    if np.issubdtype(got.dtype, np.floating):
        if deq is None:
            return {"error": f"runtime value is {got.dtype}, no dequantize parameters to map it to codes"}
        got = np.clip(np.rint(got / deq["scale"]) + deq["zero_point"], deq["qmin"], deq["qmax"])
    diff = np.abs(got.astype(np.int64) - expected.astype(np.int64))
    return {
        "elements": n,
        "equal": float(np.count_nonzero(diff == 0)) / n if n else 1.0,
        "max_abs_diff": int(diff.max()) if n else 0,
    }


def compare_all(case: Path, manifest: dict[str, Any], sources: list[tuple[str, Values]]) -> dict[str, Any]:
    """Compares every manifest tensor with the first source that has it."""
    out: dict[str, Any] = {}
    for spec in manifest["tensors"]:
        expected = np.load(case / spec["expected"])
        for source, values in sources:
            if spec["name"] in values:
                res = compare(spec, expected, values[spec["name"]])
                res["source"] = source
                break
        else:
            res = {"error": "not exposed by this runtime"}
        out[spec["name"]] = res
    return out


def outputs_equal(a: Values, b: Values) -> bool:
    common = set(a) & set(b)
    return bool(common) and all(np.array_equal(a[k], b[k]) for k in common)


def wanted(manifest: dict[str, Any], runtime: str) -> bool:
    """Whether the manifest asks for this runtime configuration (all when it names none)."""
    only = manifest.get("runtimes")
    return not only or runtime in only


def save_output(case: Path, manifest: dict[str, Any], runtime: str, outputs: Values) -> None:
    """With `save_outputs`, writes the first graph output to outputs/<runtime>.npy."""
    if not manifest.get("save_outputs") or not outputs:
        return
    (case / "outputs").mkdir(exist_ok=True)
    np.save(case / "outputs" / f"{runtime}.npy", next(iter(outputs.values())))


# --------------------------------------------------------------------------- LiteRT


def run_litert(path: Path, x: np.ndarray, resolver: Any, preserve: bool, threads: int) -> tuple[Values, Values, Counter[str]]:
    """(graph outputs, every readable tensor, op histogram) of one LiteRT run."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(
        model_path=str(path),
        num_threads=threads,
        experimental_op_resolver_type=resolver,
        experimental_preserve_all_tensors=preserve,
    )
    inp = interp.get_input_details()[0]
    interp.resize_tensor_input(inp["index"], list(x.shape), strict=True)
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], x.astype(inp["dtype"]))
    interp.invoke()
    outputs = {d["name"]: np.array(interp.get_tensor(d["index"])) for d in interp.get_output_details()}
    every: Values = {}
    if preserve:
        for d in interp.get_tensor_details():
            try:
                every[d["name"]] = np.array(interp.get_tensor(d["index"]))
            except ValueError:
                pass  # a tensor without data (e.g. an unused optional input)
    ops = Counter(str(op["op_name"]) for op in interp._get_ops_details())  # noqa: SLF001
    return outputs, every, ops


def litert(case: Path, manifest: dict[str, Any], x: np.ndarray, threads: int) -> dict[str, Any]:
    import ai_edge_litert
    from ai_edge_litert.interpreter import OpResolverType

    version = getattr(ai_edge_litert, "__version__", "unknown")
    model = case / manifest["model"]
    debug = case / manifest["debug_model"] if manifest.get("debug_model") else None
    result: dict[str, Any] = {}
    configs = [
        ("litert_ref", OpResolverType.BUILTIN_REF, True),
        ("litert_builtin", OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES, True),
        ("litert_xnnpack", OpResolverType.AUTO, False),
    ]
    for name, resolver, preserve in configs:
        if not wanted(manifest, name):
            continue
        try:
            outputs, every, ops = run_litert(model, x, resolver, preserve, threads)
            save_output(case, manifest, name, outputs)
            sources: list[tuple[str, Values]] = [("deploy", outputs), ("preserved", every)]
            entry: dict[str, Any] = {"version": version, "ops": dict(ops)}
            if not preserve and debug is not None:
                dbg_outputs, _, dbg_ops = run_litert(debug, x, resolver, False, threads)
                sources.append(("debug", dbg_outputs))
                entry["debug_ops"] = dict(dbg_ops)
                entry["debug_outputs_equal"] = outputs_equal(outputs, dbg_outputs)
            entry["tensors"] = compare_all(case, manifest, sources)
        except Exception as e:  # noqa: BLE001 - report, never hide, a runtime that fails
            entry = {"version": version, "error": f"{type(e).__name__}: {e}"}
        result[name] = entry
    return result


# --------------------------------------------------------------------------- onnxruntime


def run_ort(path: Path, x: np.ndarray, threads: int, profile_dir: str | None, config: dict[str, str]) -> tuple[Values, Counter[str]]:
    """(graph outputs, op histogram of the optimized graph) of one onnxruntime run."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    for key, value in config.items():
        so.add_session_config_entry(key, value)
    if profile_dir is not None:
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(profile_dir, "ort")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    names = [o.name for o in sess.get_outputs()]
    values = dict(zip(names, sess.run(names, {name: x})))
    ops: Counter[str] = Counter()
    if profile_dir is not None:
        with open(sess.end_profiling()) as f:
            for ev in json.load(f):
                args = ev.get("args", {})
                if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
                    ops[args.get("op_name", "?")] += 1
    return values, ops


# onnxruntime's configurations: its defaults, and with `session.x64quantprecision`, which makes
# MLAS avoid the int16 saturation of its u8 x s8 kernels (`vpmaddubsw`) on x86 CPUs without VNNI
# by converting such weights to u8 x u8 (onnxruntime PR 12088; off by default).
ORT_CONFIGS: dict[str, dict[str, str]] = {
    "onnxruntime": {},
    "onnxruntime_x64prec": {"session.x64quantprecision": "1"},
}


def onnxruntime(case: Path, manifest: dict[str, Any], x: np.ndarray, threads: int) -> dict[str, Any]:
    import onnxruntime as ort

    result: dict[str, Any] = {}
    for name, config in ORT_CONFIGS.items():
        if not wanted(manifest, name):
            continue
        entry: dict[str, Any] = {"version": ort.__version__, "config": config}
        try:
            with tempfile.TemporaryDirectory() as tmp:
                outputs, ops = run_ort(case / manifest["model"], x, threads, tmp, config)
            save_output(case, manifest, name, outputs)
            entry["ops"] = dict(ops)
            sources: list[tuple[str, Values]] = [("deploy", outputs)]
            if manifest.get("debug_model"):
                with tempfile.TemporaryDirectory() as tmp:
                    dbg, dbg_ops = run_ort(case / manifest["debug_model"], x, threads, tmp, config)
                sources.append(("debug", dbg))
                entry["debug_ops"] = dict(dbg_ops)
                entry["debug_outputs_equal"] = outputs_equal(outputs, dbg)
            entry["tensors"] = compare_all(case, manifest, sources)
        except Exception as e:  # noqa: BLE001 - report, never hide, a runtime that fails
            entry["error"] = f"{type(e).__name__}: {e}"
        result[name] = entry
    return result


RUNNERS: dict[str, Callable[[Path, dict[str, Any], np.ndarray, int], dict[str, Any]]] = {
    "tflite": litert,
    "onnx": onnxruntime,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("case", type=Path, help="case directory holding manifest.json")
    ap.add_argument("--out", type=Path, help="result JSON (default: CASE/result.json)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    manifest = json.loads((args.case / "manifest.json").read_text())
    runner = RUNNERS.get(manifest["format"])
    if runner is None:
        print(f"unknown format {manifest['format']!r} (tflite | onnx)", file=sys.stderr)
        return 2
    x = np.load(args.case / manifest["input"]["file"])
    result = {"format": manifest["format"], "numpy": np.__version__, "runtimes": runner(args.case, manifest, x, args.threads)}
    out = args.out or args.case / "result.json"
    out.write_text(json.dumps(result, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
