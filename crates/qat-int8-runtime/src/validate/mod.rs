//! Whole-model validation: everything the executor relies on is checked here, once, before any
//! inference (shapes consistent, tensor references in range, topological order, zero points and
//! multipliers valid, sizes bounded).
//!
//! After [`Int8Model::validate`] succeeds, every kernel may index its buffers without further
//! checks; no op can divide by zero (pool windows are never empty) and every derived fixed-point
//! multiplier (Add, Concat, and the average pools' `M' = S_in/(S_out·count)` for every window
//! size, bounded by its `count = 1` value `S_in/S_out`) is representable.

use thiserror::Error;

use crate::model::{DType, Int8Model, TensorInfo};

mod ops;

use ops::Ctx;

/// Largest number of elements one tensor may hold per sample (2^26 ≈ 67 M).
pub const MAX_TENSOR_ELEMENTS: usize = 1 << 26;
/// Largest reduction length `K = kh·kw·C_in/groups` of a conv / FC. With u8 × i8 products
/// (|q1·q2| ≤ 255·128) and `K ≤ 2^16` the int32 accumulator `Σ q1·q2` cannot overflow.
pub const MAX_REDUCTION: usize = 1 << 16;
/// Largest pooling window (cells): `255·2^23` still fits the int32 window sum, and so does the
/// centered sum `Σ(q − Z_in)` the rescaling average multiplies by `M'`.
pub const MAX_POOL_WINDOW: usize = 1 << 23;
/// Largest kernel extent, stride, dilation or padding accepted in any spatial field.
pub const MAX_SPATIAL: usize = 1 << 16;

