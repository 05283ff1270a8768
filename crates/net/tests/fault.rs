//! The fault injector, over a recording transport (deterministic: explicit instants) and over
//! UDP loopback.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oxmem_link::Integrity;
use oxmem_net::fault::{
    FaultConfig, FaultConfigError, FaultInjector, FaultStats, REORDER_MAX_HOLD,
};
use oxmem_net::udp::UdpTransport;
use oxmem_net::{EthernetAddress, LinkParams, PeerAddr, RecvBatch, Transport, Waker};

type Log = Arc<Mutex<Vec<(PeerAddr, Vec<u8>)>>>;

/// Records what it is asked to send; takes at most `per_call` frames per `send`.
#[derive(Debug)]
struct Recorder {
    log: Log,
    per_call: usize,
    waits: Arc<Mutex<Vec<Option<Duration>>>>,
}

impl Recorder {
    fn new() -> (Self, Log) {
        let log = Log::default();
        let r = Recorder {
            log: Arc::clone(&log),
            per_call: usize::MAX,
            waits: Arc::default(),
        };
        (r, log)
    }
}

impl Transport for Recorder {
    fn link_params(&self) -> LinkParams {
        LinkParams {
            max_frame: 1500,
            min_frame: 46,
            integrity: Integrity::None,
        }
    }

    fn local_addr(&self) -> PeerAddr {
        PeerAddr::Ethernet(EthernetAddress([2, 0, 0, 0, 0, 0xaa]))
    }

    fn send(&mut self, frames: &[(PeerAddr, &[u8])]) -> io::Result<usize> {
        let n = frames.len().min(self.per_call);
        let mut log = self.log.lock().unwrap();
        log.extend(frames[..n].iter().map(|(p, b)| (*p, b.to_vec())));
        Ok(n)
    }

    fn recv(&mut self, batch: &mut RecvBatch) -> io::Result<usize> {
        batch.clear();
        Ok(0)
    }

    fn wait(&mut self, _waker: &Waker, timeout: Option<Duration>) -> io::Result<()> {
        self.waits.lock().unwrap().push(timeout);
        std::thread::sleep(
            timeout
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1)),
        );
        Ok(())
    }
}

const PEER: PeerAddr = PeerAddr::Ethernet(EthernetAddress([2, 0, 0, 0, 0, 0xbb]));

fn frames(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| vec![i as u8; 64]).collect()
}

fn send_each(inj: &mut FaultInjector<Recorder>, now: Instant, frames: &[Vec<u8>]) {
    for f in frames {
        assert_eq!(inj.send_at(now, &[(PEER, f)]).unwrap(), 1);
    }
}

fn config(s: &str) -> FaultConfig {
    s.parse().unwrap()
}

fn sent(log: &Log) -> Vec<Vec<u8>> {
    log.lock().unwrap().iter().map(|(_, b)| b.clone()).collect()
}

#[test]
fn with_total_loss_nothing_arrives() {
    let (rec, log) = Recorder::new();
    let mut inj = FaultInjector::new(rec, config("loss=1,seed=1"));
    let input = frames(100);
    send_each(&mut inj, Instant::now(), &input);
    assert!(sent(&log).is_empty());
    let stats = inj.stats();
    assert_eq!((stats.dropped, stats.sent), (100, 0));
}

#[test]
fn with_certain_duplication_everything_arrives_twice_in_order() {
    let (rec, log) = Recorder::new();
    let mut inj = FaultInjector::new(rec, config("dup=1,seed=2"));
    let input = frames(50);
    let view: Vec<(PeerAddr, &[u8])> = input.iter().map(|f| (PEER, f.as_slice())).collect();
    assert_eq!(inj.send_at(Instant::now(), &view).unwrap(), 50);
    let expected: Vec<Vec<u8>> = input.iter().flat_map(|f| [f.clone(), f.clone()]).collect();
    assert_eq!(sent(&log), expected);
    assert_eq!(
        inj.stats(),
        FaultStats {
            sent: 100,
            duplicated: 50,
            ..FaultStats::default()
        }
    );
}

#[test]
fn corruption_flips_one_to_three_bits_of_every_frame() {
    let (rec, log) = Recorder::new();
    let mut inj = FaultInjector::new(rec, config("corrupt=1,seed=3"));
    let input = frames(200);
    send_each(&mut inj, Instant::now(), &input);
    let out = sent(&log);
    assert_eq!(out.len(), input.len());
    let mut seen = [0usize; 4];
    for (a, b) in input.iter().zip(&out) {
        assert_eq!(a.len(), b.len());
        let bits: u32 = a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum();
        assert!((1..=3).contains(&bits), "{bits} bits flipped");
        seen[bits as usize] += 1;
    }
    assert!(seen[1] > 0 && seen[2] > 0 && seen[3] > 0, "{seen:?}");
    assert_eq!(inj.stats().corrupted, 200);
    assert_eq!(inj.stats().sent, 200);
}

