//! AVX-512 VNNI kernels: `avx512vnni_gemm_u8i8_6x64` (`vpdpbusd`: four u8×i8 products summed
//! into each int32 lane) with the requantization fused in the epilogue, and the vectorized
//! fixed-point requantization shared with the depthwise kernel.

use std::arch::x86_64::*;

use qat_core::fixed_point::Rounding;

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

/// Per-lane constants of [`requantize16_single`] for 16 lanes, derived once per 16
/// columns/channels from `M0`, `left`, `right` (`T = 31 − shift = 31 + right − left`).
#[derive(Clone, Copy)]
pub struct RqSingle16 {
    m0: __m512i,
    /// `M0` of the odd lanes moved to the low half of each 64-bit lane.
    m0_hi: __m512i,
    /// 64-bit `T` of the even lanes (`T = 32` for a flushed `M0 = 0`).
    t_even: __m512i,
    /// 64-bit `T` of the odd lanes.
    t_odd: __m512i,
    /// `T − 32` of the odd lanes (their result read from the high half when every `T ≥ 32`).
    s_odd: __m512i,
    /// `2^(T−1)` of the even lanes.
    h_even: __m512i,
    /// `2^(T−1)` of the odd lanes.
    h_odd: __m512i,
}

impl RqSingle16 {
    /// Loads `M0`, `left`, `right` for 16 lanes and derives the shift counts and rounding halves.
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
        let t = _mm512_sub_epi32(_mm512_add_epi32(_mm512_set1_epi32(31), right), left);
        let flushed = _mm512_cmpeq_epi32_mask(m0, _mm512_setzero_si512());
        let t = _mm512_mask_mov_epi32(t, flushed, _mm512_set1_epi32(32));
        let t_even = _mm512_and_si512(t, _mm512_set1_epi64(0xFFFF_FFFF));
        let t_odd = _mm512_srli_epi64::<32>(t);
        let one = _mm512_set1_epi64(1);
        Self {
            m0,
            m0_hi: _mm512_srli_epi64::<32>(m0),
            t_even,
            t_odd,
            s_odd: _mm512_sub_epi64(t_odd, _mm512_set1_epi64(32)),
            h_even: _mm512_sllv_epi64(one, _mm512_sub_epi64(t_even, one)),
            h_odd: _mm512_sllv_epi64(one, _mm512_sub_epi64(t_odd, one)),
        }
    }
}

/// The single-rounding output stage ([`Rounding::Single`]) on 16 int32 lanes, bit-exact with
/// [`qat_core::fixed_point::requantize_single`]: with `T = 31 − shift ∈ [1, 62]`,
/// `r = sign(x)·⌊(|x|·M0 + 2^(T−1)) / 2^T⌋` (`vpabsd`, unsigned `vpmuludq` — `|i32::MIN| = 2^31`
/// is exact as an unsigned lane — and a logical 64-bit shift of a non-negative product below
/// 2^63), then `+ Z3` and the clamp.
///
/// `WIDE = false` requires every lane's `T ≥ 32` (no multiplier ≥ 0.5): `|r| < 2^30`, and the odd
/// lanes' result is read from the high half of a shift by `T − 32`. `WIDE = true` handles any
/// `T`: `|r|` is capped at 2^24 before narrowing, which changes nothing after the clamp to
/// `[lo, hi] ⊆ [0, 255]` with `|Z3| < 2^23` (the reference saturates there too).
/// Per 16 lanes (`WIDE = false`): 14 ops, against 17 for [`requantize16`].
///
/// # Safety
/// The CPU must support the enabled target features.
#[inline]
#[target_feature(enable = "avx512f")]
pub fn requantize16_single<const WIDE: bool>(
    x: __m512i,
    c: &RqSingle16,
    zp: __m512i,
    lo: __m512i,
    hi: __m512i,
) -> __m512i {
    let zero = _mm512_setzero_si512();
    let negative = _mm512_cmplt_epi32_mask(x, zero);
    let ax = _mm512_abs_epi32(x);
    let te = _mm512_add_epi64(_mm512_mul_epu32(ax, c.m0), c.h_even);
    let to = _mm512_add_epi64(
        _mm512_mul_epu32(_mm512_srli_epi64::<32>(ax), c.m0_hi),
        c.h_odd,
    );
    let r = if WIDE {
        let cap = _mm512_set1_epi64(1 << 24);
        let re = _mm512_min_epu64(_mm512_srlv_epi64(te, c.t_even), cap);
        let ro = _mm512_min_epu64(_mm512_srlv_epi64(to, c.t_odd), cap);
        _mm512_mask_blend_epi32(0xAAAA, re, _mm512_slli_epi64::<32>(ro))
    } else {
        _mm512_mask_blend_epi32(
            0xAAAA,
            _mm512_srlv_epi64(te, c.t_even),
            _mm512_srlv_epi64(to, c.s_odd),
        )
    };
    let r = _mm512_mask_sub_epi32(r, negative, zero, r);
    _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(r, zp), lo), hi)
}

