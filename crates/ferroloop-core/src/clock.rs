//! The loop's clock: `CLOCK_MONOTONIC` read directly, so `loop.time()` agrees
//! with Python's `time.monotonic()` (the same clock, nanosecond resolution),
//! unlike a millisecond clock, with which sleeps could end early.

/// Seconds on the monotonic clock, as a float (what `loop.time()` returns).
pub fn monotonic() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC is always
    // supported on the platforms we build for, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Resolution of [`monotonic`] in seconds (asyncio's `_clock_resolution`).
pub fn resolution() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: as above; clock_getres only writes into `ts`.
    let rc = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 1e-9;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_never_goes_back() {
        let mut last = monotonic();
        for _ in 0..10_000 {
            let now = monotonic();
            assert!(now >= last);
            last = now;
        }
    }

    #[test]
    fn resolution_is_sub_millisecond() {
        let r = resolution();
        assert!(r > 0.0 && r < 1e-3, "resolution {r}");
    }
}
