//! CPython's `random` module (MT19937, `random.seed(int)`, `random.shuffle`),
//! bit for bit, so that the continual relation-extraction protocols reproduce
//! the relation orders and splits the official code draws — without Python;
//! and numpy's legacy `np.random.seed(s); np.random.permutation(n)` on the
//! same generator (the class order of PyCIL / LAMDA-PILOT / SLCA).

/// The Mersenne Twister as CPython seeds and draws it.
#[derive(Debug, Clone)]
pub struct PyRandom {
    mt: [u32; 624],
    index: usize,
}

impl PyRandom {
    /// `random.seed(seed)` for a non-negative integer: `init_by_array` over the
    /// seed's 32-bit words, least significant first.
    pub fn new(seed: u64) -> Self {
        let key: Vec<u32> = if seed >> 32 == 0 { vec![seed as u32] } else { vec![seed as u32, (seed >> 32) as u32] };
        let mut r = Self { mt: [0; 624], index: 624 };
        r.init_genrand(19_650_218);
        let (n, len) = (624usize, key.len());
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..n.max(len) {
            let prev = r.mt[i - 1] ^ (r.mt[i - 1] >> 30);
            r.mt[i] = (r.mt[i] ^ prev.wrapping_mul(1_664_525)).wrapping_add(key[j]).wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= n {
                r.mt[0] = r.mt[n - 1];
                i = 1;
            }
            if j >= len {
                j = 0;
            }
        }
        for _ in 0..n - 1 {
            let prev = r.mt[i - 1] ^ (r.mt[i - 1] >> 30);
            r.mt[i] = (r.mt[i] ^ prev.wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= n {
                r.mt[0] = r.mt[n - 1];
                i = 1;
            }
        }
        r.mt[0] = 0x8000_0000;
        r
    }

    /// numpy's legacy `np.random.seed(seed)`: `init_genrand` alone.
    pub fn numpy(seed: u32) -> Self {
        let mut r = Self { mt: [0; 624], index: 624 };
        r.init_genrand(seed);
        r
    }

    /// numpy's `random_interval(max)` for `max < 2³²`: the smallest all-ones
    /// mask ≥ max, redrawn while above max.
    fn numpy_interval(&mut self, max: u32) -> u32 {
        if max == 0 {
            return 0;
        }
        let mask = u32::MAX >> max.leading_zeros();
        loop {
            let v = self.next_u32() & mask;
            if v <= max {
                return v;
            }
        }
    }

    fn init_genrand(&mut self, s: u32) {
        self.mt[0] = s;
        for i in 1..624 {
            let prev = self.mt[i - 1] ^ (self.mt[i - 1] >> 30);
            self.mt[i] = 1_812_433_253u32.wrapping_mul(prev).wrapping_add(i as u32);
        }
        self.index = 624;
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            for k in 0..624 {
                let y = (self.mt[k] & 0x8000_0000) | (self.mt[(k + 1) % 624] & 0x7fff_ffff);
                let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
                self.mt[k] = self.mt[(k + 397) % 624] ^ (y >> 1) ^ mag;
            }
            self.index = 0;
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `random._randbelow(n)` for `0 < n < 2³²`: rejection sampling on `n.bit_length()` bits.
    pub fn below(&mut self, n: u32) -> u32 {
        debug_assert!(n > 0);
        let k = 32 - n.leading_zeros();
        loop {
            let r = self.next_u32() >> (32 - k);
            if r < n {
                return r;
            }
        }
    }

    /// `random.shuffle(x)`.
    pub fn shuffle<T>(&mut self, x: &mut [T]) {
        for i in (1..x.len()).rev() {
            let j = self.below(i as u32 + 1) as usize;
            x.swap(i, j);
        }
    }
}

/// `np.argsort(shuffled(range(n)))` — the inverse permutation of a Python
/// shuffle, which is how the CRE samplers turn a shuffle into a task order.
pub fn argsort_shuffle(seed: u64, n: usize) -> Vec<usize> {
    let mut x: Vec<usize> = (0..n).collect();
    PyRandom::new(seed).shuffle(&mut x);
    let mut inv = vec![0; n];
    for (pos, &v) in x.iter().enumerate() {
        inv[v] = pos;
    }
    inv
}

/// `np.random.seed(seed); np.random.permutation(n)`: Fisher–Yates from the
/// last index down with `random_interval` draws.
pub fn numpy_permutation(n: usize, seed: u32) -> Vec<usize> {
    let mut rng = PyRandom::numpy(seed);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.numpy_interval(i as u32) as usize;
        order.swap(i, j);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values printed by CPython 3.11: `random.seed(s); x = list(range(n)); random.shuffle(x)`.
    #[test]
    fn matches_cpython_shuffle() {
        let shuffled = |seed, n| {
            let mut x: Vec<usize> = (0..n).collect();
            PyRandom::new(seed).shuffle(&mut x);
            x
        };
        assert_eq!(shuffled(2021, 7), [1, 5, 0, 2, 4, 3, 6]);
        assert_eq!(shuffled(2121, 7), [6, 5, 4, 3, 2, 0, 1]);
        assert_eq!(shuffled(2421, 7), [2, 3, 4, 5, 1, 6, 0]);
        assert_eq!(argsort_shuffle(2021, 7), [2, 0, 3, 5, 4, 1, 6]);
        assert_eq!(shuffled(2021, 80)[..12], [46, 44, 19, 10, 22, 16, 61, 24, 58, 66, 76, 2]);
        assert_eq!(shuffled((1 << 40) + 5, 10), [1, 2, 3, 6, 7, 0, 5, 4, 9, 8], "two-word seed");
        assert_eq!(shuffled(7, 700)[..8], [664, 615, 30, 509, 435, 158, 461, 535], "ten-bit rejection sampling");
    }

    /// The values numpy 2.x prints for these seeds (`np.random.seed(s); np.random.permutation(n)`).
    #[test]
    fn numpy_permutation_matches_numpy() {
        assert_eq!(numpy_permutation(10, 0), [2, 8, 4, 9, 1, 6, 7, 3, 0, 5]);
        assert_eq!(numpy_permutation(100, 1993)[..12], [68, 56, 78, 8, 23, 84, 90, 65, 74, 76, 40, 89]);
        assert_eq!(numpy_permutation(100, 1996)[..12], [35, 18, 40, 85, 63, 62, 77, 73, 12, 44, 31, 26]);
        assert_eq!(numpy_permutation(100, 1997)[..12], [88, 77, 36, 54, 92, 4, 11, 24, 71, 31, 23, 99]);
    }
}
