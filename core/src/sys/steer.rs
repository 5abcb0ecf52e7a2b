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
use std::sync::atomic::{AtomicI64, Ordering};

// bpf(2) commands, map and program types, from <linux/bpf.h>.
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_REUSEPORT_SOCKARRAY: u32 = 20;
const BPF_PROG_TYPE_SK_REUSEPORT: u32 = 21;
const BPF_PSEUDO_MAP_FD: u8 = 1;
/// A map whose values can be mapped into memory (the count map, shared with the workers).
const BPF_F_MMAPABLE: u32 = 1 << 10;
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

fn create_map(kind: u32, key: u32, value: u32, entries: u32, flags: u32) -> io::Result<OwnedFd> {
    Attr::new()
        .u32(0, kind)
        .u32(4, key)
        .u32(8, value)
        .u32(12, entries)
        .u32(16, flags)
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

/// The value of the state map: the turn counter, how many sockets take turns, and for each
/// turn the entry of the member whose socket it is (see [`TRACKED`]).
const STATE_SIZE: u32 = 16 + 4 * MAX_SOCKETS;
/// In a turn's entry: the member's worker counts its connections, so the program may compare its
/// count with the next turn's. Below it, the member's index in the count array.
pub const TRACKED: u32 = 1 << 31;
/// The value of the count map (its only element): one i64 per member, by member index (the
/// load its worker counts down), then one u64 per member (how many connections the program
/// gave it, which only the program and the primary touch).
const COUNTS_SIZE: u32 = 16 * MAX_SOCKETS;
/// Where the second half of the count map's value begins.
const GIVEN: i16 = 8 * MAX_SOCKETS as i16;
/// How many connections a member may have been given beyond the turn's member before it is
/// no longer preferred to it for being less busy. A bound on how far the shares drift apart
/// when one worker is slower for long: past it the turns are strict between those two until
/// the other catches up, so over N connections the shares differ by this at most, whatever
/// the workers' speeds (1% of 50,000, for two workers).
pub const MAX_LEAD: i32 = 256;

/// A tiny assembler: instructions, and jumps to labels resolved at the end.
struct Asm {
    insns: Vec<Insn>,
    labels: Vec<(&'static str, usize)>,
    jumps: Vec<(usize, &'static str)>,
}

impl Asm {
    fn op(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) -> &mut Asm {
        self.insns.push(insn(code, dst, src, off, imm));
        self
    }

    fn map(&mut self, dst: u8, fd: RawFd) -> &mut Asm {
        const LD_DW: u8 = 0x18; // dst = imm64 (two instructions)
        self.op(LD_DW, dst, BPF_PSEUDO_MAP_FD, 0, fd)
            .op(0, 0, 0, 0, 0)
    }

    fn jump(&mut self, code: u8, dst: u8, src: u8, imm: i32, to: &'static str) -> &mut Asm {
        self.jumps.push((self.insns.len(), to));
        self.op(code, dst, src, 0, imm)
    }

    fn label(&mut self, name: &'static str) -> &mut Asm {
        self.labels.push((name, self.insns.len()));
        self
    }

    fn finish(mut self) -> Vec<Insn> {
        for (at, to) in self.jumps {
            let target = self.labels.iter().find(|l| l.0 == to).expect("a label").1;
            self.insns[at].off = (target as i64 - at as i64 - 1) as i16;
        }
        self.insns
    }
}

/// The program, for state map `state`, count map `counts` and socket array `socks`:
///
/// ```text
/// state = lookup(state_map, 0)
/// if state and state.n > 0:
///     i = fetch_add(state.turn, 1) % state.n       // the turn's socket
///     j = (i + 1) % state.n                         // and the next one
///     a, b = state.entry[i], state.entry[j]
///     if a is tracked:
///         if b is tracked and counts[b] < counts[a] and given[b] - given[a] < MAX_LEAD:
///             i, a = j, b
///         counts[a] += 1                            // its worker takes 1 off when done
///         given[a] += 1
///     if select(socks[i]) succeeds: pass
/// select(socks[FALLBACK])   // none taking turns, or slot i empty while the array is rewritten
/// pass                      // and if even that failed, the kernel's hash picks
/// ```
///
/// A member's count is how many connections were given to its socket and its worker is not
/// done with yet (see [`TurnCounter`]): its load. Comparing two neighbours in the turn passes
/// over a busy worker for a less busy one, and keeps the turns when the loads are even (ties
/// go to the turn's), so the shares stay even; a worker that is slower for long would take
/// fewer and fewer, which `MAX_LEAD` bounds. Members whose worker does not count keep plain
/// turns: their count would only grow.
///
/// Without the fallback slot the kernel's hash would pick among every socket of the group,
/// including those of workers that do not serve.
fn program(state: RawFd, counts: RawFd, socks: RawFd) -> Vec<Insn> {
    const MOV64_X: u8 = 0xbf; // dst = src
    const MOV64_K: u8 = 0xb7; // dst = imm
    const ADD64_K: u8 = 0x07; // dst += imm
    const ADD64_X: u8 = 0x0f; // dst += src
    const AND64_K: u8 = 0x57; // dst &= imm
    const LSH64_K: u8 = 0x67; // dst <<= imm
    const RSH64_K: u8 = 0x77; // dst >>= imm
    const MOD64_X: u8 = 0x9f; // dst %= src
    const ST_W: u8 = 0x62; // *(u32 *)(dst + off) = imm
    const STX_W: u8 = 0x63; // *(u32 *)(dst + off) = src
    const LDX_W: u8 = 0x61; // dst = *(u32 *)(src + off)
    const LDX_DW: u8 = 0x79; // dst = *(u64 *)(src + off)
    const ATOMIC_DW: u8 = 0xdb; // imm BPF_ADD: *(u64 *)(dst + off) += src, atomically
    const FETCH: i32 = 0x01; // with BPF_ADD (0): src = fetch_add(dst + off, src)
    const JEQ_K: u8 = 0x15; // if dst == imm: jump
    const JGE_K: u8 = 0x35; // if dst >= imm (unsigned): jump
    const JLT_X: u8 = 0xad; // if dst < src (unsigned): jump
    const JSGE_X: u8 = 0x7d; // if dst >= src (signed): jump
    const JSGE_K: u8 = 0x75; // if dst >= imm (signed): jump
    const SUB64_X: u8 = 0x1f; // dst -= src
    const CALL: u8 = 0x85;
    const EXIT: u8 = 0x95;
    const MAP_LOOKUP_ELEM: i32 = 1;
    const SK_SELECT_REUSEPORT: i32 = 82;
    const SK_PASS: i32 = 1;
    const MEMBERS: i32 = MAX_SOCKETS as i32;
    let mut a = Asm {
        insns: Vec::with_capacity(80),
        labels: Vec::new(),
        jumps: Vec::new(),
    };
    // r6 = ctx, r7 = state then counts, r8 = the chosen turn, r9 = the next turn.
    a.op(MOV64_X, 6, 1, 0, 0)
        .op(ST_W, 10, 0, -4, 0) // key 0 on the stack
        .op(MOV64_X, 2, 10, 0, 0)
        .op(ADD64_K, 2, 0, 0, -4)
        .map(1, state)
        .op(CALL, 0, 0, 0, MAP_LOOKUP_ELEM)
        .jump(JEQ_K, 0, 0, 0, "fallback")
        .op(MOV64_X, 7, 0, 0, 0)
        .op(LDX_W, 2, 7, 8, 0) // r2 = n
        .jump(JEQ_K, 2, 0, 0, "fallback")
        .op(MOV64_K, 1, 0, 0, 1)
        .op(ATOMIC_DW, 7, 1, 0, FETCH) // r1 = turn++
        .op(MOD64_X, 1, 2, 0, 0)
        .op(MOV64_X, 8, 1, 0, 0) // i
        .op(MOV64_X, 9, 8, 0, 0)
        .op(ADD64_K, 9, 0, 0, 1)
        .jump(JLT_X, 9, 2, 0, "next")
        .op(MOV64_K, 9, 0, 0, 0)
        .label("next") // j = (i + 1) % n
        // Bounds the verifier can see (n never exceeds them).
        .jump(JGE_K, 8, 0, MEMBERS, "fallback")
        .jump(JGE_K, 9, 0, MEMBERS, "fallback")
        .op(MOV64_X, 1, 8, 0, 0)
        .op(LSH64_K, 1, 0, 0, 2)
        .op(ADD64_X, 1, 7, 0, 0)
        .op(LDX_W, 3, 1, 16, 0) // r3 = entry[i]
        .op(MOV64_X, 1, 9, 0, 0)
        .op(LSH64_K, 1, 0, 0, 2)
        .op(ADD64_X, 1, 7, 0, 0)
        .op(LDX_W, 4, 1, 16, 0) // r4 = entry[j]
        .op(STX_W, 10, 3, -12, 0) // both kept across the call
        .op(STX_W, 10, 4, -16, 0)
        .op(RSH64_K, 3, 0, 0, 31)
        .jump(JEQ_K, 3, 0, 0, "select") // untracked: a plain turn
        .op(MOV64_X, 2, 10, 0, 0)
        .op(ADD64_K, 2, 0, 0, -4)
        .map(1, counts)
        .op(CALL, 0, 0, 0, MAP_LOOKUP_ELEM)
        .jump(JEQ_K, 0, 0, 0, "select")
        .op(LDX_W, 3, 10, -12, 0)
        .op(AND64_K, 3, 0, 0, MEMBERS - 1)
        .op(LSH64_K, 3, 0, 0, 3)
        .op(ADD64_X, 3, 0, 0, 0) // r3 = &counts[a]
        .op(LDX_W, 4, 10, -16, 0)
        .op(MOV64_X, 1, 4, 0, 0)
        .op(RSH64_K, 1, 0, 0, 31)
        .jump(JEQ_K, 1, 0, 0, "count") // the next is untracked: the turn's
        .op(AND64_K, 4, 0, 0, MEMBERS - 1)
        .op(LSH64_K, 4, 0, 0, 3)
        .op(ADD64_X, 4, 0, 0, 0) // r4 = &counts[b]
        .op(LDX_DW, 1, 3, 0, 0)
        .op(LDX_DW, 2, 4, 0, 0)
        .jump(JSGE_X, 2, 1, 0, "count") // ties: the turn's
        .op(LDX_DW, 1, 3, GIVEN, 0)
        .op(LDX_DW, 2, 4, GIVEN, 0)
        .op(SUB64_X, 2, 1, 0, 0) // r2 = given[b] - given[a]
        .jump(JSGE_K, 2, 0, MAX_LEAD, "count") // b is far enough ahead
        .op(MOV64_X, 8, 9, 0, 0)
        .op(MOV64_X, 3, 4, 0, 0)
        .label("count")
        .op(MOV64_K, 1, 0, 0, 1)
        .op(ATOMIC_DW, 3, 1, 0, 0) // counts[chosen] += 1
        .op(ATOMIC_DW, 3, 1, GIVEN, 0) // given[chosen] += 1
        .label("select")
        .op(STX_W, 10, 8, -8, 0)
        .op(MOV64_X, 1, 6, 0, 0)
        .map(2, socks)
        .op(MOV64_X, 3, 10, 0, 0)
        .op(ADD64_K, 3, 0, 0, -8)
        .op(MOV64_K, 4, 0, 0, 0)
        .op(CALL, 0, 0, 0, SK_SELECT_REUSEPORT)
        .jump(JEQ_K, 0, 0, 0, "pass")
        .label("fallback")
        .op(ST_W, 10, 0, -8, FALLBACK as i32)
        .op(MOV64_X, 1, 6, 0, 0)
        .map(2, socks)
        .op(MOV64_X, 3, 10, 0, 0)
        .op(ADD64_K, 3, 0, 0, -8)
        .op(MOV64_K, 4, 0, 0, 0)
        .op(CALL, 0, 0, 0, SK_SELECT_REUSEPORT)
        .label("pass")
        .op(MOV64_K, 0, 0, 0, SK_PASS)
        .op(EXIT, 0, 0, 0, 0);
    a.finish()
}

/// The program and maps of one group.
pub struct Steer {
    prog: OwnedFd,
    state: OwnedFd,
    counts: Counts,
    socks: OwnedFd,
    /// How many sockets take turns now (slots 0..len of the array).
    len: u32,
}

impl Steer {
    /// Loads the program. Fails without the privileges for it (EPERM), or on a kernel without
    /// BPF or reuseport socket arrays; the caller then accepts in the primary.
    pub fn new() -> io::Result<Steer> {
        let state = create_map(BPF_MAP_TYPE_ARRAY, 4, STATE_SIZE, 1, 0)?;
        let counts = Counts::map(create_map(
            BPF_MAP_TYPE_ARRAY,
            4,
            COUNTS_SIZE,
            1,
            BPF_F_MMAPABLE,
        )?)?;
        let socks = create_map(BPF_MAP_TYPE_REUSEPORT_SOCKARRAY, 4, 8, FALLBACK + 1, 0)?;
        let insns = program(state.as_raw_fd(), counts.fd.as_raw_fd(), socks.as_raw_fd());
        let license = b"Dual MIT/GPL\0";
        let mut log = vec![0u8; 65536];
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
            counts,
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

    /// Makes `turns` (listening sockets of the group, each with its member's entry: its index
    /// in the count array, with [`TRACKED`] when its worker counts its accepts) take turns, in
    /// this order, from the next connection on. With none, the fallback socket takes all.
    ///
    /// A socket can hold one slot of the array only, so the array is emptied and written
    /// anew. Meanwhile, for a few microseconds, the fallback socket takes what comes.
    pub fn set(&mut self, turns: &[(RawFd, u32)]) -> io::Result<()> {
        if turns.len() > MAX_SOCKETS as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("more than {MAX_SOCKETS} sockets to take turns"),
            ));
        }
        if let Some(&(_, e)) = turns.iter().find(|t| t.1 & !TRACKED >= MAX_SOCKETS) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("member {} is past the last of {MAX_SOCKETS}", e & !TRACKED),
            ));
        }
        self.set_state(&[])?;
        for i in 0..self.len {
            // An empty slot (its socket closed since) is no error here.
            let _ = Attr::new()
                .u32(0, self.socks.as_raw_fd() as u32)
                .u64(8, &i as *const u32 as u64)
                .call(BPF_MAP_DELETE_ELEM);
        }
        self.len = 0;
        for (i, &(fd, _)) in turns.iter().enumerate() {
            let value = fd as u64;
            update(
                self.socks.as_raw_fd(),
                &(i as u32),
                (&value as *const u64).cast(),
            )?;
            self.len = i as u32 + 1;
        }
        let entries: Vec<u32> = turns.iter().map(|t| t.1).collect();
        self.set_state(&entries)
    }

    fn set_state(&self, entries: &[u32]) -> io::Result<()> {
        let mut value = vec![0u8; STATE_SIZE as usize];
        // The turn counter starts again at 0: the next connection goes to the first socket.
        value[8..12].copy_from_slice(&(entries.len() as u32).to_ne_bytes());
        for (i, e) in entries.iter().enumerate() {
            value[16 + 4 * i..20 + 4 * i].copy_from_slice(&e.to_ne_bytes());
        }
        update(self.state.as_raw_fd(), &0, value.as_ptr())
    }

    /// Member `member` starts anew (a worker is given its socket): nothing is counted against
    /// it. What waits in its socket, left by the last worker, the new worker takes and counts
    /// off: its count is below zero for that while, and it is preferred until it is even.
    ///
    /// Its share starts level with the member furthest ahead, so that no other member is held
    /// to strict turns with it for a lead it took over a worker gone since (see `MAX_LEAD`).
    pub fn reset(&self, member: u32) {
        if let Some(c) = self.counts.get(member) {
            c.store(0, Ordering::Relaxed);
        }
        let most = (0..MAX_SOCKETS)
            .filter_map(|m| self.counts.given(m))
            .map(|g| g.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0);
        if let Some(g) = self.counts.given(member) {
            g.store(most, Ordering::Relaxed);
        }
    }

    /// Member `member`'s count: connections given to its socket and not taken off yet.
    #[cfg(test)]
    pub fn count(&self, member: u32) -> i64 {
        self.counts
            .get(member)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// A copy of the count map, for a worker that counts its connections (see [`TurnCounter`]).
    pub fn counts_fd(&self) -> io::Result<OwnedFd> {
        self.counts.fd.try_clone()
    }
}

