//! A node cut off from the coordinator fences itself: after a lease without heartbeats it
//! drops its coordinator grants, so when the partition heals a client that still uses the old
//! placement is denied instead of reading stale bytes; the node registers again under a new
//! epoch and takes new allocations. The node runs in its own network namespace behind a veth
//! pair (root needed: skipped with a printed reason otherwise).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::netns::{self, Hub, Namespace};
use common::pool::{
    Coord, Node, Rng, create_tenant, fast_failover, free_port, get_json, poll, temp_dir,
};
use common::{Running, oxmem};
use oxmem_api::{NodeHealth, NodeId, NodeInfo, RegionHealth, RegionInfo};
use oxmem_client::pool::parse_peer;
use oxmem_client::{AllocOptions, Error, NodeOptions, Pool, Region};

const MIB: u64 = 1 << 20;
const ADMIN: &str = "fencing-admin";
const NODE_TOKEN: &str = "fencing-node";
/// 10.93.0.0/16: this test's addresses.
const NET: u8 = 93;

fn alloc(pool: &Pool, bytes: u64) -> Region {
    pool.alloc(
        bytes,
        AllocOptions {
            replicas: Some(2),
            stripe_size: Some(MIB),
        },
    )
    .unwrap_or_else(|e| panic!("alloc of {bytes} bytes: {e}"))
}

fn holders(info: &RegionInfo) -> BTreeSet<NodeId> {
    info.stripes
        .iter()
        .flat_map(|s| s.copies.iter().map(|c| c.node_id.clone()))
        .collect()
}

