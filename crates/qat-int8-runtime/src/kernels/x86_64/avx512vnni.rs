//! AVX-512 VNNI kernels: `avx512vnni_gemm_u8i8_6x64` (`vpdpbusd`: four u8×i8 products summed
//! into each int32 lane) with the requantization fused in the epilogue, and the vectorized
//! fixed-point requantization shared with the depthwise kernel.

use std::arch::x86_64::*;

use crate::kernels::gemm::{Epilogue, MR, NR, OutPtr, PackedB};

/// Per-lane multiplier constants for [`requantize16`], derived once per 16 columns/channels and
/// kept in registers across rows/pixels.
#[derive(Clone, Copy)]
pub struct Rq16 {
    m0: __m512i,
    /// `M0` of the odd lanes moved to the low half of each 64-bit lane.
    m0_hi: __m512i,
    left: __m512i,
    right: __m512i,
    /// `2^right − 1`.
    rmask: __m512i,
    /// `(2^right − 1) >> 1`.
    rhalf: __m512i,
}

impl Rq16 {
    /// Loads `M0`, `left`, `right` for 16 lanes and derives the rest.
    ///
    /// # Safety
    /// CPU supports avx512f; each pointer has 16 readable `i32`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn load(m0: *const i32, left: *const i32, right: *const i32) -> Self {
        // SAFETY: caller guarantees 16 readable lanes each.
        let (m0, left, right) = unsafe {
            (
                _mm512_loadu_si512(m0.cast()),
                _mm512_loadu_si512(left.cast()),
                _mm512_loadu_si512(right.cast()),
            )
        };
        let one = _mm512_set1_epi32(1);
        let rmask = _mm512_sub_epi32(_mm512_sllv_epi32(one, right), one);
        Self {
            m0,
            m0_hi: _mm512_srli_epi64::<32>(m0),
            left,
            right,
            rmask,
            rhalf: _mm512_srli_epi32::<1>(rmask),
        }
    }
}

/// gemmlowp's `MultiplyByQuantizedMultiplier` + `Z3` + clamp on 16 int32 lanes, bit-exact with
/// [`qat_core::fixed_point::requantize`]:
/// 1. `x·2^left` saturating (overflow detected by shifting back);
/// 2. SRDHM: `(x·M0 + 2^30) >> 31` in 64-bit lanes — for `M0 ≥ 0` this equals gemmlowp's
///    sign-dependent nudge with truncating division, and `M0 ≠ i32::MIN` so it never saturates;
/// 3. rounding divide by `2^right`: `(x >> e) + ((x & mask) > (mask >> 1) + (x < 0))`;
/// 4. `+ Z3`, clamp to `[lo, hi]`.
///
/// `LEFT = false` skips step 1 (valid when every lane's `left` is 0, the usual case `M < 1`).
///
/// # Safety
/// The CPU must support the enabled target features.
#[inline]
#[target_feature(enable = "avx512f")]
pub fn requantize16<const LEFT: bool>(
    x: __m512i,
    c: &Rq16,
    zp: __m512i,
    lo: __m512i,
    hi: __m512i,
) -> __m512i {
    let x = if LEFT {
        let shifted = _mm512_sllv_epi32(x, c.left);
        let overflow = _mm512_cmpneq_epi32_mask(_mm512_srav_epi32(shifted, c.left), x);
        let negative = _mm512_cmplt_epi32_mask(x, _mm512_setzero_si512());
        let sat = _mm512_mask_blend_epi32(
            negative,
            _mm512_set1_epi32(i32::MAX),
            _mm512_set1_epi32(i32::MIN),
        );
        _mm512_mask_blend_epi32(overflow, shifted, sat)
    } else {
        x
    };
    let nudge = _mm512_set1_epi64(1 << 30);
    let even = _mm512_srli_epi64::<31>(_mm512_add_epi64(_mm512_mul_epi32(x, c.m0), nudge));
    let odd = _mm512_slli_epi64::<1>(_mm512_add_epi64(
        _mm512_mul_epi32(_mm512_srli_epi64::<32>(x), c.m0_hi),
        nudge,
    ));
    let high = _mm512_mask_blend_epi32(0xAAAA, even, odd);
    let rem = _mm512_and_si512(high, c.rmask);
    let threshold = _mm512_add_epi32(c.rhalf, _mm512_srli_epi32::<31>(high));
    let q = _mm512_srav_epi32(high, c.right);
    let q = _mm512_mask_add_epi32(
        q,
        _mm512_cmpgt_epi32_mask(rem, threshold),
        q,
        _mm512_set1_epi32(1),
    );
    _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(q, zp), lo), hi)
}

