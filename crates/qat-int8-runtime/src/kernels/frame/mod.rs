//! The kernel frame: what every instruction set shares, and the traits an ISA implements.
//!
//! An ISA is a marker type implementing
//! - [`Isa`]: whether this CPU can run it;
//! - [`GemmKernel`]: the micro-tile shape `MR × NR`, the packing of B (`NR`-column panels, `KG`
//!   consecutive `k` per column) and of A (read in place, or widened), the tile itself
//!   (accumulate then output stage) and its tile loop compiled with the ISA's features;
//! - [`DepthwiseKernel`]: one output pixel of a depthwise conv (optionally a whole row);
//! - [`OutputStage`]: which requantization roundings its tiles fuse.
//!
//! The frame does everything else once for all ISAs: validation of the layer ([`LayerSpec`]),
//! packing and the zero-point correction folded into the bias ([`PackedB`], [`Epilogue`]),
//! blocking, rayon threading, edge tiles ([`gemm`]), tap resolution and padding of the depthwise
//! conv ([`DepthwisePlan`]), and the scalar output stage (qat-core's `requantize_with`) for any
//! rounding an ISA does not fuse. [`Frame<K>`] turns an ISA into the object-safe table
//! [`Kernels`] that plans store, so a plan dispatches once, when it is built.

use std::marker::PhantomData;

use qat_core::fixed_point::QuantizedMultiplier;
use qat_core::target::Target;
use thiserror::Error;

use super::KernelPath;

pub(crate) mod depthwise;
pub(crate) mod epilogue;
pub(crate) mod gemm;
pub(crate) mod packed;

pub(crate) use depthwise::{DepthwiseKernel, DepthwisePlan, DepthwiseShape};
pub(crate) use epilogue::{Epilogue, OutPtr, OutputStage};
pub(crate) use gemm::GemmKernel;
pub(crate) use packed::{ASource, PackedB};

/// Why a kernel plan could not be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KernelError {
    /// `Reference` has no packed kernels: it runs the reference loops (`ConvPlan` does that).
    #[error("the {path} path has no packed kernels")]
    NotPacked {
        /// The path asked for.
        path: KernelPath,
    },
    /// The CPU lacks the path's instructions (running it would be undefined behaviour).
    #[error("kernel path {path} is not supported by this CPU")]
    Unsupported {
        /// The path asked for.
        path: KernelPath,
    },
    /// A layer argument is inconsistent.
    #[error("layer `{field}`: {problem}")]
    Layer {
        /// The field at fault.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// A buffer is too small for the call.
    #[error("buffer `{buffer}` holds {len} elements, the call needs {needed}")]
    Buffer {
        /// Which buffer.
        buffer: &'static str,
        /// Elements present.
        len: usize,
        /// Elements needed.
        needed: usize,
    },
}

/// One quantized conv / fully-connected layer as the packed kernels take it (paper eq. 7–10):
/// int8 weights (zero point 0), int32 bias and the output stage
/// `q = clamp(round(M[c]·(bias[c] + Σ_k (q1 − Z1)·q2[k, c])) + Z3, lo, hi)`, rounded as
/// `target` computes it.
#[derive(Debug, Clone, Copy)]
pub struct LayerSpec<'a> {
    /// Weight codes, one row of the reduction length per output channel (OHWI order).
    pub weights: &'a [i8],
    /// `bias[c]`, one per output channel.
    pub bias: &'a [i32],
    /// `M[c]`: one shared, or one per output channel.
    pub multipliers: &'a [QuantizedMultiplier],
    /// `Z1`, the input zero point, in `[0, 255]` (padding cells hold it).
    pub input_zero_point: i32,
    /// `Z3`, the output zero point, `|Z3| < 2^23`.
    pub output_zero_point: i32,
    /// Clamp low, `0 ≤ lo ≤ hi`.
    pub lo: i32,
    /// Clamp high, `hi ≤ 255`.
    pub hi: i32,
    /// The target whose output stage the layer applies ([`Target::requantize`]).
    pub target: Target,
    /// `Some(eff)`, one per output channel: the layer requantizes in `f64` instead,
    /// `q = clamp(round_half_away(f64(acc)·eff[c]) + Z3, lo, hi)` (qat-core's
    /// `requantize_real`; LiteRT's reference fully connected kernel), and no ISA fuses it.
    pub reals: Option<&'a [f64]>,
}

