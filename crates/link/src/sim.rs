//! A deterministic network simulator for two connections.
//!
//! Everything is driven by a virtual clock and a seeded RNG, so a run is reproduced exactly by
//! its seed. Each direction has its own [`LinkProfile`]: loss, duplication, reordering,
//! corruption, delay, jitter and bandwidth. Corruption flips one to three bits. On raw
//! Ethernet the NIC's FCS check drops such frames ([`Corruption::Dropped`]); over UDP they
//! arrive ([`Corruption::Delivered`]) and the link's own integrity check must catch them.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::connection::{Connection, Event};
use crate::time::Instant;

/// What one direction of the network does to frames.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkProfile {
    /// Probability a frame is lost.
    pub loss: f64,
    /// Probability a frame arrives twice.
    pub duplicate: f64,
    /// Probability a frame is held back by up to `reorder_window`, letting later ones pass.
    pub reorder: f64,
    pub reorder_window: Duration,
    /// Probability one to three bits of a frame are flipped.
    pub corrupt: f64,
    /// One-way propagation delay.
    pub delay: Duration,
    /// Extra uniformly random delay (which also reorders a little).
    pub jitter: Duration,
    /// Serialisation rate in bits per second; `None` is infinitely fast.
    pub bandwidth_bps: Option<u64>,
}

impl Default for LinkProfile {
    fn default() -> Self {
        LinkProfile {
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_window: Duration::from_micros(200),
            corrupt: 0.0,
            delay: Duration::from_micros(10),
            jitter: Duration::ZERO,
            bandwidth_bps: Some(10_000_000_000),
        }
    }
}

impl LinkProfile {
    /// A perfect link with the default delay and bandwidth.
    pub fn perfect() -> Self {
        Self::default()
    }

    /// A lossy link: `loss` drop rate with the same rate of duplication and reordering.
    pub fn lossy(loss: f64) -> Self {
        LinkProfile {
            loss,
            duplicate: loss / 2.0,
            reorder: loss,
            ..Self::default()
        }
    }
}

/// What corruption does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corruption {
    /// The receiver's NIC drops corrupted frames (Ethernet FCS): corruption is loss.
    Dropped,
    /// Corrupted frames are delivered (UDP without checksum, or a bad NIC).
    Delivered,
}

/// What happened on one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionStats {
    pub sent: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub corrupted: u64,
    pub delivered: u64,
    /// Frames the receiving connection refused (integrity or malformed).
    pub refused: u64,
}

#[derive(Debug)]
struct Direction {
    profile: LinkProfile,
    queue: BinaryHeap<Reverse<(Instant, u64, Vec<u8>)>>,
    busy_until: Instant,
    stats: DirectionStats,
}

/// Two connections joined by a simulated network.
#[derive(Debug)]
pub struct Pair {
    pub a: Connection,
    pub b: Connection,
    now: Instant,
    rng: ChaCha8Rng,
    corruption: Corruption,
    /// `dirs[0]`: a → b, `dirs[1]`: b → a.
    dirs: [Direction; 2],
    order: u64,
    buf: Vec<u8>,
    /// Corrupted frames the receiver accepted: must stay zero with an integrity check.
    pub corrupted_accepted: u64,
}

impl Pair {
    /// Joins `a` and `b`; `ab` and `ba` describe the two directions.
    pub fn new(
        a: Connection,
        b: Connection,
        ab: LinkProfile,
        ba: LinkProfile,
        corruption: Corruption,
        seed: u64,
    ) -> Self {
        let dir = |profile| Direction {
            profile,
            queue: BinaryHeap::new(),
            busy_until: Instant::ZERO,
            stats: DirectionStats::default(),
        };
        Pair {
            a,
            b,
            now: Instant::ZERO,
            rng: ChaCha8Rng::seed_from_u64(seed),
            corruption,
            dirs: [dir(ab), dir(ba)],
            order: 0,
            buf: vec![0; 1 << 17],
            corrupted_accepted: 0,
        }
    }

    /// The virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Counters of the a → b (`0`) or b → a (`1`) direction.
    pub fn direction_stats(&self, dir: usize) -> DirectionStats {
        self.dirs[dir].stats
    }

    /// Changes a direction's profile (to heal a link, say).
    pub fn set_profile(&mut self, dir: usize, profile: LinkProfile) {
        self.dirs[dir].profile = profile;
    }

    /// Frames in flight in either direction.
    pub fn in_flight(&self) -> usize {
        self.dirs.iter().map(|d| d.queue.len()).sum()
    }