/// The constants of either output stage for 16 lanes: the unused mode's half is zero (`SINGLE`
/// picks, at compile time, which one [`stage16`] applies).
#[derive(Clone, Copy)]
pub struct Stage16 {
    g: Rq16,
    s: RqSingle16,
}

impl Stage16 {
    /// [`Rq16::load`] (`SINGLE = false`) or [`RqSingle16::load`] (`SINGLE = true`).
    ///
    /// # Safety
    /// CPU supports avx512f; each pointer has 16 readable `i32`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn load<const SINGLE: bool>(
        m0: *const i32,
        left: *const i32,
        right: *const i32,
    ) -> Self {
        let z = _mm512_setzero_si512();
        // SAFETY: as documented.
        unsafe {
            if SINGLE {
                Self {
                    g: Rq16 {
                        m0: z,
                        m0_hi: z,
                        left: z,
                        right: z,
                        rmask: z,
                        rhalf: z,
                    },
                    s: RqSingle16::load(m0, left, right),
                }
            } else {
                Self {
                    g: Rq16::load(m0, left, right),
                    s: RqSingle16 {
                        m0: z,
                        m0_hi: z,
                        t_even: z,
                        t_odd: z,
                        s_odd: z,
                        h_even: z,
                        h_odd: z,
                    },
                }
            }
        }
    }
}

/// The output stage of 16 lanes in the mode chosen at compile time: [`requantize16`] with
/// `LEFT = SLOW` (`SINGLE = false`) or [`requantize16_single`] with `WIDE = SLOW`
/// (`SINGLE = true`); `SLOW` is [`Epilogue::slow`].
///
/// # Safety
/// The CPU must support the enabled target features.
#[inline]
#[target_feature(enable = "avx512f")]
pub fn stage16<const SLOW: bool, const SINGLE: bool>(
    x: __m512i,
    c: &Stage16,
    zp: __m512i,
    lo: __m512i,
    hi: __m512i,
) -> __m512i {
    if SINGLE {
        requantize16_single::<SLOW>(x, &c.s, zp, lo, hi)
    } else {
        requantize16::<SLOW>(x, &c.g, zp, lo, hi)
    }
}

/// Per-lane constants of the single-shift output stage ([`requantize16_fused`]) for 16 lanes: the
/// even int32 lanes are handled in the 64-bit lanes' low halves, the odd lanes in their high halves.
#[derive(Clone, Copy)]
pub struct RqFused16 {
    m0: __m512i,
    /// `M0` of the odd lanes moved to the low half of each 64-bit lane.
    m0_hi: __m512i,
    /// 64-bit rounding constants `K` of the even lanes (see [`fused_constants`]).
    k_even: __m512i,
    /// Same for the odd lanes.
    k_odd: __m512i,
    /// 64-bit shift counts `31 + right` of the even lanes.
    s_even: __m512i,
    /// 64-bit shift counts `right − 1` of the odd lanes (their result is read from the high half).
    s_odd: __m512i,
    /// What a negative product subtracts: `2^31` (`Gemmlowp`) or 1 (`Single`).
    neg: __m512i,
}

