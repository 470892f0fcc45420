//! One proptest suite per kernel family, generated for every optimized kernel path: each path
//! that `is_supported_here()` is compared with an independent oracle — the GEMM with eq. 7
//! written out below, convs with the crate's reference loops (`KernelPath::Reference`, which no
//! suite ever runs as a "path under test") — in both requantization roundings
//! (every `Target`: `tflite` and `qat` through the ISA's own output stage where it fuses them, `ort` and `xnnpack` through the frame's scalar stage), through the ISA's own output stage and through
//! the frame's scalar stage (what a rounding the ISA does not fuse takes). Tolerance: int32
//! accumulators and requantized uint8 outputs exactly equal, every path.

mod common;

use common::Rng;
use proptest::prelude::*;
use qat_core::fixed_point::{QuantizedMultiplier, Rounding, requantize_with};
use qat_core::target::Target;
use qat_core::target::{fp32_multiplier, requantize_fp32, requantize_real};
use qat_core::{QuantParams, QuantRange};
use qat_int8_runtime::testing::{
    ASource, ConvIo, ConvPlan, DepthwisePlan, DepthwiseShape, GemmOut, KernelError, LayerSpec,
    PackedB,
};
use qat_int8_runtime::validate::conv_out_extent;
use qat_int8_runtime::{Clamp, Conv2d, Executor, KernelPath, RunError, Weights};

/// Value distributions: uniform codes, or only the extremes 0/255 × −127/127 (worst case for
/// int16 saturation and accumulator range).
#[derive(Debug, Clone, Copy)]
enum Values {
    Uniform,
    Extremes,
}

fn values() -> impl Strategy<Value = Values> {
    prop_oneof![Just(Values::Uniform), Just(Values::Extremes)]
}

fn gen_a(rng: &mut Rng, n: usize, v: Values) -> Vec<u8> {
    match v {
        Values::Uniform => rng.u8s(n),
        Values::Extremes => (0..n)
            .map(|_| if rng.below(2) == 0 { 0 } else { 255 })
            .collect(),
    }
}

fn gen_w(rng: &mut Rng, n: usize, v: Values) -> Vec<i8> {
    match v {
        Values::Uniform => rng.i8s(n),
        Values::Extremes => (0..n)
            .map(|_| if rng.below(2) == 0 { -127 } else { 127 })
            .collect(),
    }
}

/// Multipliers spanning right shifts, no shift and left shifts (reals up to 8).
fn gen_multipliers(rng: &mut Rng, n: usize) -> Vec<QuantizedMultiplier> {
    (0..n)
        .map(|_| {
            let real = 10f64.powf(-6.0 + 7.0 * rng.below(1 << 20) as f64 / (1 << 20) as f64);
            QuantizedMultiplier::from_f64(real).unwrap()
        })
        .collect()
}

/// Multipliers in `[1e−6, 1)`: right shifts 1..=20 only.
fn gen_multipliers_below_one(rng: &mut Rng, n: usize) -> Vec<QuantizedMultiplier> {
    (0..n)
        .map(|_| {
            let real = 10f64.powf(-6.0 + 6.0 * rng.below(1 << 20) as f64 / (1 << 20) as f64);
            QuantizedMultiplier::from_f64(real.min(0.999_999)).unwrap()
        })
        .collect()
}

/// Depthwise cases (any channel count, kernel, stride, dilation, padding) whose multipliers are
/// all below 1.
fn depthwise_case() -> impl Strategy<Value = ConvCase> {
    (
        (1usize..10, 1usize..14, 1usize..200),
        (
            1usize..4,
            1usize..4,
            1usize..3,
            1usize..3,
            1usize..3,
            1usize..3,
        ),
        (
            [0usize..3, 0usize..3, 0usize..3, 0usize..3],
            1usize..3,
            values(),
            any::<u64>(),
        ),
    )
        .prop_filter_map(
            "window must fit",
            |((h, w, c), window, (padding, batch, values, seed))| {
                let run = (batch, values, seed);
                ConvCase::fitting([h, w], [c, c, c], window, padding, run, true)
            },
        )
}

/// MobileNet-like depthwise cases on small inputs (1–8 pixels a side), where border pixels are
/// most of the output: 3×3, stride 1 or 2, padding 1 on every side or only bottom/right, the
/// channel counts of the default models; multipliers below 1 or not.
fn small_depthwise_case() -> impl Strategy<Value = ConvCase> {
    (
        (
            1usize..9,
            1usize..9,
            prop::sample::select(vec![16usize, 32, 48, 64, 128, 144]),
        ),
        (1usize..3, any::<bool>(), any::<bool>()),
        (1usize..4, values(), any::<u64>()),
    )
        .prop_filter_map(
            "window must fit",
            |((h, w, c), (s, all_sides, below_one), (batch, values, seed))| {
                let padding = if all_sides { [1; 4] } else { [0, 0, 1, 1] };
                let window = (3, 3, s, s, 1, 1);
                let run = (batch, values, seed);
                ConvCase::fitting([h, w], [c, c, c], window, padding, run, below_one)
            },
        )
}

struct GemmCase {
    m: usize,
    k: usize,
    n: usize,
    a: Vec<u8>,
    w: Vec<i8>,
    bias: Vec<i32>,
    ms: Vec<QuantizedMultiplier>,
    z1: i32,
    z3: i32,
    lo: i32,
    hi: i32,
    rounding: Target,
    /// `f64` scales per column: the layer requantizes with qat-core's `requantize_real`.
    reals: Option<Vec<f64>>,
}

impl GemmCase {
    fn new(m: usize, k: usize, n: usize, v: Values, seed: u64, per_channel: bool) -> Self {
        let mut rng = Rng(seed);
        let lo = rng.below(64) as i32;
        Self {
            m,
            k,
            n,
            a: gen_a(&mut rng, m * k, v),
            w: gen_w(&mut rng, n * k, v),
            bias: (0..n)
                .map(|_| rng.below(200_001) as i32 - 100_000)
                .collect(),
            ms: gen_multipliers(&mut rng, if per_channel { n } else { 1 }),
            z1: rng.below(256) as i32,
            z3: rng.below(256) as i32,
            lo,
            hi: lo + 128 + rng.below(64) as i32,
            rounding: Target::Tflite,
            reals: None,
        }
    }

