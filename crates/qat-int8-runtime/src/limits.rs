//! Resource limits a model must respect before any work is done on it.
//!
//! Structural bounds ([`MAX_TENSOR_ELEMENTS`](crate::validate::MAX_TENSOR_ELEMENTS),
//! [`MAX_REDUCTION`](crate::validate::MAX_REDUCTION), …) keep the integer arithmetic exact; the
//! limits here bound what a model may cost. [`Int8Model::cost`] computes, per sample and from the
//! validated shapes alone:
//!
//! - `activation_bytes = Σ_t elements(t)·bytes(dtype t)` over every tensor (U8: 1, F32: 4) — the
//!   executor's planned buffers for one sample (a batch of `N` plans `N` times as much);
//! - `macs = Σ_conv H_out·W_out·C_out·K + Σ_fc C_out·C_in` with `K = kh·kw·C_in/groups`;
//! - `pool_work = Σ_pool H_out·W_out·C·kh·kw + Σ_global H·W·C` (window cells visited).
//!
//! [`Int8Model::from_bytes_with`] / [`Int8Model::load_with`] refuse a model whose file, payload or
//! cost exceeds its [`LoadOptions`]' limits, before decoding (file and payload size) or before
//! returning the model (cost). The defaults ([`Limits::default`]) are part of the `.qat8` format's
//! documentation (see [`crate::format`]); a caller that trusts a large model raises them.

use crate::model::{DType, Int8Model, Op};
use crate::validate::{ValidationError, elements};

/// Default [`Limits::max_payload_bytes`]: 256 MiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: u64 = 256 << 20;
/// Default [`Limits::max_activation_bytes`]: 256 MiB per sample.
pub const DEFAULT_MAX_ACTIVATION_BYTES: u64 = 256 << 20;
/// Default [`Limits::max_macs`]: 2^34 ≈ 17·10^9 multiply-accumulates per sample.
pub const DEFAULT_MAX_MACS: u64 = 1 << 34;
/// Default [`Limits::max_pool_work`]: 2^32 window cells per sample.
pub const DEFAULT_MAX_POOL_WORK: u64 = 1 << 32;

/// What a model may cost (see the [module docs](crate::limits)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload (the bytes after the 28-byte header) read or decoded.
    pub max_payload_bytes: u64,
    /// Largest planned activation memory per sample, in bytes.
    pub max_activation_bytes: u64,
    /// Largest number of multiply-accumulates per sample (conv and fully connected).
    pub max_macs: u64,
    /// Largest number of pooling window cells visited per sample.
    pub max_pool_work: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_activation_bytes: DEFAULT_MAX_ACTIVATION_BYTES,
            max_macs: DEFAULT_MAX_MACS,
            max_pool_work: DEFAULT_MAX_POOL_WORK,
        }
    }
}

impl Limits {
    /// No cost limit (the structural bounds of [`Int8Model::validate`] still hold).
    pub const UNLIMITED: Limits = Limits {
        max_payload_bytes: u64::MAX,
        max_activation_bytes: u64::MAX,
        max_macs: u64::MAX,
        max_pool_work: u64::MAX,
    };
}

/// Options of [`Int8Model::from_bytes_with`] and [`Int8Model::load_with`].
///
/// ```
/// use qat_int8_runtime::{LoadOptions, limits::Limits};
/// let opts = LoadOptions { limits: Limits { max_macs: 1 << 40, ..Limits::default() } };
/// assert_eq!(opts.limits.max_payload_bytes, 256 << 20);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// The limits enforced.
    pub limits: Limits,
}

/// The per-sample cost of a model (see the [module docs](crate::limits) for the formulas).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cost {
    /// Planned activation memory per sample, bytes.
    pub activation_bytes: u64,
    /// Multiply-accumulates per sample.
    pub macs: u64,
    /// Pooling window cells visited per sample.
    pub pool_work: u64,
}

fn shape_of(model: &Int8Model, t: usize) -> &[usize] {
    model.tensors.get(t).map_or(&[], |t| &t.shape)
}

