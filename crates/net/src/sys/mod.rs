//! The only place in oxmem with `unsafe` code: thin wrappers over Linux syscalls.
//!
//! Every `unsafe` block says why it is sound. Callers above this module see safe types.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Wakes a thread blocked in a transport's `wait` (an eventfd). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Waker {
    fd: Arc<OwnedFd>,
    /// Set while the owner is about to block or blocked: only then does `wake` need the
    /// syscall. A spinning owner finds new work by itself.
    armed: Arc<AtomicBool>,
}

impl Waker {
    /// Creates a waker.
    ///
    /// # Errors
    /// When eventfd(2) fails.
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes no pointers; a non-negative return is a new descriptor we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        Ok(Waker {
            fd: Arc::new(unsafe { OwnedFd::from_raw_fd(fd) }),
            armed: Arc::new(AtomicBool::new(true)),
        })
    }

    /// Wakes the waiting thread (or makes its next wait return at once). Costs a syscall only
    /// when the owner has [armed](Self::arm) the waker, that is, when it may block.
    pub fn wake(&self) {
        if !self.armed.load(Ordering::SeqCst) {
            return;
        }
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd. A full counter (EAGAIN)
        // still leaves the fd readable, which is all a wake needs, so the result is ignored.
        unsafe {
            libc::write(self.fd.as_raw_fd(), (&raw const one).cast(), 8);
        }
    }

    /// The owner is about to block: from now on `wake` must reach it. After arming, the
    /// owner must look for work once more before it blocks (work queued just before the arm
    /// did not wake it).
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// The owner is running again and will find new work without being woken.
    pub fn disarm(&self) {
        self.armed.store(false, Ordering::SeqCst);
    }

    /// Clears pending wakes.
    pub fn reset(&self) {
        let mut value: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64 from our non-blocking eventfd.
        unsafe {
            libc::read(self.fd.as_raw_fd(), (&raw mut value).cast(), 8);
        }
    }

    /// The descriptor, for poll(2).
    pub fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Waits until `fd` is readable or the waker fires or `timeout` passes (poll(2)).
///
/// # Errors
/// Errors of poll(2) other than EINTR.
pub fn wait_readable(fd: RawFd, waker: &Waker, timeout: Option<Duration>) -> io::Result<()> {
    let mut fds = [
        libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: waker.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let ms = match timeout {
        None => -1,
        Some(t) => i32::try_from(t.as_micros().div_ceil(1000)).unwrap_or(i32::MAX),
    };
    // SAFETY: `fds` is a valid array of two pollfd structs for the duration of the call.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    if fds[1].revents != 0 {
        waker.reset();
    }
    Ok(())
}

mod packet;
mod udp;

pub use packet::{
    PACKET_OUTGOING, PacketRecvMeta, PacketSocket, open_packet_socket, recvmmsg_packet,
    sendmmsg_packet,
};
pub use udp::{UdpRecvMeta, recvmmsg_udp, sendmmsg_udp};
#[cfg(test)]
pub use udp::{recv_one_udp, send_gso_udp, send_one_udp};

/// Messages handed to one sendmmsg(2) or recvmmsg(2) call. The kernel caps a call at
/// UIO_MAXIOV (1024); 64 keeps the per-call arrays on the stack (about 13 KiB) while already
/// amortising the syscall over many frames.
pub const MMSG_BATCH: usize = 64;

/// A C socket address that recvmmsg(2) can fill in, and for which all-zero bytes are a valid
/// value. Implemented only for the plain C structs below.
pub(crate) trait RawSockAddr: Copy {}
impl RawSockAddr for libc::sockaddr_ll {}
impl RawSockAddr for libc::sockaddr_storage {}

/// What one [`recvmmsg_raw`] received: `count` messages, message `i` in `bufs[i]`, its
/// header (length, flags, address length) in `hdrs[i]` and its source in `names[i]`. The
/// headers' pointers refer to the call's own iovecs and must not be followed.
pub(crate) struct RawRecv<A> {
    pub count: usize,
    pub hdrs: [libc::mmsghdr; MMSG_BATCH],
    pub names: [A; MMSG_BATCH],
}