/// Epilogue for 16 accumulators of columns `col..col + 16` (bias already added): writes the
/// `valid` first lanes as u8 (requantized with `rq`) or int32.
///
/// # Safety
/// The destination row has ≥ `valid` writable elements at `out_col`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[allow(clippy::too_many_arguments)]
unsafe fn store16<const LEFT: bool>(
    v: __m512i,
    rq: &Rq16,
    e: &Epilogue,
    valid: usize,
    out: OutPtr,
    row: usize,
    out_col: usize,
) {
    let mask = ((1u32 << valid) - 1) as u16;
    // SAFETY: writes limited to `valid` elements (caller).
    unsafe {
        match out {
            OutPtr::I32(p, ld) => {
                _mm512_mask_storeu_epi32(p.add(row * ld + out_col).cast(), mask, v)
            }
            OutPtr::U8(p, ld) => {
                let q = requantize16::<LEFT>(
                    v,
                    rq,
                    _mm512_set1_epi32(e.zp),
                    _mm512_set1_epi32(e.lo),
                    _mm512_set1_epi32(e.hi),
                );
                _mm_mask_storeu_epi8(
                    p.add(row * ld + out_col).cast(),
                    mask,
                    _mm512_cvtepi32_epi8(q),
                );
            }
        }
    }
}

/// The fused output stage of an `M × 64` tile: `+ bias'`, requantize, store (masked past
/// `cols`).
///
/// # Safety
/// `out` valid for `M` rows × `cols` columns from `col0`; `e` padded to whole panels.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn tile_epilogue<const M: usize>(
    acc: [[__m512i; 4]; M],
    e: &Epilogue,
    col0: usize,
    cols: usize,
    out: OutPtr,
) {
    // SAFETY: as documented.
    unsafe {
        for j in 0..4 {
            if 16 * j >= cols {
                break;
            }
            let col = col0 + 16 * j;
            let valid = (cols - 16 * j).min(16);
            let bias = _mm512_loadu_si512(e.bias.as_ptr().add(col).cast());
            let rq = Rq16::load(
                e.m0.as_ptr().add(col),
                e.left.as_ptr().add(col),
                e.right.as_ptr().add(col),
            );
            for (r, accr) in acc.iter().enumerate() {
                let v = _mm512_add_epi32(accr[j], bias);
                if e.any_left {
                    store16::<true>(v, &rq, e, valid, out, r, col);
                } else {
                    store16::<false>(v, &rq, e, valid, out, r, col);
                }
            }
        }
    }
}

/// `avx512vnni_gemm_u8i8_6x64`: an `M × 64` tile (`M ≤ 6`) over the whole reduction.
///
/// # Safety
/// `a`: `M` rows of `kp` readable bytes at stride `lda`; `b`: one packed panel; `out` valid for
/// `M` rows × `cols` columns from `col0`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const M: usize>(
    kp: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
    e: &Epilogue,
    col0: usize,
    cols: usize,
    out: OutPtr,
) {
    let mut acc = [[_mm512_setzero_si512(); 4]; M];
    // SAFETY: reads stay within the A rows and the panel (caller).
    unsafe {
        for g in 0..kp / 4 {
            let bg = b.add(g * NR * 4);
            let b0 = _mm512_loadu_si512(bg.cast());
            let b1 = _mm512_loadu_si512(bg.add(64).cast());
            let b2 = _mm512_loadu_si512(bg.add(128).cast());
            let b3 = _mm512_loadu_si512(bg.add(192).cast());
            for (r, accr) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_epi32(a.add(r * lda + 4 * g).cast::<i32>().read_unaligned());
                accr[0] = _mm512_dpbusd_epi32(accr[0], av, b0);
                accr[1] = _mm512_dpbusd_epi32(accr[1], av, b1);
                accr[2] = _mm512_dpbusd_epi32(accr[2], av, b2);
                accr[3] = _mm512_dpbusd_epi32(accr[3], av, b3);
            }
        }
        tile_epilogue(acc, e, col0, cols, out);
    }
}