impl LayerSpec<'_> {
    /// Checks the spec for `channels` output channels of reduction length `len`.
    pub(crate) fn check(&self, channels: usize, len: usize) -> Result<(), KernelError> {
        let err = |field, problem: String| Err(KernelError::Layer { field, problem });
        if channels.checked_mul(len) != Some(self.weights.len()) {
            return err(
                "weights",
                format!(
                    "{} codes for {channels} channels of length {len}",
                    self.weights.len()
                ),
            );
        }
        if self.bias.len() != channels {
            return err(
                "bias",
                format!("{} biases for {channels} channels", self.bias.len()),
            );
        }
        if self.multipliers.len() != 1 && self.multipliers.len() != channels {
            return err(
                "multipliers",
                format!(
                    "{} multipliers for {channels} channels (need 1 or {channels})",
                    self.multipliers.len()
                ),
            );
        }
        if !(0..=255).contains(&self.input_zero_point) {
            return err(
                "input_zero_point",
                format!("{} outside [0, 255]", self.input_zero_point),
            );
        }
        if self.output_zero_point.unsigned_abs() >= 1 << 23 {
            return err(
                "output_zero_point",
                format!("|{}| ≥ 2^23", self.output_zero_point),
            );
        }
        if !(0 <= self.lo && self.lo <= self.hi && self.hi <= 255) {
            return err(
                "lo",
                format!("clamp [{}, {}] not within [0, 255]", self.lo, self.hi),
            );
        }
        if let Some(r) = self.reals
            && r.len() != channels
        {
            return err(
                "reals",
                format!("{} f64 scales for {channels} channels", r.len()),
            );
        }
        Ok(())
    }

    /// The multiplier of output channel `c` (one shared or one per channel).
    pub(crate) fn multiplier(&self, c: usize) -> QuantizedMultiplier {
        if self.multipliers.len() == 1 {
            self.multipliers[0]
        } else {
            self.multipliers[c]
        }
    }
}

/// What an instruction set is: the CPU test, and the kernels it brings.
pub(crate) trait Isa: GemmKernel + DepthwiseKernel {
    /// Whether this CPU has every instruction the kernels use.
    fn is_supported_here() -> bool;
}

/// One ISA's kernels as an object-safe table: what a plan stores and calls.
pub(crate) trait Kernels: Sync {
    /// [`Isa::is_supported_here`].
    fn is_supported_here(&self) -> bool;
    /// Packs a checked layer of `n` columns of length `k` for this ISA.
    fn pack(&self, path: KernelPath, n: usize, k: usize, layer: &LayerSpec<'_>) -> PackedB;
    /// Prepares a checked depthwise layer for this ISA.
    fn depthwise(
        &self,
        path: KernelPath,
        shape: DepthwiseShape,
        layer: &LayerSpec<'_>,
    ) -> DepthwisePlan;
}

/// The frame instantiated for ISA `K`; [`Frame::TABLE`] is its entry in the registry.
pub(crate) struct Frame<K>(PhantomData<fn() -> K>);

impl<K> Frame<K> {
    /// The (zero-sized) table of `K`'s kernels.
    pub(crate) const TABLE: Self = Frame(PhantomData);
}

impl<K: Isa> Kernels for Frame<K> {
    fn is_supported_here(&self) -> bool {
        K::is_supported_here()
    }

    fn pack(&self, path: KernelPath, n: usize, k: usize, layer: &LayerSpec<'_>) -> PackedB {
        PackedB::pack::<K>(path, n, k, layer)
    }

    fn depthwise(
        &self,
        path: KernelPath,
        shape: DepthwiseShape,
        layer: &LayerSpec<'_>,
    ) -> DepthwisePlan {
        DepthwisePlan::prepare::<K>(path, shape, layer)
    }
}

/// Rounds `x` up to a multiple of `m`.
#[inline]
pub(crate) fn round_up(x: usize, m: usize) -> usize {
    x.div_ceil(m) * m
}