/// The count map, mapped into this process's memory: one i64 per member.
struct Counts {
    fd: OwnedFd,
    base: *mut AtomicI64,
}

// SAFETY: the memory is only ever accessed through atomics, and lives as long as the value.
unsafe impl Send for Counts {}
// SAFETY: as above.
unsafe impl Sync for Counts {}

impl Counts {
    fn map(fd: OwnedFd) -> io::Result<Counts> {
        // SAFETY: maps the map's values (COUNTS_SIZE bytes, one page-aligned array) shared; the
        // result is checked before use and unmapped in Drop.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                COUNTS_SIZE as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Counts {
            fd,
            base: base.cast(),
        })
    }

    fn get(&self, member: u32) -> Option<&AtomicI64> {
        // SAFETY: in bounds (checked), aligned (page-aligned base, 8-byte elements), and the
        // mapping lives as long as `self`.
        (member < MAX_SOCKETS).then(|| unsafe { &*self.base.add(member as usize) })
    }

    /// How many connections the program gave member `member` (the second half).
    fn given(&self, member: u32) -> Option<&AtomicI64> {
        // SAFETY: as in `get`, MAX_SOCKETS elements further (COUNTS_SIZE holds both halves).
        (member < MAX_SOCKETS).then(|| unsafe { &*self.base.add((MAX_SOCKETS + member) as usize) })
    }
}

