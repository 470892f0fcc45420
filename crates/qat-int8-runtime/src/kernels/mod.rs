//! Kernel tiers (STYLE.md 1–4).
//!
//! - [`reference`](mod@reference): obvious loops, the ground truth (always compiled, never optimized).
//! - [`gemm`]: the packed u8×i8 GEMM frame (packing, zero-point correction folded into the bias,
//!   requantization fused in the epilogue) with micro-kernels for every [`KernelPath`]:
//!   portable Rust, AVX2 (widened to int16 pairs, no `maddubs` saturation) and AVX-512 VNNI
//!   (`vpdpbusd`).
//! - [`depthwise`]: depthwise conv vectorized over channels.
//! - [`conv`]: conv through the GEMM (1×1 direct, k×k by tiled im2col) or the depthwise kernel.
//! - [`pool`]: the average-pool output stage (one rounding from the window sum to the output grid).
//!
//! The path is chosen once per process ([`KernelPath::best`]) from CPU features, logged with
//! `tracing`, and can be forced with `QAT_KERNEL=reference|portable|avx2|avx512vnni`.

use std::sync::OnceLock;

use qat_core::fixed_point::{QuantizedMultiplier, Rounding};
use qat_core::{QuantError, QuantParams};

use crate::model::Clamp;
use crate::validate::add_multipliers;

pub mod conv;
pub mod depthwise;
pub mod gemm;
pub mod pool;
pub mod reference;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

/// A family of kernels. `Reference` uses [`reference`](mod@reference) for everything; the others use the packed
/// GEMM / depthwise kernels with the named micro-kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelPath {
    /// Obvious loops ([`reference`](mod@reference)).
    Reference,
    /// Packed GEMM with plain-Rust micro-kernels (any CPU).
    Portable,
    /// x86-64 AVX2 micro-kernels (int16 widening, `vpmaddwd`).
    Avx2,
    /// x86-64 AVX-512 VNNI micro-kernels (`vpdpbusd`).
    Avx512Vnni,
}

/// Environment variable that forces a kernel path.
pub const KERNEL_ENV: &str = "QAT_KERNEL";

impl KernelPath {
    /// Every path, slowest first.
    pub const ALL: [KernelPath; 4] = [
        KernelPath::Reference,
        KernelPath::Portable,
        KernelPath::Avx2,
        KernelPath::Avx512Vnni,
    ];

    /// The name used by `QAT_KERNEL` and in logs/benchmarks.
    pub fn name(self) -> &'static str {
        match self {
            KernelPath::Reference => "reference",
            KernelPath::Portable => "portable",
            KernelPath::Avx2 => "avx2",
            KernelPath::Avx512Vnni => "avx512vnni",
        }
    }

    /// Parses a [`KernelPath::name`].
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s.trim().to_ascii_lowercase())
    }

    /// Whether this CPU can run the path (`is_x86_feature_detected!`).
    pub fn is_supported_here(self) -> bool {
        match self {
            KernelPath::Reference | KernelPath::Portable => true,
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx512Vnni => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The fastest supported path, detected once per process. `QAT_KERNEL` overrides it; a value
    /// that is unknown or not supported on this CPU is logged and ignored (an unsupported SIMD
    /// path would be undefined behaviour).
    pub fn best() -> KernelPath {
        static BEST: OnceLock<KernelPath> = OnceLock::new();
        *BEST.get_or_init(|| {
            let detected = Self::ALL
                .into_iter()
                .rev()
                .find(|p| p.is_supported_here())
                .unwrap_or(KernelPath::Reference);
            let chosen = match std::env::var(KERNEL_ENV) {
                Ok(v) => match Self::from_name(&v) {
                    Some(p) if p.is_supported_here() => p,
                    Some(p) => {
                        tracing::warn!(requested = p.name(), fallback = detected.name(), "{KERNEL_ENV}: kernel path not supported on this CPU");
                        detected
                    }
                    None => {
                        tracing::warn!(value = %v, fallback = detected.name(), "{KERNEL_ENV}: unknown kernel path (reference|portable|avx2|avx512vnni)");
                        detected
                    }
                },
                Err(_) => detected,
            };
            tracing::info!(kernel = chosen.name(), detected = detected.name(), "qat-int8-runtime kernel path");
            chosen
        })
    }
}

impl std::fmt::Display for KernelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything TFLite's uint8 add needs, derived once from the three tensors' params
/// ([`add_multipliers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddParams {
    /// `Z_a`.
    pub za: i32,
    /// `Z_b`.
    pub zb: i32,
    /// `Z_out`.
    pub zo: i32,
    /// `M_a = S_a/(2·max(S_a, S_b))`.
    pub ma: QuantizedMultiplier,
    /// `M_b = S_b/(2·max(S_a, S_b))`.
    pub mb: QuantizedMultiplier,
    /// `M_out = 2·max(S_a, S_b)/(2^20·S_out)`.
    pub mo: QuantizedMultiplier,
    /// Fused activation clamp.
    pub clamp: Clamp,
    /// Rounding of the output stage (`M_out`); the input rescales always use `apply`.
    pub rounding: Rounding,
}

impl AddParams {
    /// Derives the multipliers; fails only for scales no valid model has.
    pub fn new(
        qa: &QuantParams,
        qb: &QuantParams,
        qo: &QuantParams,
        clamp: Clamp,
        rounding: Rounding,
    ) -> Result<Self, QuantError> {
        let (ma, mb, mo) = add_multipliers(qa, qb, qo)?;
        Ok(Self {
            za: qa.zero_point(),
            zb: qb.zero_point(),
            zo: qo.zero_point(),
            ma,
            mb,
            mo,
            clamp,
            rounding,
        })
    }
}

/// Requantization between two tensors' params (concat inputs): `None` multiplier when they are
/// equal (codes pass through unchanged), else `q = clamp(M·(q_in − Z_in) + Z_out, qmin, qmax)`,
/// `M = S_in/S_out`, clamped to the output tensor's grid (`[0, 2^b − 1]` for b-bit activations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rescale {
    /// `Z_in`.
    pub zi: i32,
    /// `Z_out`.
    pub zo: i32,
    /// `qmin` of the output grid.
    pub lo: i32,
    /// `qmax` of the output grid.
    pub hi: i32,
    /// `M = S_in/S_out`, or `None` for identical params.
    pub m: Option<QuantizedMultiplier>,
    /// How `M·(q_in − Z_in)` is rounded.
    pub rounding: Rounding,
}

impl Rescale {
    /// From input and output params, rounding as `rounding` says.
    pub fn new(qi: &QuantParams, qo: &QuantParams, rounding: Rounding) -> Result<Self, QuantError> {
        let m = if qi == qo {
            None
        } else {
            Some(QuantizedMultiplier::from_f64(
                qi.scale() as f64 / qo.scale() as f64,
            )?)
        };
        Ok(Self {
            zi: qi.zero_point(),
            zo: qo.zero_point(),
            lo: qo.qmin(),
            hi: qo.qmax(),
            m,
            rounding,
        })
    }
}
