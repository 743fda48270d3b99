//! Integration tests: the real `coinfeed` binary against the built-in simulator on 127.0.0.1
//! with OS-chosen ports. Every wait has a deadline; no test depends on a fixed sleep.

mod backpressure;
mod books;
mod cli;
mod delivery;
mod failures;
mod gaps;
mod harness;
mod hostile;
#[cfg(feature = "kafka")]
mod kafka;
mod key_leak;
mod lifecycle;
mod metrics_endpoint;
mod operations;
mod protocol_faults;
mod recovery;
mod resume;
mod shutdown;
mod tidy;
mod tls;
