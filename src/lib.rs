//! coinfeed: a synchronous, bounded CoinAPI WebSocket ingester that writes NDJSON on stdout.
//!
//! The binary (`src/main.rs`) only parses the command line and maps the outcome to an exit code;
//! everything else lives here so tests and benches drive the same code. See ARCHITECTURE.md.

pub mod backoff;
pub mod config;
pub mod gaps;
pub mod json_scan;
pub mod pipeline;
pub mod protocol;
pub mod reader;
pub mod recovery;
pub mod recovery_core;
pub mod rest;
pub mod shutdown;
pub mod stats;
pub mod worker;
pub mod writer;
