//! The output side: `ndjson` owns every line shape and the `Batch` that carries whole lines with
//! their counts; `writer` is the one thread that writes batches to stdout (or the sink it was
//! given), or, with the `kafka` feature, to a Kafka topic (`kafka`); `sink` names, rotates and
//! compresses the files under `--output-dir`, and `resume` reads them back for each symbol's
//! last trade (`--resume`).

#[cfg(feature = "kafka")]
pub mod kafka;
pub mod ndjson;
pub mod resume;
pub mod sink;
pub mod writer;