/// Rows `0..rows` of an A block against panels `p0..p1`.
///
/// # Safety
/// CPU supports avx512f/bw/vl/vnni; `a` holds `rows` rows of `b.kp` bytes at stride `lda`; `out`
/// is valid for `rows` rows × `b.n` columns.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_block(
    b: &PackedB,
    panels: &[i8],
    a: *const u8,
    lda: usize,
    rows: usize,
    p0: usize,
    p1: usize,
    out: OutPtr,
) {
    let mut r0 = 0;
    while r0 < rows {
        let mr = MR.min(rows - r0);
        // SAFETY: offsets stay inside the block (caller).
        unsafe {
            let ar = a.add(r0 * lda);
            let o = out.offset(r0, 0);
            for p in p0..p1 {
                let bp = panels.as_ptr().add(p * b.kp * NR);
                let (col0, cols) = (p * NR, NR.min(b.n - p * NR));
                match mr {
                    6 => tile::<6>(b.kp, ar, lda, bp, &b.epi, col0, cols, o),
                    5 => tile::<5>(b.kp, ar, lda, bp, &b.epi, col0, cols, o),
                    4 => tile::<4>(b.kp, ar, lda, bp, &b.epi, col0, cols, o),
                    3 => tile::<3>(b.kp, ar, lda, bp, &b.epi, col0, cols, o),
                    2 => tile::<2>(b.kp, ar, lda, bp, &b.epi, col0, cols, o),
                    _ => tile::<1>(b.kp, ar, lda, bp, &b.epi, col0, cols, o),
                }
            }
        }
        r0 += MR;
    }
}

/// Depthwise weights and epilogue constants laid out for [`depthwise_pixel64`], per block of 64
/// channels. Lane `L` of vector `b` (`b ∈ 0..4`) is channel `64·blk + 4L + b`: one plain 64-byte
/// load of activations (channels in memory order) feeds four `vpdpbusd` whose weight vectors
/// hold `w[4L + b]` in byte `b` of lane `L` and zero in the other three bytes, so each lane of
/// accumulator `b` collects exactly `x[4L + b]·w[4L + b]` — no widening shuffles. The four
/// requantized results recombine into memory order with shifts and ors.
#[derive(Debug, Clone)]
pub struct DepthwiseVnniLayout {
    /// `[blk][tap][b][64]` bytes.
    pub w: Vec<i8>,
    /// `[blk][b][16]` permuted `bias'`.
    pub bias: Vec<i32>,
    /// Permuted `M0`.
    pub m0: Vec<i32>,
    /// Permuted left shifts.
    pub left: Vec<i32>,
    /// Permuted right shifts.
    pub right: Vec<i32>,
    /// Taps per channel.
    pub taps: usize,
    /// `[tap][cp]` weights widened to int32 (natural channel order), for partial blocks.
    pub wide: Vec<i32>,
    /// Channel stride of `wide`.
    pub cp: usize,
}

impl DepthwiseVnniLayout {
    /// From `[tap][cp]` weights (`cp` a multiple of 64) and an epilogue with `cp` entries.
    pub fn new(w: &[i32], taps: usize, cp: usize, e: &Epilogue) -> Self {
        let blocks = cp / 64;
        let mut wl = vec![0i8; blocks * taps * 4 * 64];
        let perm = |v: &[i32]| {
            let mut out = vec![0i32; cp];
            for blk in 0..blocks {
                for b in 0..4 {
                    for l in 0..16 {
                        out[blk * 64 + b * 16 + l] = v[blk * 64 + 4 * l + b];
                    }
                }
            }
            out
        };
        for blk in 0..blocks {
            for t in 0..taps {
                for b in 0..4 {
                    for l in 0..16 {
                        let ch = blk * 64 + 4 * l + b;
                        wl[((blk * taps + t) * 4 + b) * 64 + 4 * l + b] = w[t * cp + ch] as i8;
                    }
                }
            }
        }
        Self {
            w: wl,
            bias: perm(&e.bias),
            m0: perm(&e.m0),
            left: perm(&e.left),
            right: perm(&e.right),
            taps,
            wide: w.to_vec(),
            cp,
        }
    }
}

