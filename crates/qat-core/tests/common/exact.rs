//! Exact binary rationals `m·2^e` (i128 significand) and explicit IEEE rounding, for transcribing
//! the runtimes' `f32` formulas independently of Rust's float operations: every `f32` operation
//! is written as "exact result, then one rounding to 24 significant bits, ties to even".

/// The value `m·2^e`.
#[derive(Debug, Clone, Copy)]
pub struct Exact {
    pub m: i128,
    pub e: i32,
}

impl Exact {
    pub fn int(v: i64) -> Self {
        Exact { m: v as i128, e: 0 }
    }

    /// A finite `f32`, decomposed from its bits.
    pub fn of_f32(x: f32) -> Self {
        assert!(x.is_finite(), "{x}");
        let b = x.to_bits();
        let (exp, frac) = (((b >> 23) & 0xff) as i32, (b & 0x7f_ffff) as i128);
        Self::of_ieee(b >> 31 == 1, exp, frac, 23, 127)
    }

    /// A finite `f64`, decomposed from its bits.
    pub fn of_f64(x: f64) -> Self {
        assert!(x.is_finite(), "{x}");
        let b = x.to_bits();
        let (exp, frac) = (((b >> 52) & 0x7ff) as i32, (b & 0xf_ffff_ffff_ffff) as i128);
        Self::of_ieee(b >> 63 == 1, exp, frac, 52, 1023)
    }

    /// The IEEE value with sign `neg`, biased exponent `exp` (0: subnormal) and fraction `frac`
    /// of `frac_bits` bits: `±1.frac·2^(exp − bias)`, or `±0.frac·2^(1 − bias)` when `exp = 0`.
    fn of_ieee(neg: bool, exp: i32, frac: i128, frac_bits: i32, bias: i32) -> Self {
        let (m, e) = if exp == 0 {
            (frac, 1 - bias - frac_bits)
        } else {
            (frac | 1 << frac_bits, exp - bias - frac_bits)
        };
        Exact {
            m: if neg { -m } else { m },
            e,
        }
    }

    /// Back to `f32`; the value must already have at most 24 significant bits.
    pub fn to_f32(self) -> f32 {
        let v = self.m as f64 * 2f64.powi(self.e);
        let f = v as f32;
        assert_eq!(f as f64, v, "not an f32: {self:?}");
        f
    }

    fn align(a: Self, b: Self) -> (i128, i128, i32) {
        let e = a.e.min(b.e);
        let sa = (a.e - e) as u32;
        let sb = (b.e - e) as u32;
        assert!(sa < 100 && sb < 100, "exponent span too wide: {a:?} {b:?}");
        assert!(
            (a.m.abs() << sa) >> sa == a.m.abs() && (b.m.abs() << sb) >> sb == b.m.abs(),
            "aligned significand overflows i128: {a:?} {b:?}"
        );
        (a.m << sa, b.m << sb, e)
    }

    pub fn add(self, b: Self) -> Self {
        let (x, y, e) = Self::align(self, b);
        Exact { m: x + y, e }
    }

    pub fn neg(self) -> Self {
        Exact {
            m: -self.m,
            e: self.e,
        }
    }

    pub fn mul(self, b: Self) -> Self {
        let m = self.m.checked_mul(b.m).expect("product fits i128");
        Exact { m, e: self.e + b.e }
    }

    /// The value as an `f64`, exact for significands of at most 53 bits (every rounded `f32`
    /// result and every small integer).
    pub fn to_f64(self) -> f64 {
        assert!(self.m.abs() < 1i128 << 53, "not exact in f64: {self:?}");
        self.m as f64 * 2f64.powi(self.e)
    }

    /// `self < b` (both exact in f64).
    pub fn lt(self, b: Self) -> bool {
        self.to_f64() < b.to_f64()
    }

    /// Clamps to `[lo, hi]` (integers), then rounds to an integer: the runtimes' order
    /// (`maxps`, `minps`, `cvtps2dq`).
    pub fn clamp_round(self, lo: i64, hi: i64, ties_even: bool) -> i64 {
        if self.lt(Exact::int(lo)) {
            lo
        } else if Exact::int(hi).lt(self) {
            hi
        } else {
            self.round_int(ties_even)
        }
    }

    /// Integer part `⌊|m|/2^k⌋` and the remainder, for `k > 0`.
    fn split(mag: i128, k: u32) -> (i128, i128) {
        (mag >> k, mag & ((1i128 << k) - 1))
    }

    /// Rounds to 24 significant bits, ties to even (the result of one `f32` operation; no
    /// subnormals or overflow in the ranges tested).
    pub fn round_f32(self) -> Self {
        self.round_bits(24)
    }

    /// Rounds to 53 significant bits, ties to even (one `f64` operation, normal range).
    pub fn round_f64(self) -> Self {
        self.round_bits(53)
    }

    /// Rounds to `p` significant bits, ties to even.
    fn round_bits(self, p: i32) -> Self {
        let mag = self.m.abs();
        if mag == 0 {
            return Exact { m: 0, e: 0 };
        }
        let bits = 128 - mag.leading_zeros() as i32;
        let k = bits - p;
        if k <= 0 {
            return self;
        }
        let (mut q, rem) = Self::split(mag, k as u32);
        let half = 1i128 << (k - 1);
        if rem > half || (rem == half && q & 1 == 1) {
            q += 1;
        }
        Exact {
            m: self.m.signum() * q,
            e: self.e + k,
        }
    }

    /// One `f32` operation: exact result, rounded.
    pub fn f32_add(self, b: Self) -> Self {
        self.add(b).round_f32()
    }

    pub fn f32_mul(self, b: Self) -> Self {
        self.mul(b).round_f32()
    }

    /// Rounds to an integer with the given tie rule (`true`: ties to even; `false`: ties away
    /// from zero).
    pub fn round_int(self, ties_even: bool) -> i64 {
        if self.e >= 0 {
            return (self.m << self.e) as i64;
        }
        let k = (-self.e) as u32;
        if k >= 120 {
            return 0;
        }
        let mag = self.m.abs();
        let (mut q, rem) = Self::split(mag, k);
        let half = 1i128 << (k - 1);
        let up = if ties_even {
            rem > half || (rem == half && q & 1 == 1)
        } else {
            rem >= half
        };
        if up {
            q += 1;
        }
        (self.m.signum() * q) as i64
    }
}

/// `a / b` correctly rounded to `f32` (ties to even), through an integer quotient with a sticky
/// bit; `b ≠ 0`.
pub fn f32_div(a: Exact, b: Exact) -> Exact {
    assert!(b.m != 0);
    if a.m == 0 {
        return Exact { m: 0, e: 0 };
    }
    const K: u32 = 60;
    let num = a.m.abs() << K;
    let den = b.m.abs();
    let (q, r) = (num / den, num % den);
    let sticky = (r != 0) as i128;
    let sign = a.m.signum() * b.m.signum();
    Exact {
        m: sign * ((q << 1) | sticky),
        e: a.e - b.e - K as i32 - 1,
    }
    .round_f32()
}