impl RqFused16 {
    /// Loads 16 lanes' `M0` and the 16 `i64` rounding constants and 16 shift counts laid out by
    /// [`fused_constants`] for `rounding`.
    ///
    /// # Safety
    /// CPU supports avx512f; `m0` has 16 readable `i32`, `k` and `s` 16 readable `i64` each.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn load(m0: *const i32, k: *const i64, s: *const i64, rounding: Rounding) -> Self {
        // SAFETY: caller guarantees the readable lengths.
        unsafe {
            let m0 = _mm512_loadu_si512(m0.cast());
            Self {
                m0,
                m0_hi: _mm512_srli_epi64::<32>(m0),
                k_even: _mm512_loadu_si512(k.cast()),
                k_odd: _mm512_loadu_si512(k.add(8).cast()),
                s_even: _mm512_loadu_si512(s.cast()),
                s_odd: _mm512_loadu_si512(s.add(8).cast()),
                neg: _mm512_set1_epi64(match rounding {
                    Rounding::Gemmlowp => 1 << 31,
                    Rounding::Single => 1,
                }),
            }
        }
    }
}

/// Whether every real channel admits the single-shift output stage (either rounding): no left shift
/// (`shift ≤ 0`), `1 ≤ right ≤ 21` (or a flushed multiplier `M0 = 0`), `|Z3| < 2^9` and a clamp range
/// inside `[0, 255]` (so saturating packs equal the reference's clamp and `as u8`).
pub fn fused_ok(m0: &[i32], left: &[i32], right: &[i32], zp: i32, lo: i32, hi: i32) -> bool {
    (0..=255).contains(&lo)
        && (lo..=255).contains(&hi)
        && zp.unsigned_abs() < 1 << 9
        && m0
            .iter()
            .zip(left)
            .zip(right)
            .all(|((&m, &l), &r)| l == 0 && (m == 0 || (1..=21).contains(&r)))
}

/// The constants of [`requantize16_fused`] for channels taken 16 at a time in the given order
/// (`m0.len()` a multiple of 16): per group of 16 lanes, `k` holds the 8 even lanes' then the 8
/// odd lanes' `K = 2^30 + 2^(30+e) + Z3·2^(31+e)` (`Gemmlowp`) or `K = 2^(30+e) + Z3·2^(31+e)`
/// (`Single`: `2^(T−1) + Z3·2^T` with `T = 31 + e`) and `s` their shift counts `31 + e` (even)
/// and `e − 1` (odd), with `e = right` (`e = 1` for a flushed `M0 = 0`, whose output is `Z3` for
/// any `e`). Only meaningful when [`fused_ok`] holds.
pub fn fused_constants(
    m0: &[i32],
    right: &[i32],
    zp: i32,
    rounding: Rounding,
) -> (Vec<i64>, Vec<i64>) {
    let srdhm_nudge = match rounding {
        Rounding::Gemmlowp => 1i64 << 30,
        Rounding::Single => 0,
    };
    let mut k = vec![0i64; m0.len()];
    let mut s = vec![0i64; m0.len()];
    for g in 0..m0.len() / 16 {
        for lane in 0..16 {
            let ch = g * 16 + lane;
            let e = if m0[ch] == 0 {
                1
            } else {
                right[ch].clamp(1, 21)
            } as i64;
            let slot = g * 16 + (lane % 2) * 8 + lane / 2;
            k[slot] = srdhm_nudge + (1i64 << (30 + e)) + (zp as i64) * (1i64 << (31 + e));
            s[slot] = if lane % 2 == 0 { 31 + e } else { e - 1 };
        }
    }
    (k, s)
}

