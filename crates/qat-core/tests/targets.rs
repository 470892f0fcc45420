//! Every target's arithmetic against an independent transcription of its runtime's formula.
//!
//! The transcriptions compute with exact binary rationals (`common::exact`) and write each `f32`
//! operation as "exact result, one rounding to 24 bits, ties to even", each integer rounding with
//! its tie rule spelled out, and each clamp in the order the runtime applies it. The code under
//! test uses Rust's float operations, bit tricks and round-then-clamp orders instead.

mod common;

use common::exact::{Exact, f32_div};
use proptest::prelude::*;
use qat_core::fixed_point::{QuantizedMultiplier, Rounding, requantize_with};
use qat_core::target::{
    AddStage, AverageStage, RescaleStage, add_multipliers, fp32_multiplier, requantize_fp32,
    requantize_real,
};
use qat_core::{QuantError, QuantParams, QuantRange, Target};

fn x(v: f32) -> Exact {
    Exact::of_f32(v)
}

/// Activation params: scale in `[1e-3, 4)`, any zero point of a `bits`-bit grid.
fn params() -> impl Strategy<Value = QuantParams> {
    (2u32..=8, 1e-3f32..4.0, any::<u16>()).prop_map(|(bits, s, z)| {
        let r = QuantRange::unsigned(bits).unwrap();
        QuantParams::new(s, z as i32 % (r.qmax + 1), r).unwrap()
    })
}

fn params8() -> impl Strategy<Value = QuantParams> {
    (1e-3f32..4.0, 0i32..=255)
        .prop_map(|(s, z)| QuantParams::new(s, z, QuantRange::unsigned(8).unwrap()).unwrap())
}

/// gemmlowp `SaturatingRoundingDoublingHighMul`, written as `⌊(a·b + 2^30)/2^31⌋` (ties toward
/// +∞), and `RoundingDivideByPOT` as `sign·⌊(|x| + 2^(e−1))/2^e⌋` (ties away from zero).
fn srdhm(a: i64, b: i64) -> i64 {
    if a == i32::MIN as i64 && b == i32::MIN as i64 {
        return i32::MAX as i64;
    }
    (a * b + (1 << 30)).div_euclid(1 << 31)
}

fn rdbp(v: i64, e: i32) -> i64 {
    if e == 0 {
        return v;
    }
    v.signum() * ((v.abs() + (1 << (e - 1))) >> e)
}

/// TFLite `MultiplyByQuantizedMultiplier` (the pre-shift saturates, as qat-core documents).
fn mbqm(v: i64, m: QuantizedMultiplier) -> i64 {
    let left = m.shift().max(0);
    let pre = (v << left).clamp(i32::MIN as i64, i32::MAX as i64);
    rdbp(srdhm(pre, m.multiplier() as i64), (-m.shift()).max(0))
}

/// `v·M0·2^(shift−31)` rounded once, ties away from zero.
fn once(v: i64, m: QuantizedMultiplier) -> i64 {
    let p = v as i128 * m.multiplier() as i128;
    let e = 31 - m.shift();
    let r = p.signum() * ((p.abs() + (1i128 << (e - 1))) >> e);
    r.clamp(i32::MIN as i128, i32::MAX as i128) as i64
}

/// The fixed-point targets' multiply: [`once`] for `qat`, [`mbqm`] (TFLite's double rounding)
/// for the others.
fn fixed_point(t: Target, v: i64, m: QuantizedMultiplier) -> i64 {
    if t == Target::Qat {
        once(v, m)
    } else {
        mbqm(v, m)
    }
}

/// The `f32` output stage as MLAS and XNNPACK's `fmagic` kernels write it: `cvtdq2ps`, `mulps`,
/// `maxps`/`minps` to `[lo − Z, hi − Z]`, `cvtps2dq`, `+ Z`.
fn fp32_stage(acc: i32, s: f32, zp: i32, lo: i32, hi: i32) -> i32 {
    let v = Exact::int(acc as i64).round_f32().f32_mul(x(s));
    (v.clamp_round((lo - zp) as i64, (hi - zp) as i64, true) + zp as i64) as i32
}

