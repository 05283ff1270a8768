//! Fault injection: [`FaultInjector`] wraps any [`Transport`] and, from a seed, drops,
//! duplicates, reorders, corrupts and delays the frames sent through it.
//!
//! Faults apply to **outgoing** frames only; received frames pass through untouched. To fault
//! both directions of a link, wrap the transport at both ends.
//!
//! For each frame given to [`Transport::send`], in this order:
//! - with probability `loss` it is dropped;
//! - with probability `dup` it is sent twice (each copy then faces the rest on its own);
//! - with probability `corrupt` one to three distinct bits of the copy are flipped (so a
//!   corrupted frame always differs from the original);
//! - with probability `reorder` it is held back until at least one later frame has gone out
//!   (or, if none follows, for at most `delay + jitter +` [`REORDER_MAX_HOLD`]);
//! - it is delayed by `delay` plus a uniformly random `0..=jitter` (jitter alone also reorders).
//!
//! Held frames have release times and go out on later `send`, `recv` or `wait` calls; `wait`
//! shortens its timeout to the next release. Accepted frames count as sent from the caller's
//! view: when the inner transport takes fewer frames than released, the rest stay held (due at
//! once) and the next `send` accepts nothing until they are out, which keeps back-pressure.
//!
//! [`FaultConfig`] parses and prints the command-line syntax
//! `loss=0.05,dup=0.01,reorder=0.02,corrupt=0.001,delay=1ms,jitter=200us,seed=7`.

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{LinkParams, PeerAddr, RecvBatch, Transport, Waker};

/// Longest a reordered frame waits (beyond its delay) for a later frame to overtake it.
pub const REORDER_MAX_HOLD: Duration = Duration::from_millis(5);

/// When due frames could not be handed to a full inner transport, `wait` sleeps at most this
/// long before trying again.
const BLOCKED_RETRY: Duration = Duration::from_millis(1);

/// What to do to outgoing frames. `Default` does nothing.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FaultConfig {
    /// Probability a frame is dropped.
    pub loss: f64,
    /// Probability a frame is sent twice.
    pub dup: f64,
    /// Probability a frame is held back behind the next one.
    pub reorder: f64,
    /// Probability one to three bits of a frame are flipped.
    pub corrupt: f64,
    /// Delay added to every frame.
    pub delay: Duration,
    /// Extra uniformly random delay, `0..=jitter`, per frame.
    pub jitter: Duration,
    /// Seed of the ChaCha8 generator that decides every fault.
    pub seed: u64,
}

impl FaultConfig {
    /// Whether this configuration leaves every frame alone.
    pub fn is_noop(&self) -> bool {
        self.loss == 0.0
            && self.dup == 0.0
            && self.reorder == 0.0
            && self.corrupt == 0.0
            && self.delay.is_zero()
            && self.jitter.is_zero()
    }
}

/// Why a fault specification did not parse. The caller (usually a user on the command line)
/// is at fault in every case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FaultConfigError {
    /// An item is not `key=value`.
    #[error("fault setting {item:?} is not of the form key=value")]
    NotKeyValue { item: String },
    /// The key is not one of the known settings.
    #[error(
        "unknown fault setting {key:?} (expected loss, dup, reorder, corrupt, delay, jitter or seed)"
    )]
    UnknownKey { key: String },
    /// The same key appears twice.
    #[error("fault setting {key:?} is given twice")]
    DuplicateKey { key: String },
    /// A probability is not a number in 0..=1.
    #[error("{key}={value:?} is not a probability between 0 and 1")]
    BadProbability { key: &'static str, value: String },
    /// A duration is not a number with a unit (ns, us, ms, s), or is too long.
    #[error("{key}={value:?} is not a duration such as 0, 250ns, 200us, 1.5ms or 2s")]
    BadDuration { key: &'static str, value: String },
    /// The seed is not an unsigned 64-bit integer.
    #[error("seed={value:?} is not an unsigned 64-bit integer")]
    BadSeed { value: String },
}

const KEYS: [&str; 7] = [
    "loss", "dup", "reorder", "corrupt", "delay", "jitter", "seed",
];

fn parse_probability(key: &'static str, value: &str) -> Result<f64, FaultConfigError> {
    match value.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(FaultConfigError::BadProbability {
            key,
            value: value.to_owned(),
        }),
    }
}

