//! Round-robin in the kernel: a group of `SO_REUSEPORT` listening sockets on one address, one
//! per worker, and a small BPF program attached to the group that sends each new connection to
//! the next socket in turn. The connection then waits in that worker's own accept queue, and the
//! worker accepts it as it would in `shared` mode: the primary does no work per connection.
//!
//! The primary keeps every socket of the group, so a worker that dies leaves its queue behind,
//! not lost: the primary takes the socket out of the turn and accepts what waits in it itself.
//!
//! Loading the program needs `CAP_BPF` and `CAP_NET_ADMIN` (root, usually). Without them,
//! [`Steer::new`] fails and round-robin listeners are served by the primary's own accept loop.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

// bpf(2) commands, map and program types, from <linux/bpf.h>.
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_REUSEPORT_SOCKARRAY: u32 = 20;
const BPF_PROG_TYPE_SK_REUSEPORT: u32 = 21;
const BPF_PSEUDO_MAP_FD: u8 = 1;
/// `SO_ATTACH_REUSEPORT_EBPF` from <asm-generic/socket.h>.
const SO_ATTACH_REUSEPORT_EBPF: libc::c_int = 52;
/// The most sockets taking turns.
pub const MAX_SOCKETS: u32 = 1024;
/// The slot of the socket that takes every connection no turn could place (see `program`).
const FALLBACK: u32 = MAX_SOCKETS;

/// `union bpf_attr`, as wide as any command here needs; unused fields stay zero, as the kernel
/// requires.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 128])
    }

    fn u32(mut self, at: usize, v: u32) -> Attr {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }

    fn u64(mut self, at: usize, v: u64) -> Attr {
        self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }

    fn call(&mut self, cmd: libc::c_long) -> io::Result<libc::c_long> {
        // SAFETY: the attribute is a zero-filled buffer of its full size, with the pointers in
        // it (set by the callers) valid for the duration of the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                self.0.as_mut_ptr(),
                self.0.len() as libc::c_uint,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r)
        }
    }

    fn call_fd(&mut self, cmd: libc::c_long) -> io::Result<OwnedFd> {
        let fd = self.call(cmd)?;
        // SAFETY: these commands return a new descriptor, owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }
}

fn create_map(kind: u32, key: u32, value: u32, entries: u32) -> io::Result<OwnedFd> {
    Attr::new()
        .u32(0, kind)
        .u32(4, key)
        .u32(8, value)
        .u32(12, entries)
        .call_fd(BPF_MAP_CREATE)
}

fn update(map: RawFd, key: &u32, value: *const u8) -> io::Result<()> {
    Attr::new()
        .u32(0, map as u32)
        .u64(8, key as *const u32 as u64)
        .u64(16, value as u64)
        .call(BPF_MAP_UPDATE_ELEM)
        .map(drop)
}

/// One instruction: opcode, registers (destination in the low nibble), offset, immediate.
#[derive(Clone, Copy)]
#[repr(C)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

/// The value of the state map: the turn counter and how many sockets take turns.
const STATE_SIZE: u32 = 16;

