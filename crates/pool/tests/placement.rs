//! The state machine's placement, quotas and refusals, without IO.

use std::collections::BTreeSet;

use oxmem_api::{
    AllocRequest, CreateTenant, ErrorCode, NodeId, OpenSession, RegionHealth, RegisterNode,
    SessionId, TenantId,
};
use oxmem_pool::state::{Batch, Limits, State};
use rand::{Rng, SeedableRng};

const MIB: u64 = 1 << 20;

fn pool(nodes: usize, capacity: u64) -> (State, TenantId, SessionId) {
    let mut st = State::new(Limits::default());
    let mut b = Batch::new();
    for i in 0..nodes {
        st.register_node(
            RegisterNode {
                name: format!("node{i}"),
                data_addrs: vec![format!("udp://10.0.0.{i}:7000")],
                admin_url: format!("http://10.0.0.{i}:7547"),
                capacity,
                boot_id: None,
            },
            0,
            &mut b,
        )
        .unwrap();
    }
    let (t, s) = tenant_and_session(&mut st, &mut b);
    (st, t, s)
}

/// Tenant `acme` (no quota to speak of) and a session of it.
fn tenant_and_session(st: &mut State, b: &mut Batch) -> (TenantId, SessionId) {
    let t = st
        .create_tenant(
            CreateTenant {
                name: "acme".into(),
                quota_bytes: u64::MAX,
            },
            "tok".into(),
            b,
        )
        .unwrap();
    let s = st
        .open_session(
            &t,
            OpenSession {
                client_addr: "udp://10.0.1.1:9000".into(),
            },
            0,
            b,
        )
        .unwrap();
    (t, s)
}

fn req(s: &SessionId, bytes: u64, replicas: Option<u32>) -> AllocRequest {
    AllocRequest {
        session_id: s.clone(),
        bytes,
        replicas,
        stripe_size: None,
    }
}

#[test]
fn alloc_on_a_3_node_pool_spreads_stripes_over_all_nodes() {
    let (mut st, t, s) = pool(3, 1 << 30);
    let id = st
        .alloc(&t, &req(&s, 10 * MIB + 5, None), &mut Batch::new())
        .unwrap();
    let info = st.region_info(st.region(id).unwrap());
    assert_eq!(info.stripes.len(), 11);
    assert_eq!(info.stripe_size, MIB);
    assert_eq!(info.stripes[10].len, 5);
    let nodes: BTreeSet<_> = info
        .stripes
        .iter()
        .map(|s| s.copies[0].node_id.clone())
        .collect();
    assert_eq!(nodes.len(), 3, "every node holds stripes");
    assert_eq!(info.nodes.len(), 3);
    // Consecutive stripes are on different nodes (large transfers use several at once).
    for w in info.stripes.windows(2) {
        assert_ne!(w[0].copies[0].node_id, w[1].copies[0].node_id);
    }
    // One extent per node: stripes on a node are contiguous, in stripe order.
    for n in &nodes {
        let addrs: Vec<u64> = info
            .stripes
            .iter()
            .filter(|s| &s.copies[0].node_id == n)
            .map(|s| s.copies[0].address)
            .collect();
        for w in addrs.windows(2) {
            assert_eq!(w[1], w[0] + MIB);
        }
    }
    assert_eq!(info.health, RegionHealth::Healthy);
}

#[test]
fn replicas_are_on_distinct_nodes_and_count_against_the_quota() {
    let (mut st, t, s) = pool(4, 1 << 30);
    let id = st
        .alloc(&t, &req(&s, 7 * MIB, Some(3)), &mut Batch::new())
        .unwrap();
    let info = st.region_info(st.region(id).unwrap());
    for stripe in &info.stripes {
        assert_eq!(stripe.copies.len(), 3);
        let nodes: BTreeSet<_> = stripe.copies.iter().map(|c| &c.node_id).collect();
        assert_eq!(
            nodes.len(),
            3,
            "stripe {} copies share a node",
            stripe.index
        );
    }
    let used: u64 = st.node_infos(0).iter().map(|n| n.used).sum();
    assert_eq!(used, 21 * MIB);
    assert_eq!(st.tenant_infos()[0].used_bytes, 21 * MIB);
}

