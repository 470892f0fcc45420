//! # qat-export — fold a trained float/QAT graph into an integer-only `Int8Model`
//!
//! Export is where quantized accuracy is won or lost: BN left unfolded, layers silently left in
//! float, observers that return default ranges. This crate turns a framework-neutral float graph
//! into the integer model of Jacob et al. 2018 (arXiv 1712.05877) §2, and proves, layer by layer,
//! that the integer model does what the training-time simulation (§3) did.
//!
//! | paper | module | what |
//! |---|---|---|
//! | — | [`ir`], [`validate`] | [`FloatGraph`]: nodes, weights (OHWI), BN params, activations, observed ranges, bit widths, weight schemes; typed validation |
//! | §3.2 (eq. 14) | [`passes::bn_fold`] | `W' = W·γ/√(var + eps)`, `b' = β + γ(b − mean)/√(var + eps)` |
//! | §2.1, §3 | [`passes::ranges`] | observed range → nudged asymmetric activation params |
//! | §2.1 | [`passes::weights`] | per-channel / per-tensor symmetric narrow, or asymmetric uint8 weights |
//! | §2.4, eq. 5–6 | [`passes::weights`] | int32 bias `b/(S_in·S_w[c])`, multipliers `M[c] = S_in·S_w[c]/S_out` |
//! | §2.4 | [`passes::fuse`] | ReLU/ReLU6 as the requantization clamp |
//! | §2 | [`plan`], [`emit`] | [`QuantPlan`] (every decision, once; refusals) → `Int8Model` |
//! | §3 | [`interp`], [`simulate`] | float interpreter; the simulation in the target's arithmetic (qat-core [`qat_core::target`]) |
//! | whitepaper §3.1 | [`mod@calibrate`] | PTQ: min/max, EMA, percentile observers → export |
//! | — | [`fidelity`] | per-layer SQNR, max \|Δ\| in LSBs, share within 1 LSB, argmax agreement |
//! | — | [`tflite`], [`onnx`], [`interchange`] | `.tflite` (int8) and ONNX QDQ writers, float ONNX; exact or a typed [`ExportFormatError`] |
//! | — | [`crosscheck`] | case files for the official runtimes (LiteRT, onnxruntime) and their equal-code shares |
//!
//! ## Public API
//! - Build: `FloatGraph::new(name)`, `.input(name, &shape)`, `.conv2d(name, x, Conv2d::new(w, [o,kh,kw,i]).with_…)`,
//!   `.linear(…)`, `.add(…)`, `.concat(…)`, `.avg_pool(…)`, `.max_pool(…)`, `.global_avg_pool(…)`,
//!   `.flatten(…)`, `.output(…)`; `.set_range(id, min, max)`, `.set_activation_bits(id, b)`,
//!   `.set_all_weight_quant(WeightQuant)`; `.validate() -> Result<Vec<shape>, GraphError>`;
//!   `.to_json()/from_json`, `.to_bincode()/from_bincode`. Helpers [`ir::ohwi_from_oihw`]
//!   (and back, [`ir::oihw_from_ohwi`]), [`ir::linear_from_nchw_flatten`] (and back,
//!   [`ir::linear_to_nchw_flatten`]) for PyTorch layouts.
//! - Export: [`export`]`(&graph, &ExportOptions) -> Result<Int8Model, ExportError>`, or
//!   [`QuantPlan::new`] then [`QuantPlan::to_int8_model`]`() -> Result<Int8Model, ExportError>`
//!   to keep the plan for the simulation. [`ExportOptions::target`] names the deployment target
//!   whose arithmetic the plan, the simulation and the model use ([`qat_core::Target`]: `qat`,
//!   the default, one rounding; `tflite`, LiteRT's reference kernels; `ort` and `xnnpack`, the
//!   `f32` requantization of onnxruntime and XNNPACK — the `.qat8` runtime runs each of them).
//!   A node the target cannot
//!   compute as planned is refused ([`Refusal::Target`]).
//! - PTQ: [`calibrate()`]`(&graph, batches, CalibrationMethod) -> Result<FloatGraph, CalibrationError>`,
//!   [`ptq`]`(&graph, batches, &PtqConfig) -> Result<QuantPlan, PtqError>`, [`ptq_export`].
//! - Simulation: [`simulate::simulate`]`(&plan, input) -> Result<Vec<ArrayD<f32>>, GraphError>`
//!   (every node's output on its grid), [`simulate::simulate_codes`] (the codes),
//!   [`simulate::eval_codes`] (one node on given codes).
//! - Interchange: [`tflite::to_tflite`]`(&model, &TfliteOptions) -> Result<Exported, ExportFormatError>`,
//!   [`onnx::to_onnx_qdq`], [`onnx::float_to_onnx`]`(&graph)`; [`tflite::read`] and
//!   [`onnx::proto`] read files back.
//! - Fidelity: [`fidelity_report`]`(&plan, batches) -> Result<FidelityReport, FidelityError>`;
//!   [`FidelityReport::to_json`], [`FidelityReport::to_table`], [`FidelityReport::to_markdown`].
//!
//! ## Example: build, set ranges, export, run
//! ```
//! use ndarray::ArrayD;
//! use qat_export::ir::{Activation, BatchNorm, Conv2d, Linear};
//! use qat_export::{ExportOptions, FloatGraph, QuantPlan, export, fidelity_report};
//! use qat_int8_runtime::Executor;
//!
//! // x[4,4,1] → conv 3×3 (BN, ReLU) → global average pool → linear → logits
//! let mut g = FloatGraph::new("tiny");
//! let x = g.input("x", &[4, 4, 1]);
//! let conv = Conv2d::new((0..18).map(|i| (i as f32 - 9.0) / 20.0).collect(), [2, 3, 3, 1])
//!     .with_padding([1, 1, 1, 1])
//!     .with_batch_norm(BatchNorm { gamma: vec![1.0, 0.5], beta: vec![0.1, 0.2],
//!                                  mean: vec![0.0, 0.1], var: vec![1.0, 0.5], eps: 1e-5 })
//!     .with_activation(Activation::Relu);
//! let c = g.conv2d("conv", x, conv);
//! let p = g.global_avg_pool("gap", c);
//! let fc = g.linear("fc", p, Linear::new(vec![1.0, -1.0, 0.5, 0.5, -0.5, 1.0], [3, 2]));
//! g.output("logits", fc);
//!
//! // Observed ranges (from QAT observers or `calibrate`); uncalibrated nodes are refused.
//! assert!(export(&g, &ExportOptions::default()).is_err());
//! g.set_range(x, -1.0, 1.0)?;
//! g.set_range(c, 0.0, 2.0)?;
//! g.set_range(fc, -2.0, 2.0)?;
//!
//! let plan = QuantPlan::new(&g, &ExportOptions::default())?;
//! let model = plan.to_int8_model()?;
//! model.validate()?;
//! assert_eq!(model.rounding, qat_int8_runtime::Rounding::Single); // ExportOptions::target: qat
//! let input = ArrayD::from_shape_vec(vec![2, 4, 4, 1], (0..32).map(|i| (i as f32 / 16.0) - 1.0).collect())?;
//! let logits = Executor::new(&model)?.run(input.view())?;
//! assert_eq!(logits[0].shape(), &[2, 3]);
//!
//! // The integer model computes what the simulation computes, code for code.
//! let report = fidelity_report(&plan, [input.view()])?;
//! assert_eq!(report.min_exact(), 1.0);
//! println!("{}", report.to_table());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod analysis;
pub mod calibrate;
pub mod crosscheck;
pub mod emit;
mod error;
pub mod fidelity;
pub mod interchange;
pub mod interp;
pub mod ir;
mod ir_bincode;
pub mod limits;
pub mod onnx;
pub mod passes;
pub mod plan;
pub mod simulate;
pub mod tflite;
pub mod validate;

pub use calibrate::{CalibrationMethod, PtqConfig, calibrate, ptq, ptq_export};
pub use emit::export;
pub use error::{CalibrationError, ExportError, GraphError, PtqError, Refusal, UnsupportedNode};
pub use fidelity::{FidelityError, FidelityReport, fidelity_report};
pub use interchange::{ExportFormatError, Exported, Format, Unsupported};
pub use ir::{FloatGraph, NodeId};
pub use plan::{ExportOptions, LayerQuant, QuantPlan};
