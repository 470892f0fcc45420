//! `avx512vnni_depthwise_u8i8_64c_taps`: the 3×3 depthwise kernel that puts the three taps of
//! one kernel column of one channel in one dword, so each `vpdpbusd` sums three useful products
//! (12 per pixel and 64-channel block instead of 36), with the single-shift output stage. Along a
//! run, a pixel shares kernel columns with the previous one (stride 1: two of three, stride 2:
//! one), so their interleaved activations are reused.

use std::arch::x86_64::*;

use super::byte_mask;
use super::depthwise_fused::Pixels;
use super::requant::{RqFused16, fused_constants, single_shift_stage};
use crate::kernels::frame::Epilogue;
use crate::kernels::frame::epilogue::ShiftConstants;

/// Taps per channel of [`depthwise_taps_fused`]. A 3×3 kernel's tap is `t = 3·row + column`;
/// any other 9-tap kernel works too: a "column" is the taps `s`, `s + 3`, `s + 6`, and
/// [`column_shift`] checks the offsets before columns are shared.
pub(super) const TAPS: usize = 9;

/// Weights and output-stage constants of [`depthwise_taps_fused`], per block of 64 channels.
///
/// The three 64-byte activation vectors `x0, x1, x2` of one kernel column `s` (taps `s`, `s + 3`,
/// `s + 6` of one pixel, channels in memory order) interleave by `a = unpacklo8(x0, x1)`,
/// `b = unpackhi8(x0, x1)`, `c`/`d` likewise of `x2` with itself, then `V0 = unpacklo16(a, c)`,
/// `V1 = unpackhi16(a, c)`, `V2 = unpacklo16(b, d)`, `V3 = unpackhi16(b, d)`: in 128-bit lane
/// `l`, dword `j` of `V_k` holds the column's three taps of channel `16l + 4k + j` in bytes 0–2.
/// Weight vector `k` of column `s` holds that channel's three tap weights in the same bytes (0 in
/// byte 3), so lane `4l + j` of accumulator `k` is channel `16l + 4k + j`, and the saturating
/// packs `packus16(packs32(acc0, acc1), packs32(acc2, acc3))` give channels in memory order. The
/// per-lane constants follow the accumulators' order.
#[derive(Debug, Clone, Default)]
pub struct TapsLayout {
    /// `[blk][s ∈ 0..3][k ∈ 0..4][64]` bytes.
    pub w: Vec<i8>,
    /// `[blk][k][16]` permuted `bias'`.
    pub bias: Vec<i32>,
    /// Permuted `M0`.
    pub m0: Vec<i32>,
    /// [`fused_constants`] of the permuted channels.
    pub fused: ShiftConstants,
}

/// The channel (within its block) of lane `lane` of accumulator `k`.
const fn channel(k: usize, lane: usize) -> usize {
    16 * (lane / 4) + 4 * k + lane % 4
}

impl TapsLayout {
    /// From `[tap][cp]` weights of 9 taps (`cp` a multiple of 64) and an epilogue with `cp`
    /// entries.
    pub fn new(w: &[i32], cp: usize, e: &Epilogue) -> Self {
        Self::build(w, cp, cp, |ch| ch, e)
    }

    /// The layout of `c ∈ {16, 32}` channels repeated over one block of 64 lanes (`64 / c`
    /// output pixels per vector, see [`super::depthwise_packed`]): block channel `ch` is real
    /// channel `ch mod c`.
    pub fn packed(w: &[i32], c: usize, cp: usize, e: &Epilogue) -> Self {
        Self::build(w, cp, 64, |ch| ch % c, e)
    }