#[test]
fn a_small_region_takes_a_small_extent() {
    let (mut st, t, s) = pool(3, 1 << 30);
    let id = st
        .alloc(&t, &req(&s, 100, Some(2)), &mut Batch::new())
        .unwrap();
    let info = st.region_info(st.region(id).unwrap());
    assert_eq!(info.stripes.len(), 1);
    assert_eq!(info.stripes[0].len, 100);
    let used: u64 = st.node_infos(0).iter().map(|n| n.used).sum();
    assert_eq!(used, 2 * 4096, "one aligned 4 KiB extent per copy");
}

#[test]
fn out_of_capacity_and_too_few_nodes() {
    let (mut st, t, s) = pool(2, 64 * MIB);
    let e = st
        .alloc(&t, &req(&s, MIB, Some(3)), &mut Batch::new())
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::OutOfCapacity);
    st.alloc(&t, &req(&s, 100 * MIB, None), &mut Batch::new())
        .unwrap();
    let e = st
        .alloc(&t, &req(&s, 30 * MIB, None), &mut Batch::new())
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::OutOfCapacity);
    // Nothing changed by the refusals.
    let used: u64 = st.node_infos(0).iter().map(|n| n.used).sum();
    assert_eq!(used, 100 * MIB);
}

#[test]
fn absurd_requests_are_refused() {
    let (mut st, t, s) = pool(3, 64 * MIB);
    let mut b = Batch::new();
    let bad =
        |st: &mut State, r: AllocRequest| st.alloc(&t, &r, &mut Batch::new()).unwrap_err().code;
    assert_eq!(bad(&mut st, req(&s, 0, None)), ErrorCode::BadRequest);
    assert_eq!(
        bad(&mut st, req(&s, 193 * MIB, None)),
        ErrorCode::BadRequest,
        "past the pool's capacity"
    );
    assert_eq!(
        bad(&mut st, req(&s, u64::MAX, Some(2))),
        ErrorCode::BadRequest,
        "overflow"
    );
    assert_eq!(bad(&mut st, req(&s, MIB, Some(0))), ErrorCode::BadRequest);
    assert_eq!(bad(&mut st, req(&s, MIB, Some(99))), ErrorCode::BadRequest);
    let mut r = req(&s, MIB, None);
    r.stripe_size = Some(1000);
    assert_eq!(
        bad(&mut st, r.clone()),
        ErrorCode::BadRequest,
        "unaligned stripe"
    );
    r.stripe_size = Some(0);
    assert_eq!(bad(&mut st, r.clone()), ErrorCode::BadRequest);
    r.stripe_size = Some(4096);
    r.bytes = 4096 * (1 << 16) + 1;
    assert_eq!(bad(&mut st, r), ErrorCode::BadRequest, "too many stripes");
    assert_eq!(
        bad(&mut st, req(&SessionId("s999".into()), MIB, None)),
        ErrorCode::UnknownSession
    );
    // Another tenant's session is unknown to this one.
    let t2 = st
        .create_tenant(
            CreateTenant {
                name: "other".into(),
                quota_bytes: 1 << 40,
            },
            "tok2".into(),
            &mut b,
        )
        .unwrap();
    assert_eq!(
        st.alloc(&t2, &req(&s, MIB, None), &mut b).unwrap_err().code,
        ErrorCode::UnknownSession
    );
    assert_eq!(
        st.open_session(
            &t,
            OpenSession {
                client_addr: "nonsense".into()
            },
            0,
            &mut b
        )
        .unwrap_err()
        .code,
        ErrorCode::BadRequest
    );
    let used: u64 = st.node_infos(0).iter().map(|n| n.used).sum();
    assert_eq!(used, 0);
}

#[test]
fn quota_is_enforced_with_replicas() {
    let (mut st, _, _) = pool(3, 1 << 30);
    let mut b = Batch::new();
    let t = st
        .create_tenant(
            CreateTenant {
                name: "small".into(),
                quota_bytes: 10 * MIB,
            },
            "x".into(),
            &mut b,
        )
        .unwrap();
    let s = st
        .open_session(
            &t,
            OpenSession {
                client_addr: "eth/02:00:00:00:00:01".into(),
            },
            0,
            &mut b,
        )
        .unwrap();
    let a = st.alloc(&t, &req(&s, 4 * MIB, Some(2)), &mut b).unwrap();
    let e = st
        .alloc(&t, &req(&s, 2 * MIB, Some(2)), &mut b)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::QuotaExceeded);
    st.alloc(&t, &req(&s, 2 * MIB, None), &mut b).unwrap();
    st.free_region(a, &mut b);
    st.alloc(&t, &req(&s, 2 * MIB, Some(2)), &mut b).unwrap();
}