    fn with(self, rounding: Target) -> Self {
        Self { rounding, ..self }
    }

    /// The same case with every multiplier below 1 (drawn from `seed`): the AVX-512 GEMM then
    /// requantizes through its single-shift stage.
    fn below_one(self, seed: u64) -> Self {
        let ms = gen_multipliers_below_one(&mut Rng(seed), self.ms.len());
        Self { ms, ..self }
    }

    /// The same case requantizing in `f64` with each column's multiplier as its scale.
    fn with_reals(self) -> Self {
        let reals = (0..self.n)
            .map(|j| self.ms[if self.ms.len() == 1 { 0 } else { j }].to_f64())
            .collect();
        Self {
            reals: Some(reals),
            ..self
        }
    }

    /// Paper eq. 7 literally: `bias + Σ_k (a − Z1)·w`, wrapping int32; then qat-core
    /// `Target::requantize` in the case's target.
    fn reference(&self) -> (Vec<i32>, Vec<u8>) {
        let mut acc = vec![0i32; self.m * self.n];
        let mut q = vec![0u8; self.m * self.n];
        for i in 0..self.m {
            for j in 0..self.n {
                let mut s = self.bias[j];
                for kk in 0..self.k {
                    s = s.wrapping_add(
                        (self.a[i * self.k + kk] as i32 - self.z1) * self.w[j * self.k + kk] as i32,
                    );
                }
                acc[i * self.n + j] = s;
                let m = if self.ms.len() == 1 {
                    self.ms[0]
                } else {
                    self.ms[j]
                };
                q[i * self.n + j] = match &self.reals {
                    Some(r) => requantize_real(s, r[j], self.z3, self.lo, self.hi) as u8,
                    None => self.rounding.requantize(s, m, self.z3, self.lo, self.hi) as u8,
                };
            }
        }
        (acc, q)
    }

    fn layer(&self) -> LayerSpec<'_> {
        LayerSpec {
            weights: &self.w,
            bias: &self.bias,
            multipliers: &self.ms,
            input_zero_point: self.z1,
            output_zero_point: self.z3,
            lo: self.lo,
            hi: self.hi,
            target: self.rounding,
            reals: self.reals.as_deref(),
        }
    }

    /// The path's int32 accumulators and u8 outputs; `scalar`: through the frame's scalar
    /// output stage instead of the ISA's.
    fn run(&self, path: KernelPath, direct: bool, scalar: bool) -> (Vec<i32>, Vec<u8>) {
        let mut b = PackedB::new(path, self.n, self.k, &self.layer()).unwrap();
        if scalar {
            b = b.with_scalar_output_stage();
        }
        let kp = b.kp();
        let mut padded = vec![0u8; self.m * kp];
        for i in 0..self.m {
            padded[i * kp..i * kp + self.k].copy_from_slice(&self.a[i * self.k..(i + 1) * self.k]);
        }
        let fill = |row0: usize, rows: usize, dst: &mut [u8]| {
            dst[..rows * kp].copy_from_slice(&padded[row0 * kp..(row0 + rows) * kp])
        };
        let src = if direct {
            ASource::Direct {
                data: &padded,
                lda: kp,
            }
        } else {
            ASource::Fill(&fill)
        };
        let mut acc = vec![0i32; self.m * self.n];
        let mut q = vec![0u8; self.m * self.n];
        b.gemm(self.m, &src, GemmOut::I32(&mut acc, self.n))
            .unwrap();
        b.gemm(self.m, &src, GemmOut::U8(&mut q, self.n)).unwrap();
        (acc, q)
    }
}

#[derive(Debug, Clone)]
struct ConvCase {
    h: usize,
    w: usize,
    cin: usize,
    cout: usize,
    groups: usize,
    k: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    padding: [usize; 4],
    batch: usize,
    values: Values,
    seed: u64,
    /// All multipliers below 1 (`right ≥ 1`, no left shift): the VNNI depthwise kernel's
    /// single-shift output stage applies to the whole layer.
    below_one: bool,
}

fn conv_case() -> impl Strategy<Value = ConvCase> {
    (
        (1usize..9, 1usize..9, 1usize..20, 1usize..4),
        (0usize..3, 1usize..4, 1usize..4, 1usize..3, 1usize..3),
        (
            1usize..3,
            1usize..3,
            [0usize..3, 0usize..3, 0usize..3, 0usize..3],
        ),
        (1usize..3, values(), any::<u64>()),
    )
        .prop_filter_map(
            "window must fit",
            |(
                (h, w, cin, mult),
                (gmode, kh, kw, sh, sw),
                (dh, dw, padding),
                (batch, values, seed),
            )| {
                // gmode 0: dense; 1: depthwise (multiplier `mult`); 2: grouped with 2 groups.
                let (groups, cin, cout) = match gmode {
                    0 => (1, cin, 1 + (seed as usize % 70)),
                    1 => (cin, cin, cin * if seed % 3 == 0 { mult } else { 1 }),
                    _ => (2, 2 * cin, 2 * (1 + seed as usize % 9)),
                };
                let window = (kh, kw, sh, sw, dh, dw);
                let run = (batch, values, seed);
                ConvCase::fitting([h, w], [cin, cout, groups], window, padding, run, false)
            },
        )
}

/// Dense convs with 1–4 input channels on inputs up to 30×30, kernels up to 5×5, strides up to
/// 3, any padding up to 2 (and dilation 1 or 2).
fn small_cin_conv_case() -> impl Strategy<Value = ConvCase> {
    dense_small_cin_case([31, 31], 40, [6, 6], 4)
}

/// Dense convs with 1–4 input channels and kernels up to 3×4 on inputs up to 15×39 (odd widths
/// included; lines long enough to fill the vector gather's stores), strides 1–3, paddings 0–2
/// per side, dilation 1–2 in height, batches of up to 5 (rows spanning samples and the GEMM's row
/// blocks): the band im2col and its vector gather.
fn stem_conv_case() -> impl Strategy<Value = ConvCase> {
    dense_small_cin_case([16, 40], 24, [4, 5], 6)
}

