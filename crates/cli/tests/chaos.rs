//! Chaos: a coordinator, four node processes and three client threads, each with its own
//! pool, under a seeded schedule of faults, with every read checked against a shadow model.
//!
//! - Links: nodes and clients inject loss, duplication, reordering and corruption at small
//!   rates on everything they send (corrupted UDP frames must be caught by the CRC).
//! - Faults, one at a time, each followed by waiting until the pool is whole again: a node
//!   SIGKILLed and restarted (same name and ports, empty memory), the coordinator SIGKILLed
//!   and restarted on its redb directory and port, a client that stops heartbeating (its
//!   session expires and its regions are freed), a loss burst (a node restarted with 20 %
//!   loss for a few seconds), and, as root, a partition (the node's interface taken down in
//!   its network namespace, then up again).
//! - Model: a write or atomic that returned Ok sets the bytes; one that failed makes them
//!   "either the old or the new value" until an acknowledged write covers them; every read
//!   must match on the bytes known.
//!
//! It prints operations done, faults injected (the frames the clients' links lost, duplicated,
//! reordered and corrupted included), bytes verified, mismatches and lost acknowledged
//! writes, and fails unless every fault kind was injected and nothing was wrong or lost.
//! For a missing acknowledged write it prints when it was acknowledged and the copies the
//! client knew then, beside the copies it was read from (`OXMEM_TEST_ECHO_STDERR=1` adds the
//! coordinator's and nodes' logs, stamped with the same clock).
//!
//! `OXMEM_CHAOS_SECS` (default 75: the bounded run `scripts/test.sh` does, about 2 minutes
//! in all) and `OXMEM_CHAOS_SEED` choose the run; `scripts/chaos.sh` runs it long, in
//! release mode, and `scripts/chaos-loop.sh` runs it again and again with new seeds.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::netns::{self, Hub, Namespace};
use common::pool::{Coord, Rng, create_tenant, free_port, get_json, kill9, poll, temp_dir};
use common::{Running, oxmem};
use oxmem_api::{ClusterStatus, NodeHealth};
use oxmem_client::pool::parse_peer;
use oxmem_client::{AllocOptions, ClientOptions, NodeOptions, Pool, PoolOptions, Region};
use oxmem_net::fault::FaultConfig;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const ADMIN: &str = "chaos-admin";
const NODE_TOKEN: &str = "chaos-node";
const NODES: usize = 4;
const CLIENTS: usize = 3;
/// 10.94.0.0/16: this test's addresses when it runs as root.
const NET: u8 = 94;
const LINK_FAULTS: &str = "loss=0.01,dup=0.01,reorder=0.01,corrupt=0.001";

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Where a node lives and how to start it again.
struct NodeSlot {
    name: String,
    ns: Option<Namespace>,
    ip: String,
    data_port: u16,
    admin_port: u16,
    running: Option<Running>,
}

impl NodeSlot {
    fn start(&mut self, url: &str, faults: &str) {
        for attempt in 0.. {
            let mut cmd = match &self.ns {
                Some(ns) => ns.command(oxmem()),
                None => std::process::Command::new(oxmem()),
            };
            cmd.args(["node", "--listen"])
                .arg(format!("udp://{}:{}", self.ip, self.data_port))
                .arg("--admin")
                .arg(format!("{}:{}", self.ip, self.admin_port))
                .args(["--advertise", &self.ip, "--capacity", "64MiB"])
                .args(["--coordinator", url, "--node-token", NODE_TOKEN])
                .args(["--name", &self.name, "--faults", faults]);
            let mut running = Running::spawn(cmd);
            // A port of the killed process may take a moment to free up.
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                running.wait_for("registered as", 1, Duration::from_secs(15));
            }));
            if ok.is_ok() {
                self.running = Some(running);
                return;
            }
            assert!(attempt < 3, "node {} does not start again", self.name);
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn kill(&mut self) {
        if let Some(r) = self.running.take() {
            kill9(r.id());
            drop(r);
        }
    }
}

/// What a byte may hold.
struct Shadow {
    data: Vec<u8>,
    /// The acknowledged operation that wrote each known byte (0: zero since allocation).
    writer: Vec<u64>,
    /// Bytes touched by failed operations: every value they may hold.
    unknown: HashMap<usize, Vec<u8>>,
    /// For each acknowledged operation: when, where, and the copies the client knew then
    /// (printed when its bytes are found missing).
    notes: HashMap<u64, String>,
}