#[test]
fn a_partitioned_node_fences_itself_and_never_serves_stale_data() {
    if let Some(why) = netns::unavailable() {
        println!("skipped: {why}");
        return;
    }
    let started = Instant::now();
    let hub = Hub::add(NET);
    let ns = Namespace::create(NET, 1, &hub);
    let dir = temp_dir("fencing");
    let listen = format!("{}:{}", hub.ip, free_port());
    let data_dir = dir.display().to_string();
    let coord = Coord::start(
        &listen,
        &[
            "--data-dir",
            &data_dir,
            "--admin-token",
            ADMIN,
            "--node-token",
            NODE_TOKEN,
            "--lease",
            "1s",
            "--session-lease",
            "60s",
            "--mover-ip",
            &hub.ip,
        ],
        true,
    );
    let url = coord.url.clone();
    // Two nodes in the root namespace, the victim in its own.
    let _others: Vec<Node> = (0..2)
        .map(|i| Node::start(&url, NODE_TOKEN, &format!("node{i}"), "16MiB"))
        .collect();
    let mut cmd = ns.command(oxmem());
    cmd.args(["node", "--listen", &format!("udp://{}:7447", ns.ip)])
        .args(["--admin", &format!("{}:7547", ns.ip)])
        .args(["--advertise", &ns.ip, "--capacity", "16MiB"])
        .args(["--coordinator", &url, "--node-token", NODE_TOKEN])
        .args(["--name", "victim"]);
    let mut victim_proc = Running::spawn(cmd);
    victim_proc.wait_for("registered as", 1, Duration::from_secs(20));
    let nodes: Vec<NodeInfo> = get_json(&url, "/v1/nodes", ADMIN).expect("nodes");
    let victim = nodes
        .iter()
        .find(|n| n.name == "victim")
        .expect("victim registered")
        .clone();

    let tenant = create_tenant(&url, ADMIN, "t", 64 * MIB);
    let options = fast_failover();
    let pool = Pool::connect(&url, &tenant.token, options).expect("connect");
    let region = alloc(&pool, 3 * MIB);
    let old = region.info();
    assert!(
        holders(&old).contains(&victim.node_id),
        "3 stripes x 2 copies over 3 nodes use the victim: {old:?}"
    );
    let mut rng = Rng::new(0xfe9c_0001);
    let first = rng.bytes(region.len() as usize);
    region.write(0, &first).expect("write");
    // The victim's copies under the old placement: (stripe offset, address there).
    let victim_peer = parse_peer(&victim.data_addrs[0]).expect("data address");
    let stale: Vec<(u64, u64)> = old
        .stripes
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            s.copies
                .iter()
                .filter(|c| c.node_id == victim.node_id)
                .map(move |c| (i as u64 * old.stripe_size, c.address))
        })
        .collect();
    let denied = std::cell::Cell::new(0u64);
    let probe = |what: &str| {
        // Through a live link: the one from before the partition failed meanwhile.
        let _ = pool.client().connect(victim_peer, NodeOptions::default());
        for &(at, addr) in &stale {
            let mut buf = vec![0u8; 4096];
            match pool.client().read(victim_peer, addr, &mut buf) {
                Err(Error::Denied { .. }) => denied.set(denied.get() + 1),
                Err(Error::Timeout | Error::LinkFailed(_)) => {}
                Err(e) => panic!("{what}: unexpected error reading the old copy: {e}"),
                Ok(()) => panic!(
                    "{what}: the fenced node served the old copy of offset {at:#x} at \
                     {addr:#x} (stale: {})",
                    buf[..] == first[at as usize..at as usize + 4096]
                ),
            }
            match pool.client().write(victim_peer, addr, &[0xee; 64]) {
                Err(Error::Denied { .. } | Error::Timeout | Error::LinkFailed(_)) => {}
                Err(e) => panic!("{what}: unexpected error writing the old copy: {e}"),
                Ok(()) => panic!("{what}: the fenced node took a write at {addr:#x}"),
            }
        }
    };
    println!("{} copies on the victim before the partition", stale.len());
    // Before the partition the node serves its copies (the probe's premise).
    let mut buf = vec![0u8; 4096];
    let (at, addr) = stale[0];
    pool.client()
        .read(victim_peer, addr, &mut buf)
        .expect("the victim serves its copy before the partition");
    assert_eq!(buf[..], first[at as usize..at as usize + 4096]);

    // Cut it off.
    ns.set_link(false, &hub);
    let cut = Instant::now();
    let path = format!("/v1/regions/{}", region.id());
    poll(Duration::from_secs(10), "the victim is marked down", || {
        let n: Vec<NodeInfo> = get_json(&url, "/v1/nodes", ADMIN).ok()?;
        n.iter()
            .any(|n| n.node_id == victim.node_id && n.health == NodeHealth::Down)
            .then_some(())
    });
    let healed = poll(
        Duration::from_secs(20),
        "the region heals elsewhere",
        || {
            let info: RegionInfo = get_json(&url, &path, &tenant.token).ok()?;
            (info.health == RegionHealth::Healthy && !holders(&info).contains(&victim.node_id))
                .then_some(info)
        },
    );
    let heal_after = cut.elapsed();
    // New data, where the coordinator now places it: the victim's copies are stale.
    let second = rng.bytes(region.len() as usize);
    poll(
        Duration::from_secs(10),
        "a write to the new placement",
        || region.write(0, &second).ok(),
    );
    std::thread::sleep(Duration::from_millis(1500)); // more than a lease: fenced by now
    victim_proc.wait_for("oxmem node: fenced", 1, Duration::from_secs(5));

    // Heal the partition and use the old placement at once, before and while the node
    // registers again.
    ns.set_link(true, &hub);
    let back = Instant::now();
    while back.elapsed() < Duration::from_secs(3) {
        probe("after the partition healed");
    }
    victim_proc.wait_for("registered as", 2, Duration::from_secs(10));
    let renewed = poll(Duration::from_secs(10), "the victim up again", || {
        let n: Vec<NodeInfo> = get_json(&url, "/v1/nodes", ADMIN).ok()?;
        n.into_iter()
            .find(|n| n.node_id == victim.node_id && n.health == NodeHealth::Up)
    });
    assert!(
        renewed.epoch > victim.epoch,
        "a new epoch: {} then {}",
        victim.epoch,
        renewed.epoch
    );
    probe("after registering again");
    assert!(
        denied.get() > 0,
        "the victim answered the old placement with denials"
    );
    let info: RegionInfo = get_json(&url, &path, &tenant.token).expect("region");
    assert_eq!(info.health, RegionHealth::Healthy);
    assert!(!holders(&info).contains(&victim.node_id));
    assert_eq!(holders(&info), holders(&healed));
    let mut got = vec![0u8; region.len() as usize];
    region.read(0, &mut got).expect("read");
    assert!(
        got == second,
        "the region holds the data written after the move"
    );

    // It serves new allocations: the emptiest node gets some of the next region.
    let fresh = poll(Duration::from_secs(10), "a region on the victim", || {
        let r = alloc(&pool, 3 * MIB);
        holders(&r.info()).contains(&victim.node_id).then_some(r)
    });
    let third = rng.bytes(fresh.len() as usize);
    // The client's link to the victim failed during the partition: the first write may fail
    // on it, and makes the pool connect again.
    poll(
        Duration::from_secs(10),
        "a write to a region on the victim",
        || fresh.write(0, &third).ok(),
    );
    let mut got = vec![0u8; fresh.len() as usize];
    fresh.read(0, &mut got).expect("read it back");
    assert!(got == third, "the new region round-trips");
    println!(
        "victim {} fenced: epoch {} -> {}, region healed elsewhere {heal_after:?} after the \
         cut; old placement denied for 3 s after the link came back ({} denials); {:?}",
        victim.node_id,
        victim.epoch,
        renewed.epoch,
        denied.get(),
        started.elapsed()
    );
    drop((fresh, region, pool));
    let _ = std::fs::remove_dir_all(&dir);
}