/// The program, for state map `state` and socket array `socks`:
///
/// ```text
/// state = lookup(state_map, 0)
/// if state and state.n > 0:
///     i = fetch_add(state.turn, 1) % state.n
///     if select(socks[i]) succeeds: pass
/// select(socks[FALLBACK])   // none taking turns, or slot i empty while the array is rewritten
/// pass                      // and if even that failed, the kernel's hash picks
/// ```
///
/// Without the fallback slot the kernel's hash would pick among every socket of the group,
/// including those of workers that do not serve.
fn program(state: RawFd, socks: RawFd) -> [Insn; 32] {
    const MOV64_X: u8 = 0xbf; // dst = src
    const MOV64_K: u8 = 0xb7; // dst = imm
    const ADD64_K: u8 = 0x07; // dst += imm
    const MOD64_X: u8 = 0x9f; // dst %= src
    const ST_W: u8 = 0x62; // *(u32 *)(dst + off) = imm
    const STX_W: u8 = 0x63; // *(u32 *)(dst + off) = src
    const LDX_W: u8 = 0x61; // dst = *(u32 *)(src + off)
    const LD_DW: u8 = 0x18; // dst = imm64 (two instructions)
    const FETCH_ADD_DW: u8 = 0xdb; // with imm BPF_ADD | BPF_FETCH: src = fetch_add(dst + off, src)
    const JEQ_K: u8 = 0x15; // if dst == imm: skip off
    const CALL: u8 = 0x85;
    const EXIT: u8 = 0x95;
    const MAP_LOOKUP_ELEM: i32 = 1;
    const SK_SELECT_REUSEPORT: i32 = 82;
    const SK_PASS: i32 = 1;
    [
        insn(MOV64_X, 6, 1, 0, 0),                   // 0: r6 = ctx
        insn(ST_W, 10, 0, -4, 0),                    // 1: key 0 on the stack
        insn(MOV64_X, 2, 10, 0, 0),                  // 2
        insn(ADD64_K, 2, 0, 0, -4),                  // 3: r2 = &key
        insn(LD_DW, 1, BPF_PSEUDO_MAP_FD, 0, state), // 4: r1 = state map
        insn(0, 0, 0, 0, 0),                         // 5
        insn(CALL, 0, 0, 0, MAP_LOOKUP_ELEM),        // 6: r0 = &state or null
        insn(JEQ_K, 0, 0, 14, 0),                    // 7: null: to 22
        insn(LDX_W, 2, 0, 8, 0),                     // 8: r2 = n
        insn(JEQ_K, 2, 0, 12, 0),                    // 9: none: to 22
        insn(MOV64_K, 1, 0, 0, 1),                   // 10
        insn(FETCH_ADD_DW, 0, 1, 0, 1),              // 11: r1 = turn++
        insn(MOD64_X, 1, 2, 0, 0),                   // 12: r1 %= n
        insn(STX_W, 10, 1, -8, 0),                   // 13: index on the stack
        insn(MOV64_X, 1, 6, 0, 0),                   // 14: r1 = ctx
        insn(LD_DW, 2, BPF_PSEUDO_MAP_FD, 0, socks), // 15: r2 = socket array
        insn(0, 0, 0, 0, 0),                         // 16
        insn(MOV64_X, 3, 10, 0, 0),                  // 17
        insn(ADD64_K, 3, 0, 0, -8),                  // 18: r3 = &index
        insn(MOV64_K, 4, 0, 0, 0),                   // 19: flags 0
        insn(CALL, 0, 0, 0, SK_SELECT_REUSEPORT),    // 20
        insn(JEQ_K, 0, 0, 8, 0),                     // 21: selected: to 30
        insn(ST_W, 10, 0, -8, FALLBACK as i32),      // 22: the fallback slot
        insn(MOV64_X, 1, 6, 0, 0),                   // 23: r1 = ctx
        insn(LD_DW, 2, BPF_PSEUDO_MAP_FD, 0, socks), // 24: r2 = socket array
        insn(0, 0, 0, 0, 0),                         // 25
        insn(MOV64_X, 3, 10, 0, 0),                  // 26
        insn(ADD64_K, 3, 0, 0, -8),                  // 27: r3 = &slot
        insn(MOV64_K, 4, 0, 0, 0),                   // 28: flags 0
        insn(CALL, 0, 0, 0, SK_SELECT_REUSEPORT),    // 29
        insn(MOV64_K, 0, 0, 0, SK_PASS),             // 30
        insn(EXIT, 0, 0, 0, 0),                      // 31
    ]
}

/// The program and maps of one group.
pub struct Steer {
    prog: OwnedFd,
    state: OwnedFd,
    socks: OwnedFd,
    /// How many sockets take turns now (slots 0..len of the array).
    len: u32,
}

