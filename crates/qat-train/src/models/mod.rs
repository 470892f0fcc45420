//! Model zoo built from the QAT layers: one definition, three uses.
//!
//! A model is a [`Net`]: a small graph of QAT layers ([`crate::layers`]) in topological order, built once
//! by a [`NetBuilder`]. The same `Net`
//! 1. trains in **float** mode (fake quant off, observers frozen, BN with batch statistics),
//! 2. trains in **QAT** mode (weights fake-quantized after BN folding, activations fake-quantized after the
//!    activation function and after every add — paper §3), the phases being driven by the
//!    [`crate::schedule::Schedule`] through [`crate::schedule::PhaseControl`], the one whole-model
//!    control,
//! 3. converts to qat-export's [`qat_export::ir::FloatGraph`] ([`crate::convert`]): every node maps to one IR
//!    node, with weights, BN statistics, activation, observed range and bit widths read from the layers'
//!    export views.
//!
//! The zoo ([`zoo`]): LeNet-style (tests), MobileNet-v1 (width multiplier, input size, ReLU/ReLU6),
//! MobileNet-v2-style with inverted residuals (quantized adds), CIFAR ResNet-8/20 (6n+2 layers).
//!
//! ```
//! use qat_train::models::{self, ModelSpec};
//! use tch::{Device, Kind, Tensor};
//! let mut net = models::build(&ModelSpec::lenet(), Device::Cpu)?;
//! let y = net.forward_t(&Tensor::zeros([2, 1, 28, 28], (Kind::Float, Device::Cpu)), true)?;
//! assert_eq!(y.size(), vec![2, 10]);
//! # Ok::<(), qat_train::models::ModelError>(())
//! ```
//!
//! | file | what |
//! |---|---|
//! | `spec.rs` | [`ModelSpec`], [`Architecture`] |
//! | `net.rs` | [`Net`], its nodes, forward pass and [`crate::schedule::PhaseControl`] |
//! | `builder.rs` | [`NetBuilder`] |
//! | `from_graph.rs` | [`from_float_graph`]: a net from a float graph (an imported model) |
//! | `zoo.rs` | the architectures, [`build`] |

mod builder;
mod from_graph;
mod net;
mod spec;
pub mod zoo;

use thiserror::Error;

use crate::layers::LayerError;

pub use builder::{NetBuilder, Pooling};
pub use from_graph::{FromGraphError, GraphNetOptions, UnsupportedNode, from_float_graph};
pub use net::{Net, Node, NodeOp, NodeRef, ObserverSnapshot};
pub use spec::{Architecture, LayerBitsOverride, ModelSpec};
pub use zoo::build;

/// An error of model construction, of a forward pass or of the whole-model control: the model's
/// name (given once) and what went wrong.
#[derive(Debug)]
pub struct ModelError {
    /// The model's name.
    pub model: String,
    /// What went wrong.
    pub kind: ModelErrorKind,
}

/// What went wrong in a model.
#[derive(Debug, Error)]
pub enum ModelErrorKind {
    /// A layer failed (the error names the layer; boxed to keep the error small).
    #[error(transparent)]
    Layer(Box<LayerError>),
    /// The architecture is inconsistent (shapes, unknown node, bad spec).
    #[error("{0}")]
    Build(String),
    /// The forward pass could not compute a node from the graph (an input not computed or already
    /// freed, an op without a single-input forward).
    #[error("node '{node}': {what}")]
    Forward {
        /// The node's name.
        node: String,
        /// What is wrong.
        what: String,
    },
    /// A torch op of the graph glue (flatten) failed.
    #[error("node '{node}': libtorch error: {source}")]
    Torch {
        /// The node's name.
        node: String,
        /// libtorch's error.
        #[source]
        source: tch::TchError,
    },
}

impl ModelError {
    /// The error `kind` of the model `model`.
    pub fn new(model: &str, kind: ModelErrorKind) -> Self {
        Self {
            model: model.to_string(),
            kind,
        }
    }

    /// The failure `e` of a layer of the model `model`.
    pub fn layer(model: &str, e: LayerError) -> Self {
        Self::new(model, ModelErrorKind::Layer(Box::new(e)))
    }
}

named_error!(ModelError, model, "model {}: {}");
