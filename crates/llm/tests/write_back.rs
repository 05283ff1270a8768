//! Asynchronous write-back of evicted blocks: the serving loop does not wait for tier writes,
//! blocks still being written are reused (not recomputed), a run's time includes the writes
//! still in flight at its end, and a failed write fails the run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use oxmem_kv::{BlockKey, KvError, KvStats, KvTier};
use oxmem_llm::{
    Backend, BenchConfig, Engine, MemTier, ModeSpec, Model, ModelConfig, block_bytes,
    finish_reports, run_mode, working_set_blocks,
};

/// A [`MemTier`] whose `put_many` is slow: it first waits for a gate to open (if it has one;
/// at most 10 s, then it goes on), then sleeps `delay`.
#[derive(Debug)]
struct SlowTier {
    inner: MemTier,
    delay: Duration,
    gate: Option<(Mutex<bool>, Condvar)>,
    put_calls: AtomicU64,
}

impl SlowTier {
    fn sleeping(inner: MemTier, delay: Duration) -> Self {
        SlowTier {
            inner,
            delay,
            gate: None,
            put_calls: AtomicU64::new(0),
        }
    }

    fn gated(inner: MemTier) -> Self {
        SlowTier {
            gate: Some((Mutex::new(false), Condvar::new())),
            ..SlowTier::sleeping(inner, Duration::ZERO)
        }
    }

    fn open(&self) {
        if let Some((open, cv)) = &self.gate {
            *open.lock().unwrap() = true;
            cv.notify_all();
        }
    }
}

impl KvTier for SlowTier {
    fn name(&self) -> &str {
        "slow"
    }
    fn block_bytes(&self) -> usize {
        self.inner.block_bytes()
    }
    fn put_many(&self, blocks: &[(BlockKey, &[u8])]) -> Result<(), KvError> {
        if let Some((open, cv)) = &self.gate {
            let g = open.lock().unwrap();
            let _g = cv
                .wait_timeout_while(g, Duration::from_secs(10), |open| !*open)
                .unwrap();
        }
        std::thread::sleep(self.delay);
        self.put_calls.fetch_add(1, Ordering::SeqCst);
        self.inner.put_many(blocks)
    }
    fn get_many(&self, keys: &[BlockKey], out: &mut [&mut [u8]]) -> Result<Vec<bool>, KvError> {
        self.inner.get_many(keys, out)
    }
    fn contains_prefix(&self, keys: &[BlockKey]) -> Result<usize, KvError> {
        self.inner.contains_prefix(keys)
    }
    fn stats(&self) -> KvStats {
        self.inner.stats()
    }
}

/// A tier whose every write fails (reads see an empty [`MemTier`]).
#[derive(Debug)]
struct FailingTier(MemTier);

impl KvTier for FailingTier {
    fn name(&self) -> &str {
        "failing"
    }
    fn block_bytes(&self) -> usize {
        self.0.block_bytes()
    }
    fn put_many(&self, _blocks: &[(BlockKey, &[u8])]) -> Result<(), KvError> {
        Err(KvError::Redis("injected write failure".into()))
    }
    fn get_many(&self, keys: &[BlockKey], out: &mut [&mut [u8]]) -> Result<Vec<bool>, KvError> {
        self.0.get_many(keys, out)
    }
    fn contains_prefix(&self, keys: &[BlockKey]) -> Result<usize, KvError> {
        self.0.contains_prefix(keys)
    }
    fn stats(&self) -> KvStats {
        self.0.stats()
    }
}

fn prompts() -> (Vec<u32>, Vec<u32>) {
    let p1: Vec<u32> = (0..100u32).map(|i| (i * 37 + 5) % 512).collect();
    let p2: Vec<u32> = (0..100u32).map(|i| (i * 91 + 11) % 512).collect();
    (p1, p2)
}

#[test]
fn requests_are_served_while_every_tier_write_is_blocked_and_reuse_the_blocks_in_flight() {
    let mcfg = ModelConfig::tiny();
    let model = Model::new(&mcfg).unwrap();
    let b = 16;
    let bb = mcfg.block_bytes(b);
    let tier = Arc::new(SlowTier::gated(MemTier::new(bb, 1024)));
    // A budget of 4 blocks: each 100-token prompt (6 full blocks) evicts the other's blocks.
    let mut engine =
        Engine::new(Backend::Real(&model), Some(4 * bb as u64), tier.clone(), b).expect("engine");
    let (p1, p2) = prompts();
    let t0 = Instant::now();
    let first = engine.serve(&p1, 5).unwrap();
    engine.serve(&p2, 5).unwrap();
    let again = engine.serve(&p1, 5).unwrap();
    let served = t0.elapsed();
    // The writer is stuck in its first put_many the whole time: three requests completed
    // without waiting for any write.
    assert_eq!(tier.put_calls.load(Ordering::SeqCst), 0);
    let c = engine.cache().counters();
    assert_eq!((c.tier_writes, c.bytes_written), (0, 0));
    // p1's six evicted blocks were not written yet, and still nothing was recomputed: they
    // came from the write-back queue, without a tier read.
    assert_eq!(again.tokens, first.tokens);
    assert_eq!(again.reused_inflight, 96);
    assert_eq!(again.prefill_computed, 4);
    assert_eq!((again.reused_tier, again.bytes_fetched), (0, 0));
    assert_eq!(c.in_flight_reads, 6);
    // Open the gate: finish waits for every write; then the tier holds both prompts' blocks,
    // each written once (p1's blocks re-evicted while in flight are not queued twice).
    tier.open();
    engine.finish().expect("writes succeed");
    let c = engine.cache().counters();
    assert_eq!(c.tier_writes, 12, "{c:?}");
    assert_eq!(c.bytes_written, 12 * bb as u64);
    assert_eq!(c.tier_writes_skipped, 2);
    assert_eq!(c.tier_write_failures, 0);
    assert_eq!(tier.stats().bytes_written, c.bytes_written);
    for p in [&p1, &p2] {
        assert_eq!(tier.contains_prefix(&engine.block_keys(p)).unwrap(), 6);
    }
    // Now the blocks come from the tier.
    let third = engine.serve(&p1, 5).unwrap();
    assert_eq!(third.tokens, first.tokens);
    assert_eq!(third.reused_tier + third.reused_local, 96);
    assert_eq!(third.reused_inflight, 0);
    assert!(served < Duration::from_secs(10), "{served:?}");
}

