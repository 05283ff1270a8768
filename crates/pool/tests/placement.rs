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
    let t = st
        .create_tenant(
            CreateTenant {
                name: "acme".into(),
                quota_bytes: u64::MAX,
            },
            "tok".into(),
            &mut b,
        )
        .unwrap();
    let s = st
        .open_session(
            &t,
            OpenSession {
                client_addr: "udp://10.0.1.1:9000".into(),
            },
            0,
            &mut b,
        )
        .unwrap();
    (st, t, s)
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
