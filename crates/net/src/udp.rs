//! The UDP transport: each TLoE frame (with its CRC-32 trailer, which the link layer adds and
//! checks) travels as the whole payload of one UDP datagram.
//!
//! oxmem nodes listen on UDP port [`crate::DEFAULT_UDP_PORT`] (7447) unless told otherwise;
//! this module binds exactly the address it is given (port 0 picks a free port).
//!
//! Frames go out with sendmmsg(2) and come in with recvmmsg(2), up to
//! [`BATCH_PER_SYSCALL`] per call, each datagram to or from its
//! own peer. An IPv6 socket bound to `[::]` also reaches IPv4 peers (as IPv4-mapped
//! addresses, shown to callers as plain IPv4).
//!
//! UDP GSO (UDP_SEGMENT) is not used (yet). Measured on loopback (2-vCPU VM, Linux 6.18) with
//! `cargo test -p oxmem-net --release --lib -- --ignored --nocapture measure_syscall_batching`,
//! sender cost per datagram, typical of three rounds:
//!
//! | datagram | sendto | sendmmsg (64/call) | GSO (one peer, equal sizes) |
//! |---|---|---|---|
//! | 64 B | ~3.0 µs | ~3.0 µs | ~0.57 µs (64 segments/call) |
//! | 8 KiB | ~3.3–4.2 µs | ~3.3–4.5 µs | ~1.3–2.4 µs (7 segments/call; noisy) |
//!
//! Receiving costs ~0.6 µs (64 B) and ~1.2–1.9 µs (8 KiB) per datagram with recv or recvmmsg
//! alike. On loopback the network stack, not the syscall, dominates, so sendmmsg gains little
//! here (it should matter more where syscalls cost more; not measured). GSO pays only for runs
//! of equal-sized datagrams to one peer, while link-layer frames vary in size and destination,
//! so it is left for when the engine produces such runs.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use oxmem_link::Integrity;

use crate::sys::{self, UdpRecvMeta};
use crate::{LinkParams, PeerAddr, RecvBatch, Transport, Waker};

/// Messages moved by one sendmmsg(2) or recvmmsg(2).
pub const BATCH_PER_SYSCALL: usize = sys::MMSG_BATCH;

/// Largest datagram [`UdpConfig::max_datagram`] accepts (a UDP payload can be 65,507 bytes
/// over IPv4; 65,000 leaves room for IP options and IPv6 extension headers).
pub const MAX_DATAGRAM: usize = 65_000;

/// How a [`UdpTransport`] is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpConfig {
    /// Largest datagram sent or expected, CRC trailer included; the TLoE frame may be 4 bytes
    /// less. Default [`MAX_DATAGRAM`]: OmniXtend has no way to tell a peer the largest frame it
    /// takes, so both ends of a UDP path must agree, and the largest is what loopback and
    /// jumbo-less paths (by IP fragmentation) both carry. At most [`MAX_DATAGRAM`].
    pub max_datagram: usize,
    /// Socket receive and send buffer to ask for, in bytes. Default 8 MiB. The kernel caps
    /// it at `net.core.rmem_max`/`wmem_max` unless the process has CAP_NET_ADMIN.
    pub socket_buffer: usize,
}

impl Default for UdpConfig {
    fn default() -> Self {
        UdpConfig {
            max_datagram: MAX_DATAGRAM,
            socket_buffer: 8 << 20,
        }
    }
}

/// TLoE frames in UDP datagrams on one non-blocking socket.
#[derive(Debug)]
pub struct UdpTransport {
    socket: UdpSocket,
    local: SocketAddr,
    v6: bool,
    config: UdpConfig,
    buffer_sizes: (usize, usize),
}