impl Shadow {
    fn new(len: usize) -> Shadow {
        Shadow {
            data: vec![0; len],
            writer: vec![0; len],
            unknown: HashMap::new(),
            notes: HashMap::new(),
        }
    }

    fn acked(&mut self, at: usize, bytes: &[u8], op: u64, region: &Region) {
        let note = format!(
            "t={:.3} {at:#x}+{} knowing {}",
            common::since_start(),
            bytes.len(),
            view(region, at, bytes.len())
        );
        self.notes.insert(op, note);
        for (i, &b) in bytes.iter().enumerate() {
            self.data[at + i] = b;
            self.writer[at + i] = op;
            self.unknown.remove(&(at + i));
        }
    }

    fn failed(&mut self, at: usize, bytes: &[u8]) {
        for (i, &b) in bytes.iter().enumerate() {
            let c = self
                .unknown
                .entry(at + i)
                .or_insert_with(|| vec![self.data[at + i]]);
            if !c.contains(&b) {
                c.push(b);
            }
        }
    }

    fn known(&self, at: usize, len: usize) -> bool {
        (at..at + len).all(|i| !self.unknown.contains_key(&i))
    }

    /// Checks `got` read at `at`: (bytes verified, mismatched bytes, acknowledged operations
    /// whose bytes are gone).
    fn check(&self, at: usize, got: &[u8]) -> (u64, u64, BTreeSet<u64>) {
        let (mut verified, mut bad, mut lost) = (0, 0, BTreeSet::new());
        for (i, &g) in got.iter().enumerate() {
            let p = at + i;
            match self.unknown.get(&p) {
                Some(c) if c.contains(&g) => {}
                Some(_) => bad += 1,
                None if g == self.data[p] => verified += 1,
                None => {
                    bad += 1;
                    if self.writer[p] != 0 {
                        lost.insert(self.writer[p]);
                    }
                }
            }
        }
        (verified, bad, lost)
    }
}

#[derive(Default)]
struct Counts {
    ops: BTreeMap<&'static str, u64>,
    errors: BTreeMap<&'static str, u64>,
    verified: u64,
    mismatches: u64,
    lost_acked: u64,
    details: Vec<String>,
    /// Frames the clients' fault injectors dropped, duplicated, held back (reordered) and
    /// corrupted.
    link: [u64; 4],
}

impl Counts {
    /// Adds what `pool`'s fault injector did.
    fn link_faults(&mut self, pool: &Pool) {
        if let Some(f) = pool.client().fault_stats() {
            for (a, b) in
                self.link
                    .iter_mut()
                    .zip([f.dropped, f.duplicated, f.reordered, f.corrupted])
            {
                *a += b;
            }
        }
    }

    fn op(&mut self, kind: &'static str, ok: bool) {
        *self.ops.entry(kind).or_default() += 1;
        if !ok {
            *self.errors.entry(kind).or_default() += 1;
        }
    }

    /// Counts the result of [`Shadow::check`] on bytes read from `region` at `at`.
    fn checked(
        &mut self,
        what: String,
        (verified, bad, lost): (u64, u64, BTreeSet<u64>),
        shadow: &Shadow,
        region: &Region,
        at: usize,
        len: usize,
    ) {
        self.verified += verified;
        self.mismatches += bad;
        self.lost_acked += lost.len() as u64;
        if bad > 0 && self.details.len() < 20 {
            let notes: Vec<String> = lost
                .iter()
                .map(|op| format!("op {op:#x} {}", shadow.notes.get(op).map_or("?", |s| s)))
                .collect();
            let line = format!(
                "t={:.3} {what}: {bad} bytes differ, reading from {}; lost acked ops {notes:?}",
                common::since_start(),
                view(region, at, len)
            );
            eprintln!("{line}");
            self.details.push(line);
        }
    }

    fn merge(&mut self, o: Counts) {
        for (k, v) in o.ops {
            *self.ops.entry(k).or_default() += v;
        }
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.verified += o.verified;
        self.mismatches += o.mismatches;
        self.lost_acked += o.lost_acked;
        self.details.extend(o.details);
        for (a, b) in self.link.iter_mut().zip(o.link) {
            *a += b;
        }
    }
}

