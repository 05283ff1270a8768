//! Helpers shared by the tests that run the `oxmem` binary: children that are killed when
//! dropped, waiting for a line of their output, and running a command with a time limit.

#![allow(dead_code)] // each test file uses a different part

pub mod netns;
pub mod pool;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// When this test process started its first child: echoed lines and test logs are stamped
/// with seconds since then, so that the children's logs and the test's own line up.
pub fn since_start() -> f64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// The binary under test: cargo's build of `oxmem`, or `OXMEM_TEST_BIN` when set (to run a
/// copied test binary, e.g. a long chaos loop, while the tree is being rebuilt).
pub fn oxmem() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("OXMEM_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_oxmem").to_owned())
    })
}

/// A child process whose stdout lines are collected by a thread. Killed and reaped on drop,
/// so a failing test leaves nothing running.
pub struct Running {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Running {
    /// Starts `cmd` with its stdout and stderr piped.
    pub fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // With OXMEM_TEST_ECHO_STDERR set, what children say on stderr is echoed as it comes
        // (for diagnosing long runs whose children are killed before they finish).
        let echo = std::env::var_os("OXMEM_TEST_ECHO_STDERR").is_some();
        since_start();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            for line in BufReader::new(&mut stderr).lines() {
                let Ok(line) = line else { break };
                if echo {
                    eprintln!("[{:9.3}] {line}", since_start());
                }
                s.push_str(&line);
                s.push('\n');
            }
            s
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
            stderr: Some(stderr),
        }
    }

    /// Waits for `count` stdout lines containing `needle` and returns them; panics with all
    /// output so far after `limit` or when the child exits first.
    pub fn wait_for(&mut self, needle: &str, count: usize, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        loop {
            let found: Vec<String> = self
                .seen
                .iter()
                .filter(|l| l.contains(needle))
                .cloned()
                .collect();
            if found.len() >= count {
                return found;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no {count} line(s) with {needle:?} within {limit:?}; stdout so far: {:?}",
                        self.seen
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    panic!(
                        "the child exited ({status:?}) before printing {needle:?}; \
                         stdout: {:?}",
                        self.seen
                    )
                }
            }
        }
    }

    /// Stdout lines seen so far.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `limit` for the child to exit by itself; then its status, the rest of its
    /// stdout and its stderr. Kills it after `limit`.
    pub fn finish(mut self, limit: Duration) -> (Option<ExitStatus>, Vec<String>, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break None;
                }
            }
        };
        let mut lines = std::mem::take(&mut self.seen);
        // The reader thread ends with the pipe; take what it still holds.
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(500)) {
            lines.push(l);
        }
        let stderr = self
            .stderr
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default();
        (status, lines, stderr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// What a finished command did.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

/// Runs `cmd` to completion, killing it (and failing) after `limit`.
pub fn run(cmd: Command, limit: Duration) -> Output {
    let started = Instant::now();
    let shown = format!("{cmd:?}");
    let running = Running::spawn(cmd);
    let (status, lines, stderr) = running.finish(limit);
    let Some(status) = status else {
        panic!("{shown} did not finish within {limit:?}; stdout {lines:?}, stderr {stderr}")
    };
    Output {
        status,
        stdout: lines.join("\n"),
        stderr,
        took: started.elapsed(),
    }
}

/// Runs `cmd`, which must succeed, and returns its stdout.
pub fn run_ok(cmd: Command, limit: Duration) -> String {
    let shown = format!("{cmd:?}");
    let out = run(cmd, limit);
    assert!(
        out.status.success(),
        "{shown} failed ({}): stdout {:?} stderr {:?}",
        out.status,
        out.stdout,
        out.stderr
    );
    out.stdout
}

/// The bytes of `hex`.
pub fn unhex(hex: &str) -> Vec<u8> {
    let hex = hex.trim();
    assert!(hex.len() % 2 == 0, "odd hex {hex:?}");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// `bytes` in hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Deterministic test bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}