impl UdpTransport {
    /// Binds `addr` with the default [`UdpConfig`].
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        Self::bind_with(addr, UdpConfig::default())
    }

    /// Binds `addr`, makes the socket non-blocking and grows its buffers.
    ///
    /// # Errors
    /// `InvalidInput` when `config.max_datagram` is below 64 or above [`MAX_DATAGRAM`];
    /// errors of bind(2).
    pub fn bind_with(addr: SocketAddr, config: UdpConfig) -> io::Result<Self> {
        if !(64..=MAX_DATAGRAM).contains(&config.max_datagram) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "UDP max datagram {} is outside 64..={MAX_DATAGRAM}",
                    config.max_datagram
                ),
            ));
        }
        let socket = UdpSocket::bind(addr)?;
        socket.set_nonblocking(true)?;
        let local = socket.local_addr()?;
        let buffer_sizes = sys::grow_socket_buffers(socket.as_raw_fd(), config.socket_buffer);
        Ok(UdpTransport {
            v6: local.is_ipv6(),
            socket,
            local,
            config,
            buffer_sizes,
        })
    }

    /// The bound address.
    pub fn local_socket_addr(&self) -> SocketAddr {
        self.local
    }

    /// The configuration it was bound with.
    pub fn config(&self) -> &UdpConfig {
        &self.config
    }

    /// Receive and send buffer sizes the kernel granted (as getsockopt reports them).
    pub fn socket_buffer_sizes(&self) -> (usize, usize) {
        self.buffer_sizes
    }

    /// The socket, for callers that need its options.
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }
}

impl Transport for UdpTransport {
    fn link_params(&self) -> LinkParams {
        LinkParams {
            max_frame: self.config.max_datagram - Integrity::Crc32.trailer_len(),
            min_frame: 0,
            integrity: Integrity::Crc32,
        }
    }

    fn local_addr(&self) -> PeerAddr {
        PeerAddr::Udp(self.local)
    }

    /// Sends each frame as one datagram to its peer. Stops early at a full socket buffer, and
    /// before a frame the kernel refuses or whose peer is not a UDP address; the next call
    /// starting at that frame reports its error, so an `Err` always concerns `frames[0]`.
    fn send(&mut self, frames: &[(PeerAddr, &[u8])]) -> io::Result<usize> {
        sys::sendmmsg_udp(self.socket.as_raw_fd(), self.v6, frames)
    }

    /// Datagrams longer than the batch's buffers are truncated by the kernel and skipped.
    fn recv(&mut self, batch: &mut RecvBatch) -> io::Result<usize> {
        batch.clear();
        let fd = self.socket.as_raw_fd();
        let mut meta = [UdpRecvMeta::default(); sys::MMSG_BATCH];
        // Bounded so that a flood of unusable datagrams cannot keep us here forever.
        for _ in 0..4 {
            let filled = batch.len();
            let bufs = batch.buffers_mut();
            if filled >= bufs.len() {
                break;
            }
            let n = sys::recvmmsg_udp(fd, &mut bufs[filled..], &mut meta)?;
            let mut kept = filled;
            for (i, m) in meta[..n].iter().enumerate() {
                let Some(from) = m.from else { continue };
                if m.truncated {
                    continue;
                }
                // Keep buffer index == frame index, as RecvBatch::push requires.
                batch.buffers_mut().swap(kept, filled + i);
                batch.push(PeerAddr::Udp(from), 0..m.len);
                kept += 1;
            }
            if n < sys::MMSG_BATCH.min(batch.buffers_mut().len() - filled) {
                break; // drained the socket
            }
        }
        Ok(batch.len())
    }

