//! Network namespaces for tests that cut a node off: each node in a namespace of its own
//! behind a veth pair, the coordinator and the clients in the root namespace at a /32 address
//! on `lo` that every node routes to (the layout of `scripts/bench-pool.sh`). Needs root;
//! everything is deleted on drop.

use std::process::{Command, Stdio};

/// Why namespaces cannot be used here, if they cannot.
pub fn unavailable() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok();
    let uid = uid.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if uid.as_deref() != Some("0") {
        return Some("not root (network namespaces and veth pairs need it)".into());
    }
    if Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        return Some("no `ip` command (apt-get install iproute2)".into());
    }
    None
}

/// Runs `ip ARGS`; whether it succeeded (its stderr is shown when not, unless `quiet`).
pub fn ip(args: &[&str], quiet: bool) -> bool {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    if !out.status.success() && !quiet {
        eprintln!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    out.status.success()
}

fn ip_ok(args: &[&str]) {
    assert!(ip(args, false), "ip {} failed", args.join(" "));
}

/// The root namespace's address `10.NET.0.1/32` on `lo`, removed on drop.
pub struct Hub {
    pub ip: String,
}

impl Hub {
    pub fn add(net: u8) -> Hub {
        let addr = format!("10.{net}.0.1");
        // Left over from a run that was killed: take it over.
        ip(&["addr", "del", &format!("{addr}/32"), "dev", "lo"], true);
        ip_ok(&["addr", "add", &format!("{addr}/32"), "dev", "lo"]);
        Hub { ip: addr }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        ip(
            &["addr", "del", &format!("{}/32", self.ip), "dev", "lo"],
            true,
        );
    }
}

/// A namespace with one veth pair: `10.NET.I.2` inside, `10.NET.I.1` outside, a route to the
/// hub through it.
pub struct Namespace {
    pub name: String,
    /// The veth end inside the namespace.
    pub inner: String,
    /// The veth end in the root namespace.
    pub outer: String,
    /// The address inside.
    pub ip: String,
}

impl Namespace {
    pub fn create(net: u8, index: u8, hub: &Hub) -> Namespace {
        let tag = format!("ox{}{net}x{index}", std::process::id() % 100_000);
        let ns = Namespace {
            name: tag.clone(),
            inner: format!("{tag}n"),
            outer: format!("{tag}r"),
            ip: format!("10.{net}.{index}.2"),
        };
        ip(&["netns", "del", &ns.name], true);
        ip(&["link", "del", &ns.outer], true);
        // A subnet left over from a killed run, on a veth of another name.
        let subnet = format!("10.{net}.{index}.0/24");
        ip(&["route", "del", &subnet], true);
        ip_ok(&["netns", "add", &ns.name]);
        ip_ok(&[
            "link", "add", &ns.outer, "type", "veth", "peer", "name", &ns.inner, "netns", &ns.name,
        ]);
        ip_ok(&[
            "addr",
            "add",
            &format!("10.{net}.{index}.1/24"),
            "dev",
            &ns.outer,
        ]);
        ip_ok(&["link", "set", &ns.outer, "up"]);
        ip_ok(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{}/24", ns.ip),
            "dev",
            &ns.inner,
        ]);
        ip_ok(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ip_ok(&["-n", &ns.name, "link", "set", &ns.inner, "up"]);
        ns.route(hub);
        ns
    }

    fn route(&self, hub: &Hub) {
        let via = self.ip.rsplit_once('.').expect("dotted").0.to_string() + ".1";
        ip(
            &[
                "-n",
                &self.name,
                "route",
                "replace",
                &format!("{}/32", hub.ip),
                "via",
                &via,
            ],
            false,
        );
    }

    /// Takes the inner interface down (a partition) or up again (restoring the route, which
    /// went with the link).
    pub fn set_link(&self, up: bool, hub: &Hub) {
        ip_ok(&[
            "-n",
            &self.name,
            "link",
            "set",
            &self.inner,
            if up { "up" } else { "down" },
        ]);
        if up {
            self.route(hub);
        }
    }

    /// A command run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        ip(&["netns", "del", &self.name], true);
        ip(&["link", "del", &self.outer], true);
    }
}
