//! Seeds for the randomised tests and the small deterministic generator they draw from.
//! `SESSIONDB_SEED` replays a run; a failing test prints the seed it ran with.

use std::time::{SystemTime, UNIX_EPOCH};

/// Environment variable that replays a randomised test from a seed.
pub const SEED_VAR: &str = "SESSIONDB_SEED";

/// The seed for a randomised test: `SESSIONDB_SEED` when set, else derived from the time.
pub fn seed() -> u64 {
    if let Ok(s) = std::env::var(SEED_VAR) {
        let s = s.trim();
        let parsed = s
            .strip_prefix("0x")
            .map(|h| u64::from_str_radix(h, 16))
            .unwrap_or_else(|| s.parse());
        return parsed.unwrap_or_else(|_| panic!("{SEED_VAR}={s} is not a u64"));
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    splitmix64(&mut (nanos ^ u64::from(std::process::id())))
}

/// Prints `SESSIONDB_SEED=<n>` if the test panics while this guard is alive.
pub struct SeedGuard {
    pub seed: u64,
    test: &'static str,
}

impl SeedGuard {
    pub fn new(test: &'static str, seed: u64) -> SeedGuard {
        SeedGuard { seed, test }
    }
}

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\n{test} failed; replay with: {SEED_VAR}={seed} cargo test --test <file> {test}\n",
                test = self.test,
                seed = self.seed
            );
        }
    }
}

/// Seed plus guard in one call.
pub fn seeded(test: &'static str) -> (u64, SeedGuard) {
    let s = seed();
    (s, SeedGuard::new(test, s))
}

/// One step of splitmix64: advances `state` and returns the next output.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    mix64(*state)
}

/// splitmix64's output function: a bijection of `u64` that scatters every input bit.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A tiny deterministic RNG (splitmix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        splitmix64(&mut self.0)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}
