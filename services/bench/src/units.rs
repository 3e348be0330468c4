//! How figures are written in the report: the leaf both the report and the cluster
//! rows use (so neither imports the other for it).

/// Seconds: two decimals under 10 s, one above; `—` for NaN.
pub fn secs(s: f64) -> String {
    if s.is_nan() {
        "—".into()
    } else if s < 10.0 {
        format!("{s:.2} s")
    } else {
        format!("{s:.1} s")
    }
}

/// KiB to MiB.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A target's verdict.
pub fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

/// Flat: the large clips' peak is within 10 % + 2 MiB of the small clips'.
pub fn flat(large_kib: u64, small_kib: u64) -> bool {
    mib(large_kib) <= mib(small_kib) * 1.10 + 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flatness() {
        assert!(flat(20 * 1024, 19 * 1024));
        assert!(!flat(40 * 1024, 20 * 1024));
    }
}