    /// `n` block channels (a multiple of 64), block channel `ch` taking the weights (channel
    /// stride `cp`) and the epilogue entries of real channel `src(ch)`.
    fn build(w: &[i32], cp: usize, n: usize, src: impl Fn(usize) -> usize, e: &Epilogue) -> Self {
        let perm = |v: &[i32]| {
            let mut out = vec![0i32; n];
            for (i, o) in out.iter_mut().enumerate() {
                let (blk, k, lane) = (i / 64, i % 64 / 16, i % 16);
                *o = v[src(blk * 64 + channel(k, lane))];
            }
            out
        };
        let mut wl = vec![0i8; n * 12];
        for (i, wv) in wl.iter_mut().enumerate() {
            // [blk][s][k][lane][r]
            let (blk, s, k, lane, r) = (i / 768, i % 768 / 256, i % 256 / 64, i % 64 / 4, i % 4);
            if r < 3 {
                *wv = w[(3 * r + s) * cp + src(blk * 64 + channel(k, lane))] as i8;
            }
        }
        let (m0, right) = (perm(&e.m0), perm(&e.right));
        let fused = fused_constants(&m0, &right, e.zp, e.rounding);
        Self {
            w: wl,
            bias: perm(&e.bias),
            m0,
            fused,
        }
    }
}

/// The interleaved activations of one kernel column from its three tap-row vectors (see
/// [`TapsLayout`]): `V_k`'s dword `j` of 128-bit lane `l` holds byte `16l + 4k + j` of `x0`,
/// `x1`, `x2` in bytes 0, 1, 2.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) fn interleave(x0: __m512i, x1: __m512i, x2: __m512i) -> [__m512i; 4] {
    let (a, b) = (_mm512_unpacklo_epi8(x0, x1), _mm512_unpackhi_epi8(x0, x1));
    let (c, d) = (_mm512_unpacklo_epi8(x2, x2), _mm512_unpackhi_epi8(x2, x2));
    [
        _mm512_unpacklo_epi16(a, c),
        _mm512_unpackhi_epi16(a, c),
        _mm512_unpacklo_epi16(b, d),
        _mm512_unpackhi_epi16(b, d),
    ]
}

/// The 64 u8 outputs of four accumulator vectors (`acc[k]` lane `4l + j`: block channel
/// `16l + 4k + j`, bias included) in memory order: the single-shift stage of each, saturating
/// packs, the clamp.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) fn outputs<const NT: bool>(
    acc: &[__m512i; 4],
    f: &[RqFused16; 4],
    lo: __m512i,
    hi: __m512i,
) -> __m512i {
    let q = |k: usize| single_shift_stage::<NT>(acc[k], &f[k]);
    let r = _mm512_packus_epi16(
        _mm512_packs_epi32(q(0), q(1)),
        _mm512_packs_epi32(q(2), q(3)),
    );
    _mm512_min_epu8(_mm512_max_epu8(r, lo), hi)
}

/// How many kernel columns a run's pixel moves by relative to the previous one: 1 or 2 when
/// column `s + d` of pixel `p` is column `s` of pixel `p + 1` for every row (`offs[3r + s + d]
/// = offs[3r + s] + step`), else 3 (nothing shared).
pub(super) fn column_shift(offs: &[usize], step: usize) -> usize {
    let moves = |d: usize| {
        (0..3)
            .all(|r| (0..3 - d).all(|s| offs[3 * r + s + d].wrapping_sub(offs[3 * r + s]) == step))
    };
    if offs.len() != TAPS {
        3
    } else if moves(1) {
        1
    } else if moves(2) {
        2
    } else {
        3
    }
}