#[test]
fn reordering_changes_the_order_but_loses_nothing() {
    let (rec, log) = Recorder::new();
    let mut inj = FaultInjector::new(rec, config("reorder=0.3,seed=4"));
    let input = frames(100);
    let t0 = Instant::now();
    send_each(&mut inj, t0, &input);
    // Frames held at the very end are overtaken by nothing: they go after the longest hold.
    inj.release_due(t0 + REORDER_MAX_HOLD).unwrap();
    let out = sent(&log);
    assert_ne!(out, input);
    let mut sorted = out.clone();
    sorted.sort();
    assert_eq!(sorted, input);
    let stats = inj.stats();
    assert!(stats.reordered > 10, "{stats:?}");
    assert_eq!(stats.sent, 100);
    assert_eq!(inj.held(), 0);
    // A reordered frame goes right behind the frame that overtook it.
    let first_moved = out.iter().zip(&input).position(|(a, b)| a != b).unwrap();
    assert_eq!(out[first_moved + 1], input[first_moved]);
}

#[test]
fn a_reordered_frame_that_nothing_overtakes_still_leaves() {
    let (rec, log) = Recorder::new();
    let mut inj = FaultInjector::new(rec, config("reorder=1"));
    let t0 = Instant::now();
    assert_eq!(inj.send_at(t0, &[(PEER, &[1, 2, 3])]).unwrap(), 1);
    inj.release_due(t0 + REORDER_MAX_HOLD - Duration::from_micros(1))
        .unwrap();
    assert!(sent(&log).is_empty());
    inj.release_due(t0 + REORDER_MAX_HOLD).unwrap();
    assert_eq!(sent(&log), vec![vec![1, 2, 3]]);
}

#[test]
fn delay_holds_frames_until_their_time() {
    let (rec, log) = Recorder::new();
    let mut inj = FaultInjector::new(rec, config("delay=50ms"));
    let input = frames(10);
    let t0 = Instant::now();
    send_each(&mut inj, t0, &input);
    assert!(sent(&log).is_empty());
    assert_eq!(inj.held(), 10);
    assert_eq!(inj.next_release(), Some(t0 + Duration::from_millis(50)));
    inj.release_due(t0 + Duration::from_millis(49)).unwrap();
    assert!(sent(&log).is_empty());
    inj.release_due(t0 + Duration::from_millis(50)).unwrap();
    assert_eq!(sent(&log), input);
    let stats = inj.stats();
    assert_eq!((stats.delayed, stats.sent), (10, 10));
}

#[test]
fn jitter_spreads_releases_within_its_bound() {
    let (rec, log) = Recorder::new();
    let mut inj = FaultInjector::new(rec, config("delay=1ms,jitter=10ms,seed=5"));
    let input = frames(100);
    let t0 = Instant::now();
    send_each(&mut inj, t0, &input);
    inj.release_due(t0 + Duration::from_millis(6)).unwrap();
    let early = sent(&log).len();
    assert!(early > 20 && early < 80, "{early} of 100 released half way");
    inj.release_due(t0 + Duration::from_millis(11)).unwrap();
    let out = sent(&log);
    assert_eq!(out.len(), 100);
    assert_ne!(out, input, "jitter reorders");
}

#[test]
fn wait_wakes_up_for_the_next_release() {
    let (rec, log) = Recorder::new();
    let waits = Arc::clone(&rec.waits);
    let mut inj = FaultInjector::new(rec, config("delay=30ms"));
    assert_eq!(inj.send(&[(PEER, &[9; 64])]).unwrap(), 1);
    let waker = Waker::new().unwrap();
    let start = Instant::now();
    inj.wait(&waker, Some(Duration::from_secs(10))).unwrap();
    assert!(start.elapsed() < Duration::from_secs(5));
    let asked = waits.lock().unwrap()[0].unwrap();
    assert!(asked <= Duration::from_millis(30), "{asked:?}");
    assert_eq!(sent(&log).len(), 1, "released by wait");
}

#[test]
fn a_full_inner_transport_pushes_back() {
    let (mut rec, log) = Recorder::new();
    rec.per_call = 3;
    let mut inj = FaultInjector::new(rec, FaultConfig::default());
    let input = frames(10);
    let view: Vec<(PeerAddr, &[u8])> = input.iter().map(|f| (PEER, f.as_slice())).collect();
    let t0 = Instant::now();
    assert_eq!(inj.send_at(t0, &view).unwrap(), 10, "all taken");
    // Three went out with the batch, three more when send released what was due.
    assert_eq!(inj.held(), 4);
    assert_eq!(
        inj.send_at(t0, &view[..1]).unwrap(),
        0,
        "refused while held frames wait"
    );
    for _ in 0..3 {
        inj.release_due(t0).unwrap();
    }
    assert_eq!(inj.held(), 0);
    assert_eq!(sent(&log), input);
}