/// A positive `f32` (any bit pattern) in `[2^−40, 2^30)`.
fn positive_f32() -> impl Strategy<Value = f32> {
    ((127u32 - 40) << 23..(127u32 + 30) << 23).prop_map(f32::from_bits)
}

fn transcribe_quantize(t: Target, v: f32, p: &QuantParams) -> i32 {
    let (z, qmin, qmax) = (p.zero_point() as i64, p.qmin() as i64, p.qmax() as i64);
    if v.is_nan() {
        return match t {
            Target::Qat | Target::Tflite => z,
            Target::Ort => qmin,
            Target::Xnnpack => qmax,
        } as i32;
    }
    if v.is_infinite() {
        return if v > 0.0 { qmax } else { qmin } as i32;
    }
    let s = x(p.scale());
    let q = match t {
        Target::Qat | Target::Xnnpack => {
            let inv = f32_div(Exact::int(1), s);
            x(v).f32_mul(inv).clamp_round(qmin - z, qmax - z, true)
        }
        Target::Tflite => f32_div(x(v), s).clamp_round(qmin - z, qmax - z, false),
        Target::Ort => f32_div(x(v), s).clamp_round(qmin - z, qmax - z, true),
    };
    (q + z) as i32
}

/// An output stage's input: `(acc, Z, lo, hi)` with any accumulator, `Z ∈ [−300, 300)`, and a
/// clamp `lo ∈ [−400, 300)`, `hi = lo + [0, 600)`.
fn stage() -> impl Strategy<Value = (i32, i32, i32, i32)> {
    (any::<i32>(), -300i32..300, -400i32..300, 0i32..600)
        .prop_map(|(acc, zp, lo, width)| (acc, zp, lo, lo + width))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn fp32_multiplier_holds_the_f32_exactly(s in positive_f32()) {
        let m = fp32_multiplier(s).unwrap();
        if s < 2f32.powi(-32) {
            prop_assert_eq!((m.multiplier(), m.shift()), (0, 0));
            prop_assert_eq!(m.to_f32(), 0.0);
        } else {
            prop_assert_eq!(m.multiplier() as f64 * 2f64.powi(m.shift() - 31), s as f64);
            prop_assert_eq!(m.multiplier() & 0x7f, 0);
            prop_assert!(m.multiplier() >= 1 << 30);
            prop_assert_eq!(m.to_f32(), s);
        }
    }

    #[test]
    fn fp32_requantize_matches_mlas((acc, zp, lo, hi) in stage(), s in positive_f32()) {
        let m = fp32_multiplier(s).unwrap();
        let want = fp32_stage(acc, m.to_f32(), zp, lo, hi);
        prop_assert_eq!(requantize_fp32(acc, m, zp, lo, hi), want);
        prop_assert_eq!(Target::Ort.requantize(acc, m, zp, lo, hi), want);
        prop_assert_eq!(Target::Xnnpack.requantize(acc, m, zp, lo, hi), want);
    }

    /// XNNPACK's scalar `fmagic` kernel: clamp, add the magic bias 1.5·2^23 (the `f32` add rounds
    /// to an integer, ties to even), subtract `0x4B400000 − Z` from the bits.
    #[test]
    fn fp32_requantize_matches_xnnpack_magic_bias(
        acc in any::<i32>(),
        s in positive_f32(),
        zp in -128i32..128,
        lo in -128i32..0,
        hi in 0i32..128,
    ) {
        let m = fp32_multiplier(s).unwrap();
        let v = (acc as f32 * m.to_f32())
            .max((lo - zp) as f32)
            .min((hi - zp) as f32);
        let want = (v + 12_582_912.0).to_bits() as i32 - (0x4B40_0000 - zp);
        prop_assert_eq!(requantize_fp32(acc, m, zp, lo, hi), want);
    }

    #[test]
    fn fixed_point_targets_requantize_as_their_rounding(
        (acc, zp, lo, hi) in stage(),
        real in 1e-9f64..64.0,
    ) {
        let m = QuantizedMultiplier::from_f64(real).unwrap();
        prop_assert_eq!(
            Target::Qat.requantize(acc, m, zp, lo, hi),
            (once(acc as i64, m) + zp as i64).clamp(lo as i64, hi as i64) as i32
        );
        prop_assert_eq!(
            Target::Tflite.requantize(acc, m, zp, lo, hi),
            (mbqm(acc as i64, m) + zp as i64).clamp(lo as i64, hi as i64) as i32
        );
        for r in Rounding::ALL {
            let scaled = match r {
                Rounding::Single => once(acc as i64, m),
                Rounding::Gemmlowp => mbqm(acc as i64, m),
            };
            prop_assert_eq!(
                requantize_with(r, acc, m, zp, lo, hi),
                (scaled + zp as i64).clamp(lo as i64, hi as i64) as i32
            );
        }
    }

    /// LiteRT's reference fully connected: `(int32) round((double)acc · eff)` (one `f64` product
    /// rounded to 53 bits, ties to even; then C `round`, ties away from zero), `+ Z`, clamp.
    #[test]
    fn real_requantize_matches_litert_reference_fully_connected(
        (acc, zp, lo, hi) in stage(),
        eff in 1e-9f64..64.0,
    ) {
        let v = Exact::int(acc as i64).mul(Exact::of_f64(eff)).round_f64();
        let want = (v.round_int(false) + zp as i64).max(lo as i64).min(hi as i64) as i32;
        prop_assert_eq!(requantize_real(acc, eff, zp, lo, hi), want);
    }

    /// Over every f32 bit pattern: NaN, ±∞, subnormals and values far beyond the grid included.
    #[test]
    fn quantize_is_total_and_matches_each_runtime(bits in any::<u32>(), p in params()) {
        let v = f32::from_bits(bits);
        for t in Target::ALL {
            prop_assert_eq!(t.quantize(v, &p), transcribe_quantize(t, v, &p), "{} x {:e}", t, v);
        }
        prop_assert_eq!(p.quantize(v), Target::Qat.quantize(v, &p));
        let d = p.dequantize(bits as i32);
        prop_assert!(d.is_finite());
    }

    #[test]
    fn quantize_near_grid_points(k in -300i32..300, nudge in -2i32..=2, p in params()) {
        // Ties and their neighbours, where the runtimes' roundings differ.
        let v = f32::from_bits(((k as f32 + 0.5) * p.scale()).to_bits().wrapping_add_signed(nudge));
        for t in Target::ALL {
            prop_assert_eq!(t.quantize(v, &p), transcribe_quantize(t, v, &p), "{} x {:e}", t, v);
        }
    }

    #[test]
    fn xnnpack_activation_bound_matches_xnn_qs8_quantize(v in 0f32..1e4, p in params()) {
        let w = f32_div(x(v), x(p.scale())).f32_add(Exact::int(p.zero_point() as i64 - 128));
        let want = (w.clamp_round(-128, 127, true) + 128).clamp(p.qmin() as i64, p.qmax() as i64);
        prop_assert_eq!(Target::Xnnpack.activation_bound(v, &p) as i64, want);
        for t in [Target::Qat, Target::Tflite, Target::Ort] {
            prop_assert_eq!(t.activation_bound(v, &p), t.quantize(v, &p));
        }
    }
}

