//! # qat-train — quantization-aware training (paper §3)
//!
//! | paper | module | what |
//! |---|---|---|
//! | §3 "activation ranges by EMA" | [`observer`] | min/max, EMA and histogram observers |
//! | §3, §3.2 (whitepaper §3.2.2 eq. 22–31) | [`layers`] | QAT modules: conv+BN folding with the σ_B/σ correction, depthwise, linear, add, concat, pooling |
//! | §3 schedule (quant delay, BN freeze) | [`schedule`] | the typed training state machine |
//! | §4 experiments | [`models`], [`data`], [`trainer`], [`checkpoint`] | model zoo, datasets, trainer |
//! | §2 ⇐ §3 | [`convert`] | a trained model → qat-export's `FloatGraph` |
//! | §3 on a model brought as a float graph | [`models::from_float_graph`], [`finetune`] | an imported float model → QAT net (weights, BN statistics) → fine-tuning with the pipeline's schedule → export |
//! | §3 "the integer model matches its simulation" | [`fidelity`] | the libtorch fake-quant model vs the export's simulation, node by node |

/// `Display` (`$fmt` with the name field, then the kind) and `Error` for an error struct that
/// names its subject once and says what went wrong in `kind`. The source is the kind's own source,
/// so the kind's message, already in `Display`, is not repeated down the error chain.
macro_rules! named_error {
    ($ty:ty, $name:ident, $fmt:literal) => {
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, $fmt, self.$name, self.kind)
            }
        }

        impl std::error::Error for $ty {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                std::error::Error::source(&self.kind)
            }
        }
    };
}

pub mod checkpoint;
pub mod convert;
pub mod data;
pub mod fidelity;
pub mod finetune;
pub mod layers;
pub mod models;
pub mod observer;
pub mod schedule;
pub mod trainer;
