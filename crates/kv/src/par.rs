//! Runs the independent pieces of a batch on several threads: a blocking read of the pool or of
//! a disk waits for the network or the device, so several in flight overlap their latencies.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Runs `f(i)` for every `i` in `0..n` on up to `threads` threads (the caller's included) and
/// returns the results in order of `i`, or one of the errors (after which no new piece starts).
pub(crate) fn run<T, E, F>(n: usize, threads: usize, f: F) -> Result<Vec<T>, E>
where
    T: Send,
    E: Send,
    F: Fn(usize) -> Result<T, E> + Sync,
{
    let threads = threads.clamp(1, n.max(1));
    if threads == 1 {
        return (0..n).map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let worker = || -> Result<Vec<(usize, T)>, E> {
        let mut done = Vec::new();
        while !failed.load(Ordering::Relaxed) {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                break;
            }
            match f(i) {
                Ok(t) => done.push((i, t)),
                Err(e) => {
                    failed.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        Ok(done)
    };
    let parts: Vec<Result<Vec<(usize, T)>, E>> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..threads).map(|_| s.spawn(worker)).collect();
        let mut parts = vec![worker()];
        for h in handles {
            // A panicking piece is a bug in this crate: let it surface as a panic.
            parts.push(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
        parts
    });
    let mut all = Vec::with_capacity(n);
    for part in parts {
        all.extend(part?);
    }
    all.sort_unstable_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, t)| t).collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn results_come_back_in_order_and_an_error_wins() {
        let r: Result<Vec<usize>, ()> = super::run(100, 4, |i| Ok(i * 2));
        assert_eq!(r.unwrap(), (0..100).map(|i| i * 2).collect::<Vec<_>>());
        let r: Result<Vec<usize>, usize> =
            super::run(100, 4, |i| if i == 37 { Err(i) } else { Ok(i) });
        assert_eq!(r.unwrap_err(), 37);
        let r: Result<Vec<usize>, ()> = super::run(0, 4, Ok);
        assert!(r.unwrap().is_empty());
    }
}