fn client_options(seed: u64) -> PoolOptions {
    let mut faults: FaultConfig = LINK_FAULTS.parse().expect("fault spec");
    faults.seed = seed;
    PoolOptions {
        client: ClientOptions {
            timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_millis(500),
            faults: Some(faults),
            ..ClientOptions::default()
        },
        ..PoolOptions::default()
    }
}

fn connect(url: &str, token: &str, seed: u64) -> Pool {
    poll(Duration::from_secs(20), "a pool session", || {
        Pool::connect(url, token, client_options(seed)).ok()
    })
}

/// One client: random allocations, frees, writes, reads and atomics on its own regions.
fn client(
    id: usize,
    url: String,
    token: String,
    seed: u64,
    stop: Arc<AtomicBool>,
    kill: Arc<AtomicBool>,
) -> Counts {
    let mut rng = Rng::new(seed);
    let mut counts = Counts::default();
    let mut pool = connect(&url, &token, seed);
    let mut regions: Vec<(Region, Shadow)> = Vec::new();
    let mut op_id = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if kill.swap(false, Ordering::Relaxed) {
            // Die: no more heartbeats; the coordinator frees the regions when the session
            // lease runs out.
            pool.stop_heartbeat();
            let freed = poll(
                Duration::from_secs(20),
                "the dead session's regions freed",
                || pool.regions().ok().filter(|r| r.is_empty()),
            );
            assert!(freed.is_empty());
            counts.op("session expired", true);
            for (r, _) in regions.drain(..) {
                std::mem::forget(r); // its Drop would free it: it is gone already
            }
            counts.link_faults(&pool);
            drop(pool);
            pool = connect(&url, &token, rng.next_u64());
            continue;
        }
        let roll = rng.below(100);
        if regions.len() < 2 || (roll < 3 && regions.len() < 4) {
            let stripes = 2 + rng.below(7);
            let r = pool.alloc(
                stripes * 64 * KIB,
                AllocOptions {
                    replicas: Some(2),
                    stripe_size: Some(64 * KIB),
                },
            );
            counts.op("alloc", r.is_ok());
            if let Ok(r) = r {
                let len = r.len() as usize;
                regions.push((r, Shadow::new(len)));
            } else {
                std::thread::sleep(Duration::from_millis(100));
            }
            continue;
        }
        if roll < 5 {
            let (r, _) = regions.swap_remove(rng.below(regions.len() as u64) as usize);
            counts.op("free", r.free().is_ok());
            continue;
        }
        let i = rng.below(regions.len() as u64) as usize;
        let (region, shadow) = &mut regions[i];
        let len = shadow.data.len();
        op_id += 1;
        let op = (id as u64) << 48 | op_id;
        if roll < 45 {
            let n = 1 + rng.below(8 * KIB) as usize;
            let at = rng.below((len - n) as u64 + 1) as usize;
            let bytes = rng.bytes(n);
            match region.write(at as u64, &bytes) {
                Ok(()) => {
                    counts.op("write", true);
                    shadow.acked(at, &bytes, op, region);
                }
                Err(_) => {
                    counts.op("write", false);
                    shadow.failed(at, &bytes);
                }
            }
        } else if roll < 85 {
            let n = 1 + rng.below(16 * KIB) as usize;
            let at = rng.below((len - n) as u64 + 1) as usize;
            let mut buf = vec![0u8; n];
            let r = region.read(at as u64, &mut buf);
            counts.op("read", r.is_ok());
            if r.is_ok() {
                let what = format!("client {id} region {} read {at:#x}+{n}", region.id());
                counts.checked(what, shadow.check(at, &buf), shadow, region, at, n);
            }
        } else {
            let at = 8 * rng.below((len / 8) as u64) as usize;
            if !shadow.known(at, 8) {
                // Copies may differ there: make the word known again first.
                let bytes = rng.bytes(8);
                let ok = region.write(at as u64, &bytes).is_ok();
                counts.op("write", ok);
                if ok {
                    shadow.acked(at, &bytes, op, region);
                } else {
                    shadow.failed(at, &bytes);
                }
                continue;
            }
            let v = rng.next_u64() >> 8;
            let cur = u64::from_le_bytes(shadow.data[at..at + 8].try_into().expect("8"));
            match region.fetch_add(at as u64, v) {
                Ok(old) => {
                    counts.op("fetch_add", true);
                    let what = format!("client {id} region {} fetch_add {at:#x}", region.id());
                    counts.checked(
                        what,
                        shadow.check(at, &old.to_le_bytes()),
                        shadow,
                        region,
                        at,
                        8,
                    );
                    shadow.acked(at, &old.wrapping_add(v).to_le_bytes(), op, region);
                }
                Err(_) => {
                    counts.op("fetch_add", false);
                    shadow.failed(at, &cur.wrapping_add(v).to_le_bytes());
                }
            }
        }
    }
    // Everything once more, whole regions, when the pool is whole again.
    for (region, shadow) in &regions {
        let mut buf = vec![0u8; shadow.data.len()];
        let mut last = None;
        for _ in 0..40 {
            match region.read(0, &mut buf) {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) => {
                    // Diagnosis: connect to every node of the region by hand.
                    for n in region.info().nodes {
                        let peer = parse_peer(&n.data_addrs[0]).expect("address");
                        let r = pool.client().connect(peer, NodeOptions::default());
                        if r.is_err() {
                            eprintln!("client {id}: connect {peer:?}: {r:?} after {e}");
                        }
                    }
                    last = Some(e)
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        counts.op("final read", last.is_none());
        if let Some(e) = last {
            diagnose(&url, region, &pool);
            panic!(
                "client {id}: region {} cannot be read at the end: {e}; {:?}",
                region.id(),
                region.info()
            );
        }
        let what = format!("client {id} region {} final read", region.id());
        let len = buf.len();
        counts.checked(what, shadow.check(0, &buf), shadow, region, 0, len);
    }
    for (r, _) in regions {
        let _ = r.free();
    }
    counts.link_faults(&pool);
    let _ = pool.close();
    counts
}

/// The copies of the stripes under `[at, at + len)` as the client knows them now:
/// `s3:[n1@0x10000 healthy, n4@0x0 filling]`.
fn view(region: &Region, at: usize, len: usize) -> String {
    let info = region.info();
    let first = at as u64 / info.stripe_size;
    let last = (at + len.max(1) - 1) as u64 / info.stripe_size;
    info.stripes
        .iter()
        .filter(|s| (first..=last).contains(&s.index))
        .map(|s| {
            let copies: Vec<String> = s
                .copies
                .iter()
                .map(|c| {
                    let h = if c.healthy { "healthy" } else { "not healthy" };
                    format!("{}@{:#x} {h}", c.node_id, c.address)
                })
                .collect();
            format!("s{}:[{}]", s.index, copies.join(", "))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Prints, for every copy of a region, what its node's grant table holds over that copy's
/// range, beside the coordinator's view of the node (for a read that failed at the end).
fn diagnose(url: &str, region: &Region, pool: &Pool) {
    let info = region.info();
    let nodes: Vec<oxmem_api::NodeInfo> = get_json(url, "/v1/nodes", ADMIN).unwrap_or_default();
    let known =
        get_json::<oxmem_api::RegionInfo>(url, &format!("/v1/regions/{}", info.region_id), ADMIN);
    eprintln!(
        "region {} of session {}: at the coordinator: {:?}",
        info.region_id,
        pool.session(),
        known.map(|r| r.health)
    );
    for n in &nodes {
        eprintln!(
            "  node {} {} {:?} epoch {} admin {}",
            n.node_id, n.name, n.health, n.epoch, n.admin_url
        );
    }
    for s in &info.stripes {
        for c in &s.copies {
            let Some(n) = nodes.iter().find(|n| n.node_id == c.node_id) else {
                continue;
            };
            let grants: Vec<serde_json::Value> =
                get_json(&n.admin_url, "/v1/grants", NODE_TOKEN).unwrap_or_default();
            let covering: Vec<String> = grants
                .iter()
                .filter(|g| {
                    let len = g["len"].as_u64().unwrap_or(0);
                    let addr = g["addr"].as_u64().or(g["base"].as_u64()).unwrap_or(0);
                    addr <= c.address && c.address < addr + len
                })
                .map(|g| g.to_string())
                .collect();
            eprintln!(
                "  stripe {} copy {}@{:#x} healthy {}: node grants there: {covering:?}",
                s.index, c.node_id, c.address, c.healthy
            );
        }
    }
}

/// Whether every node is up and no stripe is degraded.
fn whole(url: &str) -> bool {
    get_json::<ClusterStatus>(url, "/v1/status", ADMIN).is_ok_and(|s| {
        s.nodes.len() == NODES
            && s.nodes.iter().all(|n| n.health == NodeHealth::Up)
            && s.degraded_stripes == 0
    })
}

fn wait_whole(url: &str, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !whole(url) {
        if std::time::Instant::now() > deadline {
            // Say what is missing before failing.
            match get_json::<ClusterStatus>(url, "/v1/status", ADMIN) {
                Ok(s) => {
                    for n in &s.nodes {
                        eprintln!(
                            "  node {} {:?} epoch {} used {}",
                            n.name, n.health, n.epoch, n.used
                        );
                    }
                    eprintln!("  degraded stripes {}", s.degraded_stripes);
                    for r in &s.regions {
                        eprintln!(
                            "  region {} {:?} replicas {}",
                            r.region_id, r.health, r.replicas
                        );
                    }
                }
                Err(e) => eprintln!("  status: {e:?}"),
            }
            panic!("{what}: the pool was not whole within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn node_down(url: &str, name: &str) -> bool {
    get_json::<ClusterStatus>(url, "/v1/status", ADMIN).is_ok_and(|s| {
        s.nodes
            .iter()
            .any(|n| n.name == name && n.health == NodeHealth::Down)
    })
}

#[test]
fn chaos() {
    let secs = env_u64("OXMEM_CHAOS_SECS").unwrap_or(75);
    let seed = env_u64("OXMEM_CHAOS_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    println!("chaos: {secs} s, OXMEM_CHAOS_SEED={seed}");
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let netns_skip = netns::unavailable();
    let hub = netns_skip.is_none().then(|| Hub::add(NET));
    let host = hub
        .as_ref()
        .map_or("127.0.0.1".to_string(), |h| h.ip.clone());
    let dir = temp_dir("chaos");
    let listen = format!("{host}:{}", free_port());
    let data_dir = dir.display().to_string();
    let coord_args = [
        "--data-dir",
        &data_dir,
        "--admin-token",
        ADMIN,
        "--node-token",
        NODE_TOKEN,
        "--lease",
        "1s",
        "--session-lease",
        "2s",
        "--mover-ip",
        &host,
    ];
    let mut coord = Some(Coord::start(&listen, &coord_args, true));
    let url = coord.as_ref().expect("started").url.clone();
    let mut nodes: Vec<NodeSlot> = (0..NODES)
        .map(|i| {
            let ns = hub.as_ref().map(|h| Namespace::create(NET, i as u8 + 1, h));
            let (ip, data_port, admin_port) = match &ns {
                Some(ns) => (ns.ip.clone(), 7447, 7547),
                None => ("127.0.0.1".to_string(), free_port(), free_port()),
            };
            NodeSlot {
                name: format!("node{i}"),
                ns,
                ip,
                data_port,
                admin_port,
                running: None,
            }
        })
        .collect();
    let faults = |rng: &mut Rng, loss: &str| format!("{loss},seed={}", rng.next_u64() >> 1);
    for n in &mut nodes {
        let f = faults(&mut rng, LINK_FAULTS);
        n.start(&url, &f);
    }
    wait_whole(&url, "all nodes up");

    let stop = Arc::new(AtomicBool::new(false));
    let kills: Vec<Arc<AtomicBool>> = (0..CLIENTS)
        .map(|_| Arc::new(AtomicBool::new(false)))
        .collect();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let tenant = create_tenant(&url, ADMIN, &format!("client{i}"), 64 * MIB);
            let (url, stop, kill) = (url.clone(), stop.clone(), kills[i].clone());
            let s = rng.next_u64();
            std::thread::spawn(move || client(i, url, tenant.token, s, stop, kill))
        })
        .collect();

    let mut kinds = vec!["node kill", "coordinator kill", "client kill", "loss burst"];
    match &netns_skip {
        None => kinds.push("partition"),
        Some(why) => println!("skipped: partition faults: {why}"),
    }
    let mut injected: BTreeMap<&str, u64> = BTreeMap::new();
    let deadline = started + Duration::from_secs(secs);
    let mut round = 0usize;
    let recoveries = AtomicU64::new(0);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500 + rng.below(1000)));
        // Every kind once first, then at random.
        let kind = if round < kinds.len() {
            kinds[round]
        } else {
            kinds[rng.below(kinds.len() as u64) as usize]
        };
        round += 1;
        let victim = rng.below(NODES as u64) as usize;
        let at = started.elapsed();
        match kind {
            "node kill" => {
                nodes[victim].kill();
                // Restarted only once the coordinator has noticed: a node that comes back
                // empty within its lease would be taken for one that kept its memory.
                poll(Duration::from_secs(10), "the killed node down", || {
                    node_down(&url, &nodes[victim].name).then_some(())
                });
                let f = faults(&mut rng, LINK_FAULTS);
                nodes[victim].start(&url, &f);
            }
            "coordinator kill" => {
                let c = coord.take().expect("running");
                kill9(c.running.id());
                drop(c);
                std::thread::sleep(Duration::from_millis(rng.below(1500)));
                coord = Some(Coord::start(&listen, &coord_args, true));
            }
            "client kill" => {
                kills[rng.below(CLIENTS as u64) as usize].store(true, Ordering::Relaxed);
            }
            "loss burst" => {
                nodes[victim].kill();
                poll(Duration::from_secs(10), "the killed node down", || {
                    node_down(&url, &nodes[victim].name).then_some(())
                });
                let f = faults(&mut rng, "loss=0.2,dup=0.01,reorder=0.01,corrupt=0.001");
                nodes[victim].start(&url, &f);
                std::thread::sleep(Duration::from_secs(3));
                nodes[victim].kill();
                poll(Duration::from_secs(10), "the lossy node down", || {
                    node_down(&url, &nodes[victim].name).then_some(())
                });
                let f = faults(&mut rng, LINK_FAULTS);
                nodes[victim].start(&url, &f);
            }
            "partition" => {
                let (ns, hub) = (
                    nodes[victim].ns.as_ref().expect("namespace"),
                    hub.as_ref().expect("hub"),
                );
                ns.set_link(false, hub);
                std::thread::sleep(Duration::from_millis(1500 + rng.below(2000)));
                ns.set_link(true, hub);
            }
            _ => unreachable!(),
        }
        *injected.entry(kind).or_default() += 1;
        match kind {
            "node kill" | "loss burst" | "partition" => {
                println!("{at:>8.1?}: {kind} (node{victim})")
            }
            _ => println!("{at:>8.1?}: {kind}"),
        }
        wait_whole(&url, &format!("the pool whole after {kind}"));
        recoveries.fetch_add(1, Ordering::Relaxed);
    }
    wait_whole(&url, "the pool whole at the end");
    stop.store(true, Ordering::Relaxed);
    let mut counts = Counts::default();
    for c in clients {
        counts.merge(c.join().expect("client thread"));
    }
    println!("operations (errors):");
    for (k, v) in &counts.ops {
        println!(
            "  {k:<16} {v:>8} ({})",
            counts.errors.get(k).copied().unwrap_or(0)
        );
    }
    println!("faults injected:");
    for k in &kinds {
        println!("  {k:<16} {:>8}", injected.get(k).copied().unwrap_or(0));
    }
    if let Some(why) = &netns_skip {
        println!("  {:<16} skipped: {why}", "partition");
    }
    let link = ["lost", "duplicated", "reordered", "corrupted"];
    for (k, n) in link.iter().zip(counts.link) {
        println!("  {:<16} {n:>8}", format!("frames {k}"));
    }
    println!(
        "bytes verified {}, mismatches {}, lost acknowledged writes {}; seed {seed}; {:?}",
        counts.verified,
        counts.mismatches,
        counts.lost_acked,
        started.elapsed()
    );
    for d in &counts.details {
        println!("  {d}");
    }
    assert_eq!(counts.mismatches, 0, "mismatches (seed {seed})");
    assert_eq!(
        counts.lost_acked, 0,
        "lost acknowledged writes (seed {seed})"
    );
    for k in &kinds {
        assert!(injected.get(k).is_some_and(|&n| n > 0), "no {k} injected");
    }
    for (k, n) in link.iter().zip(counts.link) {
        assert!(n > 0, "no frames {k} on the clients' links");
    }
    assert!(counts.verified > 0, "nothing verified");
    drop(nodes);
    drop(coord);
    let _ = std::fs::remove_dir_all(&dir);
}