fn parse_duration(key: &'static str, value: &str) -> Result<Duration, FaultConfigError> {
    let bad = || FaultConfigError::BadDuration {
        key,
        value: value.to_owned(),
    };
    let (number, unit_nanos) = if value == "0" {
        ("0", 1.0)
    } else if let Some(n) = value.strip_suffix("ns") {
        (n, 1.0)
    } else if let Some(n) = value
        .strip_suffix("us")
        .or_else(|| value.strip_suffix("µs"))
    {
        (n, 1e3)
    } else if let Some(n) = value.strip_suffix("ms") {
        (n, 1e6)
    } else if let Some(n) = value.strip_suffix('s') {
        (n, 1e9)
    } else {
        return Err(bad());
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(bad());
    }
    let nanos = number.parse::<f64>().map_err(|_| bad())? * unit_nanos;
    // An hour is far beyond any sensible network delay; it also keeps the f64 exact.
    if !(0.0..=3.6e12).contains(&nanos) {
        return Err(bad());
    }
    Ok(Duration::from_nanos(nanos.round() as u64))
}

fn fmt_duration(d: Duration, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let n = d.as_nanos();
    if n == 0 {
        write!(f, "0")
    } else if n % 1_000_000_000 == 0 {
        write!(f, "{}s", n / 1_000_000_000)
    } else if n % 1_000_000 == 0 {
        write!(f, "{}ms", n / 1_000_000)
    } else if n % 1_000 == 0 {
        write!(f, "{}us", n / 1_000)
    } else {
        write!(f, "{n}ns")
    }
}

impl FromStr for FaultConfig {
    type Err = FaultConfigError;

    /// Parses comma-separated `key=value` items; `""` and `"none"` mean no faults. Keys:
    /// `loss`, `dup`, `reorder`, `corrupt` (probabilities 0..=1), `delay`, `jitter` (`0` or a
    /// number with `ns`, `us`, `ms` or `s`) and `seed` (u64).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut config = FaultConfig::default();
        let s = s.trim();
        if s.is_empty() || s == "none" {
            return Ok(config);
        }
        let mut seen = [false; KEYS.len()];
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let Some((key, value)) = item.split_once('=') else {
                return Err(FaultConfigError::NotKeyValue {
                    item: item.to_owned(),
                });
            };
            let (key, value) = (key.trim(), value.trim());
            let Some(k) = KEYS.iter().position(|&known| known == key) else {
                return Err(FaultConfigError::UnknownKey {
                    key: key.to_owned(),
                });
            };
            if std::mem::replace(&mut seen[k], true) {
                return Err(FaultConfigError::DuplicateKey {
                    key: key.to_owned(),
                });
            }
            match KEYS[k] {
                "loss" => config.loss = parse_probability("loss", value)?,
                "dup" => config.dup = parse_probability("dup", value)?,
                "reorder" => config.reorder = parse_probability("reorder", value)?,
                "corrupt" => config.corrupt = parse_probability("corrupt", value)?,
                "delay" => config.delay = parse_duration("delay", value)?,
                "jitter" => config.jitter = parse_duration("jitter", value)?,
                _ => {
                    config.seed = value.parse().map_err(|_| FaultConfigError::BadSeed {
                        value: value.to_owned(),
                    })?;
                }
            }
        }
        Ok(config)
    }
}

impl fmt::Display for FaultConfig {
    /// The settings that differ from the default, in the syntax [`FromStr`] reads; `none`
    /// when there are none.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut sep = |f: &mut fmt::Formatter<'_>| {
            let s = if first { "" } else { "," };
            first = false;
            f.write_str(s)
        };
        for (key, p) in [
            ("loss", self.loss),
            ("dup", self.dup),
            ("reorder", self.reorder),
            ("corrupt", self.corrupt),
        ] {
            if p != 0.0 {
                sep(f)?;
                write!(f, "{key}={p}")?;
            }
        }
        for (key, d) in [("delay", self.delay), ("jitter", self.jitter)] {
            if !d.is_zero() {
                sep(f)?;
                write!(f, "{key}=")?;
                fmt_duration(d, f)?;
            }
        }
        if self.seed != 0 {
            sep(f)?;
            write!(f, "seed={}", self.seed)?;
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}

/// What a [`FaultInjector`] has done so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultStats {
    /// Frames the inner transport accepted (duplicates and released held frames included).
    pub sent: u64,
    /// Frames dropped.
    pub dropped: u64,
    /// Extra copies made.
    pub duplicated: u64,
    /// Frames held back to be overtaken.
    pub reordered: u64,
    /// Frames with flipped bits.
    pub corrupted: u64,
    /// Frames held for a delay (delay or jitter above zero).
    pub delayed: u64,
}

/// Live counters of a [`FaultInjector`], readable from any thread (see
/// [`FaultInjector::counters`]) while the injector lives in an engine thread.
#[derive(Debug, Default)]
pub struct FaultCounters {
    sent: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
    corrupted: AtomicU64,
    delayed: AtomicU64,
}

