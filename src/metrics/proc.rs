//! The process's own memory, from /proc/self/status (Linux): read in ~14 µs, so the health line
//! can afford it every interval.

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