/// Dense convs with 1–4 input channels: `h`, `w`, `C_out`, `kh`, `kw` and the batch below the
/// given bounds, strides 1–3, paddings 0–2 per side, dilation 1–2 in height.
fn dense_small_cin_case(
    [h_end, w_end]: [usize; 2],
    cout_end: usize,
    [kh_end, kw_end]: [usize; 2],
    batch_end: usize,
) -> impl Strategy<Value = ConvCase> {
    (
        (1usize..h_end, 1usize..w_end, 1usize..5, 1usize..cout_end),
        (
            1usize..kh_end,
            1usize..kw_end,
            1usize..4,
            1usize..4,
            1usize..3,
        ),
        [0usize..3, 0usize..3, 0usize..3, 0usize..3],
        (1usize..batch_end, values(), any::<u64>()),
    )
        .prop_filter_map(
            "window must fit",
            |((h, w, cin, cout), (kh, kw, sh, sw, dh), padding, run)| {
                let window = (kh, kw, sh, sw, dh, 1);
                ConvCase::fitting([h, w], [cin, cout, 1], window, padding, run, false)
            },
        )
}

impl ConvCase {
    /// The case, if its window `(kh, kw, sh, sw, dh, dw)` fits the padded `[h, w]` input;
    /// `channels` is `[C_in, C_out, groups]`, `run` is `(batch, values, seed)`.
    fn fitting(
        [h, w]: [usize; 2],
        [cin, cout, groups]: [usize; 3],
        (kh, kw, sh, sw, dh, dw): (usize, usize, usize, usize, usize, usize),
        padding: [usize; 4],
        (batch, values, seed): (usize, Values, u64),
        below_one: bool,
    ) -> Option<Self> {
        conv_out_extent(h, kh, sh, dh, padding[0], padding[2])?;
        conv_out_extent(w, kw, sw, dw, padding[1], padding[3])?;
        Some(ConvCase {
            h,
            w,
            cin,
            cout,
            groups,
            k: [kh, kw],
            stride: [sh, sw],
            dilation: [dh, dw],
            padding,
            batch,
            values,
            seed,
            below_one,
        })
    }

    /// The layer, its shapes and quantization, and the input: multipliers drawn from the seed, or
    /// the given ones (one per output channel).
    fn build_with(
        &self,
        multipliers: Option<Vec<QuantizedMultiplier>>,
    ) -> (
        Conv2d,
        [usize; 3],
        [usize; 3],
        QuantParams,
        QuantParams,
        Vec<u8>,
    ) {
        let mut rng = Rng(self.seed);
        let ho = conv_out_extent(
            self.h,
            self.k[0],
            self.stride[0],
            self.dilation[0],
            self.padding[0],
            self.padding[2],
        )
        .unwrap();
        let wo = conv_out_extent(
            self.w,
            self.k[1],
            self.stride[1],
            self.dilation[1],
            self.padding[1],
            self.padding[3],
        )
        .unwrap();
        let cig = self.cin / self.groups;
        let nw = self.cout * self.k[0] * self.k[1] * cig;
        let per_channel = rng.below(2) == 0;
        let lo = rng.below(100) as u8;
        let conv = Conv2d {
            input: 0,
            output: 1,
            weights: Weights::Int8 {
                data: gen_w(&mut rng, nw, self.values),
                scales: vec![0.01],
            },
            weight_shape: [self.cout, self.k[0], self.k[1], cig],
            bias: (0..self.cout)
                .map(|_| rng.below(20_001) as i32 - 10_000)
                .collect(),
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
            groups: self.groups,
            multipliers: if let Some(ms) = multipliers {
                ms
            } else if self.below_one {
                gen_multipliers_below_one(&mut rng, if per_channel { self.cout } else { 1 })
            } else {
                gen_multipliers(&mut rng, if per_channel { self.cout } else { 1 })
            },
            clamp: Clamp {
                lo,
                hi: lo.saturating_add(150),
            },
        };
        let r8 = QuantRange::unsigned(8).unwrap();
        let qi = QuantParams::new(0.02, rng.below(256) as i32, r8).unwrap();
        let qo = QuantParams::new(0.05, rng.below(256) as i32, r8).unwrap();
        let input = gen_a(
            &mut rng,
            self.batch * self.h * self.w * self.cin,
            self.values,
        );
        (
            conv,
            [self.h, self.w, self.cin],
            [ho, wo, self.cout],
            qi,
            qo,
            input,
        )
    }

    /// The path against the reference plan, in both roundings, through the ISA's own output
    /// stage and, when `also_scalar`, through the frame's scalar one too.
    fn check(&self, path: KernelPath, also_scalar: bool) -> Result<(), TestCaseError> {
        self.check_with(path, also_scalar, None)
    }

    /// [`ConvCase::check`] with the given multipliers (see [`ConvCase::build_with`]).
    fn check_with(
        &self,
        path: KernelPath,
        also_scalar: bool,
        multipliers: Option<Vec<QuantizedMultiplier>>,
    ) -> Result<(), TestCaseError> {
        assert_ne!(
            path,
            KernelPath::Reference,
            "the oracle is not a path under test"
        );
        let (conv, ih, oh, qi, qo, input) = self.build_with(multipliers);
        let n_out = self.batch * oh.iter().product::<usize>();
        for rounding in Target::ALL {
            let io = ConvIo {
                in_hwc: ih,
                input: qi,
                out_hwc: oh,
                output: qo,
                rounding,
            };
            let reference = ConvPlan::new(&conv, &io, KernelPath::Reference).unwrap();
            let (mut want32, mut want8) = (vec![0i32; n_out], vec![0u8; n_out]);
            reference.run_i32(&conv, &input, self.batch, &mut want32);
            reference.run(&conv, &input, self.batch, &mut want8);
            for scalar in [false, true].into_iter().take(1 + also_scalar as usize) {
                let mut plan = ConvPlan::new(&conv, &io, path).unwrap();
                if scalar {
                    plan = plan.with_scalar_output_stage();
                }
                let (mut got32, mut got8) = (vec![0i32; n_out], vec![0u8; n_out]);
                plan.run_i32(&conv, &input, self.batch, &mut got32);
                plan.run(&conv, &input, self.batch, &mut got8);
                prop_assert_eq!(&got32, &want32, "int32 accumulators differ ({})", rounding);
                prop_assert_eq!(
                    &got8,
                    &want8,
                    "uint8 outputs differ ({}, scalar stage {})",
                    rounding,
                    scalar
                );
            }
        }
        Ok(())
    }
}