/// `(macs, pool_work)` of one op (saturating; exact for a validated model).
fn op_cost(model: &Int8Model, op: &Op) -> (u64, u64) {
    let n = |t| elements(shape_of(model, t)).unwrap_or(usize::MAX) as u64;
    match op {
        Op::Conv2d(c) => {
            let [_, kh, kw, wi] = c.weight_shape;
            let k = (kh as u64)
                .saturating_mul(kw as u64)
                .saturating_mul(wi as u64);
            (n(c.output).saturating_mul(k), 0)
        }
        Op::FullyConnected(f) => {
            let [o, i] = f.weight_shape;
            ((o as u64).saturating_mul(i as u64), 0)
        }
        Op::AvgPool2d(p) | Op::MaxPool2d(p) => {
            let win = (p.kernel[0] as u64).saturating_mul(p.kernel[1] as u64);
            (0, n(p.output).saturating_mul(win))
        }
        Op::GlobalAvgPool { input, .. } => (0, n(*input)),
        _ => (0, 0),
    }
}

impl Int8Model {
    /// The model's per-sample [`Cost`]: `Σ` activation bytes, MACs and pool window cells.
    /// Saturating, so it is defined (if meaningless) for an invalid model.
    ///
    /// ```
    /// # use qat_int8_runtime::{Int8Model, TensorInfo, DType, Op, Target};
    /// let q = qat_core::QuantParams::asymmetric(-1.0, 1.0, 8)?;
    /// let model = Int8Model {
    ///     name: "q".into(),
    ///     tensors: vec![
    ///         TensorInfo { name: "x".into(), shape: vec![4], dtype: DType::F32, quant: None },
    ///         TensorInfo { name: "xq".into(), shape: vec![4], dtype: DType::U8, quant: Some(q) },
    ///     ],
    ///     ops: vec![Op::Quantize { input: 0, output: 1 }],
    ///     input: 0, outputs: vec![1], rounding: Target::Qat,
    /// };
    /// assert_eq!(model.cost().activation_bytes, 4 * 4 + 4);
    /// # Ok::<(), qat_core::QuantError>(())
    /// ```
    pub fn cost(&self) -> Cost {
        let activation_bytes = self.tensors.iter().fold(0u64, |acc, t| {
            let e = elements(&t.shape).unwrap_or(usize::MAX) as u64;
            let b = match t.dtype {
                DType::U8 => 1,
                DType::F32 => 4,
            };
            acc.saturating_add(e.saturating_mul(b))
        });
        let (macs, pool_work) = self.ops.iter().fold((0u64, 0u64), |(m, p), op| {
            let (dm, dp) = op_cost(self, op);
            (m.saturating_add(dm), p.saturating_add(dp))
        });
        Cost {
            activation_bytes,
            macs,
            pool_work,
        }
    }

    /// Checks [`Int8Model::cost`] against `limits`; the error names the resource, what the model
    /// needs, the limit, and for work the op that costs the most.
    pub fn check_limits(&self, limits: &Limits) -> Result<(), ValidationError> {
        let cost = self.cost();
        let heaviest = |pick: fn((u64, u64)) -> u64| {
            self.ops
                .iter()
                .enumerate()
                .max_by_key(|(_, op)| pick(op_cost(self, op)))
                .map(|(i, op)| (i, op.kind()))
        };
        let checks = [
            (
                "activation memory per sample (bytes)",
                cost.activation_bytes,
                limits.max_activation_bytes,
                None,
            ),
            (
                "multiply-accumulates per sample",
                cost.macs,
                limits.max_macs,
                heaviest(|c| c.0),
            ),
            (
                "pooling window cells per sample",
                cost.pool_work,
                limits.max_pool_work,
                heaviest(|c| c.1),
            ),
        ];
        for (resource, needed, limit, heaviest_op) in checks {
            if needed > limit {
                return Err(ValidationError::Limit {
                    resource,
                    needed,
                    limit,
                    heaviest_op,
                });
            }
        }
        Ok(())
    }
}