fn transcribe_add(
    t: Target,
    (a, b, o): (&QuantParams, &QuantParams, &QuantParams),
    (qa, qb): (i32, i32),
    (lo, hi): (i32, i32),
) -> Option<i64> {
    let (za, zb, zo) = (
        a.zero_point() as i64,
        b.zero_point() as i64,
        o.zero_point() as i64,
    );
    let r = match t {
        Target::Qat | Target::Tflite => {
            let (ma, mb, mo) = add_multipliers(a, b, o).ok()?;
            let sa = mbqm((qa as i64 - za) << 20, ma);
            let sb = mbqm((qb as i64 - zb) << 20, mb);
            let sum = sa + sb;
            fixed_point(t, sum, mo) + zo
        }
        Target::Ort => {
            let ra = f32_div(x(a.scale()), x(o.scale()));
            let rb = f32_div(x(b.scale()), x(o.scale()));
            let zb_rb = rb.f32_mul(Exact::int(zb));
            let contracted = ra.mul(Exact::int(za)).add(zb_rb).round_f32();
            let fixed = Exact::int(zo).f32_add(contracted.neg());
            let inner = Exact::int(qb as i64).mul(rb).add(fixed).round_f32();
            let y = Exact::int(qa as i64).mul(ra).add(inner).round_f32();
            y.round_int(true)
        }
        Target::Xnnpack => {
            let ra = f32_div(x(a.scale()), x(o.scale())).to_f64();
            let rb = f32_div(x(b.scale()), x(o.scale())).to_f64();
            if !(ra >= 2f64.powi(-10) && ra < 256.0 && rb >= 2f64.powi(-10) && rb < 256.0) {
                return None;
            }
            let e = ra.max(rb).log2().floor() as i32;
            let shift = 20 - e;
            let mult = |r: f64| {
                Exact::of_f32(r as f32)
                    .mul(Exact { m: 1, e: shift })
                    .round_int(true)
            };
            let (ma, mb) = (mult(ra), mult(rb));
            let acc = (1i64 << (shift - 1)) + ma * (qa as i64 - za) + mb * (qb as i64 - zb);
            acc.div_euclid(1 << shift) + zo
        }
    };
    Some(r.clamp(lo as i64, hi as i64))
}