/// [`requantize16`] without the clamp, computed with one rounding shift: bit-exact with
/// `qat_core::fixed_point::requantize(x, M, Z3, i32::MIN, i32::MAX)` when [`fused_ok`] holds.
///
/// With `P = x·M0` (64-bit, `M0 ≥ 0`) and `e = right ≥ 1`, gemmlowp's SRDHM is
/// `h = ⌊(P + 2^30) / 2^31⌋` (its sign-dependent nudge with truncation equals this floor) and the
/// rounding divide is `⌊(h + 2^(e−1) − [h < 0]) / 2^e⌋`. Since `⌊(⌊y⌋ + c) / d⌋ = ⌊(y + c) / d⌋` for
/// integers `c`, `d > 0`, both collapse to `⌊(P + 2^30 + 2^(30+e) − [h<0]·2^31) / 2^(31+e)⌋`, and
/// `[h < 0]` may be replaced by `[P < 0]`: for `P ∈ [−2^30, 0)` both forms give 0 when `e ≥ 1`.
/// `Z3` is folded into the constant as `Z3·2^(31+e)` (no overflow: `|P| < 2^62`, `e ≤ 21`).
/// Per 16 lanes: one shift, two `vpmuldq`, two compares, two adds, two masked subtracts, two
/// variable 64-bit shifts and a blend (12 ops against ≈ 17 for [`requantize16`] with its clamp).
///
/// [`Rounding::Single`] (`requantize_single`, ties away from zero) is the same instruction
/// sequence with other constants: with `T = 31 + e`, `sign(P)·⌊(|P| + 2^(T−1)) / 2^T⌋` equals
/// `⌊(P + 2^(T−1) − [P < 0]) / 2^T⌋` (for `P < 0`, `−⌊(−P + h)/d⌋ = ⌊(P + h − 1)/d⌋` when
/// `d = 2h`), so `K = 2^(T−1) + Z3·2^T` and a negative product subtracts 1 instead of `2^31`.
///
/// # Safety
/// The CPU must support the enabled target features.
#[inline]
#[target_feature(enable = "avx512f")]
pub fn requantize16_fused(x: __m512i, c: &RqFused16) -> __m512i {
    let zero = _mm512_setzero_si512();
    let pe = _mm512_mul_epi32(x, c.m0);
    let po = _mm512_mul_epi32(_mm512_srli_epi64::<32>(x), c.m0_hi);
    let te = _mm512_add_epi64(pe, c.k_even);
    let te = _mm512_mask_sub_epi64(te, _mm512_cmplt_epi64_mask(pe, zero), te, c.neg);
    let to = _mm512_add_epi64(po, c.k_odd);
    let to = _mm512_mask_sub_epi64(to, _mm512_cmplt_epi64_mask(po, zero), to, c.neg);
    _mm512_mask_blend_epi32(
        0xAAAA,
        _mm512_srav_epi64(te, c.s_even),
        _mm512_srav_epi64(to, c.s_odd),
    )
}

/// Epilogue for 16 accumulators of columns `col..col + 16` (bias already added): writes the
/// `valid` first lanes as u8 (requantized with `rq`) or int32.
///
/// # Safety
/// The destination row has ≥ `valid` writable elements at `out_col`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[allow(clippy::too_many_arguments)]
unsafe fn store16<const SLOW: bool, const SINGLE: bool>(
    v: __m512i,
    rq: &Stage16,
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
                let q = stage16::<SLOW, SINGLE>(
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

/// The fused output stage of an `M × 64` tile: `+ bias'`, requantize in the epilogue's
/// [`Rounding`], store (masked past `cols`).
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
        match (e.rounding, e.slow()) {
            (Rounding::Gemmlowp, false) => {
                tile_epilogue_in::<M, false, false>(acc, e, col0, cols, out)
            }
            (Rounding::Gemmlowp, true) => {
                tile_epilogue_in::<M, true, false>(acc, e, col0, cols, out)
            }
            (Rounding::Single, false) => {
                tile_epilogue_in::<M, false, true>(acc, e, col0, cols, out)
            }
            (Rounding::Single, true) => tile_epilogue_in::<M, true, true>(acc, e, col0, cols, out),
        }
    }
}

