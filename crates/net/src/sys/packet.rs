//! AF_PACKET raw sockets: open one on an interface, read its MAC and MTU, and move whole
//! Ethernet frames with sendmmsg(2) and recvmmsg(2).

use std::ffi::CString;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::{MMSG_BATCH, setsockopt_int};
use crate::PeerAddr;

/// `sll_pkttype` of a frame this host transmitted (linux/if_packet.h).
pub const PACKET_OUTGOING: u8 = 4;
/// Socket options of linux/if_packet.h that `libc` does not export for glibc.
const PACKET_QDISC_BYPASS: libc::c_int = 20;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// Length of the Ethernet II header.
const HEADER_LEN: usize = 14;

/// An AF_PACKET SOCK_RAW socket bound to one interface and one EtherType.
#[derive(Debug)]
pub struct PacketSocket {
    pub fd: OwnedFd,
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub mtu: usize,
}

/// What recvmmsg(2) said about one frame.
#[derive(Debug, Clone, Copy, Default)]
pub struct PacketRecvMeta {
    /// Bytes written into the buffer (the whole frame from the destination MAC on).
    pub len: usize,
    /// The frame was longer than the buffer.
    pub truncated: bool,
    /// `sll_pkttype`: host, broadcast, multicast, other host, outgoing.
    pub pkttype: u8,
}

fn interface_request(name: &str) -> io::Result<libc::ifreq> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a valid network interface name"),
        ));
    }
    // SAFETY: an all-zero ifreq is valid (a union of plain integers and arrays).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

/// Opens a raw socket on interface `name` that receives and sends frames of `ethertype`.
///
/// `qdisc_bypass` sets PACKET_QDISC_BYPASS (frames skip the traffic-control layer and packet
/// taps such as tcpdump no longer see them). The socket is non-blocking and close-on-exec;
/// our own transmissions are not looped back to it where the kernel supports
/// PACKET_IGNORE_OUTGOING (4.20+).
///
/// # Errors
/// `PermissionDenied` with advice when the process lacks CAP_NET_RAW; `NotFound` naming the
/// interface when there is none of that name; other socket errors.
pub fn open_packet_socket(
    name: &str,
    ethertype: u16,
    qdisc_bypass: bool,
) -> io::Result<PacketSocket> {
    let cname = CString::new(name).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a valid network interface name"),
        )
    })?;
    // SAFETY: `cname` is a valid NUL-terminated string for the duration of the call.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no network interface named {name:?} (see `ip link`)"),
        ));
    }
    // Protocol 0: receive nothing until bound, so no frame of another interface slips in.
    // SAFETY: socket(2) takes no pointers; a non-negative result is a new descriptor we own.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EPERM | libc::EACCES) => io::Error::new(
                io::ErrorKind::PermissionDenied,
                "raw Ethernet needs root or CAP_NET_RAW (for example: \
                 sudo setcap cap_net_raw+ep $(command -v oxmem)); \
                 or use the UDP transport, which needs no privileges",
            ),
            _ => e,
        });
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };

    if qdisc_bypass {
        setsockopt_int(fd.as_raw_fd(), libc::SOL_PACKET, PACKET_QDISC_BYPASS, 1)?;
    }
    // Best effort: older kernels lack it, and recv filters PACKET_OUTGOING anyway.
    let _ = setsockopt_int(fd.as_raw_fd(), libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1);

    // SAFETY: an all-zero sockaddr_ll is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ethertype.to_be();
    sll.sll_ifindex = ifindex as libc::c_int;
    // SAFETY: `sll` is a live sockaddr_ll and the length is its size.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const sll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("binding a raw socket to {name:?}: {e}"),
        ));
    }

    let mut req = interface_request(name)?;
    // SAFETY: SIOCGIFHWADDR reads the name from and writes a sockaddr into our live ifreq.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &raw mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: after SIOCGIFHWADDR succeeded the union holds `ifru_hwaddr`.
    let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
    if hw.sa_family != libc::ARPHRD_ETHER {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "interface {name:?} is not an Ethernet interface (ARPHRD {})",
                hw.sa_family
            ),
        ));
    }
    let mut mac = [0u8; 6];
    for (dst, &src) in mac.iter_mut().zip(&hw.sa_data) {
        *dst = src as u8;
    }

    let mut req = interface_request(name)?;
    // SAFETY: SIOCGIFMTU reads the name from and writes an int into our live ifreq.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFMTU, &raw mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: after SIOCGIFMTU succeeded the union holds `ifru_mtu`.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };

    Ok(PacketSocket {
        fd,
        ifindex,
        mac,
        mtu: usize::try_from(mtu).unwrap_or(0),
    })
}