impl FaultCounters {
    /// The counts now. Each is exact; they are not read as one atomic snapshot.
    pub fn snapshot(&self) -> FaultStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        FaultStats {
            sent: get(&self.sent),
            dropped: get(&self.dropped),
            duplicated: get(&self.duplicated),
            reordered: get(&self.reordered),
            corrupted: get(&self.corrupted),
            delayed: get(&self.delayed),
        }
    }

    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// A frame waiting for its release.
#[derive(Debug)]
struct Held {
    /// Goes out at this time at the latest.
    release_at: Instant,
    /// Reordered: goes out as soon as more than this many frames have been passed on.
    after_passed: Option<u64>,
    /// Tie-break keeping the order frames were held in.
    order: u64,
    peer: PeerAddr,
    bytes: Vec<u8>,
}

impl Held {
    /// When it is due, if it is.
    fn due_at(&self, now: Instant, passed: u64) -> Option<Instant> {
        if self.after_passed.is_some_and(|mark| passed > mark) {
            Some(now.min(self.release_at))
        } else {
            (self.release_at <= now).then_some(self.release_at)
        }
    }
}

/// Wraps a transport and injects faults into the frames it sends. See the [module
/// docs](self).
#[derive(Debug)]
pub struct FaultInjector<T> {
    inner: T,
    config: FaultConfig,
    rng: ChaCha8Rng,
    held: Vec<Held>,
    /// Frames the inner transport accepted so far.
    passed: u64,
    next_order: u64,
    counters: Arc<FaultCounters>,
}

impl<T: Transport> FaultInjector<T> {
    /// Wraps `inner`, seeding the generator with `config.seed`.
    pub fn new(inner: T, config: FaultConfig) -> Self {
        FaultInjector {
            inner,
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            config,
            held: Vec::new(),
            passed: 0,
            next_order: 0,
            counters: Arc::default(),
        }
    }

    /// The faults being injected.
    pub fn config(&self) -> &FaultConfig {
        &self.config
    }

    /// What has been done so far.
    pub fn stats(&self) -> FaultStats {
        self.counters.snapshot()
    }

    /// The live counters, to read from another thread.
    pub fn counters(&self) -> Arc<FaultCounters> {
        Arc::clone(&self.counters)
    }

    /// Frames held for later release.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// When the next held frame is released at the latest.
    pub fn next_release(&self) -> Option<Instant> {
        self.held.iter().map(|h| h.release_at).min()
    }

    /// The wrapped transport.
    pub fn inner(&self) -> &T {
        &self.inner
    }

    /// The wrapped transport, mutably.
    pub fn inner_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    /// Unwraps the transport; held frames are lost.
    pub fn into_inner(self) -> T {
        self.inner
    }

    fn hold(&mut self, peer: PeerAddr, bytes: Vec<u8>, release_at: Instant, after: Option<u64>) {
        let order = self.next_order;
        self.next_order += 1;
        self.held.push(Held {
            release_at,
            after_passed: after,
            order,
            peer,
            bytes,
        });
    }

