//! The etcd store and leader election against a real etcd, started by each test on loopback
//! (random ports, a temporary data directory) and killed at its end. Skipped, passing, when
//! no `etcd` binary is installed (`apt-get install etcd-server`).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use oxmem_pool::etcd::{EtcdConfig, EtcdLeadership};
use oxmem_pool::store::{Change, MetadataStore, StoreError};

/// An etcd server for one test; killed, and its data removed, when dropped.
struct Etcd {
    child: Child,
    dir: PathBuf,
    url: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Etcd {
    /// Starts etcd and waits until it answers; `None` when etcd is not installed.
    async fn start() -> Option<Self> {
        if Command::new("etcd").arg("--version").output().is_err() {
            println!("skipped: etcd not installed");
            return None;
        }
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "oxmem-etcd-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.join("etcd.log")).unwrap();
        let child = Command::new("etcd")
            .arg("--name=default")
            .arg(format!("--data-dir={}", dir.join("data").display()))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=default={peer_url}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        let etcd = Etcd { child, dir, url };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let ready = async {
                let mut c = etcd_client::Client::connect([etcd.url.as_str()], None).await?;
                c.get("ready?", None).await
            };
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), ready).await {
                return Some(etcd);
            }
            let log = std::fs::read_to_string(etcd.dir.join("etcd.log")).unwrap_or_default();
            assert!(Instant::now() < deadline, "etcd did not start:\n{log}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn config(&self, cluster: &str) -> EtcdConfig {
        let mut config = EtcdConfig::new(vec![self.url.clone()], cluster);
        config.lease_ttl = Duration::from_secs(2);
        config.request_timeout = Duration::from_secs(5);
        config
    }

    async fn leadership(&self, cluster: &str) -> EtcdLeadership {
        EtcdLeadership::connect(self.config(cluster)).await.unwrap()
    }

    async fn raw(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.url.as_str()], None)
            .await
            .unwrap()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn put(key: &str, value: &str) -> Change {
    Change::Put {
        key: key.into(),
        value: value.as_bytes().to_vec(),
    }
}

fn del(key: &str) -> Change {
    Change::Delete { key: key.into() }
}

fn records(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect()
}