#[test]
fn a_slow_tier_costs_no_recompute_and_its_writes_count_in_the_run_time() {
    let cfg = BenchConfig::quick();
    let cap = working_set_blocks(&cfg) + 8;
    let fast = Arc::new(MemTier::new(block_bytes(&cfg), cap));
    let delay = Duration::from_millis(40);
    let slow = Arc::new(SlowTier::sleeping(
        MemTier::new(block_bytes(&cfg), cap),
        delay,
    ));
    let modes = [
        ModeSpec::all_local(&cfg),
        ModeSpec::with_tier("fast", &cfg, fast.clone()),
        ModeSpec::with_tier("slow", &cfg, slow.clone()),
    ];
    let mut reports: Vec<_> = modes
        .iter()
        .map(|m| run_mode(&cfg, m, &mut |_| {}).expect("run"))
        .collect();
    finish_reports(&mut reports).expect("same tokens in every mode");
    let [local, fast_r, slow_r] = &reports[..] else {
        unreachable!()
    };
    // Slow writes cost no recompute: what is still being written is read from the queue.
    assert_eq!(
        slow_r.prefill_tokens_computed,
        fast_r.prefill_tokens_computed
    );
    assert_eq!(
        slow_r.prefill_tokens_computed,
        local.prefill_tokens_computed
    );
    assert!(slow_r.reused_inflight_tokens > 0, "{slow_r:?}");
    // Every evicted block is written once whatever the tier's speed, and all of it is counted.
    assert_eq!(slow_r.bytes_written, fast_r.bytes_written);
    assert_eq!(slow_r.bytes_written, slow.stats().bytes_written);
    assert_eq!(fast_r.bytes_written, fast.stats().bytes_written);
    assert_eq!(slow_r.bytes_fetched, slow.stats().bytes_read);
    // The run waited for its last writes: its time covers every (sequential) put's sleep.
    let puts = slow.put_calls.load(Ordering::SeqCst);
    assert!(puts > 0);
    let slept = delay.as_secs_f64() * puts as f64;
    assert!(
        slow_r.elapsed_s >= slept,
        "{} s < {slept} s of writes",
        slow_r.elapsed_s
    );
    assert!(slow_r.write_wait_s > 0.0 && slow_r.write_wait_s <= slow_r.elapsed_s);
}

#[test]
fn a_failing_tier_write_fails_the_run() {
    let cfg = BenchConfig::quick();
    let tier = Arc::new(FailingTier(MemTier::new(block_bytes(&cfg), 1024)));
    let err = run_mode(
        &cfg,
        &ModeSpec::with_tier("failing", &cfg, tier),
        &mut |_| {},
    )
    .expect_err("a failed write must fail the run");
    assert!(err.to_string().contains("injected write failure"), "{err}");
}

#[test]
fn a_failed_write_surfaces_from_serve_or_finish_and_nothing_is_recorded_as_written() {
    let mcfg = ModelConfig::tiny();
    let model = Model::new(&mcfg).unwrap();
    let b = 16;
    let bb = mcfg.block_bytes(b);
    let tier = Arc::new(FailingTier(MemTier::new(bb, 1024)));
    let mut engine =
        Engine::new(Backend::Real(&model), Some(4 * bb as u64), tier, b).expect("engine");
    let (p1, p2) = prompts();
    // The first request's evictions are handed over; their write fails in the background and
    // is reported by the next call that can: the next request, or finish.
    engine.serve(&p1, 3).expect("first request");
    let second = engine.serve(&p2, 3);
    let finished = engine.finish();
    let err = second
        .err()
        .or(finished.err())
        .expect("the write error is returned");
    assert!(err.to_string().contains("injected write failure"), "{err}");
    let c = engine.cache().counters();
    assert_eq!(c.tier_writes, 0);
    assert_eq!(c.bytes_written, 0);
    assert_eq!(c.tier_write_failures, 8, "{c:?}");
    // Every error was returned once; nothing is left to report.
    engine.finish().expect("no error left");
}