/// Receives up to `min(bufs.len(), limit, MMSG_BATCH)` messages with one non-blocking
/// recvmmsg(2), message `i` into `bufs[i]` (its whole length).
///
/// # Errors
/// Errors of recvmmsg(2) other than EAGAIN (which gives 0 messages) and EINTR (retried).
pub(crate) fn recvmmsg_raw<A: RawSockAddr>(
    fd: RawFd,
    bufs: &mut [Vec<u8>],
    limit: usize,
) -> io::Result<RawRecv<A>> {
    let n = bufs.len().min(limit).min(MMSG_BATCH);
    // SAFETY: all-zero bytes are valid values of these plain C structs (`RawSockAddr` is only
    // implemented for such structs).
    let mut out: RawRecv<A> = RawRecv {
        count: 0,
        hdrs: unsafe { std::mem::zeroed() },
        names: unsafe { std::mem::zeroed() },
    };
    if n == 0 {
        return Ok(out);
    }
    // SAFETY: as above.
    let mut iovs: [libc::iovec; MMSG_BATCH] = unsafe { std::mem::zeroed() };
    for i in 0..n {
        iovs[i] = libc::iovec {
            iov_base: bufs[i].as_mut_ptr().cast(),
            iov_len: bufs[i].len(),
        };
        let h = &mut out.hdrs[i].msg_hdr;
        h.msg_name = (&raw mut out.names[i]).cast();
        h.msg_namelen = std::mem::size_of::<A>() as libc::socklen_t;
        h.msg_iov = &raw mut iovs[i];
        h.msg_iovlen = 1;
    }
    loop {
        // SAFETY: `out.hdrs[..n]` point at `out.names[i]` (with its full size) and at
        // `bufs[i]` (with its full length), all exclusively borrowed and alive for the call;
        // the kernel writes within those bounds. A null timeout is allowed.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                out.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r >= 0 {
            out.count = r as usize;
            return Ok(out);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock => return Ok(out),
            _ => return Err(e),
        }
    }
}

/// Sets an integer socket option.
///
/// # Errors
/// Errors of setsockopt(2).
pub fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int and its exact size; the kernel only reads it.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Reads an integer socket option.
///
/// # Errors
/// Errors of getsockopt(2).
pub fn getsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into the live c_int and updates `len`.
    let r = unsafe { libc::getsockopt(fd, level, name, (&raw mut value).cast(), &raw mut len) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(value)
    }
}

/// SO_SNDBUFFORCE and SO_RCVBUFFORCE (asm-generic/socket.h; the values differ only on MIPS,
/// SPARC, Alpha and PA-RISC, which oxmem does not target). Not exported by `libc` for glibc.
const SO_SNDBUFFORCE: libc::c_int = 32;
const SO_RCVBUFFORCE: libc::c_int = 33;

/// Asks for `bytes` of receive and send buffer: first with the `*FORCE` options, which exceed
/// `net.core.rmem_max`/`wmem_max` but need CAP_NET_ADMIN, then with the plain ones (capped by
/// those sysctls). Failures are ignored: a small buffer costs throughput, not correctness.
/// Returns the sizes the kernel reports afterwards (it doubles the request for bookkeeping).
pub fn grow_socket_buffers(fd: RawFd, bytes: usize) -> (usize, usize) {
    let want = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for (force, plain) in [
        (SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if setsockopt_int(fd, libc::SOL_SOCKET, force, want).is_err() {
            let _ = setsockopt_int(fd, libc::SOL_SOCKET, plain, want);
        }
    }
    let get = |name| {
        getsockopt_int(fd, libc::SOL_SOCKET, name)
            .ok()
            .and_then(|v| usize::try_from(v).ok())
            .unwrap_or(0)
    };
    (get(libc::SO_RCVBUF), get(libc::SO_SNDBUF))
}