impl Drop for Counts {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `map` mapped; no reference into it outlives `self`.
        unsafe { libc::munmap(self.base.cast(), COUNTS_SIZE as usize) };
    }
}

/// A worker's side of the counting: the count map its primary sent, and its member's index.
/// The program adds one per connection it gives the member's socket; the worker takes one off
/// when it is done with such a connection: when it closes it (the count is then the
/// connections it has in hand or waiting, its load), or when it accepts it (the count is then
/// its accept queue). See `program`.
pub struct TurnCounter {
    counts: Counts,
    member: u32,
}

impl std::fmt::Debug for TurnCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnCounter")
            .field("member", &self.member)
            .finish()
    }
}

impl TurnCounter {
    /// Maps the count map `fd` (from the primary) for member `member`.
    pub fn new(fd: OwnedFd, member: u32) -> io::Result<TurnCounter> {
        if member >= MAX_SOCKETS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("member {member} is past the last of {MAX_SOCKETS}"),
            ));
        }
        Ok(TurnCounter {
            counts: Counts::map(fd)?,
            member,
        })
    }

    /// One connection from the member's socket is done with (closed, or accepted).
    pub fn done(&self) {
        if let Some(c) = self.counts.get(self.member) {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The member's index in the count map.
    pub fn member(&self) -> u32 {
        self.member
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

    fn steer() -> Option<Steer> {
        match Steer::new() {
            Ok(s) => Some(s),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                eprintln!("skipped: loading a BPF program needs CAP_BPF ({e})");
                None
            }
            Err(e) => panic!("loading the program: {e}"),
        }
    }

    fn connect(port: u16, n: usize) -> Vec<TcpStream> {
        let clients = (0..n)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(50));
        clients
    }

    /// A worker that counts its accepts has been given `n` connections it has not taken.
    fn busy(steer: &Steer, member: u32, n: i64) {
        steer
            .counts
            .get(member)
            .unwrap()
            .store(n, Ordering::Relaxed);
    }

    #[test]
    fn a_busy_worker_is_passed_over_for_the_next_until_the_counts_are_even() {
        let Some(mut steer) = steer() else { return };
        let (fallback, port) = listener(0);
        let (a, _) = listener(port);
        let (b, _) = listener(port);
        steer.attach(fallback.as_raw_fd()).unwrap();
        steer
            .set(&[(a.as_raw_fd(), 3 | TRACKED), (b.as_raw_fd(), 7 | TRACKED)])
            .unwrap();
        busy(&steer, 3, 5);
        let _c = connect(port, 10);
        // b takes every connection until it has as many waiting as a (5 + 1: ties go to the
        // turn's), then they alternate.
        assert_eq!([pending(&fallback), pending(&a), pending(&b)], [0, 2, 8]);
        assert_eq!((steer.count(3), steer.count(7)), (7, 8));

        // The worker took them all: both even again, strict turns.
        busy(&steer, 3, 0);
        busy(&steer, 7, 0);
        let _c = connect(port, 10);
        assert_eq!([pending(&fallback), pending(&a), pending(&b)], [0, 5, 5]);
    }

    #[test]
    fn a_less_busy_worker_that_took_too_many_ahead_waits_for_its_turn() {
        let Some(mut steer) = steer() else { return };
        let (fallback, port) = listener(0);
        let (a, _) = listener(port);
        let (b, _) = listener(port);
        steer.attach(fallback.as_raw_fd()).unwrap();
        steer
            .set(&[(a.as_raw_fd(), TRACKED), (b.as_raw_fd(), 1 | TRACKED)])
            .unwrap();
        busy(&steer, 0, 50);
        let given = |m| steer.counts.given(m).unwrap();
        given(0).store(1000, Ordering::Relaxed);
        given(1).store(1000 + i64::from(MAX_LEAD), Ordering::Relaxed);
        let _c = connect(port, 10);
        // b is idle and a busy, but b is MAX_LEAD ahead: strict turns.
        assert_eq!([pending(&fallback), pending(&a), pending(&b)], [0, 5, 5]);
        assert_eq!(
            given(1).load(Ordering::Relaxed) - given(0).load(Ordering::Relaxed),
            256
        );

        // One short of it: b takes one out of turn, and then waits again.
        given(1).store(given(0).load(Ordering::Relaxed) + 255, Ordering::Relaxed);
        let _c = connect(port, 3);
        assert_eq!([pending(&fallback), pending(&a), pending(&b)], [0, 1, 2]);

        // A member given to a new worker starts level with the one furthest ahead.
        steer.reset(0);
        assert_eq!(
            (steer.count(0), given(0).load(Ordering::Relaxed)),
            (0, given(1).load(Ordering::Relaxed))
        );
    }

    #[test]
    fn turns_stay_even_over_workers_that_count_when_none_is_busier() {
        let Some(mut steer) = steer() else { return };
        let (fallback, port) = listener(0);
        let socks = [listener(port).0, listener(port).0, listener(port).0];
        steer.attach(fallback.as_raw_fd()).unwrap();
        let turns: Vec<(RawFd, u32)> = (0..3)
            .map(|i| (socks[i].as_raw_fd(), i as u32 | TRACKED))
            .collect();
        steer.set(&turns).unwrap();
        // Nobody accepts: every count grows, by the same in each round.
        let _c = connect(port, 30);
        let got: Vec<usize> = socks.iter().map(pending).collect();
        assert_eq!((pending(&fallback), got), (0, vec![10, 10, 10]));
        assert_eq!((0..3).map(|m| steer.count(m)).collect::<Vec<_>>(), [10; 3]);
    }

    #[test]
    fn a_worker_that_does_not_count_keeps_strict_turns() {
        let Some(mut steer) = steer() else { return };
        let (fallback, port) = listener(0);
        let (a, _) = listener(port);
        let (b, _) = listener(port);
        let (c, _) = listener(port);
        steer.attach(fallback.as_raw_fd()).unwrap();
        // a does not count; b counts and looks busy; c counts and is idle.
        steer
            .set(&[
                (a.as_raw_fd(), 0),
                (b.as_raw_fd(), 1 | TRACKED),
                (c.as_raw_fd(), 2 | TRACKED),
            ])
            .unwrap();
        busy(&steer, 1, 100);
        let _c = connect(port, 12);
        // a keeps every third connection; b's go to c; c's turn is c's (a, after it, does
        // not count, so no comparison).
        assert_eq!(
            [pending(&fallback), pending(&a), pending(&b), pending(&c)],
            [0, 4, 0, 8]
        );
        assert_eq!(
            (steer.count(0), steer.count(1), steer.count(2)),
            (0, 100, 8)
        );
    }

    #[test]
    fn a_turn_counter_takes_one_off_its_members_count() {
        let Some(steer) = steer() else { return };
        busy(&steer, 5, 3);
        let counter = TurnCounter::new(steer.counts_fd().unwrap(), 5).unwrap();
        counter.done();
        assert_eq!((steer.count(5), steer.count(4)), (2, 0));
        steer.reset(5);
        assert_eq!(steer.count(5), 0);
        assert!(TurnCounter::new(steer.counts_fd().unwrap(), MAX_SOCKETS).is_err());
    }

    #[test]
    fn connections_take_turns_over_the_sockets_in_the_array() {
        let Some(mut steer) = steer() else { return };
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
            .set(&[(a.as_raw_fd(), 0), (b.as_raw_fd(), 1), (c.as_raw_fd(), 2)])
            .unwrap();
        connect(30);
        assert_eq!(counts(), [0, 10, 10, 10]);

        // Two of three: the second socket gets nothing from now on.
        steer
            .set(&[(c.as_raw_fd(), 2), (a.as_raw_fd(), 0)])
            .unwrap();
        connect(20);
        assert_eq!(counts(), [0, 10, 0, 10]);

        // None taking turns: everything goes to the fallback socket, none to the others.
        steer.set(&[]).unwrap();
        connect(12);
        assert_eq!(counts(), [12, 0, 0, 0]);
    }
}