async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {limit:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_under_the_prefix_only() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let a = etcd.leadership("alpha").await;
    let store = a.store();
    assert!(store.load_all().await.unwrap().is_empty());
    // Not campaigned: no writes.
    assert!(matches!(
        store.apply(vec![put("x", "1")]).await,
        Err(StoreError::NotLeader)
    ));

    a.campaign("a:1").await.unwrap();
    assert!(a.is_leader());
    assert_eq!(a.leader().await.unwrap().as_deref(), Some("a:1"));
    store
        .apply(vec![
            put("tenant/b", "B"),
            put("region/42", "R"),
            put("tenant/a", "A"),
        ])
        .await
        .unwrap();
    assert_eq!(
        store.load_all().await.unwrap(),
        records(&[("region/42", "R"), ("tenant/a", "A"), ("tenant/b", "B")])
    );
    // In one batch, the last change to a key wins, as with MemoryStore.
    store
        .apply(vec![
            del("tenant/a"),
            put("c", "1"),
            put("c", "2"),
            put("tenant/b", "B2"),
        ])
        .await
        .unwrap();
    store.apply(vec![put("d", "x"), del("d")]).await.unwrap();
    store.apply(vec![]).await.unwrap();
    let expect = records(&[("c", "2"), ("region/42", "R"), ("tenant/b", "B2")]);
    assert_eq!(store.load_all().await.unwrap(), expect);

    // Keys of other clusters, or next to the prefix, are not ours.
    let mut raw = etcd.raw().await;
    for key in [
        "/oxmem/alphabet/data/z",
        "/oxmem/alpha/datum",
        "/oxmem/alpha0",
        "/zzz",
        "/oxmem/beta/data/c",
    ] {
        raw.put(key, "foreign", None).await.unwrap();
    }
    assert_eq!(store.load_all().await.unwrap(), expect);
    // And ours are all under /oxmem/alpha/data/.
    let ours = raw
        .get(
            "/oxmem/alpha/data/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let keys: Vec<_> = ours
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        keys,
        [
            "/oxmem/alpha/data/c",
            "/oxmem/alpha/data/region/42",
            "/oxmem/alpha/data/tenant/b"
        ]
    );
    // Another cluster on the same etcd sees its own records only.
    let beta = etcd.leadership("beta").await;
    assert_eq!(
        beta.store().load_all().await.unwrap(),
        records(&[("c", "foreign")])
    );

    // Many records: load_all pages through them, still sorted.
    for chunk in 0..25 {
        let batch = (0..100)
            .map(|i| put(&format!("many/{:05}", chunk * 100 + i), "v"))
            .collect();
        store.apply(batch).await.unwrap();
    }
    let all = store.load_all().await.unwrap();
    assert_eq!(all.len(), 2500 + 3);
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0));
    a.resign().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_all_or_nothing() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let a = etcd.leadership("atom").await;
    let b = etcd.leadership("atom").await;
    a.campaign("a").await.unwrap();
    let store = a.store();
    store
        .apply(vec![put("k1", "old"), put("k2", "old")])
        .await
        .unwrap();
    let before = store.load_all().await.unwrap();

    // etcd refuses the whole transaction (over --max-txn-ops, 128): nothing of it is applied.
    let mut big = vec![put("k1", "new"), del("k2")];
    big.extend((0..200).map(|i| put(&format!("big/{i}"), "v")));
    assert!(matches!(
        store.apply(big).await,
        Err(StoreError::Backend(_))
    ));
    assert_eq!(store.load_all().await.unwrap(), before);

    // A follower's batch is fenced as a whole.
    let fenced = b
        .store()
        .apply(vec![put("k1", "b"), del("k2"), put("k3", "b")])
        .await;
    assert!(matches!(fenced, Err(StoreError::NotLeader)));
    assert_eq!(store.load_all().await.unwrap(), before);
    assert!(a.is_leader());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_and_failover_when_it_dies() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let a = Arc::new(etcd.leadership("fail").await);
    let b = Arc::new(etcd.leadership("fail").await);
    let spawn = |l: &Arc<EtcdLeadership>, name: &'static str| {
        let l = l.clone();
        tokio::spawn(async move { l.campaign(name).await })
    };
    let (mut ta, mut tb) = (spawn(&a, "a"), spawn(&b, "b"));

    // Exactly one wins; the other keeps waiting.
    let first = within(Duration::from_secs(5), "first leader", async {
        tokio::select! {
            r = &mut ta => { r.unwrap().unwrap(); "a" }
            r = &mut tb => { r.unwrap().unwrap(); "b" }
        }
    })
    .await;
    let (leader, follower, mut waiting) = if first == "a" { (a, b, tb) } else { (b, a, ta) };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(leader.is_leader());
    assert!(!follower.is_leader());
    assert!(!waiting.is_finished());
    assert_eq!(follower.leader().await.unwrap().as_deref(), Some(first));
    let old_store = leader.store();
    old_store.apply(vec![put("term", first)]).await.unwrap();

    // The leader dies: no resignation, its lease is no longer kept alive.
    drop(leader);
    let died = Instant::now();
    // Until its lease expires nobody else leads, so its writes are still safe and accepted.
    old_store.apply(vec![put("late", first)]).await.unwrap();
    within(Duration::from_secs(6), "takeover", &mut waiting)
        .await
        .unwrap()
        .unwrap();
    let took = died.elapsed();
    println!("takeover after {took:?}");
    assert!(follower.is_leader());
    let second = if first == "a" { "b" } else { "a" };
    assert_eq!(follower.leader().await.unwrap().as_deref(), Some(second));

    // The deposed leader's writes are fenced off; the new leader's go through.
    let stale = old_store
        .apply(vec![put("term", first), put("stale", "x")])
        .await;
    assert!(matches!(stale, Err(StoreError::NotLeader)), "{stale:?}");
    let store = follower.store();
    store.apply(vec![put("term", second)]).await.unwrap();
    assert_eq!(
        store.load_all().await.unwrap(),
        records(&[("late", first), ("term", second)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resign_hands_over_and_a_lost_key_is_noticed() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let a = Arc::new(etcd.leadership("resign").await);
    let b = Arc::new(etcd.leadership("resign").await);
    a.campaign("a").await.unwrap();
    let mut a_watch = a.subscribe();
    assert!(*a_watch.borrow());
    let mut b_watch = b.subscribe();
    assert!(!*b_watch.borrow());
    let tb = {
        let b = b.clone();
        tokio::spawn(async move { b.campaign("b").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!tb.is_finished());

    // Resigning hands over at once, well before a lease TTL.
    let start = Instant::now();
    a.resign().await.unwrap();
    assert!(!a.is_leader());
    within(
        Duration::from_secs(1),
        "a's watch",
        a_watch.wait_for(|l| !l),
    )
    .await
    .unwrap();
    within(Duration::from_secs(1), "b takes over", tb)
        .await
        .unwrap()
        .unwrap();
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(*b_watch.borrow_and_update());
    assert!(matches!(
        a.store().apply(vec![put("x", "a")]).await,
        Err(StoreError::NotLeader)
    ));
    b.store().apply(vec![put("x", "b")]).await.unwrap();

    // Someone deletes b's election key: b notices within the lease TTL and stops writing.
    let mut raw = etcd.raw().await;
    let deleted = raw
        .delete(
            "/oxmem/resign/election/",
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(deleted.deleted(), 1);
    within(
        Duration::from_secs(3),
        "b's watch",
        b_watch.wait_for(|l| !l),
    )
    .await
    .unwrap();
    assert!(!b.is_leader());
    assert!(matches!(
        b.store().apply(vec![put("x", "b2")]).await,
        Err(StoreError::NotLeader)
    ));
    assert_eq!(a.leader().await.unwrap(), None);

    // And can campaign again.
    within(Duration::from_secs(3), "b again", b.campaign("b"))
        .await
        .unwrap();
    b.store().apply(vec![put("x", "b3")]).await.unwrap();
    assert_eq!(a.store().load_all().await.unwrap(), records(&[("x", "b3")]));
    b.resign().await.unwrap();
    assert_eq!(a.leader().await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_campaign_withdraws() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let a = etcd.leadership("cancel").await;
    let b = etcd.leadership("cancel").await;
    let c = etcd.leadership("cancel").await;
    a.campaign("a").await.unwrap();
    // b gives up waiting.
    let gave_up = tokio::time::timeout(Duration::from_millis(300), b.campaign("b")).await;
    assert!(gave_up.is_err());
    a.resign().await.unwrap();
    // b is not leader behind its own back: nobody leads, and c wins at once.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(c.leader().await.unwrap(), None);
    within(Duration::from_secs(1), "c wins", c.campaign("c"))
        .await
        .unwrap();
    assert!(!b.is_leader());
    assert_eq!(b.leader().await.unwrap().as_deref(), Some("c"));
}