    /// One round: both sides transmit everything they can, time advances to the next frame
    /// arrival or timer, and what is due is delivered or fired. Returns `false` when nothing
    /// is in flight and neither side has a timer: the pair is quiescent.
    pub fn step(&mut self) -> bool {
        self.transmit_all();
        let next = [
            self.dirs[0].queue.peek().map(|Reverse((t, ..))| *t),
            self.dirs[1].queue.peek().map(|Reverse((t, ..))| *t),
            self.a.poll_timeout(),
            self.b.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next else { return false };
        self.now = self.now.max(next);
        for dir in 0..2 {
            while self.dirs[dir]
                .queue
                .peek()
                .is_some_and(|Reverse((t, ..))| *t <= self.now)
            {
                let Reverse((_, _, bytes)) = self.dirs[dir].queue.pop().expect("peeked");
                self.deliver(dir, &bytes);
            }
        }
        let now = self.now;
        if self.a.poll_timeout().is_some_and(|t| t <= now) {
            self.a.handle_timeout(now);
        }
        if self.b.poll_timeout().is_some_and(|t| t <= now) {
            self.b.handle_timeout(now);
        }
        true
    }

    fn deliver(&mut self, dir: usize, bytes: &[u8]) {
        // The first byte of the stored frame says whether it was corrupted (see `send`).
        let (corrupted, frame) = (bytes[0] == 1, &bytes[1..]);
        let receiver = if dir == 0 { &mut self.b } else { &mut self.a };
        self.dirs[dir].stats.delivered += 1;
        match receiver.handle_frame(self.now, frame) {
            Ok(()) if corrupted => self.corrupted_accepted += 1,
            Ok(()) => {}
            Err(_) => self.dirs[dir].stats.refused += 1,
        }
    }

    fn transmit_all(&mut self) {
        for dir in 0..2 {
            loop {
                let conn = if dir == 0 { &mut self.a } else { &mut self.b };
                let Some(len) = conn.poll_transmit(self.now, &mut self.buf) else {
                    break;
                };
                let frame = self.buf[..len].to_vec();
                self.send(dir, frame);
            }
        }
    }

    fn send(&mut self, dir: usize, frame: Vec<u8>) {
        let now = self.now;
        let d = &mut self.dirs[dir];
        let p = d.profile;
        d.stats.sent += 1;
        let start = now.max(d.busy_until);
        let serialise = p.bandwidth_bps.map_or(Duration::ZERO, |bps| {
            Duration::from_nanos(
                (frame.len() as u64 * 8).saturating_mul(1_000_000_000) / bps.max(1),
            )
        });
        d.busy_until = start + serialise;
        if self.rng.random_bool(p.loss) {
            d.stats.lost += 1;
            return;
        }
        let copies = if self.rng.random_bool(p.duplicate) {
            d.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut bytes = frame.clone();
            let mut corrupted = false;
            if self.rng.random_bool(p.corrupt) && !bytes.is_empty() {
                d.stats.corrupted += 1;
                if self.corruption == Corruption::Dropped {
                    continue;
                }
                // One to three distinct bits: flipping one bit twice would undo the damage.
                let flips = self.rng.random_range(1..=3usize).min(bytes.len() * 8);
                let mut bits = [usize::MAX; 3];
                for k in 0..flips {
                    let mut bit = self.rng.random_range(0..bytes.len() * 8);
                    while bits[..k].contains(&bit) {
                        bit = self.rng.random_range(0..bytes.len() * 8);
                    }
                    bits[k] = bit;
                    bytes[bit / 8] ^= 1 << (bit % 8);
                }
                corrupted = true;
            }
            let mut at = d.busy_until + p.delay;
            if !p.jitter.is_zero() {
                at += Duration::from_nanos(self.rng.random_range(0..=p.jitter.as_nanos() as u64));
            }
            if self.rng.random_bool(p.reorder) {
                d.stats.reordered += 1;
                let w = p.reorder_window.as_nanos() as u64;
                at += Duration::from_nanos(self.rng.random_range(0..=w));
            }
            let mut stored = Vec::with_capacity(bytes.len() + 1);
            stored.push(u8::from(corrupted));
            stored.extend_from_slice(&bytes);
            self.order += 1;
            d.queue.push(Reverse((at, self.order, stored)));
        }
    }

    /// Runs [`step`](Self::step) until `done` holds, calling `on_events` with every event of
    /// either side (`0` for a, `1` for b). Returns the steps taken, or `Err(steps)` when
    /// `max_steps` ran out or the pair went quiescent first.
    ///
    /// # Errors
    /// `Err(steps)` as above.
    pub fn drive(
        &mut self,
        max_steps: usize,
        mut on_events: impl FnMut(&mut Pair, usize, Event),
        mut done: impl FnMut(&Pair) -> bool,
    ) -> Result<usize, usize> {
        for steps in 0..max_steps {
            self.drain(&mut on_events);
            if done(self) {
                return Ok(steps);
            }
            if !self.step() {
                self.drain(&mut on_events);
                return if done(self) { Ok(steps) } else { Err(steps) };
            }
        }
        Err(max_steps)
    }

    fn drain(&mut self, on_events: &mut impl FnMut(&mut Pair, usize, Event)) {
        loop {
            if let Some(e) = self.a.poll_event() {
                on_events(self, 0, e);
            } else if let Some(e) = self.b.poll_event() {
                on_events(self, 1, e);
            } else {
                break;
            }
        }
    }
}
