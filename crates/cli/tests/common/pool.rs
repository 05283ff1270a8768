//! Helpers for the pool's end-to-end tests: `oxmem up`, `oxmem coord` and `oxmem node`
//! processes that are killed when dropped (node processes of `oxmem up` included), etcd,
//! direct HTTP calls to the coordinator, and a small deterministic random generator.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use oxmem_api::{ApiError, ClusterStatus, CreateTenant, NodeInfo, TenantCreated};

use super::{Running, oxmem, run_ok};

/// A fresh, empty directory under the cargo target's temporary directory.
pub fn temp_dir(name: &str) -> PathBuf {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "pool-e2e-{name}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    dir
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local address")
        .port()
}

/// Sends SIGKILL to `pid` (a process this test started). Returns whether `kill` succeeded.
pub fn kill9(pid: u32) -> bool {
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The text after `marker` in the first line of `lines` that contains it, up to the next
/// space.
fn after(lines: &[String], marker: &str) -> String {
    let line = lines
        .iter()
        .find(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("no line with {marker:?} in {lines:?}"));
    let rest = &line[line.find(marker).expect("found") + marker.len()..];
    rest.split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("nothing after {marker:?} in {line:?}"))
        .to_string()
}

/// A pool started by `oxmem up`: the coordinator in the `up` process, the nodes in child
/// processes of their own. On drop the node processes are killed first (SIGKILL leaves them
/// running otherwise: `up` only stops them when it ends by itself), then `up`.
pub struct Up {
    pub url: String,
    pub tenant_token: String,
    pub admin_token: String,
    /// Process ids of node0, node1, … in that order.
    pub node_pids: Vec<u32>,
    pub dir: PathBuf,
    up: Option<Running>,
}

impl Up {
    /// Runs `oxmem up --nodes N --capacity C` plus `extra` arguments and waits until it
    /// printed its tokens.
    pub fn start(nodes: usize, capacity: &str, extra: &[&str]) -> Up {
        let dir = temp_dir("up");
        let mut cmd = Command::new(oxmem());
        cmd.args(["up", "--nodes", &nodes.to_string(), "--capacity", capacity])
            .args(["--listen", "127.0.0.1:0", "--run-for", "120s"])
            .arg("--data-dir")
            .arg(&dir)
            .args(extra);
        let mut up = Running::spawn(cmd);
        // The pids come first; a failure later must still kill the nodes, so collect them as
        // they come.
        let mut this = Up {
            url: String::new(),
            tenant_token: String::new(),
            admin_token: String::new(),
            node_pids: Vec::new(),
            dir,
            up: None,
        };
        let pids = up.wait_for("is process", nodes, Duration::from_secs(20));
        this.node_pids = pids
            .iter()
            .map(|l| {
                after(std::slice::from_ref(l), "is process ")
                    .parse()
                    .expect("pid")
            })
            .collect();
        this.up = Some(up);
        let up = this.up.as_mut().expect("just set");
        up.wait_for("oxmem up: admin token", 1, Duration::from_secs(20));
        let seen = up.seen().to_vec();
        this.url = after(&seen, "oxmem up: coordinator ");
        this.tenant_token = after(&seen, "oxmem up: tenant token ");
        this.admin_token = after(&seen, "oxmem up: admin token ");
        this
    }