/// `avx512vnni_depthwise_u8i8_64c`: one output pixel, channels `c0..c0 + valid` (`c0` a multiple
/// of 64, `valid ≤ 64`); tap `t` reads `tap(t) + c0`. See [`DepthwiseVnniLayout`].
///
/// # Safety
/// CPU supports avx512f/bw/vl/vnni; `tap(t) + c0` has `valid` readable bytes; `o8`/`o32`, when
/// given, point at the pixel's channel `c0` with `valid` writable elements; `e` has `zp/lo/hi`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn depthwise_pixel64<const LEFT: bool, const P: usize>(
    tap: impl Fn(usize, usize) -> *const u8,
    l: &DepthwiseVnniLayout,
    rq: &[Rq16; 4],
    c0: usize,
    valid: usize,
    e: &Epilogue,
    o8: Option<[*mut u8; P]>,
    o32: Option<[*mut i32; P]>,
) {
    let mask = if valid >= 64 {
        u64::MAX
    } else {
        (1u64 << valid) - 1
    };
    let blk = c0 / 64;
    // SAFETY: as documented; the layout arrays cover every block.
    unsafe {
        let at =
            |v: &Vec<i32>, b: usize| _mm512_loadu_si512(v.as_ptr().add(blk * 64 + b * 16).cast());
        let bias = [
            at(&l.bias, 0),
            at(&l.bias, 1),
            at(&l.bias, 2),
            at(&l.bias, 3),
        ];
        let mut acc = [bias; P];
        let wb = l.w.as_ptr().add(blk * l.taps * 256);
        for t in 0..l.taps {
            let wt = wb.add(t * 256);
            let w: [__m512i; 4] =
                std::array::from_fn(|b| _mm512_loadu_si512(wt.add(b * 64).cast()));
            for (p, accp) in acc.iter_mut().enumerate() {
                let x = if mask == u64::MAX {
                    _mm512_loadu_si512(tap(p, t).add(c0).cast())
                } else {
                    _mm512_maskz_loadu_epi8(mask, tap(p, t).add(c0).cast())
                };
                for (a, &wv) in accp.iter_mut().zip(&w) {
                    *a = _mm512_dpbusd_epi32(*a, x, wv);
                }
            }
        }
        if let Some(o) = o8 {
            let (zp, lo, hi) = (
                _mm512_set1_epi32(e.zp),
                _mm512_set1_epi32(e.lo),
                _mm512_set1_epi32(e.hi),
            );
            for (p, accp) in acc.iter().enumerate() {
                let q = |b: usize| requantize16::<LEFT>(accp[b], &rq[b], zp, lo, hi);
                let r = _mm512_or_si512(
                    _mm512_or_si512(q(0), _mm512_slli_epi32::<8>(q(1))),
                    _mm512_or_si512(_mm512_slli_epi32::<16>(q(2)), _mm512_slli_epi32::<24>(q(3))),
                );
                _mm512_mask_storeu_epi8(o[p].cast(), mask, r);
            }
        }
        if let Some(o) = o32 {
            for (p, accp) in acc.iter().enumerate() {
                let mut tmp = [[0i32; 16]; 4];
                for (b, a) in accp.iter().enumerate() {
                    _mm512_storeu_si512(tmp[b].as_mut_ptr().cast(), *a);
                }
                for ch in 0..valid {
                    *o[p].add(ch) = tmp[ch % 4][ch / 4];
                }
            }
        }
    }
}

/// `avx512vnni_depthwise_u8i8_16c`, for a partial block (`valid ≤ 48` channels): one output
/// pixel, `V` vectors of 16 channels in natural order; activations zero-extended to int32 and
/// multiplied by the int32-widened weights with `vpdpwssd` (the high int16 of each activation lane
/// is 0, so each pair sum is exactly `x·w`). Cheaper than the 64-channel byte-lane kernel when
/// fewer than 48 channels remain.
///
/// # Safety
/// As [`depthwise_pixel64`]; `e` arrays have `cp` entries.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn depthwise_narrow<const LEFT: bool, const V: usize>(
    tap: impl Fn(usize) -> *const u8,
    l: &DepthwiseVnniLayout,
    c0: usize,
    valid: usize,
    e: &Epilogue,
    o8: Option<*mut u8>,
    o32: Option<*mut i32>,
) {
    // SAFETY: as documented; masked loads/stores touch only the `valid` channels.
    unsafe {
        let masks: [u16; V] = std::array::from_fn(|v| {
            let n = valid.saturating_sub(16 * v).min(16);
            ((1u32 << n) - 1) as u16
        });
        let mut acc: [__m512i; V] =
            std::array::from_fn(|v| _mm512_loadu_si512(e.bias.as_ptr().add(c0 + 16 * v).cast()));
        for t in 0..l.taps {
            let row = tap(t).add(c0);
            let wt = l.wide.as_ptr().add(t * l.cp + c0);
            for v in 0..V {
                let x =
                    _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(masks[v], row.add(16 * v).cast()));
                acc[v] = _mm512_dpwssd_epi32(acc[v], x, _mm512_loadu_si512(wt.add(16 * v).cast()));
            }
        }
        for v in 0..V {
            let col = c0 + 16 * v;
            if let Some(o) = o8 {
                let rq = Rq16::load(
                    e.m0.as_ptr().add(col),
                    e.left.as_ptr().add(col),
                    e.right.as_ptr().add(col),
                );
                let q = requantize16::<LEFT>(
                    acc[v],
                    &rq,
                    _mm512_set1_epi32(e.zp),
                    _mm512_set1_epi32(e.lo),
                    _mm512_set1_epi32(e.hi),
                );
                _mm_mask_storeu_epi8(o.add(16 * v).cast(), masks[v], _mm512_cvtepi32_epi8(q));
            }
            if let Some(o) = o32 {
                _mm512_mask_storeu_epi32(o.add(16 * v).cast(), masks[v], acc[v]);
            }
        }
    }
}

