//! AVX-512 VNNI kernels: one marker type, [`Avx512Vnni`], and one file per concept — the output
//! stage (`requant`), the GEMM tile (`gemm`) and its store (`tile_store`), the indirect GEMM tile (`igemm`), the depthwise
//! kernels with the vector stages (`depthwise`) and with the single-shift stage
//! (`depthwise_fused`; 3×3 with interleaved taps: `depthwise_taps`, and several pixels per vector:
//! `depthwise_packed`).

mod depthwise;
mod depthwise_fused;
mod depthwise_packed;
mod depthwise_taps;
mod gemm;
mod igemm;
pub(crate) mod quantize;
pub(crate) mod requant;
mod tile_store;

use crate::kernels::frame::Isa;

/// `$tile::<$m, V>($args)` with `V` (1 to 4) the vectors of 16 columns that `$cols` columns
/// need: the GEMM tiles compute only those (a narrow layer's last panel).
macro_rules! by_vectors {
    ($tile:ident::<$m:ident>($args:expr), $cols:expr) => {
        match $cols.div_ceil(16) {
            1 => $tile::<$m, 1>($args),
            2 => $tile::<$m, 2>($args),
            3 => $tile::<$m, 3>($args),
            _ => $tile::<$m, 4>($args),
        }
    };
}
use by_vectors;

/// The mask of a 64-byte masked load or store that touches the first `n` bytes (all 64 when
/// `n ≥ 64`).
#[inline(always)]
const fn byte_mask(n: usize) -> u64 {
    if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }
}

/// The x86-64 AVX-512 VNNI instruction set (avx512f + bw + vl + vnni).
pub(crate) struct Avx512Vnni;

impl Isa for Avx512Vnni {
    fn is_supported_here() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
}