fn window() -> impl Strategy<Value = Vec<i32>> {
    proptest::collection::vec(0i32..=255, 0..24)
}

fn transcribe_average(
    t: Target,
    i: &QuantParams,
    o: &QuantParams,
    global: bool,
    cells: &[i32],
) -> Option<i64> {
    let n = cells.len() as i64;
    let (zi, zo) = (i.zero_point() as i64, o.zero_point() as i64);
    let (lo, hi) = (o.qmin() as i64, o.qmax() as i64);
    let int8 = matches!(t, Target::Tflite | Target::Xnnpack);
    if int8 && (i.scale() != o.scale() || zi != zo) {
        return None;
    }
    if n == 0 {
        return Some(zo.clamp(lo, hi));
    }
    let sum: i64 = cells.iter().map(|&q| q as i64).sum();
    let r = match t {
        Target::Qat if i == o => (2 * sum + n).div_euclid(2 * n),
        Target::Qat => {
            let m = QuantizedMultiplier::from_f64(i.scale() as f64 / (o.scale() as f64 * n as f64))
                .ok()?;
            once(sum - n * zi, m) + zo
        }
        Target::Tflite | Target::Xnnpack => {
            let s = sum - 128 * n;
            s.signum() * ((2 * s.abs() + n) / (2 * n)) + 128
        }
        Target::Ort if global => {
            let den = x(o.scale()).f32_mul(Exact::int(n));
            let s = f32_div(x(i.scale()), den);
            let sf = s.to_f64();
            if !(sf >= 2f64.powi(-32) && sf < 256.0) {
                return Some(zo.clamp(lo, hi));
            }
            Exact::int(sum - zi * n)
                .round_f32()
                .f32_mul(s)
                .round_int(true)
                + zo
        }
        Target::Ort => {
            let mut total = Exact::int(0);
            for &q in cells {
                total = total.f32_add(x(i.scale()).f32_mul(Exact::int(q as i64 - zi)));
            }
            let y = f32_div(total, Exact::int(n));
            f32_div(y, x(o.scale()))
                .f32_add(Exact::int(zo))
                .round_int(true)
        }
    };
    Some(r.clamp(lo, hi))
}