macro_rules! kernel_suites {
    ($($name:ident => $path:expr),* $(,)?) => {
        /// The suites below cover every optimized path (a new ISA needs its line).
        const SUITES: &[KernelPath] = &[$($path),*];

        $(
        mod $name {
            use super::*;

            fn supported() -> bool {
                let ok = $path.is_supported_here();
                if !ok {
                    eprintln!("skipping {}: not supported on this CPU", $path);
                }
                ok
            }

            proptest! {
                #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

                #[test]
                fn gemm_matches_reference(m in 1usize..20, k in 1usize..150, n in 1usize..140, v in values(), seed in any::<u64>(), per_channel in any::<bool>(), direct in any::<bool>()) {
                    if !supported() { return Ok(()); }
                    for rounding in Target::ALL {
                        let case = GemmCase::new(m, k, n, v, seed, per_channel).with(rounding);
                        let (want32, want8) = case.reference();
                        for scalar in [false, true] {
                            let (got32, got8) = case.run($path, direct, scalar);
                            prop_assert_eq!(&got32, &want32, "{}", rounding);
                            prop_assert_eq!(&got8, &want8, "{} scalar stage {}", rounding, scalar);
                        }
                    }
                }

                /// Multipliers all below 1 (the single-shift output stage where an ISA has one),
                /// every target, the zero point anywhere in `0..256`.
                #[test]
                fn gemm_below_one_matches_reference(m in 1usize..20, k in 1usize..150, n in 1usize..140, v in values(), seed in any::<u64>(), per_channel in any::<bool>(), direct in any::<bool>()) {
                    if !supported() { return Ok(()); }
                    for rounding in Target::ALL {
                        let case = GemmCase::new(m, k, n, v, seed, per_channel).with(rounding).below_one(seed ^ 1);
                        prop_assert_eq!(case.run($path, direct, false), case.reference(), "{}", rounding);
                    }
                }

                /// A layer with `f64` scales (LiteRT's reference fully connected) goes through the
                /// frame's scalar stage, qat-core's `requantize_real`, on every path.
                #[test]
                fn gemm_real_stage_matches_reference(m in 1usize..12, k in 1usize..90, n in 1usize..90, v in values(), seed in any::<u64>(), per_channel in any::<bool>(), direct in any::<bool>()) {
                    if !supported() { return Ok(()); }
                    let case = GemmCase::new(m, k, n, v, seed, per_channel).with_reals();
                    prop_assert_eq!(case.run($path, direct, false), case.reference());
                }

                /// `Single` is the correctly rounded real product: every u8 output equals
                /// `clamp(round_half_away(acc·M0·2^(shift−31)) + Z3, lo, hi)` computed in i128 from
                /// the path's own accumulators (and f64 agrees away from ties).
                #[test]
                fn single_is_the_rounded_product(m in 1usize..12, k in 1usize..90, n in 1usize..90, v in values(), seed in any::<u64>(), per_channel in any::<bool>()) {
                    if !supported() { return Ok(()); }
                    let case = GemmCase::new(m, k, n, v, seed, per_channel).with(Target::Qat);
                    let (acc, got8) = case.run($path, false, false);
                    for (i, (&a, &q)) in acc.iter().zip(&got8).enumerate() {
                        let mult = case.ms[if case.ms.len() == 1 { 0 } else { i % case.n }];
                        let p = a as i128 * mult.multiplier() as i128;
                        let e = 31 - mult.shift();
                        let r = p.signum() * ((p.abs() + (1i128 << (e - 1))) >> e);
                        let want = (r + case.z3 as i128).clamp(case.lo as i128, case.hi as i128);
                        prop_assert_eq!(q as i128, want, "acc {} m {:?}", a, mult);
                        let y = a as f64 * mult.to_f64();
                        if ((y - y.trunc()).abs() - 0.5).abs() > 1e-6 {
                            let f = (y.round() + case.z3 as f64).clamp(case.lo as f64, case.hi as f64);
                            prop_assert_eq!(q as f64, f, "acc {} m {:?} (f64)", a, mult);
                        }
                    }
                }

                #[test]
                fn conv_matches_reference(case in conv_case(), also_scalar in any::<bool>()) {
                    if !supported() { return Ok(()); }
                    case.check($path, also_scalar)?;
                }

                /// Dense convs with few input channels (the stems: the im2col copies rows of
                /// `kh` spans of `kw·C_in` bytes, pixel after pixel along an output line).
                #[test]
                fn small_cin_conv_matches_reference(case in small_cin_conv_case(), also_scalar in any::<bool>()) {
                    if !supported() { return Ok(()); }
                    case.check($path, also_scalar)?;
                }

                /// Dense stems (the band im2col: padded input rows, rows of `kh` spans of
                /// `kw·C_in ≤ 16` bytes, gathered by byte permutes where the path has them).
                #[test]
                fn stem_conv_matches_reference(case in stem_conv_case(), also_scalar in any::<bool>()) {
                    if !supported() { return Ok(()); }
                    case.check($path, also_scalar)?;
                }

                /// Depthwise with multipliers below 1 (the VNNI single-shift output stage).
                #[test]
                fn depthwise_below_one_matches_reference(case in depthwise_case(), also_scalar in any::<bool>()) {
                    if !supported() { return Ok(()); }
                    case.check($path, also_scalar)?;
                }
            }

            proptest! {
                #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

                /// Depthwise on small inputs (the padded-input path of [`DepthwisePlan`]).
                #[test]
                fn small_depthwise_matches_reference(case in small_depthwise_case(), also_scalar in any::<bool>()) {
                    if !supported() { return Ok(()); }
                    case.check($path, also_scalar)?;
                }
            }

            /// M or N = 1, K not a multiple of 4/16/64, and a large K with extreme values.
            #[test]
            fn gemm_edge_shapes() {
                if !supported() { return; }
                for (i, &(m, k, n, v)) in [
                    (1, 1, 1, Values::Uniform),
                    (1, 1023, 1000, Values::Uniform),
                    (7, 3, 1, Values::Extremes),
                    (13, 65, 65, Values::Uniform),
                    (97, 17, 129, Values::Extremes),
                    (3, 16_000, 5, Values::Extremes),
                    (2, 65_536, 3, Values::Extremes),
                ]
                .iter()
                .enumerate()
                {
                    for rounding in Target::ALL {
                        let case = GemmCase::new(m, k, n, v, 1000 + i as u64, i % 2 == 0).with(rounding);
                        for scalar in [false, true] {
                            assert_eq!(case.run($path, i % 2 == 1, scalar), case.reference(), "case {i}: m {m} k {k} n {n} {rounding} scalar stage {scalar}");
                        }
                    }
                }
            }

            /// Layers of 16 to 64 columns, whose tile rows lie back to back in the output (the
            /// single-shift stage narrows and stores several rows at once there): every tile
            /// height, both a K whose accumulators cannot reach a tie and larger ones.
            #[test]
            fn gemm_whole_row_tiles() {
                if !supported() { return; }
                for n in [16, 32, 48, 64] {
                    for m in [1, 2, 3, 4, 5, 6, 7, 12, 13] {
                        for (i, k) in [9usize, 16, 32, 130].into_iter().enumerate() {
                            let v = if i % 2 == 0 { Values::Extremes } else { Values::Uniform };
                            let seed = (n * 1000 + m * 10 + i) as u64;
                            for rounding in Target::ALL {
                                let case = GemmCase::new(m, k, n, v, seed, i < 2).with(rounding).below_one(seed ^ 7);
                                let want = case.reference();
                                for direct in [false, true] {
                                    assert_eq!(case.run($path, direct, false), want, "m {m} k {k} n {n} {rounding} direct {direct}");
                                }
                            }
                        }
                    }
                }
            }

            /// Bigger conv shapes than the proptest draws: 3×3 with 64 channels (K = 576), a
            /// strided depthwise with 144 channels, a 1×1 with C_in % 4 ≠ 0, 3×3 depthwise
            /// with multipliers below 1/2 on a large input, with a partial channel block and with
            /// 16 and 32 channels.
            #[test]
            fn conv_fixed_shapes() {
                if !supported() { return; }
                let cases = [
                    ConvCase { h: 9, w: 7, cin: 64, cout: 64, groups: 1, k: [3, 3], stride: [1, 1], dilation: [1, 1], padding: [1, 1, 1, 1], batch: 2, values: Values::Uniform, seed: 1, below_one: false },
                    ConvCase { h: 11, w: 10, cin: 144, cout: 144, groups: 144, k: [3, 3], stride: [2, 2], dilation: [1, 1], padding: [1, 1, 1, 1], batch: 1, values: Values::Extremes, seed: 2, below_one: false },
                    ConvCase { h: 5, w: 6, cin: 37, cout: 70, groups: 1, k: [1, 1], stride: [1, 1], dilation: [1, 1], padding: [0; 4], batch: 3, values: Values::Uniform, seed: 3, below_one: false },
                    ConvCase { h: 6, w: 6, cin: 32, cout: 16, groups: 1, k: [1, 1], stride: [1, 1], dilation: [1, 1], padding: [0; 4], batch: 2, values: Values::Extremes, seed: 4, below_one: false },
                    ConvCase { h: 7, w: 9, cin: 100, cout: 100, groups: 100, k: [3, 3], stride: [1, 1], dilation: [2, 1], padding: [2, 1, 2, 1], batch: 2, values: Values::Uniform, seed: 5, below_one: false },
                    ConvCase { h: 5, w: 5, cin: 40, cout: 40, groups: 40, k: [5, 5], stride: [1, 2], dilation: [1, 1], padding: [2, 2, 2, 2], batch: 1, values: Values::Extremes, seed: 6, below_one: false },
                ];
                for c in &cases {
                    c.check($path, true).unwrap_or_else(|e| panic!("{c:?}: {e}"));
                }
                // 3×3 depthwise whose every multiplier admits the single-shift stage (below 1/2):
                // a full and a partial (56/57-channel) block, on an input large enough to run row
                // by row (interior runs and listed border pixels) and strided on a padded copy of
                // the input; several pixels per vector (16 and 32 channels), row by row.
                let single_shift = [
                    ConvCase { h: 34, w: 33, cin: 120, cout: 120, groups: 120, k: [3, 3], stride: [1, 1], dilation: [1, 1], padding: [1, 1, 1, 1], batch: 1, values: Values::Uniform, seed: 7, below_one: true },
                    ConvCase { h: 9, w: 10, cin: 121, cout: 121, groups: 121, k: [3, 3], stride: [2, 2], dilation: [1, 1], padding: [1, 1, 1, 1], batch: 2, values: Values::Extremes, seed: 8, below_one: true },
                    ConvCase { h: 33, w: 34, cin: 16, cout: 16, groups: 16, k: [3, 3], stride: [1, 1], dilation: [1, 1], padding: [1, 1, 1, 1], batch: 1, values: Values::Uniform, seed: 9, below_one: true },
                    ConvCase { h: 70, w: 69, cin: 32, cout: 32, groups: 32, k: [3, 3], stride: [2, 2], dilation: [1, 1], padding: [1, 1, 1, 1], batch: 1, values: Values::Extremes, seed: 10, below_one: true },
                ];
                for c in &single_shift {
                    let ms = (0..c.cout)
                        .map(|i| QuantizedMultiplier::from_f64(0.002 + 0.4 * (i as f64 * 0.618).fract()).unwrap())
                        .collect();
                    c.check_with($path, true, Some(ms)).unwrap_or_else(|e| panic!("{c:?}: {e}"));
                }
            }
        }
        )*
    };
}