/// [`tile_epilogue`] for one output-stage variant (see [`stage16`]).
///
/// # Safety
/// As [`tile_epilogue`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn tile_epilogue_in<const M: usize, const SLOW: bool, const SINGLE: bool>(
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
            let rq = Stage16::load::<SINGLE>(
                e.m0.as_ptr().add(col),
                e.left.as_ptr().add(col),
                e.right.as_ptr().add(col),
            );
            for (r, accr) in acc.iter().enumerate() {
                let v = _mm512_add_epi32(accr[j], bias);
                store16::<SLOW, SINGLE>(v, &rq, e, valid, out, r, col);
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
    /// Whether the single-shift output stage applies ([`fused_ok`] over the real channels).
    pub fused: bool,
    /// [`fused_constants`] of the permuted channels (`[blk][b]` groups of 16), rounding constants.
    pub fk: Vec<i64>,
    /// Shift counts matching `fk`.
    pub fs: Vec<i64>,
    /// [`fused_constants`] in natural channel order (partial blocks), rounding constants.
    pub fk_nat: Vec<i64>,
    /// Shift counts matching `fk_nat`.
    pub fs_nat: Vec<i64>,
}

impl DepthwiseVnniLayout {
    /// From `[tap][cp]` weights (`cp` a multiple of 64, `c ≤ cp` real channels) and an epilogue
    /// with `cp` entries.
    pub fn new(w: &[i32], taps: usize, c: usize, cp: usize, e: &Epilogue) -> Self {
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
        let fused = fused_ok(&e.m0[..c], &e.left[..c], &e.right[..c], e.zp, e.lo, e.hi);
        let (m0, right) = (perm(&e.m0), perm(&e.right));
        let (fk, fs) = fused_constants(&m0, &right, e.zp, e.rounding);
        let (fk_nat, fs_nat) = fused_constants(&e.m0, &e.right, e.zp, e.rounding);
        Self {
            w: wl,
            bias: perm(&e.bias),
            m0,
            left: perm(&e.left),
            right,
            taps,
            wide: w.to_vec(),
            cp,
            fused,
            fk,
            fs,
            fk_nat,
            fs_nat,
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
pub unsafe fn depthwise_pixel64<const SLOW: bool, const SINGLE: bool, const P: usize>(
    tap: impl Fn(usize, usize) -> *const u8,
    l: &DepthwiseVnniLayout,
    rq: &[Stage16; 4],
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
                let q = |b: usize| stage16::<SLOW, SINGLE>(accp[b], &rq[b], zp, lo, hi);
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
unsafe fn depthwise_narrow<const SLOW: bool, const SINGLE: bool, const V: usize>(
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
            if let (Some(o), true) = (o8, l.fused) {
                let f = RqFused16::load(
                    e.m0.as_ptr().add(col),
                    l.fk_nat.as_ptr().add(col),
                    l.fs_nat.as_ptr().add(col),
                    e.rounding,
                );
                let q = _mm512_min_epi32(
                    _mm512_max_epi32(requantize16_fused(acc[v], &f), _mm512_set1_epi32(e.lo)),
                    _mm512_set1_epi32(e.hi),
                );
                _mm_mask_storeu_epi8(o.add(16 * v).cast(), masks[v], _mm512_cvtepi32_epi8(q));
            } else if let Some(o) = o8 {
                let rq = Stage16::load::<SINGLE>(
                    e.m0.as_ptr().add(col),
                    e.left.as_ptr().add(col),
                    e.right.as_ptr().add(col),
                );
                let q = stage16::<SLOW, SINGLE>(
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

/// `avx512vnni_depthwise_u8i8_64c_fused`: a run of `npix` output pixels (pixel `p`'s tap `t`
/// at `base + p·step + offs[t]`, output at `o8 + p·c`) and the pixels whose tap rows are listed
/// (`list`: `taps` pointers per pixel, output at `list_out`), channels `c0..c0 + valid` of one 64-channel block, u8 output
/// through the single-shift output stage ([`requantize16_fused`]) and saturating packs. `P`
/// pixels per step share the weight loads; `T` taps known at compile time (0: `l.taps`).
///
/// # Safety
/// CPU supports avx512f/bw/vl/vnni; `l.fused`; every tap row has `c0 + valid` readable bytes;
/// `o8` holds `npix` pixels of `c` channels; each `list_out` pointer one pixel.
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn depthwise_block_fused<const T: usize>(
    base: *const u8,
    step: usize,
    npix: usize,
    offs: &[usize],
    list: &[*const u8],
    list_out: &[*mut u8],
    l: &DepthwiseVnniLayout,
    c: usize,
    c0: usize,
    valid: usize,
    e: &Epilogue,
    o8: *mut u8,
) {
    const P: usize = 3;
    let mask = if valid >= 64 {
        u64::MAX
    } else {
        (1u64 << valid) - 1
    };
    let blk = c0 / 64;
    let taps = if T == 0 { l.taps } else { T };
    // SAFETY: as documented; the layout arrays cover every block.
    unsafe {
        let f: [RqFused16; 4] = std::array::from_fn(|b| {
            let at = blk * 64 + b * 16;
            RqFused16::load(
                l.m0.as_ptr().add(at),
                l.fk.as_ptr().add(at),
                l.fs.as_ptr().add(at),
                e.rounding,
            )
        });
        let bias: [__m512i; 4] = std::array::from_fn(|b| {
            _mm512_loadu_si512(l.bias.as_ptr().add(blk * 64 + b * 16).cast())
        });
        // Saturating packs: per 128-bit lane j, byte 4k + i holds vector k's lane 4j + i, i.e.
        // channel 16j + 4i + k; the in-lane byte shuffle puts channel 16j + d at byte d.
        let order = _mm512_broadcast_i32x4(_mm_setr_epi8(
            0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
        ));
        let (lo, hi) = (_mm512_set1_epi8(e.lo as i8), _mm512_set1_epi8(e.hi as i8));
        let wb = l.w.as_ptr().add(blk * l.taps * 256);
        let full = valid >= 64;
        let load = |p: *const u8| {
            if full {
                _mm512_loadu_si512(p.cast())
            } else {
                _mm512_maskz_loadu_epi8(mask, p.cast())
            }
        };
        let finish = |accp: &[__m512i; 4], dst: *mut u8| {
            let q = |b: usize| requantize16_fused(accp[b], &f[b]);
            let r = _mm512_packus_epi16(
                _mm512_packs_epi32(q(0), q(1)),
                _mm512_packs_epi32(q(2), q(3)),
            );
            let r = _mm512_min_epu8(_mm512_max_epu8(_mm512_shuffle_epi8(r, order), lo), hi);
            _mm512_mask_storeu_epi8(dst.cast(), mask, r);
        };
        for (tp, &dst) in list.chunks_exact(taps).zip(list_out) {
            let mut acc = bias;
            for (t, &row) in tp.iter().enumerate() {
                let wt = wb.add(t * 256);
                let x = load(row.add(c0));
                for (b, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_dpbusd_epi32(*a, x, _mm512_loadu_si512(wt.add(b * 64).cast()));
                }
            }
            finish(&acc, dst.add(c0));
        }
        let mut p = 0;
        while p + P <= npix {
            let mut acc = [bias; P];
            let px = base.add(p * step + c0);
            for t in 0..taps {
                let wt = wb.add(t * 256);
                let w: [__m512i; 4] =
                    std::array::from_fn(|b| _mm512_loadu_si512(wt.add(b * 64).cast()));
                let row = px.add(*offs.get_unchecked(t));
                for (q, accq) in acc.iter_mut().enumerate() {
                    let x = load(row.add(q * step));
                    for (a, &wv) in accq.iter_mut().zip(&w) {
                        *a = _mm512_dpbusd_epi32(*a, x, wv);
                    }
                }
            }
            for (q, accq) in acc.iter().enumerate() {
                finish(accq, o8.add((p + q) * c + c0));
            }
            p += P;
        }
        while p < npix {
            let mut acc = bias;
            let px = base.add(p * step + c0);
            for t in 0..taps {
                let wt = wb.add(t * 256);
                let x = load(px.add(*offs.get_unchecked(t)));
                for (b, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_dpbusd_epi32(*a, x, _mm512_loadu_si512(wt.add(b * 64).cast()));
                }
            }
            finish(&acc, o8.add(p * c + c0));
            p += 1;
        }
    }
}

/// `avx512vnni_depthwise_u8i8_16c_fused`: [`depthwise_narrow`]'s partial block (`V` vectors of
/// 16 channels in natural order, `vpdpwssd` on zero-extended activations) over a run of `npix`
/// pixels and the listed pixels (as [`depthwise_block_fused`]), u8 output through
/// [`requantize16_fused`], constants loaded once per run.
///
/// # Safety
/// As [`depthwise_block_fused`], with `valid ≤ 16·V`.
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn depthwise_narrow_fused<const V: usize>(
    base: *const u8,
    step: usize,
    npix: usize,
    offs: &[usize],
    list: &[*const u8],
    list_out: &[*mut u8],
    l: &DepthwiseVnniLayout,
    c: usize,
    c0: usize,
    valid: usize,
    e: &Epilogue,
    o8: *mut u8,
) {
    // SAFETY: as documented; masked loads/stores touch only the `valid` channels.
    unsafe {
        let masks: [u16; V] = std::array::from_fn(|v| {
            let n = valid.saturating_sub(16 * v).min(16);
            ((1u32 << n) - 1) as u16
        });
        let f: [RqFused16; V] = std::array::from_fn(|v| {
            let col = c0 + 16 * v;
            RqFused16::load(
                e.m0.as_ptr().add(col),
                l.fk_nat.as_ptr().add(col),
                l.fs_nat.as_ptr().add(col),
                e.rounding,
            )
        });
        let bias: [__m512i; V] =
            std::array::from_fn(|v| _mm512_loadu_si512(e.bias.as_ptr().add(c0 + 16 * v).cast()));
        let (lo, hi) = (_mm512_set1_epi32(e.lo), _mm512_set1_epi32(e.hi));
        let pixel = |rows: &dyn Fn(usize) -> *const u8, dst: *mut u8| {
            let mut acc = bias;
            for t in 0..l.taps {
                let row = rows(t).add(c0);
                let wt = l.wide.as_ptr().add(t * l.cp + c0);
                for v in 0..V {
                    let x = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(
                        masks[v],
                        row.add(16 * v).cast(),
                    ));
                    acc[v] =
                        _mm512_dpwssd_epi32(acc[v], x, _mm512_loadu_si512(wt.add(16 * v).cast()));
                }
            }
            for v in 0..V {
                let q =
                    _mm512_min_epi32(_mm512_max_epi32(requantize16_fused(acc[v], &f[v]), lo), hi);
                _mm_mask_storeu_epi8(dst.add(16 * v).cast(), masks[v], _mm512_cvtepi32_epi8(q));
            }
        };
        for (tp, &dst) in list.chunks_exact(l.taps).zip(list_out) {
            pixel(&|t| tp[t], dst.add(c0));
        }
        for p in 0..npix {
            let px = base.add(p * step);
            pixel(&|t| px.add(*offs.get_unchecked(t)), o8.add(p * c + c0));
        }
    }
}

/// One output row through the single-shift output stage (requires `l.fused`): the run of
/// `npix` interior pixels (tap `t` of pixel `p` at `base + p·step + offs[t]`, output at
/// `o8 + p·c`; `npix` may be 0) and the listed pixels (`taps` tap-row pointers each, padding
/// taps pointing at a `Z1` row, outputs at `list_out`), all channels; the constants of each
/// 64-channel block are loaded once per row.
///
/// # Safety
/// CPU supports avx512f/bw/vl/vnni; `l.fused`; every tap row has `c` readable bytes; `o8` holds
/// `npix·c` bytes, each `list_out` pointer `c` bytes; `list.len() == taps·list_out.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn depthwise_row_fused(
    base: *const u8,
    step: usize,
    npix: usize,
    offs: &[usize],
    list: &[*const u8],
    list_out: &[*mut u8],
    l: &DepthwiseVnniLayout,
    c: usize,
    e: &Epilogue,
    o8: *mut u8,
) {
    debug_assert!(l.fused && list.len() == l.taps * list_out.len());
    // SAFETY: as documented.
    unsafe {
        let (b, s, n, lo) = (base, step, npix, list_out);
        let mut c0 = 0;
        while c0 < c {
            let valid = (c - c0).min(64);
            match (valid.div_ceil(16), l.taps == 9) {
                (1, _) => {
                    depthwise_narrow_fused::<1>(b, s, n, offs, list, lo, l, c, c0, valid, e, o8)
                }
                (2, _) => {
                    depthwise_narrow_fused::<2>(b, s, n, offs, list, lo, l, c, c0, valid, e, o8)
                }
                (3, _) => {
                    depthwise_narrow_fused::<3>(b, s, n, offs, list, lo, l, c, c0, valid, e, o8)
                }
                (_, true) => {
                    depthwise_block_fused::<9>(b, s, n, offs, list, lo, l, c, c0, valid, e, o8)
                }
                (_, false) => {
                    depthwise_block_fused::<0>(b, s, n, offs, list, lo, l, c, c0, valid, e, o8)
                }
            }
            c0 += 64;
        }
    }
}

/// A run of `npix` output pixels (pixel `p`'s tap `t` at `base + p·step + offs[t]`, or, when
/// `taps` is given, a single pixel whose tap rows are listed), all channels, requantized in the
/// epilogue's [`Rounding`].
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
    let (b, s, n) = (base, step, npix);
    // SAFETY: as documented.
    unsafe {
        match (e.rounding, e.slow()) {
            (Rounding::Gemmlowp, false) => {
                depthwise_run_in::<false, false>(b, s, n, offs, taps, l, c, e, o8, o32)
            }
            (Rounding::Gemmlowp, true) => {
                depthwise_run_in::<true, false>(b, s, n, offs, taps, l, c, e, o8, o32)
            }
            (Rounding::Single, false) => {
                depthwise_run_in::<false, true>(b, s, n, offs, taps, l, c, e, o8, o32)
            }
            (Rounding::Single, true) => {
                depthwise_run_in::<true, true>(b, s, n, offs, taps, l, c, e, o8, o32)
            }
        }
    }
}

/// [`depthwise_run`] for one output-stage variant (see [`stage16`]).
///
/// # Safety
/// CPU supports avx512f/bw/vl/vnni; every tap row has `c` readable bytes; `o8`/`o32` hold
/// `npix·c` elements.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn depthwise_run_in<const SLOW: bool, const SINGLE: bool>(
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
                    match valid.div_ceil(16) {
                        1 => depthwise_narrow::<SLOW, SINGLE, 1>(tap, l, c0, valid, e, d8, d32),
                        2 => depthwise_narrow::<SLOW, SINGLE, 2>(tap, l, c0, valid, e, d8, d32),
                        _ => depthwise_narrow::<SLOW, SINGLE, 3>(tap, l, c0, valid, e, d8, d32),
                    }
                }
                c0 += 64;
                continue;
            }
            let blk = c0 / 64;
            let rq: [Stage16; 4] = std::array::from_fn(|b| {
                let at = blk * 64 + b * 16;
                Stage16::load::<SINGLE>(
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
                depthwise_pixel64::<SLOW, SINGLE, 1>(|_, t| tp[t], l, &rq, c0, valid, e, d8, d32);
                p = npix;
            }
            // Two pixels per step: eight independent accumulation chains, weights loaded once.
            while p + 2 <= npix {
                let d8 = o8.map(|o| [o.add(p * c + c0), o.add((p + 1) * c + c0)]);
                let d32 = o32.map(|o| [o.add(p * c + c0), o.add((p + 1) * c + c0)]);
                let tap = |q: usize, t: usize| base.add((p + q) * step + offs[t]);
                depthwise_pixel64::<SLOW, SINGLE, 2>(tap, l, &rq, c0, valid, e, d8, d32);
                p += 2;
            }
            if p < npix {
                let d8 = o8.map(|o| [o.add(p * c + c0)]);
                let d32 = o32.map(|o| [o.add(p * c + c0)]);
                let tap = |_: usize, t: usize| base.add(p * step + offs[t]);
                depthwise_pixel64::<SLOW, SINGLE, 1>(tap, l, &rq, c0, valid, e, d8, d32);
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
