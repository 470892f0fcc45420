//! # qat-export — fold a trained float/QAT graph into an integer-only `Int8Model`
//!
//! (Public API summary and example: filled below.)

pub mod calibrate;
pub mod emit;
mod error;
pub mod fidelity;
pub mod interp;
pub mod ir;
pub mod passes;
pub mod plan;
pub mod simulate;
pub mod validate;

pub use calibrate::{CalibrationMethod, PtqConfig, calibrate, ptq, ptq_export};
pub use emit::export;
pub use error::{CalibrationError, ExportError, GraphError, PtqError, Refusal};
pub use fidelity::{FidelityError, FidelityReport, fidelity_report};
pub use ir::{FloatGraph, NodeId};
pub use plan::{ExportOptions, LayerQuant, QuantPlan};
