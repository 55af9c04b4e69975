//! Which vector unit the CPU loops run on, detected once at run time.
//!
//! The default build targets the baseline x86-64 (SSE2) so that the library runs on
//! any machine; the hot loops are also compiled for AVX2 and for AVX-512 (the same
//! Rust code under `#[target_feature]`) and picked here. IEEE add, mul, div and sqrt
//! round identically at every width and Rust never contracts a*b+c to an FMA, so all
//! copies give bit-identical results (the unit tests compare them).
//!
//! `GACC_CPU_ISA=portable|avx2|avx512` caps the choice (for measurements and tests);
//! it can only lower it below what the CPU has.

use std::sync::OnceLock;

/// The widest vector unit a loop may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Baseline code (SSE2 on x86-64; whatever the target has elsewhere).
    Portable,
    /// AVX2 + F16C (256-bit).
    Avx2,
    /// AVX-512F + BW (512-bit) with F16C.
    Avx512,
}

impl Isa {
    /// What this CPU supports.
    fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("f16c");
            if avx2 && std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw") {
                return Isa::Avx512;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// Parses a `GACC_CPU_ISA` value.
    fn parse(s: &str) -> Option<Isa> {
        match s.trim().to_ascii_lowercase().as_str() {
            "portable" | "scalar" | "sse2" => Some(Isa::Portable),
            "avx2" => Some(Isa::Avx2),
            "avx512" | "avx-512" => Some(Isa::Avx512),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }
}

/// The vector unit the loops use: the CPU's best, capped by `GACC_CPU_ISA`.
#[inline]
pub fn isa() -> Isa {
    static CHOSEN: OnceLock<Isa> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let best = Isa::detect();
        match std::env::var("GACC_CPU_ISA").ok().as_deref().and_then(Isa::parse) {
            Some(cap) => cap.min(best),
            None => best,
        }
    })
}

/// Every ISA this CPU can run, narrowest first (tests compare them all).
pub fn available() -> Vec<Isa> {
    let best = Isa::detect();
    [Isa::Portable, Isa::Avx2, Isa::Avx512].into_iter().filter(|&i| i <= best).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_the_documented_names() {
        assert_eq!(Isa::parse("portable"), Some(Isa::Portable));
        assert_eq!(Isa::parse(" AVX2 "), Some(Isa::Avx2));
        assert_eq!(Isa::parse("avx512"), Some(Isa::Avx512));
        assert_eq!(Isa::parse("neon"), None);
        assert!(available().contains(&Isa::Portable));
        assert!(available().contains(&isa()) || isa() < Isa::detect());
    }
}