impl Steer {
    /// Loads the program. Fails without the privileges for it (EPERM), or on a kernel without
    /// BPF or reuseport socket arrays; the caller then accepts in the primary.
    pub fn new() -> io::Result<Steer> {
        let state = create_map(BPF_MAP_TYPE_ARRAY, 4, STATE_SIZE, 1)?;
        let socks = create_map(BPF_MAP_TYPE_REUSEPORT_SOCKARRAY, 4, 8, FALLBACK + 1)?;
        let insns = program(state.as_raw_fd(), socks.as_raw_fd());
        let license = b"Dual MIT/GPL\0";
        let mut log = vec![0u8; 4096];
        // Without a log, its buffer must be left out too.
        let load = |log_level: u32, log: &mut [u8]| {
            Attr::new()
                .u32(0, BPF_PROG_TYPE_SK_REUSEPORT)
                .u32(4, insns.len() as u32)
                .u64(8, insns.as_ptr() as u64)
                .u64(16, license.as_ptr() as u64)
                .u32(24, log_level)
                .u32(28, log.len() as u32)
                .u64(
                    32,
                    if log.is_empty() {
                        0
                    } else {
                        log.as_mut_ptr() as u64
                    },
                )
                .call_fd(BPF_PROG_LOAD)
        };
        let prog = match load(0, &mut []) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                // Rejected by the verifier: load again with its log, to say why.
                let _ = load(1, &mut log);
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                let why = String::from_utf8_lossy(&log[..end]).trim().to_string();
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("the BPF verifier refused the program: {why}"),
                ));
            }
            Err(e) => return Err(e),
        };
        Ok(Steer {
            prog,
            state,
            socks,
            len: 0,
        })
    }

    /// Attaches the program to the group of `fd` (a listening `SO_REUSEPORT` socket), which
    /// takes the connections no turn places.
    pub fn attach(&self, fd: RawFd) -> io::Result<()> {
        let value = fd as u64;
        update(
            self.socks.as_raw_fd(),
            &FALLBACK,
            (&value as *const u64).cast(),
        )?;
        let prog = self.prog.as_raw_fd();
        // SAFETY: passes a valid c_int of the size given.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                SO_ATTACH_REUSEPORT_EBPF,
                (&prog as *const RawFd).cast(),
                std::mem::size_of::<RawFd>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Makes `fds` (listening sockets of the group) take turns, in this order, from the next
    /// connection on. With none, the kernel's hash picks among all sockets of the group.
    ///
    /// A socket can hold one slot of the array only, so the array is emptied and written
    /// anew. Meanwhile, for a few microseconds, the fallback socket takes what comes.
    pub fn set(&mut self, fds: &[RawFd]) -> io::Result<()> {
        if fds.len() > MAX_SOCKETS as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("more than {MAX_SOCKETS} sockets to take turns"),
            ));
        }
        self.set_count(0)?;
        for i in 0..self.len {
            // An empty slot (its socket closed since) is no error here.
            let _ = Attr::new()
                .u32(0, self.socks.as_raw_fd() as u32)
                .u64(8, &i as *const u32 as u64)
                .call(BPF_MAP_DELETE_ELEM);
        }
        self.len = 0;
        for (i, &fd) in fds.iter().enumerate() {
            let value = fd as u64;
            update(
                self.socks.as_raw_fd(),
                &(i as u32),
                (&value as *const u64).cast(),
            )?;
            self.len = i as u32 + 1;
        }
        self.set_count(self.len)
    }

    fn set_count(&self, n: u32) -> io::Result<()> {
        let mut value = [0u8; STATE_SIZE as usize];
        value[8..12].copy_from_slice(&n.to_ne_bytes());
        // The turn counter starts again at 0: the next connection goes to the first socket.
        update(self.state.as_raw_fd(), &0, value.as_ptr())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{SocketAddr, TcpStream};

    /// A listening `SO_REUSEPORT` socket on 127.0.0.1:`port` (0: any), and its port.
    fn listener(port: u16) -> (OwnedFd, u16) {
        let sa: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let fd = crate::sys::listen::bind_reuseport(&sa).unwrap();
        let port = match crate::sys::listen::local_addr(
            fd.as_raw_fd(),
            &crate::sys::listen::ListenAddr::Tcp(sa),
        ) {
            crate::sys::listen::ListenAddr::Tcp(a) => a.port(),
            _ => unreachable!(),
        };
        (fd, port)
    }

    fn pending(fd: &OwnedFd) -> usize {
        let mut n = 0;
        while crate::sys::listen::accept(fd.as_raw_fd())
            .unwrap()
            .is_some()
        {
            n += 1;
        }
        n
    }

    #[test]
    fn connections_take_turns_over_the_sockets_in_the_array() {
        let mut steer = match Steer::new() {
            Ok(s) => s,
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                eprintln!("skipped: loading a BPF program needs CAP_BPF ({e})");
                return;
            }
            Err(e) => panic!("loading the program: {e}"),
        };
        let (fallback, port) = listener(0);
        let (a, _) = listener(port);
        let (b, _) = listener(port);
        let (c, _) = listener(port);
        steer.attach(fallback.as_raw_fd()).unwrap();
        let mut clients = Vec::new();
        let mut connect = |n: usize| {
            for _ in 0..n {
                clients.push(TcpStream::connect(("127.0.0.1", port)).unwrap());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let counts = || [pending(&fallback), pending(&a), pending(&b), pending(&c)];

        steer
            .set(&[a.as_raw_fd(), b.as_raw_fd(), c.as_raw_fd()])
            .unwrap();
        connect(30);
        assert_eq!(counts(), [0, 10, 10, 10]);

        // Two of three: the second socket gets nothing from now on.
        steer.set(&[c.as_raw_fd(), a.as_raw_fd()]).unwrap();
        connect(20);
        assert_eq!(counts(), [0, 10, 0, 10]);

        // None taking turns: everything goes to the fallback socket, none to the others.
        steer.set(&[]).unwrap();
        connect(12);
        assert_eq!(counts(), [12, 0, 0, 0]);
    }
}
