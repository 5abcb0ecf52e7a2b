//! The program of the kernel's turns, assembled by hand: its instructions and what it does.

use std::os::fd::RawFd;

use super::{BPF_PSEUDO_MAP_FD, FALLBACK, GIVEN, MAX_LEAD, MAX_SOCKETS, PLACED};

/// One instruction: opcode, registers (destination in the low nibble), offset, immediate.
#[derive(Clone, Copy)]
#[repr(C)]
pub(super) struct Insn {
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
///     if select(socks[i]) succeeds:
///         placed[entry[i]] += 1                     // every member, tracked or not
///         pass
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
/// `placed` counts the connections each member's socket was given, whoever its worker is and
/// whether it counts: the primary reads it to know how many connections a worker that accepts
/// itself took (the status, the metrics, `max_requests`).
///
/// Without the fallback slot the kernel's hash would pick among every socket of the group,
/// including those of workers that do not serve.
pub(super) fn program(state: RawFd, counts: RawFd, socks: RawFd) -> Vec<Insn> {
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
    const JNE_K: u8 = 0x55; // if dst != imm: jump
    const JA: u8 = 0x05; // jump
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
        .op(LDX_W, 1, 10, -16, 0) // the chosen entry is the next one's
        .op(STX_W, 10, 1, -12, 0)
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
        .jump(JNE_K, 0, 0, 0, "fallback")
        .op(MOV64_X, 2, 10, 0, 0) // placed[chosen entry] += 1
        .op(ADD64_K, 2, 0, 0, -4)
        .map(1, counts)
        .op(CALL, 0, 0, 0, MAP_LOOKUP_ELEM)
        .jump(JEQ_K, 0, 0, 0, "pass")
        .op(LDX_W, 1, 10, -12, 0)
        .op(AND64_K, 1, 0, 0, MEMBERS - 1)
        .op(LSH64_K, 1, 0, 0, 3)
        .op(ADD64_X, 0, 1, 0, 0)
        .op(MOV64_K, 1, 0, 0, 1)
        .op(ATOMIC_DW, 0, 1, PLACED, 0)
        .jump(JA, 0, 0, 0, "pass")
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