fn transcribe_rescale(t: Target, i: &QuantParams, o: &QuantParams, q: i32) -> Option<i64> {
    let (zi, zo) = (i.zero_point() as i64, o.zero_point() as i64);
    let (lo, hi) = (o.qmin() as i64, o.qmax() as i64);
    let same = i.scale() == o.scale() && zi == zo;
    if (t == Target::Qat && i == o) || (t != Target::Qat && same) {
        return Some(q as i64);
    }
    let d = q as i64 - zi;
    let r = match t {
        Target::Qat | Target::Tflite => {
            let m = QuantizedMultiplier::from_f64(i.scale() as f64 / o.scale() as f64).ok()?;
            fixed_point(t, d, m) + zo
        }
        Target::Ort => {
            let v = x(i.scale()).f32_mul(Exact::int(d));
            f32_div(v, x(o.scale())).clamp_round(lo - zo, hi - zo, true) + zo
        }
        Target::Xnnpack => {
            let ratio = f32_div(x(i.scale()), x(o.scale()));
            let rf = ratio.to_f64();
            if !(rf >= 2f64.powi(-8) && rf <= 128.0) {
                return None;
            }
            let m = ratio.mul(Exact::int(256)).round_int(true);
            (m * d + 128).div_euclid(256) + zo
        }
    };
    Some(r.clamp(lo, hi))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    #[test]
    fn add_matches_each_runtime(
        (a, b, o) in (params8(), params8(), params8()),
        qa in 0i32..=255,
        qb in 0i32..=255,
        lo in 0i32..=255,
        width in 0i32..=255,
    ) {
        let hi = (lo + width).min(255);
        for t in Target::ALL {
            let stage = AddStage::new(t, &a, &b, &o, lo, hi);
            match transcribe_add(t, (&a, &b, &o), (qa, qb), (lo, hi)) {
                Some(want) => prop_assert_eq!(stage.unwrap().apply(qa, qb) as i64, want, "{}", t),
                None => prop_assert!(matches!(stage, Err(QuantError::Unsupported { .. }) | Err(QuantError::InvalidMultiplier { .. })), "{}", t),
            }
        }
    }

    #[test]
    fn average_matches_each_runtime(
        (i, o) in (params(), params()),
        same in any::<bool>(),
        global in any::<bool>(),
        cells in window(),
    ) {
        let o = if same { i } else { o };
        let cells: Vec<i32> = cells.iter().map(|&q| q.min(i.qmax())).collect();
        for t in Target::ALL {
            let stage = AverageStage::new(t, &i, &o, global);
            match transcribe_average(t, &i, &o, global, &cells) {
                Some(want) => prop_assert_eq!(stage.unwrap().apply(&cells) as i64, want, "{}", t),
                None => prop_assert!(stage.is_err(), "{}", t),
            }
        }
    }

    #[test]
    fn rescale_matches_each_runtime(
        (i, o) in (params(), params()),
        same in any::<bool>(),
        q in 0i32..=255,
    ) {
        let o = if same { i } else { o };
        let q = q.min(i.qmax());
        for t in Target::ALL {
            let stage = RescaleStage::new(t, &i, &o);
            match transcribe_rescale(t, &i, &o, q) {
                Some(want) => prop_assert_eq!(stage.unwrap().apply(q) as i64, want, "{}", t),
                None => prop_assert!(stage.is_err(), "{}", t),
            }
        }
    }
}

#[test]
fn extreme_inputs_never_panic() {
    let p = QuantParams::new(1e-30, 200, QuantRange::unsigned(8).unwrap()).unwrap();
    let q = QuantParams::new(3e30, 3, QuantRange::unsigned(4).unwrap()).unwrap();
    let m = fp32_multiplier(1.0).unwrap();
    for t in Target::ALL {
        for v in [
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            1e-45,
            -0.0,
        ] {
            let c = t.quantize(v, &p);
            assert!((0..=255).contains(&c), "{t} {v}");
            let _ = t.activation_bound(v, &q);
        }
        assert_eq!(t.requantize(i32::MAX, m, 0, 0, 255), 255, "{t}");
        assert_eq!(t.requantize(i32::MIN, m, 0, 0, 255), 0, "{t}");
        assert_eq!(
            t.requantize(i32::MAX, m, i32::MAX, i32::MIN, i32::MAX),
            i32::MAX,
            "{t}"
        );
        if let Ok(s) = AddStage::new(t, &p, &q, &p, 0, 255) {
            let _ = s.apply(i32::MIN, i32::MAX);
        }
        if let Ok(s) = RescaleStage::new(t, &p, &q) {
            let _ = s.apply(i32::MIN);
        }
        if let Ok(s) = AverageStage::new(t, &p, &q, true) {
            let _ = s.apply(&[i32::MAX; 4]);
        }
    }
    assert_eq!(
        p.dequantize(i32::MIN),
        1e-30 * (i32::MIN as i64 - 200) as f32
    );
}
