//! `avx512vnni_depthwise_u8i8_16c_packed` / `_32c_packed`: the 3×3 depthwise kernel of
//! [`super::depthwise_taps`] for layers of 16 or 32 channels, with `64 / c` output pixels in one
//! 64-byte vector (128-bit lane `l` or 256-bit half: pixel `l`), so every `vpdpbusd` still sums
//! three useful products per lane.

use std::arch::x86_64::*;

use super::byte_mask;
use super::depthwise_fused::Pixels;
use super::depthwise_taps::{TAPS, TapsLayout, interleave, outputs};
use super::requant::RqFused16;
use crate::kernels::frame::Epilogue;

/// Pixels per vector of a layer of `c` channels, when it has a packed kernel.
pub(super) fn pixels_per_vector(c: usize) -> Option<usize> {
    match c {
        16 => Some(4),
        32 => Some(2),
        _ => None,
    }
}

/// One 64-byte vector of `P` pixels' `c = 64 / P` channels: pixel `i` from `px[i]`.
///
/// # Safety
/// CPU supports avx512f/bw/vl; each `px[i]` has `64 / P` readable bytes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn gather<const P: usize>(px: [*const u8; P]) -> __m512i {
    // SAFETY: as documented.
    unsafe {
        if P == 4 {
            let v = _mm512_castsi128_si512(_mm_loadu_si128(px[0].cast()));
            let v = _mm512_inserti32x4::<1>(v, _mm_loadu_si128(px[1].cast()));
            let v = _mm512_inserti32x4::<2>(v, _mm_loadu_si128(px[2 % P].cast()));
            _mm512_inserti32x4::<3>(v, _mm_loadu_si128(px[3 % P].cast()))
        } else {
            let v = _mm512_castsi256_si512(_mm256_loadu_si256(px[0].cast()));
            _mm512_inserti64x4::<1>(v, _mm256_loadu_si256(px[1].cast()))
        }
    }
}

/// Stores pixel `i` of `r` (`64 / P` bytes) at `dst[i]`, for `i < q`.
///
/// # Safety
/// CPU supports avx512f/bw/vl; each `dst[i]`, `i < q`, has `64 / P` writable bytes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn scatter<const P: usize>(r: __m512i, dst: [*mut u8; P], q: usize) {
    let mut lanes = [0u8; 64];
    // SAFETY: as documented; `lanes` holds 64 bytes.
    unsafe {
        _mm512_storeu_si512(lanes.as_mut_ptr().cast(), r);
        for (i, &d) in dst.iter().enumerate().take(q) {
            std::ptr::copy_nonoverlapping(lanes.as_ptr().add(i * 64 / P), d, 64 / P);
        }
    }
}

/// `avx512vnni_depthwise_u8i8_16c_packed` (`P = 4`) / `_32c_packed` (`P = 2`): all `c = 64 / P`
/// channels of `npix = [n, rows]` runs of `n` output pixels (pixel `p` of run `r`: tap `t` at
/// `base + r·step[1] + p·step[0] + offs[t]`, output at `o8 + (r·n + p)·c`) and of the listed
/// pixels (`list`: 9 pointers per pixel, output at `list_out`), `P` pixels per vector, through
/// the single-shift stage ([`TapsLayout::packed`]: the `c` channels' constants repeated `P`
/// times).
///
/// # Safety
/// CPU supports avx512f/bw/vl/vnni; `l.fused`, 9 taps, `t` built by [`TapsLayout::packed`] from
/// the same weights and epilogue with `c = 64 / P`; every tap row has `c` readable bytes; `o8`
/// holds `rows·n` pixels of `c` channels; each `list_out` pointer one pixel.
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn depthwise_taps_packed<const NT: bool, const P: usize>(
    px: &Pixels<'_>,
    t: &TapsLayout,
    e: &Epilogue,
) {
    let (base, step, npix, offs, list, list_out, o8) = px.parts();
    let c = 64 / P;
    // SAFETY: as documented; the layout holds one block.
    unsafe {
        let f: [RqFused16; 4] =
            std::array::from_fn(|k| RqFused16::load_at(&t.m0, &t.fused, k * 16, e.rounding));
        let bias: [__m512i; 4] =
            std::array::from_fn(|k| _mm512_loadu_si512(t.bias.as_ptr().add(k * 16).cast()));
        let w: [[__m512i; 4]; 3] = std::array::from_fn(|s| {
            std::array::from_fn(|k| _mm512_loadu_si512(t.w.as_ptr().add((s * 4 + k) * 64).cast()))
        });
        let (lo, hi) = (_mm512_set1_epi8(e.lo as i8), _mm512_set1_epi8(e.hi as i8));
        // The outputs of `P` pixels whose tap-row vectors `$x(t)` gives.
        macro_rules! pixels {
            ($x:expr) => {{
                let x = $x;
                let mut acc = bias;
                for (s, ws) in w.iter().enumerate() {
                    let col = interleave(x(s), x(s + 3), x(s + 6));
                    for k in 0..4 {
                        acc[k] = _mm512_dpbusd_epi32(acc[k], col[k], ws[k]);
                    }
                }
                outputs::<NT>(&acc, &f, lo, hi)
            }};
        }
        for (tp, dst) in list.chunks(TAPS * P).zip(list_out.chunks(P)) {
            let q = dst.len();
            let r = pixels!(|tap| gather::<P>(std::array::from_fn(|i| tp[TAPS * (i % q) + tap])));
            scatter::<P>(r, std::array::from_fn(|i| dst[i % q]), q);
        }
        let (step, rstep, rows, npix) = (step[0], step[1], npix[1], npix[0]);
        let contiguous = step == c;
        for r in 0..rows {
            let (base, o8) = (base.add(r * rstep), o8.add(r * npix * c));
            let mut p = 0;
            while p < npix {
                let q = (npix - p).min(P);
                let px = base.add(p * step);
                let dst = o8.add(p * c);
                let res = if contiguous && q == P {
                    pixels!(|tap| _mm512_loadu_si512(px.add(*offs.get_unchecked(tap)).cast()))
                } else if contiguous {
                    let m = byte_mask(q * c);
                    pixels!(|tap| _mm512_maskz_loadu_epi8(
                        m,
                        px.add(*offs.get_unchecked(tap)).cast()
                    ))
                } else {
                    pixels!(|tap| {
                        let row = px.add(*offs.get_unchecked(tap));
                        gather::<P>(std::array::from_fn(|i| row.add((i % q) * step)))
                    })
                };
                _mm512_mask_storeu_epi8(dst.cast(), byte_mask(q * c), res);
                p += P;
            }
        }
    }
}