/// A run of `npix` output pixels (pixel `p`'s tap `t` at `base + p·step + offs[t]`, or, when
/// `taps` is given, a single pixel whose tap rows are listed), all channels.
///
/// # Safety
/// CPU supports avx512f/bw/vl/vnni; every tap row has `c` readable bytes; `o8`/`o32` hold
/// `npix·c` elements.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn depthwise_run(
    base: *const u8,
    step: usize,
    npix: usize,
    offs: &[usize],
    taps: Option<&[*const u8]>,
    l: &DepthwiseVnniLayout,
    c: usize,
    e: &Epilogue,
    o8: Option<*mut u8>,
    o32: Option<*mut i32>,
) {
    // SAFETY: as documented. Blocks of 64 channels outer, pixels inner: the block's
    // multiplier constants stay in registers across the run.
    unsafe {
        let mut c0 = 0;
        while c0 < c {
            let valid = (c - c0).min(64);
            if valid <= 48 {
                for p in 0..npix {
                    let d8 = o8.map(|o| o.add(p * c + c0));
                    let d32 = o32.map(|o| o.add(p * c + c0));
                    let tap = |t: usize| match taps {
                        Some(tp) => tp[t],
                        None => base.add(p * step + offs[t]),
                    };
                    match (valid.div_ceil(16), e.any_left) {
                        (1, false) => depthwise_narrow::<false, 1>(tap, l, c0, valid, e, d8, d32),
                        (1, true) => depthwise_narrow::<true, 1>(tap, l, c0, valid, e, d8, d32),
                        (2, false) => depthwise_narrow::<false, 2>(tap, l, c0, valid, e, d8, d32),
                        (2, true) => depthwise_narrow::<true, 2>(tap, l, c0, valid, e, d8, d32),
                        (_, false) => depthwise_narrow::<false, 3>(tap, l, c0, valid, e, d8, d32),
                        (_, true) => depthwise_narrow::<true, 3>(tap, l, c0, valid, e, d8, d32),
                    }
                }
                c0 += 64;
                continue;
            }
            let blk = c0 / 64;
            let rq: [Rq16; 4] = std::array::from_fn(|b| {
                let at = blk * 64 + b * 16;
                Rq16::load(
                    l.m0.as_ptr().add(at),
                    l.left.as_ptr().add(at),
                    l.right.as_ptr().add(at),
                )
            });
            let mut p = 0;
            if let Some(tp) = taps {
                // A single pixel whose tap rows are listed.
                let d8 = o8.map(|o| [o.add(c0)]);
                let d32 = o32.map(|o| [o.add(c0)]);
                if e.any_left {
                    depthwise_pixel64::<true, 1>(|_, t| tp[t], l, &rq, c0, valid, e, d8, d32);
                } else {
                    depthwise_pixel64::<false, 1>(|_, t| tp[t], l, &rq, c0, valid, e, d8, d32);
                }
                p = npix;
            }
            // Two pixels per step: eight independent accumulation chains, weights loaded once.
            while p + 2 <= npix {
                let d8 = o8.map(|o| [o.add(p * c + c0), o.add((p + 1) * c + c0)]);
                let d32 = o32.map(|o| [o.add(p * c + c0), o.add((p + 1) * c + c0)]);
                let tap = |q: usize, t: usize| base.add((p + q) * step + offs[t]);
                if e.any_left {
                    depthwise_pixel64::<true, 2>(tap, l, &rq, c0, valid, e, d8, d32);
                } else {
                    depthwise_pixel64::<false, 2>(tap, l, &rq, c0, valid, e, d8, d32);
                }
                p += 2;
            }
            if p < npix {
                let d8 = o8.map(|o| [o.add(p * c + c0)]);
                let d32 = o32.map(|o| [o.add(p * c + c0)]);
                let tap = |_: usize, t: usize| base.add(p * step + offs[t]);
                if e.any_left {
                    depthwise_pixel64::<true, 1>(tap, l, &rq, c0, valid, e, d8, d32);
                } else {
                    depthwise_pixel64::<false, 1>(tap, l, &rq, c0, valid, e, d8, d32);
                }
            }
            c0 += 64;
        }
    }
}