#[test]
fn fragmentation_10000_random_allocs_and_frees_leak_nothing() {
    let cap = 4u64 << 30;
    let (mut st, t, s) = pool(3, cap);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    let mut live = Vec::new();
    let mut refused = 0;
    let mut b = Batch::new();
    for _ in 0..10_000 {
        let free: u64 = st.node_infos(0).iter().map(|n| n.capacity - n.used).sum();
        if !live.is_empty() && (rng.random_bool(0.45) || free < cap) {
            let id = live.swap_remove(rng.random_range(0..live.len()));
            for rel in st.free_region(id, &mut b) {
                st.complete_release(rel, &mut b);
            }
        } else {
            // Sizes from a few bytes to 256 MiB, log-uniform.
            let bytes = 1u64 << rng.random_range(2..28);
            let bytes = rng.random_range(bytes / 2..=bytes);
            let replicas = if rng.random_bool(0.3) { Some(2) } else { None };
            match st.alloc(&t, &req(&s, bytes, replicas), &mut b) {
                Ok(id) => live.push(id),
                Err(e) => {
                    assert_eq!(e.code, ErrorCode::OutOfCapacity);
                    refused += 1;
                }
            }
        }
    }
    assert!(refused < 500, "{refused} refusals");
    for id in live.drain(..) {
        for rel in st.free_region(id, &mut b) {
            st.complete_release(rel, &mut b);
        }
    }
    for i in 1..=3 {
        let (free, largest, blocks) = st.node_free(&NodeId(format!("n{i}"))).unwrap();
        assert_eq!(free, cap, "no leaked bytes on n{i}");
        assert_eq!((largest, blocks), (cap, 1), "free space coalesced on n{i}");
    }
    // Usable capacity after the run: one region of 95% of the pool fits.
    st.alloc(&t, &req(&s, cap * 3 / 100 * 95, None), &mut b)
        .unwrap();
}

#[test]
fn fragmentation_mid_run_keeps_most_free_space_usable() {
    let cap = 1u64 << 30;
    let (mut st, t, s) = pool(3, cap);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut live = Vec::new();
    let mut b = Batch::new();
    for _ in 0..10_000 {
        if live.len() > 40 || (!live.is_empty() && rng.random_bool(0.5)) {
            let id = live.swap_remove(rng.random_range(0..live.len()));
            for rel in st.free_region(id, &mut b) {
                st.complete_release(rel, &mut b);
            }
        } else if let Ok(id) = st.alloc(&t, &req(&s, rng.random_range(1..=32 * MIB), None), &mut b)
        {
            live.push(id);
        }
    }
    // With the live regions still there, free space is in few blocks: the largest free block
    // of each node is most of its free space.
    for i in 1..=3 {
        let (free, largest, _) = st.node_free(&NodeId(format!("n{i}"))).unwrap();
        assert!(
            largest * 100 >= free * 50,
            "n{i}: largest block {largest} of {free} free"
        );
    }
}

fn reregister(st: &mut State, i: usize, capacity: u64, boot_id: Option<&str>) {
    st.register_node(
        RegisterNode {
            name: format!("node{i}"),
            data_addrs: vec![format!("udp://10.0.0.{i}:7000")],
            admin_url: format!("http://10.0.0.{i}:7547"),
            capacity,
            boot_id: boot_id.map(str::to_string),
        },
        0,
        &mut Batch::new(),
    )
    .unwrap();
}

