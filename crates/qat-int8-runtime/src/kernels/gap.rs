//! The global average pool of the optimized paths: the same per-channel sums and output stage as
//! [`reference::global_avg_pool`], with the sums taken pixel by pixel over blocks of channels
//! (contiguous in NHWC, so the compiler vectorizes them) instead of channel by channel at a
//! stride of `C`. A target with its own average stage (`AvgPoolRescale::stage`, which takes the
//! window's codes) runs the reference.

use super::pool::AvgPoolRescale;
use super::reference;

/// Channels summed per block (`i32` sums kept on the stack).
const BLOCK: usize = 64;

/// `out[c] = rescale.average(Σ_p input[p·C + c], H·W)` for an `[H, W, C]` sample, bit-exact
/// with [`reference::global_avg_pool`]. On a CPU with AVX-512 (F, BW, DQ, VL) the same code is
/// compiled with those features (the sums in 512-bit adds, the 64-bit products of the output
/// stage in `vpmullq`), picked at run time.
pub(crate) fn global_avg_pool(
    input: &[u8],
    in_hwc: [usize; 3],
    rescale: &AvgPoolRescale,
    out: &mut [u8],
) {
    if rescale.stage.is_some() {
        return reference::global_avg_pool(input, in_hwc, rescale, out);
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
    {
        // SAFETY: the features it is compiled with were detected.
        return unsafe { sums_and_average_avx512(input, in_hwc, rescale, out) };
    }
    sums_and_average(input, in_hwc, rescale, out)
}

/// [`sums_and_average`] compiled for AVX-512.
///
/// # Safety
/// The CPU supports avx512f/bw/dq/vl.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
unsafe fn sums_and_average_avx512(
    input: &[u8],
    in_hwc: [usize; 3],
    rescale: &AvgPoolRescale,
    out: &mut [u8],
) {
    sums_and_average(input, in_hwc, rescale, out)
}

/// The per-channel sums over blocks of [`BLOCK`] channels, then the output stage of each block
/// ([`AvgPoolRescale::average_many`]); `rescale` has no stage of its own.
#[inline(always)]
fn sums_and_average(input: &[u8], in_hwc: [usize; 3], rescale: &AvgPoolRescale, out: &mut [u8]) {
    let [h, w, c] = in_hwc;
    let mut c0 = 0;
    while c0 < c.min(out.len()) {
        let cb = (c - c0).min(BLOCK).min(out.len() - c0);
        let mut sums = [0i32; BLOCK];
        let pixels = input.chunks_exact(c).take(h * w);
        if cb == BLOCK {
            // A whole block: fixed-size loops, the sums stay in registers.
            for px in pixels {
                let px: &[u8; BLOCK] = px[c0..c0 + BLOCK].try_into().expect("a whole block");
                for (s, &q) in sums.iter_mut().zip(px) {
                    *s += q as i32;
                }
            }
        } else {
            for px in pixels {
                for (s, &q) in sums[..cb].iter_mut().zip(&px[c0..c0 + cb]) {
                    *s += q as i32;
                }
            }
        }
        rescale.average_many(&sums[..cb], h * w, &mut out[c0..c0 + cb]);
        c0 += cb;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use qat_core::target::Target;
    use qat_core::{QuantParams, QuantRange};

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        /// Equal to the reference for every target (own stage or not), equal or differing
        /// params, channel counts around the block size.
        #[test]
        fn global_avg_pool_matches_reference(
            h in 1usize..6, w in 1usize..6, c in 1usize..140,
            seed in any::<u64>(),
            si in 0.01f32..1.0, zi in 0i32..=255, so in 0.01f32..1.0, zo in 0i32..=255,
            same in any::<bool>(),
        ) {
            let mut s = seed;
            let input: Vec<u8> = (0..h * w * c)
                .map(|_| {
                    s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (s >> 56) as u8
                })
                .collect();
            let u8r = QuantRange::unsigned(8).unwrap();
            let qi = QuantParams::new(si, zi, u8r).unwrap();
            let qo = if same { qi } else { QuantParams::new(so, zo, u8r).unwrap() };
            let Ok(base) = AvgPoolRescale::global(&qi, &qo, [h, w, c]) else { return Ok(()) };
            for target in Target::ALL {
                let Ok(r) = base.clone().for_target(target, &qi, &qo, true) else { continue };
                let mut want = vec![0u8; c];
                reference::global_avg_pool(&input, [h, w, c], &r, &mut want);
                let mut got = vec![0u8; c];
                global_avg_pool(&input, [h, w, c], &r, &mut got);
                prop_assert_eq!(&got, &want, "{}", target);
                if r.stage.is_none() {
                    // The baseline build too (the dispatch above may have taken AVX-512).
                    let mut base = vec![0u8; c];
                    sums_and_average(&input, [h, w, c], &r, &mut base);
                    prop_assert_eq!(&base, &want, "{} (baseline)", target);
                }
            }
        }
    }
}