/// Why a model is invalid: names the tensor / op (index and kind) and the field.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ValidationError {
    /// A problem with the model as a whole (no tensors, no outputs, …).
    #[error("model: {problem}")]
    Model {
        /// What is wrong.
        problem: String,
    },
    /// A problem with one tensor's description.
    #[error("tensor {tensor} ('{name}'), field `{field}`: {problem}")]
    Tensor {
        /// Tensor index.
        tensor: usize,
        /// Tensor name.
        name: String,
        /// The field at fault (`shape`, `dtype`, `quant`).
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// A problem with one op.
    #[error("op {op} ({kind}), field `{field}`: {problem}")]
    Op {
        /// Op index in [`Int8Model::ops`].
        op: usize,
        /// Op kind (`Conv2d`, `Add`, …).
        kind: &'static str,
        /// The field at fault.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The graph input is invalid.
    #[error("graph input (tensor {tensor}): {problem}")]
    Input {
        /// Tensor index given as input.
        tensor: usize,
        /// What is wrong.
        problem: String,
    },
    /// A graph output is invalid.
    #[error("graph output #{index} (tensor {tensor}): {problem}")]
    Output {
        /// Position in [`Int8Model::outputs`].
        index: usize,
        /// Tensor index given.
        tensor: usize,
        /// What is wrong.
        problem: String,
    },
    /// The model exceeds a resource limit ([`crate::limits::Limits`]).
    #[error("model needs {needed} {resource}, over the limit of {limit}{}", heaviest_op.map(|(i, k)| format!(" (the largest share: op {i} ({k}))")).unwrap_or_default())]
    Limit {
        /// The resource (`multiply-accumulates per sample`, …).
        resource: &'static str,
        /// What the model needs.
        needed: u64,
        /// The limit in force.
        limit: u64,
        /// The op costing the most of that resource (index and kind), for work limits.
        heaviest_op: Option<(usize, &'static str)>,
    },
}

/// Output extent of a strided, dilated, padded window:
/// `⌊(n + pad_lo + pad_hi − dilation·(k − 1) − 1) / stride⌋ + 1`, or `None` when the window does
/// not fit even once (or a field is zero).
pub fn conv_out_extent(
    n: usize,
    k: usize,
    stride: usize,
    dilation: usize,
    pad_lo: usize,
    pad_hi: usize,
) -> Option<usize> {
    if k == 0 || stride == 0 || dilation == 0 {
        return None;
    }
    let padded = n.checked_add(pad_lo)?.checked_add(pad_hi)?;
    let span = dilation.checked_mul(k - 1)?.checked_add(1)?;
    if padded < span {
        return None;
    }
    Some((padded - span) / stride + 1)
}

/// Product of the dims, `None` on overflow.
pub(crate) fn elements(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

fn check_tensor(i: usize, t: &TensorInfo) -> Result<(), ValidationError> {
    let err = |field, problem: String| ValidationError::Tensor {
        tensor: i,
        name: t.name.clone(),
        field,
        problem,
    };
    if !matches!(t.shape.len(), 1 | 3) {
        return Err(err(
            "shape",
            format!("rank {} (need [C] or [H, W, C])", t.shape.len()),
        ));
    }
    if t.shape.contains(&0) {
        return Err(err("shape", format!("{:?} has a zero dimension", t.shape)));
    }
    match elements(&t.shape) {
        Some(n) if n <= MAX_TENSOR_ELEMENTS => {}
        _ => {
            return Err(err(
                "shape",
                format!(
                    "{:?} exceeds {MAX_TENSOR_ELEMENTS} elements per sample",
                    t.shape
                ),
            ));
        }
    }
    match (t.dtype, &t.quant) {
        (DType::F32, None) => Ok(()),
        (DType::F32, Some(_)) => Err(err(
            "quant",
            "F32 tensor must not carry quantization params".into(),
        )),
        (DType::U8, None) => Err(err("quant", "U8 tensor needs quantization params".into())),
        (DType::U8, Some(q)) => {
            if q.qmin() < 0 || q.qmax() > 255 {
                Err(err(
                    "quant",
                    format!("grid [{}, {}] is not within [0, 255]", q.qmin(), q.qmax()),
                ))
            } else {
                Ok(())
            }
        }
    }
}

impl Int8Model {
    /// Checks every invariant the executor relies on (see the [module docs](crate::validate)).
    ///
    /// Run by [`Int8Model::from_bytes`] / [`Int8Model::load`] and by [`Int8Model::to_bytes`], and
    /// usable by an exporter before saving. Errors name the op (index and kind) or tensor and the
    /// field at fault.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.tensors.is_empty() {
            return Err(ValidationError::Model {
                problem: "no tensors".into(),
            });
        }
        for (i, t) in self.tensors.iter().enumerate() {
            check_tensor(i, t)?;
        }
        if self.input >= self.tensors.len() {
            return Err(ValidationError::Input {
                tensor: self.input,
                problem: format!("out of range ({} tensors)", self.tensors.len()),
            });
        }
        let mut defined = vec![false; self.tensors.len()];
        defined[self.input] = true;
        for (i, op) in self.ops.iter().enumerate() {
            let ctx = Ctx {
                model: self,
                op: i,
                kind: op.kind(),
            };
            ctx.check(op)?;
            for t in op.inputs() {
                if !defined[t] {
                    return Err(ctx.err(
                        "input",
                        format!("tensor {t} ('{}') is read before any op writes it (ops must be in topological order)", self.tensors[t].name),
                    ));
                }
            }
            let out = op.output();
            if defined[out] {
                return Err(ctx.err(
                    "output",
                    format!(
                        "tensor {out} ('{}') is written twice (or is the graph input)",
                        self.tensors[out].name
                    ),
                ));
            }
            defined[out] = true;
        }
        if let Some(t) = defined.iter().position(|d| !d) {
            return Err(ValidationError::Tensor {
                tensor: t,
                name: self.tensors[t].name.clone(),
                field: "producer",
                problem: "neither the graph input nor written by any op".into(),
            });
        }
        if self.outputs.is_empty() {
            return Err(ValidationError::Model {
                problem: "no graph outputs".into(),
            });
        }
        for (index, &tensor) in self.outputs.iter().enumerate() {
            if tensor >= self.tensors.len() {
                return Err(ValidationError::Output {
                    index,
                    tensor,
                    problem: format!("out of range ({} tensors)", self.tensors.len()),
                });
            }
            if !defined[tensor] {
                return Err(ValidationError::Output {
                    index,
                    tensor,
                    problem: "no op writes it".into(),
                });
            }
        }
        Ok(())
    }
}