#[test]
fn a_node_that_restarted_within_its_lease_holds_no_healthy_copies() {
    let (mut st, t, s) = pool(3, 1 << 30);
    for i in 0..3 {
        reregister(&mut st, i, 1 << 30, Some("boot-1"));
    }
    let id = st
        .alloc(&t, &req(&s, 6 * MIB, Some(2)), &mut Batch::new())
        .unwrap();
    assert_eq!(
        st.region_info(st.region(id).unwrap()).health,
        RegionHealth::Healthy
    );
    // The same process registering again (it fenced itself after losing contact) kept its
    // memory: its copies stay healthy.
    reregister(&mut st, 0, 1 << 30, Some("boot-1"));
    assert_eq!(
        st.region_info(st.region(id).unwrap()).health,
        RegionHealth::Healthy
    );
    // A new process (another boot id) starts with empty memory, even though it was never
    // declared down: every copy on it is stale and must be copied again from the others.
    reregister(&mut st, 0, 1 << 30, Some("boot-2"));
    let info = st.region_info(st.region(id).unwrap());
    assert_eq!(info.health, RegionHealth::Degraded);
    let node0 = NodeId("n1".into());
    for stripe in &info.stripes {
        for c in &stripe.copies {
            assert_eq!(
                c.healthy,
                c.node_id != node0,
                "copy on {} of stripe {}",
                c.node_id,
                stripe.index
            );
        }
    }
}

/// A metadata store in a map: what a coordinator would find on restart.
#[derive(Default)]
struct Records(std::collections::BTreeMap<String, Vec<u8>>);

impl Records {
    fn commit(&mut self, b: Batch) {
        for c in b.into_changes() {
            match c {
                oxmem_pool::store::Change::Put { key, value } => {
                    self.0.insert(key, value);
                }
                oxmem_pool::store::Change::Delete { key } => {
                    self.0.remove(&key);
                }
            }
        }
    }

    /// A coordinator starting on these records at `now`.
    fn load(&mut self, now: u64) -> State {
        let records = self.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let (st, b) = State::load(Limits::default(), records, now).unwrap();
        self.commit(b);
        st
    }
}

fn register(st: &mut State, i: usize, now: u64, records: &mut Records) {
    let mut b = Batch::new();
    st.register_node(
        RegisterNode {
            name: format!("node{i}"),
            data_addrs: vec![format!("udp://10.0.0.{i}:7000")],
            admin_url: format!("http://10.0.0.{i}:7547"),
            capacity: 1 << 30,
            boot_id: Some(format!("boot-{i}")),
        },
        now,
        &mut b,
    )
    .unwrap();
    records.commit(b);
}

fn heartbeat(st: &mut State, i: usize, now: u64, records: &mut Records) {
    let mut b = Batch::new();
    st.heartbeat_node(&NodeId(format!("n{}", i + 1)), now, &mut b)
        .unwrap();
    records.commit(b);
}

/// A node that was declared down heartbeats: it is told to register again, and does (the
/// same process).
fn come_back(st: &mut State, i: usize, now: u64, records: &mut Records) {
    let e = st
        .heartbeat_node(&NodeId(format!("n{}", i + 1)), now, &mut Batch::new())
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownNode);
    register(st, i, now, records);
}

/// Per stripe, the nodes of its healthy copies.
fn healthy_nodes(st: &State, id: oxmem_api::RegionId) -> Vec<BTreeSet<String>> {
    st.region_info(st.region(id).unwrap())
        .stripes
        .iter()
        .map(|s| {
            s.copies
                .iter()
                .filter(|c| c.healthy)
                .map(|c| c.node_id.0.clone())
                .collect()
        })
        .collect()
}

/// The stripes of region `id` with no healthy copy.
fn lost_stripes(st: &State, id: oxmem_api::RegionId) -> Vec<usize> {
    healthy_nodes(st, id)
        .iter()
        .enumerate()
        .filter(|(_, h)| h.is_empty())
        .map(|(i, _)| i)
        .collect()
}

/// Three nodes, one region of 6 stripes with 2 replicas, every change recorded.
fn recorded_pool() -> (State, Records, oxmem_api::RegionId) {
    let mut st = State::new(Limits::default());
    let mut records = Records::default();
    for i in 0..3 {
        register(&mut st, i, 0, &mut records);
    }
    let mut b = Batch::new();
    let (t, s) = tenant_and_session(&mut st, &mut b);
    let id = st.alloc(&t, &req(&s, 6 * MIB, Some(2)), &mut b).unwrap();
    records.commit(b);
    (st, records, id)
}

const LEASE: u64 = 1000;

