//! sendmmsg(2) and recvmmsg(2) on UDP sockets.

use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

use super::MMSG_BATCH;
use crate::PeerAddr;

/// What recvmmsg(2) said about one datagram.
#[derive(Debug, Clone, Copy, Default)]
pub struct UdpRecvMeta {
    /// Bytes written into the buffer.
    pub len: usize,
    /// The datagram was longer than the buffer (MSG_TRUNC): its tail is lost.
    pub truncated: bool,
    /// The sender (IPv4-mapped IPv6 addresses are turned back into IPv4).
    pub from: Option<SocketAddr>,
}

/// Writes `addr` as a sockaddr for a socket of family `v6`. IPv4 peers of an IPv6 socket are
/// written as IPv4-mapped addresses, so a dual-stack socket reaches both.
fn write_sockaddr(addr: SocketAddr, v6: bool, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    let addr = match (addr, v6) {
        (SocketAddr::V4(a), true) => {
            SocketAddr::V6(SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0))
        }
        (a, _) => a,
    };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned at least as strictly as
            // sockaddr_in (that is its purpose), so the write stays in bounds and aligned.
            unsafe { (&raw mut *out).cast::<libc::sockaddr_in>().write(sin) };
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo().to_be(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { (&raw mut *out).cast::<libc::sockaddr_in6>().write(sin6) };
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Reads the sockaddr the kernel wrote.
fn read_sockaddr(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match i32::from(storage.ss_family) {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the kernel wrote a sockaddr_in, which fits in and is
            // no more strictly aligned than sockaddr_storage.
            let sin = unsafe { &*(&raw const *storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &*(&raw const *storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let port = u16::from_be(sin6.sin6_port);
            Some(match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
                None => SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    port,
                    u32::from_be(sin6.sin6_flowinfo),
                    sin6.sin6_scope_id,
                )),
            })
        }
        _ => None,
    }
}

/// Sends each frame as one datagram to its own peer, [`MMSG_BATCH`] per sendmmsg(2).
///
/// Returns how many of the first frames the kernel took. Stops early (returning the count so
/// far) when the socket buffer is full, at a frame whose peer is not a UDP address, or at a
/// frame the kernel refuses when earlier frames were sent — the next call then starts at that
/// frame and reports its error. So an `Err` always concerns `frames[0]`.
///
/// # Errors
/// The kernel's error for `frames[0]` (other than EAGAIN), or `InvalidInput` when its peer is
/// not a UDP address.
pub fn sendmmsg_udp(fd: RawFd, v6: bool, frames: &[(PeerAddr, &[u8])]) -> io::Result<usize> {
    let mut sent = 0;
    while sent < frames.len() {
        // SAFETY: all-zero bytes are a valid value of these plain C structs (null pointers,
        // zero lengths).
        let mut hdrs: [libc::mmsghdr; MMSG_BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut iovs: [libc::iovec; MMSG_BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut names: [libc::sockaddr_storage; MMSG_BATCH] = unsafe { std::mem::zeroed() };
        let mut n = 0;
        for (peer, bytes) in frames[sent..].iter().take(MMSG_BATCH) {
            let PeerAddr::Udp(addr) = *peer else { break };
            let name_len = write_sockaddr(addr, v6, &mut names[n]);
            // The kernel only reads through iov_base when sending; the cast to *mut is what
            // the C struct demands.
            iovs[n] = libc::iovec {
                iov_base: bytes.as_ptr().cast_mut().cast(),
                iov_len: bytes.len(),
            };
            let h = &mut hdrs[n].msg_hdr;
            h.msg_name = (&raw mut names[n]).cast();
            h.msg_namelen = name_len;
            h.msg_iov = &raw mut iovs[n];
            h.msg_iovlen = 1;
            n += 1;
        }
        if n == 0 {
            return if sent == 0 {
                Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("UDP transport cannot send to {}", frames[0].0),
                ))
            } else {
                Ok(sent)
            };
        }
        // SAFETY: `hdrs[..n]` point at `names`, `iovs` and the callers' byte slices, all alive
        // and unmoved until the call returns; the kernel writes only `msg_len` fields.
        let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), n as libc::c_uint, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(sent),
                _ if sent > 0 => return Ok(sent),
                _ => return Err(e),
            }
        }
        let r = r as usize;
        sent += r;
        if r < n {
            return Ok(sent);
        }
        if n < MMSG_BATCH && sent < frames.len() {
            // Stopped at a non-UDP peer: report it on the next call.
            return Ok(sent);
        }
    }
    Ok(sent)
}

/// Receives up to `min(bufs.len(), meta.len(), MMSG_BATCH)` datagrams with one recvmmsg(2),
/// datagram `i` into `bufs[i]` (its whole length) and its details into `meta[i]`.
///
/// Returns how many arrived; 0 when none were waiting.
///
/// # Errors
/// Errors of recvmmsg(2) other than EAGAIN and EINTR.
pub fn recvmmsg_udp(
    fd: RawFd,
    bufs: &mut [Vec<u8>],
    meta: &mut [UdpRecvMeta],
) -> io::Result<usize> {
    let got = super::recvmmsg_raw::<libc::sockaddr_storage>(fd, bufs, meta.len())?;
    for i in 0..got.count {
        let h = &got.hdrs[i];
        meta[i] = UdpRecvMeta {
            len: (h.msg_len as usize).min(bufs[i].len()),
            truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            from: read_sockaddr(&got.names[i], h.msg_hdr.msg_namelen),
        };
    }
    Ok(got.count)
}

/// One sendto(2), for measuring against [`sendmmsg_udp`].
#[cfg(test)]
pub fn send_one_udp(fd: RawFd, v6: bool, to: SocketAddr, bytes: &[u8]) -> io::Result<()> {
    // SAFETY: zeroed sockaddr_storage is valid.
    let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = write_sockaddr(to, v6, &mut name);
    // SAFETY: `bytes` and `name` are alive for the call and the lengths match them.
    let r = unsafe {
        libc::sendto(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            0,
            (&raw const name).cast(),
            len,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// One recv(2), for measuring against [`recvmmsg_udp`]. `Ok(None)` when nothing is waiting.
#[cfg(test)]
pub fn recv_one_udp(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
    let r = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(r as usize))
}

/// One sendmsg(2) with UDP_SEGMENT (GSO): `bytes` leaves as datagrams of `segment` bytes (the
/// last may be shorter), all to `to`. For measuring whether GSO is worth it.
#[cfg(test)]
pub fn send_gso_udp(
    fd: RawFd,
    v6: bool,
    to: SocketAddr,
    bytes: &[u8],
    segment: u16,
) -> io::Result<()> {
    // SAFETY: zeroed sockaddr_storage / msghdr are valid.
    let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let name_len = write_sockaddr(to, v6, &mut name);
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    };
    // Room for one cmsg carrying a u16, 8-byte aligned as cmsghdr requires.
    let mut control = [0u64; 4];
    // SAFETY: zeroed msghdr is valid (null pointers).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&raw mut name).cast();
    msg.msg_namelen = name_len;
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a size.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as usize;
    // SAFETY: `msg` has a control buffer of at least CMSG_SPACE(2) bytes (32 ≥ 24), so the
    // first header and its data lie inside it; `control` is 8-byte aligned.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&raw const msg);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
        libc::CMSG_DATA(c).cast::<u16>().write_unaligned(segment);
    }
    // SAFETY: every pointer in `msg` refers to a live local or to `bytes`.
    let r = unsafe { libc::sendmsg(fd, &raw const msg, 0) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
