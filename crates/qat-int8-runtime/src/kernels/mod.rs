//! Integer kernels, in tiers:
//!
//! - [`reference`](mod@reference): obvious loops of the paper's eq. 7–10, one output element at a
//!   time, never optimized; the oracle every other tier is tested against.
//! - [`frame`]: what every instruction set shares: the packed u8×i8 GEMM (packing, zero-point
//!   correction folded into the bias, blocking, rayon threading, edge tiles, the scalar output
//!   stage for roundings an ISA does not fuse) and the depthwise conv (tap resolution, padding,
//!   threading); the micro-kernel traits an ISA implements.
//! - the ISAs: [`portable`] (plain Rust the compiler vectorizes), `x86_64::avx2`,
//!   `x86_64::avx512vnni` — each the micro-kernels, the packing layout and the output stage
//!   (requantization) of one instruction set, one concept per file.
//! - [`conv`]: conv and fully connected layers on top of the frame (1×1 direct, k×k by implicit or
//!   tiled im2col, depthwise).
//! - [`add`], [`pool`]: the derived requantization parameters of add/concat and average pools.
//!
//! The path is chosen once per process ([`KernelPath::best`]) from CPU features, logged with
//! `tracing`, and can be forced with `QAT_KERNEL=<name>`; a plan stores its ISA's kernel table
//! ([`frame::Kernels`]) and calls it without further dispatch.
//!
//! ## Adding an instruction set
//! One file (or folder) with a marker type that implements [`frame::Isa`] (CPU detection),
//! [`frame::GemmKernel`] (tile shape, packing element, the tile and its `#[target_feature]` tile
//! loop), [`frame::DepthwiseKernel`] (one output pixel, optionally a whole row) and
//! [`frame::OutputStage`] (which roundings its tiles requantize), and one entry in
//! `register_isas!` below (which also adds the `KernelPath` variant). Then one line in
//! `kernel_suites!` of `tests/kernels.rs` runs the proptests against the reference on every CPU
//! that supports it (`every_optimized_path_has_a_suite` fails until it is there).
//!
//! ## Adding a requantization rounding (a deployment target)
//! A new [`qat_core::target::Target`] works on every path at once: the frame runs the tiles to
//! int32 and requantizes with qat-core's scalar `Target::requantize` whenever an ISA's
//! [`frame::OutputStage::fuses`] says no. To make it fast on an ISA, add its vector arm in that
//! ISA's output stage (`requant.rs`: AVX2's `store8` has the `tflite`, `qat` and `f32` arms) and
//! return `true` from its `fuses`. (AVX-512 VNNI fuses `qat` and `tflite`; its `f32` arm, which
//! must also cover the depthwise kernel's permuted channel blocks, is not written yet.)

pub(crate) mod add;
pub(crate) mod conv;
pub(crate) mod copy;
pub(crate) mod frame;
pub(crate) mod gap;
pub(crate) mod par;
mod path;
pub(crate) mod pool;
pub(crate) mod portable;
pub(crate) mod quantize;
pub(crate) mod reference;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_64;

pub use path::KERNEL_ENV;

// The ISA registry: one entry per instruction set, slowest first.
path::register_isas! {
    /// Packed GEMM and depthwise with plain-Rust micro-kernels (any CPU).
    Portable = "portable" => portable::Portable,
    /// x86-64 AVX2 micro-kernels (int16 widening, `vpmaddwd`).
    #[cfg(target_arch = "x86_64")]
    Avx2 = "avx2" => x86_64::avx2::Avx2,
    /// x86-64 AVX-512 VNNI micro-kernels (`vpdpbusd`).
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni = "avx512vnni" => x86_64::avx512vnni::Avx512Vnni,
}