    fn wait(&mut self, waker: &Waker, timeout: Option<Duration>) -> io::Result<()> {
        sys::wait_readable(self.socket.as_raw_fd(), waker, timeout)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn pair(buffer: usize) -> (UdpTransport, UdpTransport) {
        let config = UdpConfig {
            max_datagram: MAX_DATAGRAM,
            socket_buffer: buffer,
        };
        let any = "127.0.0.1:0".parse().unwrap();
        (
            UdpTransport::bind_with(any, config).unwrap(),
            UdpTransport::bind_with(any, config).unwrap(),
        )
    }

    /// Drains `rx`, returning how many datagrams arrived.
    fn drain(rx: &mut UdpTransport, batch: &mut RecvBatch) -> usize {
        let mut total = 0;
        loop {
            let n = rx.recv(batch).unwrap();
            if n == 0 {
                return total;
            }
            total += n;
        }
    }

    /// Cost per datagram of one syscall each versus sendmmsg/recvmmsg versus UDP GSO, on
    /// loopback. Prints a table; asserts nothing about speed. Run with
    /// `cargo test -p oxmem-net --release --lib -- --ignored --nocapture measure_syscall_batching`.
    #[test]
    #[ignore = "measurement; run by hand"]
    fn measure_syscall_batching() {
        let (mut tx, mut rx) = pair(256 << 20);
        eprintln!("socket buffers (rcv, snd): {:?}", rx.socket_buffer_sizes());
        let to = rx.local_socket_addr();
        let fd_tx = tx.socket.as_raw_fd();
        let fd_rx = rx.socket.as_raw_fd();
        let mut batch = RecvBatch::new(64, MAX_DATAGRAM);
        let mut one = vec![0u8; MAX_DATAGRAM];
        for (size, count) in [(64usize, 50_000usize), (8192, 8_000)].repeat(3) {
            let payload = vec![0x5au8; size];
            let frames: Vec<(PeerAddr, &[u8])> = (0..64)
                .map(|_| (PeerAddr::Udp(to), payload.as_slice()))
                .collect();
            let per = |t: Duration, n: usize| t.as_nanos() as f64 / n as f64;

            // One sendto per datagram, then one recv per datagram.
            let t = Instant::now();
            for _ in 0..count {
                sys::send_one_udp(fd_tx, false, to, &payload).unwrap();
            }
            let send_one = per(t.elapsed(), count);
            let t = Instant::now();
            let mut got = 0;
            while sys::recv_one_udp(fd_rx, &mut one).unwrap().is_some() {
                got += 1;
            }
            let recv_one = per(t.elapsed(), got.max(1));
            assert_eq!(got, count, "receive buffer too small for the measurement");

            // sendmmsg / recvmmsg, 64 per call.
            let t = Instant::now();
            let mut sent = 0;
            while sent < count {
                let k = (count - sent).min(64);
                sent += tx.send(&frames[..k]).unwrap();
            }
            let send_mmsg = per(t.elapsed(), count);
            let t = Instant::now();
            let got = drain(&mut rx, &mut batch);
            let recv_mmsg = per(t.elapsed(), got.max(1));
            assert_eq!(got, count);

            // GSO: as many segments per call as fit in one 64 KiB UDP payload (max 64).
            let segs = (65_000 / size).min(64);
            let big = vec![0x5au8; segs * size];
            let t = Instant::now();
            let mut sent = 0;
            let gso = loop {
                if sent >= count {
                    break Some(per(t.elapsed(), count));
                }
                let k = (count - sent).min(segs);
                if let Err(e) = sys::send_gso_udp(fd_tx, false, to, &big[..k * size], size as u16) {
                    eprintln!("UDP GSO unavailable: {e}");
                    break None;
                }
                sent += k;
            };
            let t = Instant::now();
            let got = drain(&mut rx, &mut batch);
            let recv_after_gso = per(t.elapsed(), got.max(1));
            eprintln!(
                "{size:>5} B x {count}: send {send_one:7.0} ns/dgram (sendto) {send_mmsg:7.0} \
                 (sendmmsg) {} (GSO, {segs}/call); recv {recv_one:7.0} (recv) {recv_mmsg:7.0} \
                 (recvmmsg) {recv_after_gso:7.0} (recvmmsg of GSO-sent, {got} got)",
                gso.map_or("n/a".to_owned(), |g| format!("{g:7.0}")),
            );
        }
    }
}
