//! coinfeed: a synchronous, bounded CoinAPI WebSocket ingester that writes NDJSON on stdout.
//!
//! The binary (`src/main.rs`) parses the command line and maps the outcome to an exit code;
//! everything else lives here so tests and benches drive the same code. See ARCHITECTURE.md for
//! the rooms and the rules between them.

pub mod app;
pub mod clock;
pub mod config;
pub mod fault;
pub mod ingest;
pub mod lanes;
pub mod metrics;
pub mod output;
pub mod recovery;
pub mod shutdown;
pub mod wire;
pub mod worker;
