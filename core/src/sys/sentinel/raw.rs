//! System calls without libc: nothing in them touches thread-local storage (`errno`).

/// Whether the sentinel may share the primary's memory: only where `call` needs no libc.
pub const SHARED_MEMORY: bool = cfg!(any(target_arch = "x86_64", target_arch = "aarch64"));

/// Returns the result, or minus the error number.
#[cfg(target_arch = "x86_64")]
pub unsafe fn call(n: libc::c_long, a: usize, b: usize, c: usize, d: usize) -> isize {
    let ret: isize;
    std::arch::asm!(
        "syscall",
        inlateout("rax") n as isize => ret,
        in("rdi") a,
        in("rsi") b,
        in("rdx") c,
        in("r10") d,
        lateout("rcx") _,
        lateout("r11") _,
        options(nostack),
    );
    ret
}

#[cfg(target_arch = "aarch64")]
pub unsafe fn call(n: libc::c_long, a: usize, b: usize, c: usize, d: usize) -> isize {
    let ret: isize;
    std::arch::asm!(
        "svc 0",
        in("x8") n,
        inlateout("x0") a as isize => ret,
        in("x1") b,
        in("x2") c,
        in("x3") d,
        options(nostack),
    );
    ret
}

/// Elsewhere the sentinel is forked, and libc's wrapper may write its own copy of errno.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub unsafe fn call(n: libc::c_long, a: usize, b: usize, c: usize, d: usize) -> isize {
    let r = libc::syscall(n, a, b, c, d);
    if r < 0 {
        -(*libc::__errno_location() as isize)
    } else {
        r as isize
    }
}