kernel_suites! {
    portable => KernelPath::Portable,
    avx2 => KernelPath::Avx2,
    avx512vnni => KernelPath::Avx512Vnni,
}

/// Every optimized path has a suite above, and no suite runs `Reference` (the oracle) as a path
/// under test.
/// Whether the CPU has AVX-512 VBMI (the byte permutes of the band im2col's gather).
fn has_vbmi() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::is_x86_feature_detected!("avx512vbmi");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The stems of the benchmark models and their neighbours (C_in 1–3, strides 1–2, paddings 0–2,
/// odd widths, batches whose rows cross samples and the GEMM's row blocks) take the band im2col on
/// every optimized path (by byte permutes on AVX-512 VNNI where the CPU has VBMI) and match the
/// reference, in every im2col form.
#[test]
fn stem_geometries_take_the_band_im2col() {
    let shapes = [
        // (h, w, cin, cout, k, stride, padding, batch)
        (28, 28, 1, 16, [3, 3], [2, 2], [1, 1, 1, 1], 3),
        (28, 28, 1, 8, [3, 3], [1, 1], [1, 1, 1, 1], 2),
        (27, 13, 3, 16, [3, 3], [2, 2], [0, 1, 1, 0], 2),
        (9, 11, 2, 5, [3, 3], [1, 2], [2, 2, 2, 2], 4),
        (15, 7, 1, 3, [5, 3], [2, 1], [2, 1, 0, 2], 3),
        (6, 5, 3, 4, [2, 4], [1, 1], [0, 0, 0, 0], 1),
    ];
    for path in KernelPath::optimized() {
        for (i, &(h, w, cin, cout, [kh, kw], [sh, sw], padding, batch)) in shapes.iter().enumerate()
        {
            let case = ConvCase::fitting(
                [h, w],
                [cin, cout, 1],
                (kh, kw, sh, sw, 1, 1),
                padding,
                (batch, Values::Uniform, 7 + i as u64),
                false,
            )
            .unwrap();
            let (conv, ih, oh, qi, qo, input) = case.build_with(None);
            let io = ConvIo {
                in_hwc: ih,
                input: qi,
                out_hwc: oh,
                output: qo,
                rounding: Target::Qat,
            };
            let band = ConvPlan::new(&conv, &io, path).unwrap().band_im2col();
            let vbmi = path == KernelPath::Avx512Vnni && has_vbmi();
            if padding != [0; 4] || vbmi {
                assert_eq!(band, Some(vbmi), "{path} shape {i}");
            }
            case.check(path, true).unwrap();
            // The other im2col forms of the same plan (the plain one, the band without the
            // gather) give the reference's accumulators too.
            let n_out = batch * oh.iter().product::<usize>();
            let reference = ConvPlan::new(&conv, &io, KernelPath::Reference).unwrap();
            let mut want = vec![0i32; n_out];
            reference.run_i32(&conv, &input, batch, &mut want);
            for (b, g) in [(false, false), (true, false)] {
                let plan = ConvPlan::new(&conv, &io, path)
                    .unwrap()
                    .with_im2col_forms(b, g);
                let mut got = vec![0i32; n_out];
                plan.run_i32(&conv, &input, batch, &mut got);
                assert_eq!(got, want, "{path} shape {i} band {b} gather {g}");
            }
        }
    }
}

#[test]
fn every_optimized_path_has_a_suite() {
    let optimized: Vec<KernelPath> = KernelPath::ALL
        .into_iter()
        .filter(|&p| p != KernelPath::Reference)
        .collect();
    assert_eq!(SUITES, &optimized[..]);
}

fn small_layer() -> (Vec<i8>, Vec<i32>, Vec<QuantizedMultiplier>) {
    (
        vec![
            1, -2, 3, 4, 5, -6, 7, 8, 9, 10, 11, -12, 13, 14, 15, 16, 17, 18,
        ],
        vec![5, -5],
        vec![QuantizedMultiplier::from_f64(0.01).unwrap()],
    )
}

fn spec<'a>(w: &'a [i8], bias: &'a [i32], ms: &'a [QuantizedMultiplier]) -> LayerSpec<'a> {
    LayerSpec {
        weights: w,
        bias,
        multipliers: ms,
        input_zero_point: 3,
        output_zero_point: 128,
        lo: 0,
        hi: 255,
        target: Target::Qat,
        reals: None,
    }
}