fn expire(st: &mut State, now: u64, records: &mut Records) -> Vec<NodeId> {
    let mut b = Batch::new();
    let down = st.expire_nodes(now, LEASE, &mut b);
    records.commit(b);
    down
}

#[test]
fn copies_that_went_down_current_come_back_to_a_restarted_coordinator() {
    let (mut st, mut records, id) = recorded_pool();
    // Nodes n1 and n2 stop heartbeating and are declared down together: the stripes whose
    // two copies are on them have no healthy copy (lost for now), but the copy that went down
    // last is current: no one could write anywhere else since.
    heartbeat(&mut st, 2, 5000, &mut records);
    let down = expire(&mut st, 5000, &mut records);
    assert_eq!(down.len(), 2);
    assert_eq!(
        st.region_info(st.region(id).unwrap()).health,
        RegionHealth::Lost
    );
    // The coordinator restarts and loads every node as up, with those copies down.
    let mut st = records.load(6000);
    assert_eq!(
        st.region_info(st.region(id).unwrap()).health,
        RegionHealth::Lost
    );
    // At its first heartbeat after the restart, a node holding copies marked down is told to
    // register again, and does, from the same process: what went down current on it is
    // current again.
    come_back(&mut st, 0, 6100, &mut records);
    // The other registers again by itself (it fenced itself).
    register(&mut st, 1, 6200, &mut records);
    let healthy = healthy_nodes(&st, id);
    assert!(
        healthy.iter().all(|h| !h.is_empty()),
        "a stripe is still lost: {healthy:?}"
    );
    // Where both copies were on n1 and n2, exactly one of them is current: the other went
    // down while it was still healthy, and writes may have reached only the first since.
    let info = st.region_info(st.region(id).unwrap());
    let both_down = info
        .stripes
        .iter()
        .filter(|s| s.copies.iter().all(|c| c.node_id.0 != "n3"))
        .count();
    assert!(both_down > 0, "no stripe had both copies on n1 and n2");
    for (s, h) in info.stripes.iter().zip(&healthy) {
        if s.copies.iter().all(|c| c.node_id.0 != "n3") {
            assert_eq!(h.len(), 1, "stripe {}: {h:?}", s.index);
        }
    }
}

#[test]
fn a_copy_that_missed_writes_is_never_current_again() {
    let (mut st, mut records, id) = recorded_pool();
    // n1 goes down first: writes go on to the other copy of each of its stripes.
    heartbeat(&mut st, 1, 5000, &mut records);
    heartbeat(&mut st, 2, 5000, &mut records);
    assert_eq!(
        expire(&mut st, 5000, &mut records),
        vec![NodeId("n1".into())]
    );
    // Then n2: stripes on n1 and n2 have no healthy copy left; n2's copy is the current one.
    heartbeat(&mut st, 2, 9000, &mut records);
    assert_eq!(
        expire(&mut st, 9000, &mut records),
        vec![NodeId("n2".into())]
    );
    let lost = lost_stripes(&st, id);
    assert!(!lost.is_empty(), "no stripe had both copies on n1 and n2");
    // n1 comes back with its memory: its copies of those stripes missed writes, so they stay
    // down, even though no other copy is healthy.
    come_back(&mut st, 0, 9100, &mut records);
    for &i in &lost {
        assert!(healthy_nodes(&st, id)[i].is_empty(), "stripe {i}");
    }
    // n2 comes back: its copies are current again; n1's stay stale.
    come_back(&mut st, 1, 9200, &mut records);
    for &i in &lost {
        assert_eq!(
            healthy_nodes(&st, id)[i],
            BTreeSet::from(["n2".to_string()]),
            "stripe {i}"
        );
    }
}