/// `avx512vnni_depthwise_u8i8_64c_taps`: [`super::depthwise_fused`]'s block kernel for 3×3
/// taps with the column-interleaved layout ([`TapsLayout`]): `npix = [n, rows]` runs of `n`
/// output pixels (pixel `p` of run `r`: tap `t` at `base + r·step[1] + p·step[0] + offs[t]`,
/// output at `o8 + (r·n + p)·c`) and the listed pixels (`list`: 9 pointers per pixel, output at
/// `list_out`), channels `c0..c0 + valid` of one 64-channel block, u8 output through the
/// single-shift stage ([`requantize16_no_tie`](super::requant::requantize16_no_tie) when `NT`, else [`requantize16_fused`](super::requant::requantize16_fused)). `FULL`:
/// `valid == 64`. `D`: [`column_shift`] of the runs (3: none shared).
///
/// # Safety
/// CPU supports avx512f/bw/vl/vnni; `l.fused`, `l.taps == 9`, `t` built from the same weights and
/// epilogue; `D == column_shift(offs, step[0])` (or 3); every tap row has `c0 + valid` readable
/// bytes; `o8` holds `rows·n` pixels of `c` channels; each `list_out` pointer one pixel.
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn depthwise_taps_fused<const NT: bool, const FULL: bool, const D: usize>(
    px: &Pixels<'_>,
    t: &TapsLayout,
    c: usize,
    c0: usize,
    valid: usize,
    e: &Epilogue,
) {
    let (base, step, npix, offs, list, list_out, o8) = px.parts();
    let mask = byte_mask(valid);
    let blk = c0 / 64;
    // SAFETY: as documented; the layout arrays cover every block.
    unsafe {
        let f: [RqFused16; 4] = std::array::from_fn(|k| {
            RqFused16::load_at(&t.m0, &t.fused, blk * 64 + k * 16, e.rounding)
        });
        let bias: [__m512i; 4] = std::array::from_fn(|k| {
            _mm512_loadu_si512(t.bias.as_ptr().add(blk * 64 + k * 16).cast())
        });
        let wb = t.w.as_ptr().add(blk * 3 * 256);
        let w: [[__m512i; 4]; 3] = std::array::from_fn(|s| {
            std::array::from_fn(|k| _mm512_loadu_si512(wb.add((s * 4 + k) * 64).cast()))
        });
        let (lo, hi) = (_mm512_set1_epi8(e.lo as i8), _mm512_set1_epi8(e.hi as i8));
        let load = |p: *const u8| {
            if FULL {
                _mm512_loadu_si512(p.add(c0).cast())
            } else {
                _mm512_maskz_loadu_epi8(mask, p.add(c0).cast())
            }
        };
        // The interleaved activations of one kernel column (its three tap rows).
        let column =
            |x0: *const u8, x1: *const u8, x2: *const u8| interleave(load(x0), load(x1), load(x2));
        let finish = |cols: &[[__m512i; 4]; 3], dst: *mut u8| {
            let mut acc = bias;
            for (col, ws) in cols.iter().zip(&w) {
                for k in 0..4 {
                    acc[k] = _mm512_dpbusd_epi32(acc[k], col[k], ws[k]);
                }
            }
            let r = outputs::<NT>(&acc, &f, lo, hi);
            if FULL {
                _mm512_storeu_si512(dst.add(c0).cast(), r);
            } else {
                _mm512_mask_storeu_epi8(dst.add(c0).cast(), mask, r);
            }
        };
        for (tp, &dst) in list.chunks_exact(TAPS).zip(list_out) {
            let cols = std::array::from_fn(|s| column(tp[s], tp[s + 3], tp[s + 6]));
            finish(&cols, dst);
        }
        let (step, rstep, rows, npix) = (step[0], step[1], npix[1], npix[0]);
        let o = |s: usize| *offs.get_unchecked(s);
        let (o0, o1, o2) = ([o(0), o(1), o(2)], [o(3), o(4), o(5)], [o(6), o(7), o(8)]);
        for r in 0..rows {
            let (base, o8) = (base.add(r * rstep), o8.add(r * npix * c));
            if npix == 0 {
                continue;
            }
            let col = |px: *const u8, s: usize| column(px.add(o0[s]), px.add(o1[s]), px.add(o2[s]));
            let mut cols: [[__m512i; 4]; 3] = std::array::from_fn(|s| col(base, s));
            finish(&cols, o8);
            for p in 1..npix {
                let px = base.add(p * step);
                cols = std::array::from_fn(|s| if s + D < 3 { cols[s + D] } else { col(px, s) });
                finish(&cols, o8.add(p * c));
            }
        }
    }
}