/// Sends each TLoE frame behind an Ethernet header `[dst][src][ethertype]`, [`MMSG_BATCH`]
/// per sendmmsg(2), with a two-element iovec so the payload is not copied.
///
/// Returns how many of the first frames the kernel took, with the same early-stop rules as
/// [`super::sendmmsg_udp`]: an `Err` always concerns `frames[0]`.
///
/// # Errors
/// The kernel's error for `frames[0]` (other than EAGAIN; EMSGSIZE when it exceeds the MTU),
/// or `InvalidInput` when its peer is not an Ethernet address.
pub fn sendmmsg_packet(
    fd: RawFd,
    src: [u8; 6],
    ethertype: u16,
    frames: &[(PeerAddr, &[u8])],
) -> io::Result<usize> {
    let mut sent = 0;
    while sent < frames.len() {
        // SAFETY: all-zero bytes are valid values of these plain C structs.
        let mut hdrs: [libc::mmsghdr; MMSG_BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut iovs: [[libc::iovec; 2]; MMSG_BATCH] = unsafe { std::mem::zeroed() };
        let mut eth: [[u8; HEADER_LEN]; MMSG_BATCH] = [[0; HEADER_LEN]; MMSG_BATCH];
        let mut n = 0;
        for (peer, bytes) in frames[sent..].iter().take(MMSG_BATCH) {
            let PeerAddr::Ethernet(dst) = *peer else {
                break;
            };
            eth[n][0..6].copy_from_slice(&dst.0);
            eth[n][6..12].copy_from_slice(&src);
            eth[n][12..14].copy_from_slice(&ethertype.to_be_bytes());
            iovs[n] = [
                libc::iovec {
                    iov_base: eth[n].as_mut_ptr().cast(),
                    iov_len: HEADER_LEN,
                },
                // The kernel only reads through iov_base when sending.
                libc::iovec {
                    iov_base: bytes.as_ptr().cast_mut().cast(),
                    iov_len: bytes.len(),
                },
            ];
            let h = &mut hdrs[n].msg_hdr;
            // No address: the socket's bound interface and protocol apply.
            h.msg_iov = iovs[n].as_mut_ptr();
            h.msg_iovlen = 2;
            n += 1;
        }
        if n == 0 {
            return if sent == 0 {
                Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("Ethernet transport cannot send to {}", frames[0].0),
                ))
            } else {
                Ok(sent)
            };
        }
        // SAFETY: `hdrs[..n]` point at `iovs`, `eth` and the callers' byte slices, all alive
        // and unmoved until the call returns; the kernel writes only `msg_len` fields.
        let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), n as libc::c_uint, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(sent),
                // ENOBUFS: the device queue is full (seen with PACKET_QDISC_BYPASS); retry later.
                _ if e.raw_os_error() == Some(libc::ENOBUFS) => return Ok(sent),
                _ if sent > 0 => return Ok(sent),
                _ => return Err(e),
            }
        }
        let r = r as usize;
        sent += r;
        if r < n || (n < MMSG_BATCH && sent < frames.len()) {
            return Ok(sent);
        }
    }
    Ok(sent)
}

/// Receives up to `min(bufs.len(), meta.len(), MMSG_BATCH)` whole Ethernet frames with one
/// recvmmsg(2), frame `i` into `bufs[i]` and its details into `meta[i]`.
///
/// Returns how many arrived; 0 when none were waiting.
///
/// # Errors
/// Errors of recvmmsg(2) other than EAGAIN and EINTR.
pub fn recvmmsg_packet(
    fd: RawFd,
    bufs: &mut [Vec<u8>],
    meta: &mut [PacketRecvMeta],
) -> io::Result<usize> {
    let got = super::recvmmsg_raw::<libc::sockaddr_ll>(fd, bufs, meta.len())?;
    for i in 0..got.count {
        let h = &got.hdrs[i];
        meta[i] = PacketRecvMeta {
            len: (h.msg_len as usize).min(bufs[i].len()),
            truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            pkttype: got.names[i].sll_pkttype,
        };
    }
    Ok(got.count)
}