#[test]
fn memory_given_out_again_is_never_at_the_same_addresses() {
    // A client acting on an old placement (a stripe since moved, a region since freed) must
    // not reach memory the pool has since given to another region of the same client: every
    // extent gets data-path addresses of its own, never used before.
    let (mut st, t, s) = pool(2, 64 * MIB);
    let ranges = |st: &State, id| -> Vec<(String, u64, u64)> {
        st.region_info(st.region(id).unwrap())
            .stripes
            .iter()
            .flat_map(|s| {
                let len = s.len;
                s.copies
                    .iter()
                    .map(move |c| (c.node_id.0.clone(), c.address, len))
            })
            .collect()
    };
    let mut seen: Vec<(String, u64, u64)> = Vec::new();
    let mut bases: BTreeSet<(String, u64)> = BTreeSet::new();
    let mut reused_memory = 0;
    for round in 0..20 {
        let mut b = Batch::new();
        let id = st.alloc(&t, &req(&s, 4 * MIB, Some(2)), &mut b).unwrap();
        for e in &st.region(id).unwrap().extents {
            if !bases.insert((e.node_id.0.clone(), e.base)) {
                reused_memory += 1;
            }
            assert!(e.addr() >= 1 << 48, "round {round}: window {:#x}", e.addr());
        }
        for (node, at, len) in ranges(&st, id) {
            for (n, a, l) in &seen {
                assert!(
                    *n != node || at + len <= *a || a + l <= at,
                    "round {round}: {node} {at:#x}+{len:#x} overlaps {a:#x}+{l:#x}"
                );
            }
            seen.push((node, at, len));
        }
        for rel in st.free_region(id, &mut b) {
            st.complete_release(rel, &mut b);
        }
    }
    // The same memory was handed out again and again, at new addresses each time.
    assert!(reused_memory >= 19, "memory reused {reused_memory} times");
}

#[test]
fn re_replication_leaves_out_nodes_that_did_not_answer() {
    // A fourth node joins, then n1 goes down: its stripes need new copies.
    let n1_down = || {
        let (mut st, mut records, id) = recorded_pool();
        register(&mut st, 3, 0, &mut records);
        for i in 1..4 {
            heartbeat(&mut st, i, 5000, &mut records);
        }
        assert_eq!(
            expire(&mut st, 5000, &mut records),
            vec![NodeId("n1".into())]
        );
        (st, id)
    };
    // n4 (empty, so the first choice) just failed to answer: no copy goes there.
    let (mut st, id) = n1_down();
    let n4 = NodeId("n4".into());
    let plan = st
        .plan_repair(id, &BTreeSet::from([n4.clone()]), &mut Batch::new())
        .expect("a plan");
    assert!(plan.jobs.iter().all(|j| j.to_node.node_id != n4));
    assert!(!plan.jobs.is_empty());
    // With n2 left out instead, stripes whose only healthy copy is on n2 wait (no source),
    // and nothing is copied from or to n2.
    let (mut st, id) = n1_down();
    let n2 = NodeId("n2".into());
    let plan = st
        .plan_repair(id, &BTreeSet::from([n2.clone()]), &mut Batch::new())
        .expect("a plan");
    assert!(
        plan.jobs
            .iter()
            .all(|j| j.to_node.node_id != n2 && j.from_node.node_id != n2)
    );
    assert!(!plan.jobs.is_empty());
}

#[test]
fn copies_in_records_from_before_staleness_was_recorded_are_never_restored() {
    let (mut st, mut records, id) = recorded_pool();
    // n1 and n2 go down together: stripes with both copies there have none healthy.
    heartbeat(&mut st, 2, 5000, &mut records);
    expire(&mut st, 5000, &mut records);
    let lost = lost_stripes(&st, id);
    assert!(!lost.is_empty(), "no stripe had both copies on n1 and n2");
    // The records as an older coordinator wrote them: no `stale` field. Whether a copy went
    // down current is then unknown, so none is taken for current.
    for (key, value) in records.0.iter_mut() {
        if key.starts_with("region/") {
            let mut v: serde_json::Value = serde_json::from_slice(value).unwrap();
            for copies in v["stripes"].as_array_mut().unwrap() {
                for c in copies.as_array_mut().unwrap() {
                    c.as_object_mut().unwrap().remove("stale");
                }
            }
            *value = serde_json::to_vec(&v).unwrap();
        }
    }
    let mut st = records.load(6000);
    come_back(&mut st, 0, 6100, &mut records);
    come_back(&mut st, 1, 6200, &mut records);
    for &i in &lost {
        assert!(healthy_nodes(&st, id)[i].is_empty(), "stripe {i} restored");
    }
    // Stripes that kept a healthy copy on n3 are untouched.
    let healthy = healthy_nodes(&st, id);
    assert!(
        (0..healthy.len())
            .filter(|i| !lost.contains(i))
            .all(|i| healthy[i].contains("n3"))
    );
}