    /// The coordinator's view of the nodes.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        get_json(&self.url, "/v1/nodes", &self.admin_token).expect("GET /v1/nodes")
    }

    /// The process id of the node called `name` (node0, node1…).
    pub fn pid_of(&self, name: &str) -> u32 {
        let i: usize = name
            .strip_prefix("node")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("node name {name:?}"));
        self.node_pids[i]
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        for &pid in &self.node_pids {
            kill9(pid);
        }
        drop(self.up.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `oxmem coord` as a process of its own.
pub struct Coord {
    pub url: String,
    pub running: Running,
}

impl Coord {
    /// Starts `oxmem coord --listen LISTEN` with `args` and waits until it serves (with
    /// `--data-dir`) or, with `--etcd`, until it says it campaigns (`wait_leader` false) or
    /// serves as the leader (true).
    pub fn start(listen: &str, args: &[&str], wait_leader: bool) -> Coord {
        let mut cmd = Command::new(oxmem());
        cmd.args(["coord", "--listen", listen]).args(args);
        let mut running = Running::spawn(cmd);
        let url = if wait_leader {
            let lines = running.wait_for("serving http://", 1, Duration::from_secs(20));
            after(&lines, "serving ")
        } else {
            running.wait_for("campaigning", 1, Duration::from_secs(20));
            format!("http://{listen}")
        };
        Coord { url, running }
    }
}

/// `oxmem node` registered with a coordinator.
pub struct Node {
    pub name: String,
    pub running: Running,
}

impl Node {
    /// Starts a node of `capacity` that registers with `coordinator` as `name` and waits
    /// until it is registered.
    pub fn start(coordinator: &str, node_token: &str, name: &str, capacity: &str) -> Node {
        let mut cmd = Command::new(oxmem());
        cmd.args([
            "node",
            "--listen",
            "udp://127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ])
        .args(["--capacity", capacity, "--coordinator", coordinator])
        .args(["--node-token", node_token, "--name", name]);
        let mut running = Running::spawn(cmd);
        running.wait_for("registered as", 1, Duration::from_secs(20));
        Node {
            name: name.to_string(),
            running,
        }
    }
}

/// An etcd server on loopback (random ports, temporary data); killed on drop.
pub struct Etcd {
    pub url: String,
    _running: Running,
    dir: PathBuf,
}

impl Etcd {
    /// Starts etcd and waits until it answers; `None` (with the reason printed) when no
    /// `etcd` binary is installed.
    pub fn start() -> Option<Etcd> {
        if Command::new("etcd").arg("--version").output().is_err() {
            println!("skipped: etcd is not installed (apt-get install etcd-server)");
            return None;
        }
        let dir = temp_dir("etcd");
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut cmd = Command::new("etcd");
        cmd.arg("--name=default")
            .arg(format!("--data-dir={}", dir.join("data").display()))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=default={peer_url}"));
        let running = Running::spawn(cmd);
        let http = http();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if http
                .get(format!("{url}/health"))
                .send()
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            assert!(Instant::now() < deadline, "etcd did not start at {url}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(Etcd {
            url,
            _running: running,
            dir,
        })
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An HTTP client with a short timeout.
pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("HTTP client")
}

/// `GET base+path` with `token` (none when empty): the status and the body.
pub fn get(base: &str, path: &str, token: &str) -> (u16, String) {
    let mut req = http().get(format!("{base}{path}"));
    if !token.is_empty() {
        req = req.bearer_auth(token);
    }
    let resp = req
        .send()
        .unwrap_or_else(|e| panic!("GET {base}{path}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.text().unwrap_or_default())
}

/// `POST base+path` with a JSON body and `token` (none when empty).
pub fn post<T: serde::Serialize>(base: &str, path: &str, token: &str, body: &T) -> (u16, String) {
    let mut req = http().post(format!("{base}{path}")).json(body);
    if !token.is_empty() {
        req = req.bearer_auth(token);
    }
    let resp = req
        .send()
        .unwrap_or_else(|e| panic!("POST {base}{path}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.text().unwrap_or_default())
}

/// `GET base+path` decoded as `T`, or the coordinator's error.
pub fn get_json<T: serde::de::DeserializeOwned>(
    base: &str,
    path: &str,
    token: &str,
) -> Result<T, (u16, ApiError)> {
    let (status, body) = get(base, path, token);
    if (200..300).contains(&status) {
        Ok(serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e} in {body:?}")))
    } else {
        Err((
            status,
            serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("GET {path} ({status}): not an ApiError: {e} {body:?}")),
        ))
    }
}

/// Pool options for tests that kill nodes: data-path calls give up after 500 ms, so a client
/// notices a dead node (and fails over, or refreshes its placement) quickly.
#[allow(dead_code)] // not every test binary kills nodes
pub fn fast_failover() -> oxmem_client::PoolOptions {
    oxmem_client::PoolOptions {
        client: oxmem_client::ClientOptions {
            timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_millis(500),
            ..oxmem_client::ClientOptions::default()
        },
        ..oxmem_client::PoolOptions::default()
    }
}

/// Creates a tenant with the admin token.
pub fn create_tenant(base: &str, admin: &str, name: &str, quota: u64) -> TenantCreated {
    let (status, body) = post(
        base,
        "/v1/tenants",
        admin,
        &CreateTenant {
            name: name.into(),
            quota_bytes: quota,
        },
    );
    assert!(
        (200..300).contains(&status),
        "POST /v1/tenants: {status} {body}"
    );
    serde_json::from_str(&body).expect("TenantCreated")
}

/// `oxmem status --json` (the command, not the route).
pub fn status_json(base: &str, admin: &str) -> ClusterStatus {
    let mut cmd = Command::new(oxmem());
    cmd.args(["status", "--coordinator", base, "--token", admin, "--json"]);
    let out = run_ok(cmd, Duration::from_secs(10));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json: {e}: {out}"))
}

/// Polls `f` every 100 ms until it returns `Some`, for at most `limit`.
pub fn poll<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A small deterministic generator (SplitMix64), so a failing run can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(len);
        v
    }
}