/// `Reference` has no packed kernels: asking for them is an error, never a silent stand-in
/// (the packed GEMM used to run the portable kernel under the reference name).
#[test]
fn reference_is_never_a_packed_kernel() {
    let (w, bias, ms) = small_layer();
    let layer = spec(&w, &bias, &ms);
    assert!(matches!(
        PackedB::new(KernelPath::Reference, 2, 9, &layer),
        Err(KernelError::NotPacked { .. })
    ));
    let shape = DepthwiseShape {
        kernel: [3, 3],
        stride: [1, 1],
        dilation: [1, 1],
        padding: [1; 4],
        in_hwc: [4, 4, 2],
        out_hwc: [4, 4, 2],
    };
    assert!(matches!(
        DepthwisePlan::new(KernelPath::Reference, shape, &layer),
        Err(KernelError::NotPacked { .. })
    ));
    for path in KernelPath::optimized() {
        assert_eq!(PackedB::new(path, 2, 9, &layer).unwrap().path(), path);
        assert_eq!(
            DepthwisePlan::new(path, shape, &layer).unwrap().path(),
            path
        );
    }
}

/// A path the CPU lacks is refused everywhere (it used to fall back to the portable kernels
/// silently in the executor, and to be undefined behaviour in the packed GEMM).
#[test]
fn unsupported_paths_are_refused() {
    let (w, bias, ms) = small_layer();
    let layer = spec(&w, &bias, &ms);
    let model = common::zoo_model();
    for path in KernelPath::ALL
        .into_iter()
        .filter(|p| !p.is_supported_here())
    {
        assert!(matches!(
            PackedB::new(path, 2, 9, &layer),
            Err(KernelError::Unsupported { path: p }) if p == path
        ));
        assert!(matches!(
            Executor::with_path(&model, path),
            Err(RunError::UnsupportedKernel { path: p }) if p == path
        ));
    }
}