    /// Hands due held frames to the inner transport, oldest release first, as of `now`.
    /// Returns whether none is left due (false: the inner transport is full).
    ///
    /// # Errors
    /// Errors of the inner transport's `send`.
    pub fn release_due(&mut self, now: Instant) -> io::Result<bool> {
        // Releasing frames can let reordered frames go, so look again; bounded.
        for _ in 0..4 {
            if self.held.is_empty() {
                return Ok(true);
            }
            let passed = self.passed;
            let mut due: Vec<(Instant, Held)> = Vec::new();
            let mut i = 0;
            while i < self.held.len() {
                if let Some(at) = self.held[i].due_at(now, passed) {
                    due.push((at, self.held.swap_remove(i)));
                } else {
                    i += 1;
                }
            }
            if due.is_empty() {
                return Ok(true);
            }
            due.sort_by_key(|(at, h)| (*at, h.order));
            let view: Vec<(PeerAddr, &[u8])> = due
                .iter()
                .map(|(_, h)| (h.peer, h.bytes.as_slice()))
                .collect();
            let (n, refused) = match self.inner.send(&view) {
                Ok(n) => (n, 0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => (0, 0),
                // The kernel refused the first frame (no route: a partition). It is lost, as
                // the network would lose it; the others may still go.
                Err(_) => (0, 1),
            };
            drop(view);
            self.passed += n as u64;
            FaultCounters::add(&self.counters.sent, n as u64);
            FaultCounters::add(&self.counters.dropped, refused as u64);
            let all = n + refused == due.len();
            // The rest stay held, still due, in their order.
            self.held
                .extend(due.into_iter().skip(n + refused).map(|(_, h)| h));
            if refused > 0 {
                continue;
            }
            if !all {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// [`Transport::send`] as of `now`.
    ///
    /// # Errors
    /// Errors of the inner transport's `send`; frames of this batch already held stay held.
    pub fn send_at(&mut self, now: Instant, frames: &[(PeerAddr, &[u8])]) -> io::Result<usize> {
        if !self.release_due(now)? {
            return Ok(0);
        }
        let c = Arc::clone(&self.counters);
        let cfg = self.config;
        let mut out: Vec<(PeerAddr, Cow<'_, [u8]>)> = Vec::with_capacity(frames.len());
        for &(peer, bytes) in frames {
            if cfg.loss > 0.0 && self.rng.random_bool(cfg.loss) {
                FaultCounters::add(&c.dropped, 1);
                continue;
            }
            let copies = if cfg.dup > 0.0 && self.rng.random_bool(cfg.dup) {
                FaultCounters::add(&c.duplicated, 1);
                2
            } else {
                1
            };
            for _ in 0..copies {
                let mut data = Cow::Borrowed(bytes);
                if cfg.corrupt > 0.0 && !bytes.is_empty() && self.rng.random_bool(cfg.corrupt) {
                    flip_bits(&mut self.rng, data.to_mut());
                    FaultCounters::add(&c.corrupted, 1);
                }
                let reorder = cfg.reorder > 0.0 && self.rng.random_bool(cfg.reorder);
                let mut delay = cfg.delay;
                if !cfg.jitter.is_zero() {
                    let j = self.rng.random_range(0..=cfg.jitter.as_nanos() as u64);
                    delay += Duration::from_nanos(j);
                }
                if reorder {
                    FaultCounters::add(&c.reordered, 1);
                    // Everything queued ahead of it must pass, then one more.
                    let mark = self.passed + out.len() as u64;
                    let at = now + delay + REORDER_MAX_HOLD;
                    self.hold(peer, data.into_owned(), at, Some(mark));
                } else if !delay.is_zero() {
                    FaultCounters::add(&c.delayed, 1);
                    self.hold(peer, data.into_owned(), now + delay, None);
                } else {
                    out.push((peer, data));
                }
            }
        }
        if !out.is_empty() {
            let view: Vec<(PeerAddr, &[u8])> = out.iter().map(|(p, b)| (*p, &**b)).collect();
            let n = self.inner.send(&view)?;
            self.passed += n as u64;
            FaultCounters::add(&c.sent, n as u64);
            for (peer, bytes) in out.into_iter().skip(n) {
                self.hold(peer, bytes.into_owned(), now, None);
            }
        }
        // Reordered frames overtaken just now go out behind what overtook them.
        self.release_due(now)?;
        Ok(frames.len())
    }
}

/// Flips one to three distinct bits: flipping one bit twice would undo the damage.
fn flip_bits(rng: &mut ChaCha8Rng, bytes: &mut [u8]) {
    let bits = bytes.len() * 8;
    let count = rng.random_range(1..=3usize).min(bits);
    let mut flipped = [usize::MAX; 3];
    for slot in 0..count {
        let bit = loop {
            let b = rng.random_range(0..bits);
            if !flipped[..slot].contains(&b) {
                break b;
            }
        };
        flipped[slot] = bit;
        bytes[bit / 8] ^= 1 << (bit % 8);
    }
}

impl<T: Transport> Transport for FaultInjector<T> {
    fn link_params(&self) -> LinkParams {
        self.inner.link_params()
    }

    fn local_addr(&self) -> PeerAddr {
        self.inner.local_addr()
    }

    /// Accepts every frame (applying faults) unless held frames are waiting for room in the
    /// inner transport, in which case it accepts none.
    fn send(&mut self, frames: &[(PeerAddr, &[u8])]) -> io::Result<usize> {
        self.send_at(Instant::now(), frames)
    }

    fn recv(&mut self, batch: &mut RecvBatch) -> io::Result<usize> {
        self.release_due(Instant::now())?;
        self.inner.recv(batch)
    }

    /// Waits as the inner transport does, but no longer than until the next held frame is due,
    /// and releases due frames afterwards.
    fn wait(&mut self, waker: &Waker, timeout: Option<Duration>) -> io::Result<()> {
        let now = Instant::now();
        let blocked = !self.release_due(now)?;
        let timeout = match self.next_release() {
            None => timeout,
            Some(at) => {
                let until = if blocked {
                    BLOCKED_RETRY
                } else {
                    at.saturating_duration_since(now)
                };
                Some(timeout.map_or(until, |t| t.min(until)))
            }
        };
        self.inner.wait(waker, timeout)?;
        self.release_due(Instant::now())?;
        Ok(())
    }
}
