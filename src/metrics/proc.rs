//! The process's own memory, from /proc/self/status (Linux): read in ~14 µs, so the health line
//! can afford it every interval; and the one call that gives freed memory back to the OS.

/// Resident and peak memory of this process in KiB (VmRSS, VmHWM). `None` where /proc is not
/// available.
pub fn memory_kib() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].trim().trim_end_matches("kB").trim().parse().ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Returns the allocator's free pages to the OS (glibc's `malloc_trim(0)`, which releases free
/// pages inside every arena, not only at the top of the heap). A no-op where glibc is not the
/// allocator. Takes a few milliseconds after a large drain; called once per drained stall.
#[allow(unsafe_code)]
pub fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas under their locks; it takes no pointer.
    unsafe {
        libc::malloc_trim(0);
    }
}