/// Inconsistent layers and short buffers are typed errors.
#[test]
fn bad_layers_and_buffers_are_errors() {
    let (w, bias, ms) = small_layer();
    let path = KernelPath::Portable;
    let bad = |f: fn(&mut LayerSpec<'_>)| {
        let mut layer = spec(&w, &bias, &ms);
        f(&mut layer);
        PackedB::new(path, 2, 9, &layer)
    };
    let field = |r: Result<PackedB, KernelError>| match r {
        Err(KernelError::Layer { field, .. }) => field,
        other => panic!("expected a layer error, got {other:?}"),
    };
    assert_eq!(
        field(PackedB::new(path, 2, 8, &spec(&w, &bias, &ms))),
        "weights"
    );
    assert_eq!(field(bad(|l| l.bias = &[])), "bias");
    assert_eq!(field(bad(|l| l.multipliers = &[])), "multipliers");
    assert_eq!(field(bad(|l| l.input_zero_point = 256)), "input_zero_point");
    assert_eq!(
        field(bad(|l| l.output_zero_point = 1 << 23)),
        "output_zero_point"
    );
    assert_eq!(field(bad(|l| l.hi = 256)), "lo");
    assert_eq!(field(bad(|l| (l.lo, l.hi) = (9, 8))), "lo");
    let b = PackedB::new(path, 2, 9, &spec(&w, &bias, &ms)).unwrap();
    let a = vec![0u8; 3 * 9];
    let mut out = vec![0u8; 6];
    let direct = |lda| ASource::Direct { data: &a, lda };
    assert!(b.gemm(3, &direct(9), GemmOut::U8(&mut out, 2)).is_ok());
    assert!(matches!(
        b.gemm(4, &direct(9), GemmOut::U8(&mut [0u8; 8], 2)),
        Err(KernelError::Buffer { buffer: "a", .. })
    ));
    assert!(matches!(
        b.gemm(3, &direct(8), GemmOut::U8(&mut out, 2)),
        Err(KernelError::Buffer { buffer: "a", .. })
    ));
    assert!(matches!(
        b.gemm(3, &direct(9), GemmOut::U8(&mut out, 1)),
        Err(KernelError::Buffer { buffer: "out", .. })
    ));
    assert!(matches!(
        b.gemm(3, &direct(9), GemmOut::I32(&mut [0i32; 5], 2)),
        Err(KernelError::Buffer { buffer: "out", .. })
    ));
}

/// The executor gives identical results whatever the rayon thread count.
#[test]
fn thread_count_does_not_change_results() {
    let model = common::zoo_model();
    let x =
        ndarray::ArrayD::from_shape_vec(vec![4, 8, 8, 3], Rng(9).f32s(4 * 192, -1.0, 1.0)).unwrap();
    // `None`: the default split (chunks of the batch per thread); `Some(w)`: one chunk, ops
    // split from `w` units of work (0: every op).
    let run = |threads: usize, op_split: Option<usize>| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let exec = Executor::new(&model).unwrap();
            let mut exec = match op_split {
                Some(w) => exec.with_op_split(w),
                None => exec,
            };
            exec.run_all(x.view()).unwrap()
        })
    };
    let want = run(1, None);
    assert_eq!(want, run(3, None));
    // More threads than samples: fewer chunks than threads.
    assert_eq!(want, run(8, None));
    assert_eq!(want, run(2, Some(0)));
    assert_eq!(want, run(3, Some(0)));
    assert_eq!(want, run(1, Some(0)));
}

/// Multipliers whose products can land exactly on a tie of the single rounding: `M0 = 2^30` with
/// right shifts 1–3 (`M` = 1/4, 1/8, 1/16), so that accumulators ≡ 2, 4 or 8 modulo 4, 8 or 16
/// round half away from zero. Such layers must keep the single-shift stage's negative-product
/// correction (their accumulators are not provably tie-free), on every path, in the GEMM, the
/// depthwise kernels and a stem-like conv, in both bias signs.
#[test]
fn tie_prone_multipliers_match_reference() {
    let tie = |i: usize| QuantizedMultiplier::from_parts(1 << 30, -1 - (i % 3) as i32).unwrap();
    for path in KernelPath::ALL {
        if path == KernelPath::Reference || !path.is_supported_here() {
            continue;
        }
        for seed in 0..4u64 {
            let mut case =
                GemmCase::new(9, 5, 40, Values::Uniform, 77 + seed, true).with(Target::Qat);
            case.ms = (0..case.n).map(tie).collect();
            case.w.iter_mut().for_each(|w| *w = (*w).clamp(-3, 3));
            case.bias.iter_mut().for_each(|b| *b %= 64);
            case.lo = 0;
            case.hi = 255;
            case.z3 = 128;
            let want = case.reference();
            assert!(
                want.0.iter().any(|&a| a < 0 && a % 4 == -2),
                "seed {seed}: the case has no negative tie"
            );
            for direct in [false, true] {
                assert_eq!(
                    case.run(path, direct, false),
                    want,
                    "{path:?} GEMM seed {seed}"
                );
            }
            for (cin, groups, k) in [(70, 70, [3, 3]), (24, 24, [3, 3]), (1, 1, [3, 3])] {
                let cout = if groups == 1 { 16 } else { cin };
                let conv = ConvCase {
                    h: 7,
                    w: 6,
                    cin,
                    cout,
                    groups,
                    k,
                    stride: [1, 1],
                    dilation: [1, 1],
                    padding: [1, 1, 1, 1],
                    batch: 2,
                    values: Values::Uniform,
                    seed,
                    below_one: true,
                };
                conv.check_with(path, false, Some((0..cout).map(tie).collect()))
                    .unwrap_or_else(|e| panic!("{path:?} {conv:?}: {e}"));
            }
        }
    }
}

/// The single-shift output stage equals `requantize_with` lane by lane over the whole int32
/// range, every right shift 1..=21, flushed multipliers and zero points in `−255..=255`, in both
/// roundings; and the general single-rounding stages (AVX-512 narrow and wide, AVX2) equal
/// `requantize_single` for every shift −31..=30.
#[cfg(target_arch = "x86_64")]
mod vector_stages {
    use super::*;
    use qat_core::fixed_point::requantize_single;
    use qat_int8_runtime::testing::lanes;

    fn edge() -> impl Strategy<Value = i32> {
        prop_oneof![
            any::<i32>(),
            -70_000i32..70_000,
            Just(i32::MIN),
            Just(i32::MAX),
            Just(0),
            Just(-1),
        ]
    }

    proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            #[test]
            fn fused_matches_requantize(
                x in proptest::array::uniform16(edge()),
                shifts in proptest::array::uniform16(1i32..=21),
                mant in proptest::array::uniform16(0u32..(1 << 30)),
                zp in -255i32..=255,
                flush in 0usize..16,
            ) {
                if !KernelPath::Avx512Vnni.is_supported_here() { return Ok(()); }
                let m: [QuantizedMultiplier; 16] = std::array::from_fn(|i| {
                    if i == flush && mant[i] % 5 == 0 {
                        QuantizedMultiplier::from_parts(0, 0).unwrap()
                    } else {
                        QuantizedMultiplier::from_parts((1i32 << 30) + mant[i] as i32, -shifts[i]).unwrap()
                    }
                });
                prop_assert!(lanes::avx512_fused_applies(&m, zp, 0, 255));
                for rounding in Rounding::ALL {
                    let got = lanes::avx512_fused(x, &m, zp, rounding).unwrap();
                    for i in 0..16 {
                        prop_assert_eq!(got[i], requantize_with(rounding, x[i], m[i], zp, i32::MIN, i32::MAX), "{} lane {} x {} m {:?}", rounding, i, x[i], m[i]);
                    }
                }
            }

    /// The tie-free stage with the bias folded in equals the single rounding of `x + bias`
            /// wherever `|x + bias|` stays below the tie bound `2^(30 + right − tz(M0))` (and
            /// `2^31`), including multipliers with many trailing zero bits.
            #[test]
            fn no_tie_matches_requantize_below_the_tie_bound(
                x in proptest::array::uniform16(any::<i32>()),
                bias in proptest::array::uniform16(any::<i32>()),
                shifts in proptest::array::uniform16(1i32..=21),
                mant in proptest::array::uniform16(0u32..(1 << 30)),
                tz in proptest::array::uniform16(0u32..=30),
                zp in -255i32..=255,
            ) {
                if !KernelPath::Avx512Vnni.is_supported_here() { return Ok(()); }
                let m: [QuantizedMultiplier; 16] = std::array::from_fn(|i| {
                    let m0 = ((1u32 << 30) | mant[i]) >> tz[i] << tz[i];
                    QuantizedMultiplier::from_parts(m0 as i32, -shifts[i]).unwrap()
                });
                // Scale each lane's x + bias into the bound of its multiplier.
                let (mut xs, mut bs) = (x, bias);
                for i in 0..16 {
                    let exp = (30 + shifts[i] as u32 - m[i].multiplier().trailing_zeros()).min(31);
                    let bound = (1i64 << exp) - 1;
                    let half = bound / 2;
                    bs[i] = (bias[i] as i64 % (half + 1)) as i32;
                    xs[i] = (x[i] as i64 % (bound - (bs[i] as i64).abs() + 1)) as i32;
                }
                let got = lanes::avx512_no_tie(xs, bs, &m, zp).unwrap();
                for i in 0..16 {
                    let v = xs[i] + bs[i];
                    prop_assert_eq!(got[i], requantize_with(Rounding::Single, v, m[i], zp, i32::MIN, i32::MAX), "lane {} x {} bias {} m {:?}", i, xs[i], bs[i], m[i]);
                }
            }

                    #[test]
            fn single_stages_match_requantize_single(
                x in proptest::array::uniform16(edge()),
                shifts in proptest::array::uniform16(-31i32..=30),
                mant in proptest::array::uniform16(0u32..(1 << 30)),
                zp in -255i32..=255,
                lo in 0i32..=255,
                width in 0i32..=255,
                flush in 0usize..16,
            ) {
                let hi = (lo + width).min(255);
                let m: [QuantizedMultiplier; 16] = std::array::from_fn(|i| {
                    if i == flush && mant[i] % 5 == 0 {
                        QuantizedMultiplier::from_parts(0, 0).unwrap()
                    } else {
                        QuantizedMultiplier::from_parts((1i32 << 30) + mant[i] as i32, shifts[i]).unwrap()
                    }
                });
                let want: [i32; 16] = std::array::from_fn(|i| requantize_single(x[i], m[i], zp, lo, hi));
                // Narrow variant: only for lanes whose multiplier is below 0.5 (T ≥ 32) or flushed.
                let narrow_ok = m.iter().all(|m| m.multiplier() == 0 || m.shift() < 0);
                if let Some(wide) = lanes::avx512_single(x, &m, [zp, lo, hi], true) {
                    prop_assert_eq!(wide, want, "avx512 wide");
                }
                if narrow_ok && let Some(narrow) = lanes::avx512_single(x, &m, [zp, lo, hi], false) {
                    prop_assert_eq!(narrow, want, "avx512 narrow");
                }
                for h8 in 0..2 {
                    let x8: [i32; 8] = std::array::from_fn(|i| x[8 * h8 + i]);
                    let m8: [QuantizedMultiplier; 8] = std::array::from_fn(|i| m[8 * h8 + i]);
                    if let Some(got) = lanes::avx2_single(x8, &m8, [zp, lo, hi]) {
                        prop_assert_eq!(&got[..], &want[8 * h8..8 * h8 + 8], "avx2");
                    }
                }
            }

            /// The AVX2 `f32` stage equals qat-core's `requantize_fp32` on every lane: any int32
            /// accumulator, any `f32` multiplier the `f32` targets store (`fp32_multiplier` of
            /// `[2^−32, 2^30)`), any zero point and clamp of a validated layer.
            #[test]
            fn avx2_fp32_stage_equals_qat_core(
                x in proptest::array::uniform8(any::<i32>()),
                log2 in proptest::array::uniform8(-32f32..30.0),
                zp in -300i32..300,
                lo in 0i32..=255,
                width in 0i32..=255,
            ) {
                let hi = (lo + width).min(255);
                let m: [QuantizedMultiplier; 8] =
                    std::array::from_fn(|i| fp32_multiplier(log2[i].exp2().min(1.0e9)).unwrap());
                let want: [i32; 8] = std::array::from_fn(|i| requantize_fp32(x[i], m[i], zp, lo, hi));
                if let Some(got) = lanes::avx2_fp32(x, &m, [zp, lo, hi]) {
                    prop_assert_eq!(got, want);
                }
            }
        }
}