/// `avx512vnni_igemm_u8i8_6x64`: the indirect (implicit im2col) tile. Row `r`'s reduction runs
/// over `taps` segments of `seg` bytes read in place at `ptrs[r·taps + t]` (padding segments
/// point at a row of `Z1`), so no im2col copy is made.
///
/// # Safety
/// Every pointer has `seg` readable bytes, `seg % 4 == 0`, `taps·seg == kp`; `b` one packed panel;
/// `out` valid for `M` rows × `cols` columns from `col0`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_indirect<const M: usize>(
    ptrs: &[*const u8],
    taps: usize,
    seg: usize,
    b: *const i8,
    e: &Epilogue,
    col0: usize,
    cols: usize,
    out: OutPtr,
) {
    let mut acc = [[_mm512_setzero_si512(); 4]; M];
    // SAFETY: as documented.
    unsafe {
        let mut bg = b;
        for t in 0..taps {
            let rows: [*const u8; M] = std::array::from_fn(|r| *ptrs.get_unchecked(r * taps + t));
            for gi in 0..seg / 4 {
                let b0 = _mm512_loadu_si512(bg.cast());
                let b1 = _mm512_loadu_si512(bg.add(64).cast());
                let b2 = _mm512_loadu_si512(bg.add(128).cast());
                let b3 = _mm512_loadu_si512(bg.add(192).cast());
                for (r, accr) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_epi32(rows[r].add(4 * gi).cast::<i32>().read_unaligned());
                    accr[0] = _mm512_dpbusd_epi32(accr[0], av, b0);
                    accr[1] = _mm512_dpbusd_epi32(accr[1], av, b1);
                    accr[2] = _mm512_dpbusd_epi32(accr[2], av, b2);
                    accr[3] = _mm512_dpbusd_epi32(accr[3], av, b3);
                }
                bg = bg.add(NR * 4);
            }
        }
        tile_epilogue(acc, e, col0, cols, out);
    }
}

/// Rows `0..rows` of an indirect A block against panels `p0..p1` (see `tile_indirect`).
///
/// # Safety
/// CPU supports avx512f/bw/vl/vnni; `ptrs` holds `rows·taps` pointers with `seg` readable bytes
/// each; `taps·seg == b.kp`; `out` valid for `rows` rows × `b.n` columns.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_block_indirect(
    b: &PackedB,
    panels: &[i8],
    ptrs: &[*const u8],
    taps: usize,
    seg: usize,
    rows: usize,
    p0: usize,
    p1: usize,
    out: OutPtr,
) {
    let mut r0 = 0;
    while r0 < rows {
        let mr = MR.min(rows - r0);
        // SAFETY: offsets stay inside the block (caller).
        unsafe {
            let pr = &ptrs[r0 * taps..];
            let o = out.offset(r0, 0);
            for p in p0..p1 {
                let bp = panels.as_ptr().add(p * b.kp * NR);
                let (col0, cols) = (p * NR, NR.min(b.n - p * NR));
                match mr {
                    6 => tile_indirect::<6>(pr, taps, seg, bp, &b.epi, col0, cols, o),
                    5 => tile_indirect::<5>(pr, taps, seg, bp, &b.epi, col0, cols, o),
                    4 => tile_indirect::<4>(pr, taps, seg, bp, &b.epi, col0, cols, o),
                    3 => tile_indirect::<3>(pr, taps, seg, bp, &b.epi, col0, cols, o),
                    2 => tile_indirect::<2>(pr, taps, seg, bp, &b.epi, col0, cols, o),
                    _ => tile_indirect::<1>(pr, taps, seg, bp, &b.epi, col0, cols, o),
                }
            }
        }
        r0 += MR;
    }
}
