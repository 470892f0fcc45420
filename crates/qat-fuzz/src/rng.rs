//! SplitMix64: a small seeded generator, so every campaign is reproducible from its seed.

use qat_int8_runtime::testing::models::Rng as SplitMix64;

/// SplitMix64 (Steele, Lea, Flood 2014): `z = (s += φ); z = (z ⊕ z≫30)·c₁; z = (z ⊕ z≫27)·c₂;
/// z ⊕ z≫31`.
///
/// ```
/// let mut a = qat_fuzz::rng::Rng::new(7);
/// let mut b = qat_fuzz::rng::Rng::new(7);
/// assert_eq!(a.next_u64(), b.next_u64());
/// assert!(a.below(10) < 10);
/// ```
#[derive(Debug, Clone)]
pub struct Rng(SplitMix64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(SplitMix64(seed))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..n` (`0` for `n = 0`).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// `true` with probability `1/n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    /// One element of `xs` (which must not be empty).
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}