#[test]
fn the_same_seed_gives_the_same_faults() {
    let run = |seed: u64| {
        let (rec, log) = Recorder::new();
        let mut cfg = config("loss=0.1,dup=0.1,reorder=0.1,corrupt=0.1");
        cfg.seed = seed;
        let mut inj = FaultInjector::new(rec, cfg);
        let t0 = Instant::now();
        send_each(&mut inj, t0, &frames(500));
        inj.release_due(t0 + REORDER_MAX_HOLD).unwrap();
        (sent(&log), inj.stats())
    };
    let (a, stats) = run(42);
    assert_eq!(run(42), (a.clone(), stats));
    assert_ne!(run(43).0, a);
    // Every frame is either dropped or sent, plus one more for each duplicate.
    assert_eq!(stats.sent, 500 - stats.dropped + stats.duplicated);
    assert!(stats.dropped > 0 && stats.duplicated > 0 && stats.reordered > 0);
    assert!(stats.corrupted > 0);
}

#[test]
fn counters_can_be_read_from_another_thread() {
    let (rec, _log) = Recorder::new();
    let mut inj = FaultInjector::new(rec, config("loss=1"));
    let counters = inj.counters();
    send_each(&mut inj, Instant::now(), &frames(7));
    let dropped = std::thread::spawn(move || counters.snapshot().dropped)
        .join()
        .unwrap();
    assert_eq!(dropped, 7);
}

#[test]
fn the_cli_syntax_round_trips() {
    let text = "loss=0.05,dup=0.01,reorder=0.02,corrupt=0.001,delay=1ms,jitter=200us,seed=7";
    let c: FaultConfig = text.parse().unwrap();
    assert_eq!(
        c,
        FaultConfig {
            loss: 0.05,
            dup: 0.01,
            reorder: 0.02,
            corrupt: 0.001,
            delay: Duration::from_millis(1),
            jitter: Duration::from_micros(200),
            seed: 7,
        }
    );
    assert_eq!(c.to_string(), text);
    for text in [
        "none",
        "loss=1",
        "delay=1500us",
        "jitter=3s",
        "delay=7ns,seed=18446744073709551615",
    ] {
        let c: FaultConfig = text.parse().unwrap();
        assert_eq!(c.to_string(), text);
        assert_eq!(c.to_string().parse::<FaultConfig>().unwrap(), c);
    }
    assert_eq!(config("delay=1.5ms").delay, Duration::from_micros(1500));
    assert_eq!(config(" loss = 0.5 , seed=1 ").loss, 0.5);
    assert_eq!(config(""), FaultConfig::default());
    assert!(FaultConfig::default().is_noop());
    assert_eq!(FaultConfig::default().to_string(), "none");
}

#[test]
fn bad_fault_settings_are_typed_errors() {
    let err = |s: &str| s.parse::<FaultConfig>().unwrap_err();
    assert!(matches!(
        err("loss=1.5"),
        FaultConfigError::BadProbability { key: "loss", .. }
    ));
    assert!(matches!(
        err("dup=-0.1"),
        FaultConfigError::BadProbability { key: "dup", .. }
    ));
    assert!(matches!(
        err("corrupt=NaN"),
        FaultConfigError::BadProbability { .. }
    ));
    assert!(matches!(
        err("delay=5"),
        FaultConfigError::BadDuration { key: "delay", .. }
    ));
    assert!(matches!(
        err("jitter=1h"),
        FaultConfigError::BadDuration { key: "jitter", .. }
    ));
    assert!(matches!(
        err("delay=-1ms"),
        FaultConfigError::BadDuration { .. }
    ));
    assert!(matches!(err("seed=-1"), FaultConfigError::BadSeed { .. }));
    assert!(matches!(
        err("drop=0.1"),
        FaultConfigError::UnknownKey { .. }
    ));
    assert!(matches!(err("loss"), FaultConfigError::NotKeyValue { .. }));
    assert!(matches!(
        err("loss=0.1,loss=0.2"),
        FaultConfigError::DuplicateKey { .. }
    ));
    assert_eq!(
        err("drop=0.1").to_string(),
        "unknown fault setting \"drop\" (expected loss, dup, reorder, corrupt, delay, jitter or seed)"
    );
}

#[test]
fn over_udp_exactly_the_frames_counted_as_sent_arrive() {
    let any = "127.0.0.1:0".parse().unwrap();
    let mut rx = UdpTransport::bind(any).unwrap();
    let tx = UdpTransport::bind(any).unwrap();
    let mut inj = FaultInjector::new(tx, config("loss=0.3,dup=0.2,seed=9"));
    assert_eq!(inj.link_params(), inj.inner().link_params());
    let to = rx.local_addr();
    let input = frames(200);
    let view: Vec<(PeerAddr, &[u8])> = input.iter().map(|f| (to, f.as_slice())).collect();
    assert_eq!(inj.send(&view).unwrap(), 200);
    let waker = Waker::new().unwrap();
    let mut batch = RecvBatch::new(64, 2048);
    let mut got = 0u64;
    let deadline = Instant::now() + Duration::from_secs(1);
    while got < inj.stats().sent && Instant::now() < deadline {
        rx.wait(&waker, Some(Duration::from_millis(20))).unwrap();
        got += rx.recv(&mut batch).unwrap() as u64;
    }
    let stats = inj.stats();
    assert_eq!(got, stats.sent);
    assert_eq!(stats.sent, 200 - stats.dropped + stats.duplicated);
}
