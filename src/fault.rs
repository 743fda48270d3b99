//! Test-only fault injection: makes a named pipeline thread panic after it handled a given number
//! of items, so the integration tests can prove that any thread's failure ends the whole run
//! truthfully (exit 1, the thread named). Set `COINFEED_TEST_PANIC=<thread>:<n>` with `<thread>`
//! one of `reader` (frames dispatched), `worker-<id>` (inputs handled), `writer` (batches
//! written) or `recovery` (REST fetches).
//!
//! It exists only in debug builds (`debug_assertions`): a release build compiles every call to
//! nothing, so no command line, environment or network input can reach it there (`.ci/run`
//! checks that the release binary does not contain the variable's name).

#[cfg(debug_assertions)]
mod armed {
    use std::sync::OnceLock;

    static PLAN: OnceLock<Option<(String, u64)>> = OnceLock::new();

    fn plan() -> &'static Option<(String, u64)> {
        PLAN.get_or_init(|| {
            let spec = std::env::var("COINFEED_TEST_PANIC").ok()?;
            let (thread, n) = spec.rsplit_once(':')?;
            Some((thread.to_string(), n.parse().ok()?))
        })
    }

    pub fn maybe_panic(thread: &str, count: u64) {
        if let Some((target, n)) = plan() {
            if target == thread && *n == count {
                panic!("injected test panic in {thread} after {count}");
            }
        }
    }
}

/// Panics when `COINFEED_TEST_PANIC` names `thread` and `count` (debug builds only).
#[cfg(debug_assertions)]
pub fn maybe_panic(thread: &str, count: u64) {
    armed::maybe_panic(thread, count);
}

/// Release builds: nothing.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn maybe_panic(_thread: &str, _count: u64) {}
