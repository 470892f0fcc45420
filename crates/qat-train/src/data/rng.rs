//! A small, fully specified PRNG so that shuffles and augmentation are identical on every machine and
//! every version of every dependency.

/// SplitMix64 (Steele, Lea, Flood 2014): `state += 0x9e3779b97f4a7c15`, output = the state mixed by two
/// xor-shift-multiply rounds. Passes BigCrush; used here for permutations and augmentation draws.
///
/// ```
/// use qat_train::data::SplitMix64;
/// let mut a = SplitMix64::new(42);
/// let mut b = SplitMix64::new(42);
/// assert_eq!(a.next_u64(), b.next_u64());
/// let p = SplitMix64::new(1).permutation(5);
/// let mut s = p.clone(); s.sort();
/// assert_eq!(s, vec![0, 1, 2, 3, 4]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// A generator for a derived stream, e.g. `(seed, epoch, batch)`: the parts are folded through the mixer so
    /// that nearby tuples give unrelated streams.
    pub fn derived(parts: &[u64]) -> Self {
        let mut s = Self::new(0x0005_eed0_f9a7);
        for &p in parts {
            s.state ^= p;
            s.state = s.next_u64();
        }
        s
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform integer in `0..n` (`n > 0`), by Lemire's multiply-shift (bias < n/2^64, negligible here).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// A uniformly random permutation of `0..n` (Fisher–Yates, from the back).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.below(i + 1);
            p.swap(i, j);
        }
        p
    }
}
