//! AVX2 kernels: one marker type, [`Avx2`], and one file per concept — the output stage
//! (`requant`), the GEMM tile (`gemm`) and the depthwise pixel kernel (`depthwise`).

mod depthwise;
mod gemm;
pub(crate) mod requant;

use crate::kernels::frame::Isa;

/// The x86-64 AVX2 instruction set.
pub(crate) struct Avx2;

impl Isa for Avx2 {
    fn is_supported_here() -> bool {
        std::arch::is_x86_feature_detected!("avx2")
    }
}
