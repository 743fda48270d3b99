//! Where the writer thread's bytes go: a `Sink` is either a stream (stdout, the default, or any
//! `Write` a test hands in) or a set of rotating files (`Rotating`). The writer gives it whole-line
//! batches; this module decides which file each batch lands in, names files, compresses them and
//! finishes them so that a downstream job only ever sees complete files. `Rotating` knows nothing
//! of NDJSON: a raw-frame recorder reuses it with its own extension and a header (its magic)
//! written first in every file. Time comes in as an argument (`now_unix_ns`), so rotation is
//! tested with injected times; the clock is read by the writer thread that calls it.
//!
//! A file's life: it is created as `DIR/<prefix>-<UTC start>.<extension>[.zst|.gz].part` when the
//! first batch for it arrives (`create_new`: an existing file is never opened), receives whole
//! batches, and is finished when its time is up, when it holds the rotation size, or at the end
//! of the run: the compressor's stream is ended, the file is `sync_all`ed, renamed to its final
//! name (which is checked to be free first, so nothing is overwritten) and the directory is
//! fsynced, so the rename itself survives a crash. Only then is it counted as finished.
//!
//! Files are opened lazily, at the first batch after a rotation, never at the rotation itself:
//! an idle hour with time rotation leaves no file (rather than an empty one a downstream job must
//! recognise and skip), and a run that writes nothing leaves nothing. So every file holds at least
//! one batch, and "empty part" is a state that cannot occur.
//!
//! A size rotation counts what reaches the file, so a compressed file is cut by its compressed
//! size, but the count lags by what the compressor holds: zstd emits a block per 128 KiB of
//! input, gzip's output arrives in ~46 KB steps. A file therefore ends past the size by at most
//! one batch plus, compressed, that held-back output. `tick` cuts a full idle file too.
//!
//! `flush` (the writer's, when its queue is empty) makes a compressed `.part` decodable up to the
//! last line, at a cost in ratio that depends on how often it comes: flushing after every 32 KiB
//! batch cost under 1% of ratio, after every single line (a very slow feed) zstd fell from 4.7 to
//! 3.0 and ran at less than half the speed (39 MB/s), gzip to 3.1.
//!
//! After an error (disk full, a vanished directory) the `Rotating` writes nothing more: every
//! later call returns an error naming the file and the first error. The file being written stays
//! as `.part` (its last line may be torn) and is never renamed to a final name; files finished
//! before it are untouched, since a finished file is never opened again.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;

use crate::config::units::Rotate;

/// zstd's own default level. Measured on 200 MB of synthetic trade lines (323 bytes, random
/// uuids and digits) on this 2-core machine: 92 MB/s of one core, ratio 4.7; gzip at its default
/// gave the same ratio at 22 MB/s. (`zstd -b1` on the same text: level 1 twice as fast and no
/// worse; worth measuring on recorded CoinAPI data before changing.)
pub const ZSTD_LEVEL: i32 = 3;
/// gzip's fastest level. zlib's default (6) held the writer to ~80,000 msg/s on this 2-core VM,
/// under the feed's own rate; level 1 wrote the same 500,000 lines in 2.2 s of CPU instead of
/// 5.9-6.7 s (files 1.6 times larger, still 6.7 times smaller than plain; measured side by side,
/// see README "Running for weeks"). Who wants small files picks zstd, smaller and faster still.
pub const GZIP_LEVEL: u32 = 1;
/// How many `_001`, `_002`, ... suffixes are tried before a name is given up: more than a few
/// means the clock is stuck or another writer shares the directory and prefix, which a person
/// must see. Three zero-padded digits after `_` (which sorts after `.`) keep names in time order
/// when sorted: `…160000Z.ndjson`, `…160000Z_001.ndjson`, `…160000Z_002.ndjson`, `…160001Z.ndjson`.
pub const NAME_SUFFIXES_MAX: u32 = 999;

/// How each output file is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compress {
    None,
    /// zstd at `ZSTD_LEVEL`, with the frame checksum, so a damaged file is detected on decode.
    Zstd,
    /// gzip at `GZIP_LEVEL` (its CRC-32 is part of the format).
    Gzip,
}

impl Compress {
    /// What the compressed file's name ends with, after the extension.
    pub fn suffix(self) -> &'static str {
        match self {
            Compress::None => "",
            Compress::Zstd => ".zst",
            Compress::Gzip => ".gz",
        }
    }
}

/// What a set of rotating files looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSet {
    pub dir: PathBuf,
    /// The start of every name, e.g. `coinfeed`: no `/`, not empty.
    pub prefix: String,
    /// Without the dot, e.g. `ndjson`: no `/`, not empty.
    pub extension: String,
    /// `None`: one file for the whole run.
    pub rotate: Option<Rotate>,
    pub compress: Compress,
    /// Written first in every file (before compression), e.g. a recorder's magic; empty for
    /// NDJSON. Counted in the file's bytes, not in its lines.
    pub header: Vec<u8>,
}

/// The file being written, for the writer's log line when a write fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStatus {
    /// The `.part` being written; `None` between a rotation and the next batch.
    pub part: Option<PathBuf>,
    /// Lines in it (as the batches counted them).
    pub lines: u64,
    /// Bytes given to it: header and batches, before compression.
    pub bytes_uncompressed: u64,
    /// Bytes that have reached the file (compressed bytes when compressed; a compressor holds
    /// back up to a block until it is flushed).
    pub bytes_on_disk: u64,
    /// Files finished so far in this run.
    pub finished: u64,
}

/// What a run of rotating files wrote, once the last file is finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub files: u64,
    pub lines: u64,
    pub bytes_on_disk: u64,
    /// The last file finished, if any.
    pub last: Option<PathBuf>,
}

/// Where the writer's batches go. Stdout stays the default (`Stream`).
// One `Sink` exists per run, moved once into the writer thread and never copied on a hot path,
// so its ~500 bytes cost nothing; boxing `Rotating` would only add an indirection to every batch.
#[allow(clippy::large_enum_variant)]
pub enum Sink<W: Write> {
    Stream(W),
    Files(Rotating),
    /// One record per line into a Kafka topic (`--kafka-brokers`).
    #[cfg(feature = "kafka")]
    Kafka(Box<crate::output::kafka::KafkaSink>),
}

impl<W: Write> Sink<W> {
    /// Writes one batch of whole lines with one `write_all`; to files, never split across two.
    pub fn write_batch(&mut self, bytes: &[u8], lines: u64, now_unix_ns: i128) -> io::Result<()> {
        match self {
            Sink::Stream(w) => w.write_all(bytes),
            Sink::Files(files) => files.write(bytes, lines, now_unix_ns),
            #[cfg(feature = "kafka")]
            Sink::Kafka(k) => k.write(bytes),
        }
    }

    /// Pushes what was written to the OS (and, compressed, to a decodable block boundary).
    pub fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Stream(w) => w.flush(),
            Sink::Files(files) => files.flush(),
            #[cfg(feature = "kafka")]
            Sink::Kafka(_) => Ok(()),
        }
    }

    /// Lets a time rotation (or a size rotation of an idle file) happen when no batch comes.
    pub fn tick(&mut self, now_unix_ns: i128) -> io::Result<()> {
        match self {
            Sink::Stream(_) => Ok(()),
            Sink::Files(files) => files.tick(now_unix_ns),
            #[cfg(feature = "kafka")]
            Sink::Kafka(k) => {
                k.poll();
                Ok(())
            }
        }
    }

    /// Files finished so far, for `metrics.files_finished` (0 for a stream).
    pub fn files_finished(&self) -> u64 {
        match self {
            Sink::Files(files) => files.files_finished(),
            _ => 0,
        }
    }

    /// The file being written, for a log line; `None` for a stream.
    pub fn status(&self) -> Option<FileStatus> {
        match self {
            Sink::Files(files) => Some(files.status()),
            _ => None,
        }
    }

    /// Where the lines go, for a log line.
    pub fn describe(&self) -> String {
        match self {
            Sink::Stream(_) => "stdout".into(),
            Sink::Files(_) => "the output files".into(),
            #[cfg(feature = "kafka")]
            Sink::Kafka(k) => format!("{k:?}"),
        }
    }

    /// The Kafka sink's delivery reports so far, into the metrics (nothing for other sinks).
    pub fn report(&self, metrics: &crate::metrics::Metrics) {
        #[cfg(feature = "kafka")]
        if let Sink::Kafka(k) = self {
            let d = k.deliveries();
            metrics.delivered.set(d.delivered);
            metrics.delivery_failed.set(d.failed);
            metrics.delivery_in_flight.set(k.in_flight());
        }
        let _ = metrics;
    }

    /// Flushes a stream; finishes the last file of a set.
    /// Returns the files finished in all (0 for a stream).
    pub fn finish(self, metrics: &crate::metrics::Metrics) -> io::Result<u64> {
        let _ = metrics;
        match self {
            Sink::Stream(mut w) => w.flush().map(|()| 0),
            Sink::Files(files) => files.finish().map(|f| f.files),
            #[cfg(feature = "kafka")]
            Sink::Kafka(k) => {
                let reported = k.finish();
                let d = reported.as_ref().map_or_else(|(d, _)| *d, |d| *d);
                metrics.delivered.set(d.delivered);
                metrics.delivery_failed.set(d.failed);
                metrics.delivery_in_flight.set(0);
                if let Some(p) = d.ack_p50_us {
                    metrics.kafka_ack_p50_us.set(p);
                }
                if let Some(p) = d.ack_p99_us {
                    metrics.kafka_ack_p99_us.set(p);
                }
                reported.map(|_| 0).map_err(|(_, e)| e)
            }
        }
    }
}

impl<W: Write> fmt::Debug for Sink<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sink::Stream(_) => f.write_str("Sink::Stream"),
            Sink::Files(files) => f.debug_tuple("Sink::Files").field(files).finish(),
            #[cfg(feature = "kafka")]
            Sink::Kafka(k) => f.debug_tuple("Sink::Kafka").field(k).finish(),
        }
    }
}

/// The file under the compressor, counting what reaches it: the size rotation's measure.
struct Counted {
    file: File,
    bytes: u64,
    /// A test's disk size: writes beyond it fail as a full disk would, after what fits.
    #[cfg(test)]
    limit: Option<u64>,
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        #[cfg(test)]
        let buf = match self.limit {
            Some(limit) if self.bytes + buf.len() as u64 > limit => {
                let room = limit.saturating_sub(self.bytes) as usize;
                if room == 0 {
                    return Err(io::Error::new(ErrorKind::StorageFull, "no space left on device (test limit)"));
                }
                &buf[..room]
            }
            _ => buf,
        };
        let n = self.file.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// The compressor, or none, in front of the counted file.
enum Encoder {
    Plain(Counted),
    Zstd(zstd::stream::write::Encoder<'static, Counted>),
    Gzip(GzEncoder<Counted>),
}

impl Encoder {
    fn new(compress: Compress, file: Counted) -> io::Result<Encoder> {
        Ok(match compress {
            Compress::None => Encoder::Plain(file),
            Compress::Zstd => {
                let mut encoder = zstd::stream::write::Encoder::new(file, ZSTD_LEVEL)?;
                encoder.include_checksum(true)?;
                Encoder::Zstd(encoder)
            }
            Compress::Gzip => Encoder::Gzip(GzEncoder::new(file, flate2::Compression::new(GZIP_LEVEL))),
        })
    }

    fn counted(&self) -> &Counted {
        match self {
            Encoder::Plain(c) => c,
            Encoder::Zstd(e) => e.get_ref(),
            Encoder::Gzip(e) => e.get_ref(),
        }
    }

    /// Ends the compressed stream (its last block, checksum or trailer) and hands the file back.
    fn finish(self) -> io::Result<Counted> {
        match self {
            Encoder::Plain(c) => Ok(c),
            Encoder::Zstd(e) => e.finish(),
            Encoder::Gzip(e) => e.finish(),
        }
    }
}

impl Write for Encoder {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Plain(c) => c.write(buf),
            Encoder::Zstd(e) => e.write(buf),
            Encoder::Gzip(e) => e.write(buf),
        }
    }

    /// zstd ends the current block and gzip does a sync flush, so everything written so far can
    /// be decoded from the `.part`. Each costs ratio: the compressor starts a new block (zstd:
    /// a block header and fresh entropy tables; gzip: a 5-byte empty stored block and a byte
    /// alignment), though both keep their window, so repeated text still matches across it.
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Plain(c) => c.flush(),
            Encoder::Zstd(e) => e.flush(),
            Encoder::Gzip(e) => e.flush(),
        }
    }
}

/// The file being written.
struct Current {
    part: PathBuf,
    path: PathBuf,
    out: Encoder,
    lines: u64,
    bytes_uncompressed: u64,
    /// A time rotation's next boundary: the file is finished at or after it.
    ends_at_ns: Option<i128>,
}

/// A set of rotating files: see the module doc for a file's life.
pub struct Rotating {
    set: FileSet,
    run_start_ns: i128,
    current: Option<Current>,
    /// Files opened so far: the first is named for the run's start.
    opened: u64,
    finished: u64,
    lines_finished: u64,
    bytes_finished: u64,
    last_finished: Option<PathBuf>,
    /// The first error, as said then (with its file); once set, nothing more is written.
    failed: Option<(ErrorKind, String)>,
    #[cfg(test)]
    limit: Option<u64>,
}

impl fmt::Debug for Rotating {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rotating")
            .field("set", &self.set)
            .field("part", &self.current.as_ref().map(|c| &c.part))
            .field("finished", &self.finished)
            .field("failed", &self.failed)
            .finish()
    }
}

/// The error with the file it concerns in its message.
fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// `YYYYMMDDTHHMMSSZ` of a time's whole second, in UTC.
fn utc_stamp(unix_ns: i128) -> String {
    let seconds = i64::try_from(unix_ns.div_euclid(1_000_000_000)).unwrap_or(0);
    let t = time::OffsetDateTime::from_unix_timestamp(seconds).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A name `Rotating` gives its files, taken apart: `<prefix>-<stamp>[_NNN].<extension>` with the
/// compression's suffix and, while written, `.part` (the names `open_next` makes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileName<'a> {
    /// `YYYYMMDDTHHMMSSZ`: the UTC second the file starts at.
    pub stamp: &'a str,
    /// The `_NNN` that made the name free (`0`: none).
    pub suffix: u32,
    pub compress: Compress,
    /// Still being written (or left by a run that died): its last line may be cut.
    pub part: bool,
}

impl FileName<'_> {
    /// Orders names in the time order of their files, a `.part` with its final name: the stamp,
    /// then the suffix.
    pub fn time_order(&self) -> (&str, u32) {
        (self.stamp, self.suffix)
    }
}

/// Recognizes a name of the files of `prefix` and `extension` (as `FileSet` says them); `None`
/// for any other name, hidden files (the start-up probe) included.
pub fn parse_name<'a>(name: &'a str, prefix: &str, extension: &str) -> Option<FileName<'a>> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
    let (rest, part) = match rest.strip_suffix(".part") {
        Some(rest) => (rest, true),
        None => (rest, false),
    };
    let (rest, compress) = [Compress::Zstd, Compress::Gzip]
        .into_iter()
        .find_map(|c| rest.strip_suffix(c.suffix()).map(|r| (r, c)))
        .unwrap_or((rest, Compress::None));
    let rest = rest.strip_suffix(extension)?.strip_suffix('.')?;
    let (stamp, suffix) = match rest.split_once('_') {
        Some((stamp, n)) => {
            let digits = n.len() == 3 && n.bytes().all(|b| b.is_ascii_digit());
            let n: u32 = n.parse().ok().filter(|n| digits && (1..=NAME_SUFFIXES_MAX).contains(n))?;
            (stamp, n)
        }
        None => (rest, 0),
    };
    let b = stamp.as_bytes();
    let digit = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let is_stamp = b.len() == 16 && digit(0..8) && b[8] == b'T' && digit(9..15) && b[15] == b'Z';
    is_stamp.then_some(FileName { stamp, suffix, compress, part })
}

/// Finishes the plain `.part` files a killed run left in `dir` (`--resume`): each is cut after its
/// last whole line, fsynced and renamed to its final name, so a job that takes finished files
/// gets the lines the dead run wrote. Compressed ones are left as they are (their end is cut
/// mid-block; a decoder reads every whole block before it) and only named, as is one whose
/// final name exists already (never overwritten). Returns the files finished and those left.
pub fn finish_leftovers(dir: &Path, prefix: &str, extension: &str) -> io::Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let (mut finished, mut left) = (Vec::new(), Vec::new());
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok((finished, left)),
        Err(e) => return Err(at(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| at(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(parsed) = parse_name(name, prefix, extension).filter(|n| n.part) else { continue };
        let path = entry.path();
        if parsed.compress != Compress::None {
            left.push(path);
            continue;
        }
        let done = path.with_file_name(&name[..name.len() - ".part".len()]);
        if done.exists() {
            // Never overwrite a finished file: leave both for a person to look at.
            left.push(path);
            continue;
        }
        let mut file = OpenOptions::new().read(true).write(true).open(&path).map_err(|e| at(&path, e))?;
        let whole = end_of_last_line(&mut file).map_err(|e| at(&path, e))?;
        file.set_len(whole).and_then(|()| file.sync_all()).map_err(|e| at(&path, e))?;
        fs::rename(&path, &done).map_err(|e| at(&done, e))?;
        finished.push(done);
    }
    if !finished.is_empty() {
        sync_dir(dir)?;
    }
    finished.sort();
    left.sort();
    Ok((finished, left))
}

/// The length of `file` up to and with its last newline (0 if it has none), read backwards in
/// 64 KiB steps: memory stays bounded however large the file is.
fn end_of_last_line(file: &mut File) -> io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    const STEP: u64 = 64 * 1024;
    let mut end = file.metadata()?.len();
    let mut buf = vec![0u8; STEP as usize];
    while end > 0 {
        let start = end.saturating_sub(STEP);
        let chunk = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// Makes a rename (or a removal) in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| at(dir, e))
}

impl Rotating {
    /// Checks at start that files can be written in `dir`: it exists (or is created) and a
    /// probe file can be created, written, fsynced and removed there, and the directory itself
    /// fsynced (as every finished file's rename will be). The error names the directory and
    /// the OS error.
    pub fn check_dir(dir: &Path) -> Result<(), String> {
        let refuse = |what: &str, e: io::Error| format!("cannot write output files in {}: {what}: {e}", dir.display());
        fs::create_dir_all(dir).map_err(|e| refuse("cannot create the directory", e))?;
        let meta = fs::metadata(dir).map_err(|e| refuse("cannot read the directory", e))?;
        if !meta.is_dir() {
            return Err(format!("cannot write output files in {}: it is not a directory", dir.display()));
        }
        // Named by the process so two instances checking one directory do not collide; a probe
        // left by a crashed run of the same pid is simply reused.
        let probe = dir.join(format!(".coinfeed-probe-{}", std::process::id()));
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&probe)
            .map_err(|e| refuse("cannot create a file", e))?;
        let written = file.write_all(b"probe\n").and_then(|()| file.sync_all());
        drop(file);
        let removed = fs::remove_file(&probe);
        written.map_err(|e| refuse("cannot write and sync a file", e))?;
        removed.map_err(|e| refuse("cannot remove a file", e))?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| refuse("cannot sync the directory", e))
    }

    /// Starts a set of files for a run that starts at `now_unix_ns`. No file is created until
    /// the first batch; the directory must exist (`check_dir` made sure at start).
    pub fn open(set: FileSet, now_unix_ns: i128) -> io::Result<Rotating> {
        for (what, text) in [("prefix", &set.prefix), ("extension", &set.extension)] {
            if text.is_empty() || text.contains(['/', '\\', '\0']) || text.starts_with('.') {
                return Err(io::Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "output file {what} {text:?} must be a plain, non-empty name part (no '/', no leading '.')"
                    ),
                ));
            }
        }
        if !fs::metadata(&set.dir).map_err(|e| at(&set.dir, e))?.is_dir() {
            return Err(io::Error::new(ErrorKind::NotADirectory, format!("{}: not a directory", set.dir.display())));
        }
        Ok(Rotating {
            set,
            run_start_ns: now_unix_ns,
            current: None,
            opened: 0,
            finished: 0,
            lines_finished: 0,
            bytes_finished: 0,
            last_finished: None,
            failed: None,
            #[cfg(test)]
            limit: None,
        })
    }

    /// Writes one batch of whole lines. A rotation that is due happens first, so a batch never
    /// spans two files; an empty batch writes nothing and opens no file.
    pub fn write(&mut self, bytes: &[u8], lines: u64, now_unix_ns: i128) -> io::Result<()> {
        self.ready()?;
        if bytes.is_empty() {
            return Ok(());
        }
        self.rotate_if_due(now_unix_ns)?;
        let current = match self.current.take() {
            Some(c) => c,
            None => self.open_next(now_unix_ns)?,
        };
        let current = self.current.insert(current);
        if let Err(e) = current.out.write_all(bytes) {
            return Err(fail(&mut self.failed, at(&current.part, e)));
        }
        current.lines += lines;
        current.bytes_uncompressed += bytes.len() as u64;
        Ok(())
    }

    /// Finishes the file when its time is up (or it holds the rotation size) and no batch came
    /// to do it; the next file opens at the next batch.
    pub fn tick(&mut self, now_unix_ns: i128) -> io::Result<()> {
        self.ready()?;
        self.rotate_if_due(now_unix_ns)
    }

    /// Pushes what was written to the OS, decodable from the `.part` when compressed (see
    /// `Encoder::flush` for what that costs). Not an fsync: a file is synced when finished.
    pub fn flush(&mut self) -> io::Result<()> {
        self.ready()?;
        if let Some(current) = &mut self.current {
            if let Err(e) = current.out.flush() {
                return Err(fail(&mut self.failed, at(&current.part, e)));
            }
        }
        Ok(())
    }

    /// Finishes the last file. After an earlier error its `.part` is left as it is (its last
    /// line may be torn) and the error is returned again.
    pub fn finish(mut self) -> io::Result<Finished> {
        self.ready()?;
        if let Some(current) = self.current.take() {
            self.finish_file(current)?;
        }
        Ok(Finished {
            files: self.finished,
            lines: self.lines_finished,
            bytes_on_disk: self.bytes_finished,
            last: self.last_finished,
        })
    }

    /// Files finished so far (for `metrics.files_finished`), without copying a path.
    pub fn files_finished(&self) -> u64 {
        self.finished
    }

    /// The file being written and the files finished so far.
    pub fn status(&self) -> FileStatus {
        let current = self.current.as_ref();
        FileStatus {
            part: current.map(|c| c.part.clone()),
            lines: current.map_or(0, |c| c.lines),
            bytes_uncompressed: current.map_or(0, |c| c.bytes_uncompressed),
            bytes_on_disk: current.map_or(0, |c| c.out.counted().bytes),
            finished: self.finished,
        }
    }

    /// Refuses every call after an error, repeating the first.
    fn ready(&self) -> io::Result<()> {
        match &self.failed {
            None => Ok(()),
            Some((kind, first)) => {
                Err(io::Error::new(*kind, format!("output stopped after an earlier error: {first}")))
            }
        }
    }

    fn rotate_if_due(&mut self, now_unix_ns: i128) -> io::Result<()> {
        let due = self.current.as_ref().is_some_and(|c| match self.set.rotate {
            None => false,
            Some(Rotate::Every { .. }) => c.ends_at_ns.is_some_and(|end| now_unix_ns >= end),
            Some(Rotate::Size { bytes }) => c.out.counted().bytes >= bytes,
        });
        match self.current.take() {
            Some(current) if due => self.finish_file(current),
            other => {
                self.current = other;
                Ok(())
            }
        }
    }

    /// Creates the next file's `.part` under a free name and writes its header.
    fn open_next(&mut self, now_unix_ns: i128) -> io::Result<Current> {
        let (start_ns, ends_at_ns) = match self.set.rotate {
            Some(Rotate::Every { seconds }) => {
                let period = i128::from(seconds) * 1_000_000_000;
                let floor = now_unix_ns.div_euclid(period) * period;
                // The first file starts with the run, inside its first period; a later one on
                // its period's boundary, even when its first batch came later (it covers the
                // whole period, so its name says where that period begins).
                (floor.max(self.run_start_ns), Some(floor + period))
            }
            Some(Rotate::Size { .. }) | None if self.opened == 0 => (self.run_start_ns, None),
            Some(Rotate::Size { .. }) | None => (now_unix_ns, None),
        };
        let stamp = utc_stamp(start_ns);
        let set = &self.set;
        let ext = format!("{}{}", set.extension, set.compress.suffix());
        for n in 0..=NAME_SUFFIXES_MAX {
            let name = if n == 0 {
                format!("{}-{stamp}.{ext}", set.prefix)
            } else {
                format!("{}-{stamp}_{n:03}.{ext}", set.prefix)
            };
            let path = set.dir.join(&name);
            let part = set.dir.join(format!("{name}.part"));
            // The part is claimed first (atomically), then the final name checked: a writer
            // following the same order cannot claim a name whose file another is finishing.
            let file = match OpenOptions::new().write(true).create_new(true).open(&part) {
                Ok(f) => f,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(fail(&mut self.failed, at(&part, e))),
            };
            match path.try_exists() {
                Ok(false) => {}
                Ok(true) => {
                    drop(file);
                    fs::remove_file(&part).map_err(|e| fail(&mut self.failed, at(&part, e)))?;
                    continue;
                }
                Err(e) => return Err(fail(&mut self.failed, at(&path, e))),
            }
            let counted = Counted {
                file,
                bytes: 0,
                #[cfg(test)]
                limit: self.limit,
            };
            let mut out = Encoder::new(set.compress, counted).map_err(|e| fail(&mut self.failed, at(&part, e)))?;
            out.write_all(&set.header).map_err(|e| fail(&mut self.failed, at(&part, e)))?;
            self.opened += 1;
            log::debug!("output file opened: {}", part.display());
            return Ok(Current { part, path, out, lines: 0, bytes_uncompressed: set.header.len() as u64, ends_at_ns });
        }
        let e = io::Error::new(
            ErrorKind::AlreadyExists,
            format!("every name from -1 to -{NAME_SUFFIXES_MAX} is taken; move old files away or change the prefix"),
        );
        Err(fail(&mut self.failed, at(&set.dir.join(format!("{}-{stamp}.{ext}", set.prefix)), e)))
    }

    /// Ends the compressed stream, syncs the file, renames it to its final name and syncs the
    /// directory; only then is it counted. On an error the `.part` stays where it is.
    fn finish_file(&mut self, current: Current) -> io::Result<()> {
        let Current { part, path, out, lines, .. } = current;
        let result = (|| {
            let mut counted = out.finish().map_err(|e| at(&part, e))?;
            counted.flush().map_err(|e| at(&part, e))?;
            counted.file.sync_all().map_err(|e| at(&part, e))?;
            drop(counted.file);
            if path.try_exists().map_err(|e| at(&path, e))? {
                // Someone else made a file of this name since the part was claimed: keep both.
                return Err(io::Error::new(
                    ErrorKind::AlreadyExists,
                    format!("{}: appeared while {} was written; not overwritten", path.display(), part.display()),
                ));
            }
            fs::rename(&part, &path).map_err(|e| at(&part, e))?;
            sync_dir(&self.set.dir)?;
            Ok(counted.bytes)
        })();
        match result {
            Ok(bytes) => {
                self.finished += 1;
                self.lines_finished += lines;
                self.bytes_finished += bytes;
                log::info!("output file finished: {} ({lines} lines, {bytes} bytes)", path.display());
                self.last_finished = Some(path);
                Ok(())
            }
            Err(e) => Err(fail(&mut self.failed, io::Error::new(e.kind(), format!("cannot finish output file: {e}")))),
        }
    }
}

/// Records the first error (so every later call repeats it) and returns it.
fn fail(failed: &mut Option<(ErrorKind, String)>, e: io::Error) -> io::Error {
    if failed.is_none() {
        *failed = Some((e.kind(), e.to_string()));
    }
    e
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Read;

    const NS: i128 = 1_000_000_000;
    const HOUR: i128 = 3_600 * NS;

    /// A directory under the system's temp dir, unique to this process and test, removed on drop
    /// (also used by `resume`'s tests).
    pub(crate) struct TempDir(pub(crate) PathBuf);

    impl TempDir {
        pub(crate) fn new(test: &str) -> TempDir {
            let path = std::env::temp_dir().join(format!("coinfeed-sink-{}-{test}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).expect("create the temp dir");
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn utc(year: i32, month: u8, day: u8, hour: u8, minute: u8, second: u8) -> i128 {
        let date =
            time::Date::from_calendar_date(year, time::Month::try_from(month).expect("month"), day).expect("date");
        i128::from(date.with_hms(hour, minute, second).expect("time").assume_utc().unix_timestamp()) * NS
    }

    fn set(dir: &Path, rotate: Option<Rotate>, compress: Compress) -> FileSet {
        FileSet {
            dir: dir.to_path_buf(),
            prefix: "coinfeed".to_string(),
            extension: "ndjson".to_string(),
            rotate,
            compress,
            header: Vec::new(),
        }
    }

    /// The names in `dir`, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// One NDJSON-like line of ~270 bytes whose numbers vary with `id` (a uuid keeps it from
    /// compressing unrealistically well).
    fn line(id: u64) -> String {
        let mut r = fastrand::Rng::with_seed(id);
        format!(
            "{{\"type\":\"trade\",\"symbol_id\":\"BITSTAMP_SPOT_BTC_USD\",\"sequence\":{id},\
             \"time_exchange\":\"2026-12-01T16:{:02}:{:02}.{:07}Z\",\"time_coinapi\":\"2026-12-01T16:{:02}:{:02}.{:07}Z\",\
             \"uuid\":\"{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}\",\"price\":{}.{:02},\"size\":0.{:08},\"taker_side\":\"{}\",\
             \"recv_time\":\"2026-12-01T16:{:02}:{:02}.{:09}Z\",\"source\":\"ws\"}}\n",
            r.u32(0..60),
            r.u32(0..60),
            r.u32(0..10_000_000),
            r.u32(0..60),
            r.u32(0..60),
            r.u32(0..10_000_000),
            r.u32(..),
            r.u16(..),
            r.u16(0..4096),
            r.u16(..),
            r.u64(0..1 << 48),
            r.u32(60_000..110_000),
            r.u32(0..100),
            r.u32(0..100_000_000),
            if r.bool() { "BUY" } else { "SELL" },
            r.u32(0..60),
            r.u32(0..60),
            r.u32(0..1_000_000_000),
        )
    }

    /// `n` lines from `first` on, as one batch.
    fn batch(first: u64, n: u64) -> Vec<u8> {
        (first..first + n).map(line).collect::<String>().into_bytes()
    }

    /// A whole file's contents, decompressed as its name says.
    fn decode(path: &Path) -> Vec<u8> {
        let raw = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path.to_string_lossy();
        let mut out = Vec::new();
        if name.ends_with(".zst") {
            zstd::stream::read::Decoder::new(&raw[..]).expect("zstd").read_to_end(&mut out).expect("decode zstd");
        } else if name.ends_with(".gz") {
            flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut out).expect("decode gzip");
        } else {
            out = raw;
        }
        out
    }

    /// What a reader of an unfinished `.part` can decode: everything up to where the stream
    /// stops (a decoder reports the missing end as an error after the data it could decode).
    fn decode_part(path: &Path, compress: Compress) -> Vec<u8> {
        let raw = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut reader: Box<dyn Read> = match compress {
            Compress::None => return raw,
            Compress::Zstd => Box::new(zstd::stream::read::Decoder::new(io::Cursor::new(raw)).expect("zstd")),
            Compress::Gzip => Box::new(flate2::read::GzDecoder::new(io::Cursor::new(raw))),
        };
        let mut out = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = reader.read(&mut chunk) {
            out.extend_from_slice(&chunk[..n]);
        }
        out
    }

    /// Proves the name is the run's UTC start second, that the file is a `.part` while written
    /// (its bytes already there after a flush) and is renamed to its final name by `finish`.
    #[test]
    fn a_file_is_a_part_until_finished_and_named_for_its_start() {
        let tmp = TempDir::new("part");
        let start = utc(2026, 12, 1, 15, 42, 13) + NS / 2;
        let mut files = Rotating::open(set(&tmp.0, None, Compress::None), start).expect("open");
        assert!(names(&tmp.0).is_empty(), "no file before the first batch");
        let b = batch(0, 3);
        files.write(&b, 3, start + NS).expect("write");
        files.flush().expect("flush");
        assert_eq!(names(&tmp.0), ["coinfeed-20261201T154213Z.ndjson.part"]);
        let part = tmp.0.join("coinfeed-20261201T154213Z.ndjson.part");
        let status = files.status();
        assert_eq!(status.part.as_deref(), Some(part.as_path()));
        assert_eq!(
            (status.lines, status.bytes_uncompressed, status.bytes_on_disk, status.finished),
            (3, b.len() as u64, b.len() as u64, 0)
        );
        assert_eq!(fs::read(&part).expect("read part"), b);
        let finished = files.finish().expect("finish");
        assert_eq!(names(&tmp.0), ["coinfeed-20261201T154213Z.ndjson"]);
        let path = tmp.0.join("coinfeed-20261201T154213Z.ndjson");
        assert_eq!(fs::read(&path).expect("read"), b);
        assert_eq!(finished, Finished { files: 1, lines: 3, bytes_on_disk: b.len() as u64, last: Some(path) });
    }

    /// Proves a time rotation across two boundaries with injected times: the first file starts
    /// with the run and ends at the next UTC hour, a batch at the boundary goes to the new file,
    /// a tick finishes a file when no batch comes, and an idle hour leaves no file at all.
    #[test]
    fn time_rotation_across_two_boundaries() {
        let tmp = TempDir::new("time");
        let start = utc(2026, 12, 1, 15, 42, 13);
        let sixteen = utc(2026, 12, 1, 16, 0, 0);
        let mut files =
            Rotating::open(set(&tmp.0, Some(Rotate::Every { seconds: 3_600 }), Compress::None), start).expect("open");
        let (a, b, c, d, e) = (batch(0, 2), batch(2, 3), batch(5, 1), batch(6, 4), batch(10, 2));
        files.write(&a, 2, start + NS).expect("a");
        files.write(&b, 3, sixteen - 1).expect("b: the last nanosecond of the first file");
        files.tick(sixteen - 1).expect("tick");
        assert_eq!(files.files_finished(), 0);
        files.write(&c, 1, sixteen).expect("c: at the boundary, so in the second file");
        assert_eq!(files.files_finished(), 1);
        files.write(&d, 4, sixteen + HOUR / 2).expect("d");
        files.tick(sixteen + HOUR - 1).expect("tick before the second boundary");
        assert_eq!(files.files_finished(), 1);
        files.tick(sixteen + HOUR).expect("tick at the second boundary");
        assert_eq!(files.files_finished(), 2, "the tick finished the second file");
        assert_eq!(files.status().part, None, "no next file until a batch comes");
        files.tick(sixteen + 2 * HOUR + NS).expect("an idle hour");
        files.write(&e, 2, sixteen + 2 * HOUR + 10 * 60 * NS).expect("e, after an idle hour");
        let finished = files.finish().expect("finish");
        assert_eq!(
            names(&tmp.0),
            [
                "coinfeed-20261201T154213Z.ndjson",
                "coinfeed-20261201T160000Z.ndjson",
                "coinfeed-20261201T180000Z.ndjson"
            ]
        );
        assert_eq!(fs::read(tmp.0.join("coinfeed-20261201T154213Z.ndjson")).expect("1"), [a, b].concat());
        assert_eq!(fs::read(tmp.0.join("coinfeed-20261201T160000Z.ndjson")).expect("2"), [c, d].concat());
        assert_eq!(fs::read(tmp.0.join("coinfeed-20261201T180000Z.ndjson")).expect("3"), e);
        assert_eq!((finished.files, finished.lines), (3, 12));
    }

    /// Proves a size rotation (uncompressed and zstd) cuts only between batches, once a file
    /// holds the size on disk (compressed bytes when compressed), and that the files together
    /// hold every line exactly once, in order.
    #[test]
    fn size_rotation_never_splits_a_batch_and_loses_nothing() {
        for compress in [Compress::None, Compress::Zstd] {
            let tmp = TempDir::new(&format!("size-{compress:?}"));
            let size = 64 << 10;
            let start = utc(2026, 12, 1, 16, 0, 0);
            let mut files =
                Rotating::open(set(&tmp.0, Some(Rotate::Size { bytes: size }), compress), start).expect("open");
            let mut all = Vec::new();
            let mut boundaries = vec![0usize];
            let mut rng = fastrand::Rng::with_seed(7);
            let (mut id, mut max_batch) = (0u64, 0usize);
            for i in 0..1_000 {
                let n = rng.u64(1..=60);
                let b = batch(id, n);
                id += n;
                // A second apart, so every file has its own name and names sort in time order.
                files.write(&b, n, start + i * NS).expect("write");
                all.extend_from_slice(&b);
                boundaries.push(all.len());
                max_batch = max_batch.max(b.len());
            }
            let finished = files.finish().expect("finish");
            let names = names(&tmp.0);
            assert_eq!(finished.files, names.len() as u64, "{compress:?}");
            assert_eq!(finished.lines, id, "{compress:?}");
            assert!(names.len() >= 4, "{compress:?}: only {} files", names.len());
            let (mut joined, mut on_disk) = (Vec::new(), 0);
            for (i, name) in names.iter().enumerate() {
                assert!(name.ends_with(&format!(".ndjson{}", compress.suffix())), "{name}");
                let path = tmp.0.join(name);
                let disk = fs::metadata(&path).expect("metadata").len();
                on_disk += disk;
                let text = decode(&path);
                if i + 1 < names.len() {
                    assert!(disk >= size, "{name}: {disk} bytes, finished before the size");
                }
                match compress {
                    Compress::None => assert!(disk < size + max_batch as u64, "{name}: {disk} bytes, past one batch"),
                    // The count lags by what the encoder holds: up to a 128 KiB block, compressed.
                    _ => {
                        assert!(disk < size + (128 << 10) + max_batch as u64, "{name}: {disk} bytes");
                        assert!((text.len() as u64) > 2 * disk, "{name}: the size counted is not the compressed one");
                    }
                }
                joined.extend_from_slice(&text);
                assert!(boundaries.binary_search(&joined.len()).is_ok(), "{name} ends inside a batch");
            }
            assert_eq!(on_disk, finished.bytes_on_disk, "{compress:?}");
            assert!(joined == all, "{compress:?}: the files together differ from what was written");
        }
    }

    /// Proves an existing file or `.part` is never overwritten: the next free `-N` is used, and
    /// two size-rotated files that start in the same second get `_001`, `_002`, sorting in time order.
    #[test]
    fn taken_names_get_suffixes() {
        let tmp = TempDir::new("collide");
        let at16 = utc(2026, 12, 1, 16, 0, 0);
        fs::write(tmp.0.join("coinfeed-20261201T160000Z.ndjson.zst"), b"old\n").expect("old file");
        fs::write(tmp.0.join("coinfeed-20261201T160000Z_001.ndjson.zst.part"), b"foreign\n").expect("foreign part");
        let mut files = Rotating::open(set(&tmp.0, None, Compress::Zstd), at16).expect("open");
        files.write(&batch(0, 2), 2, at16).expect("write");
        files.finish().expect("finish");
        assert_eq!(
            names(&tmp.0),
            [
                "coinfeed-20261201T160000Z.ndjson.zst",
                "coinfeed-20261201T160000Z_001.ndjson.zst.part",
                "coinfeed-20261201T160000Z_002.ndjson.zst",
            ]
        );
        assert_eq!(fs::read(tmp.0.join("coinfeed-20261201T160000Z.ndjson.zst")).expect("old"), b"old\n");
        assert_eq!(fs::read(tmp.0.join("coinfeed-20261201T160000Z_001.ndjson.zst.part")).expect("part"), b"foreign\n");
        assert_eq!(decode(&tmp.0.join("coinfeed-20261201T160000Z_002.ndjson.zst")), batch(0, 2));

        let tmp = TempDir::new("same-second");
        let mut files =
            Rotating::open(set(&tmp.0, Some(Rotate::Size { bytes: 64 << 10 }), Compress::None), at16).expect("open");
        for i in 0..3 {
            files.write(&batch(i * 300, 300), 300, at16 + 1).expect("write");
        }
        files.finish().expect("finish");
        assert_eq!(
            names(&tmp.0),
            [
                "coinfeed-20261201T160000Z.ndjson",
                "coinfeed-20261201T160000Z_001.ndjson",
                "coinfeed-20261201T160000Z_002.ndjson",
            ]
        );
        assert_eq!(fs::read(tmp.0.join("coinfeed-20261201T160000Z_002.ndjson")).expect("third"), batch(600, 300));
    }

    /// Proves zstd and gzip files decode to exactly the lines written, file by file, and that
    /// after a flush a reader of the `.part` can decode every line written so far.
    #[test]
    fn compressed_files_decode_to_the_lines_written() {
        for compress in [Compress::Zstd, Compress::Gzip] {
            let tmp = TempDir::new(&format!("compress-{compress:?}"));
            let at16 = utc(2026, 12, 1, 16, 0, 0);
            let mut files =
                Rotating::open(set(&tmp.0, Some(Rotate::Every { seconds: 3_600 }), compress), at16 - 60 * NS)
                    .expect("open");
            let mut first = Vec::new();
            for i in 0..20 {
                let b = batch(i * 50, 50);
                files.write(&b, 50, at16 - 30 * NS).expect("write");
                first.extend_from_slice(&b);
                if i == 9 || i == 19 {
                    files.flush().expect("flush");
                    let part = files.status().part.expect("a part");
                    assert!(
                        decode_part(&part, compress) == first,
                        "{compress:?}: the part does not decode after a flush"
                    );
                }
            }
            let second = batch(1_000, 7);
            files.write(&second, 7, at16 + NS).expect("write");
            files.finish().expect("finish");
            let ext = format!("ndjson{}", compress.suffix());
            assert_eq!(
                names(&tmp.0),
                [format!("coinfeed-20261201T155900Z.{ext}"), format!("coinfeed-20261201T160000Z.{ext}")]
            );
            assert!(decode(&tmp.0.join(format!("coinfeed-20261201T155900Z.{ext}"))) == first, "{compress:?}");
            assert!(decode(&tmp.0.join(format!("coinfeed-20261201T160000Z.{ext}"))) == second, "{compress:?}");
        }
    }

    /// Proves the header (a recorder's magic) opens every file, compressed or not, and counts
    /// as bytes but not as lines.
    #[test]
    fn the_header_opens_every_file() {
        for compress in [Compress::None, Compress::Gzip] {
            let tmp = TempDir::new(&format!("header-{compress:?}"));
            let start = utc(2026, 12, 1, 16, 0, 0);
            let mut fs_set = set(&tmp.0, Some(Rotate::Size { bytes: 64 << 10 }), compress);
            fs_set.extension = "cfraw".to_string();
            fs_set.header = b"CFRAW\x01\n".to_vec();
            let mut files = Rotating::open(fs_set, start).expect("open");
            // 40 batches of ~27 KB: more than two gzip files of 64 KiB (the encoder holds back
            // up to ~46 KB of output before it reaches the file).
            for i in 0..40 {
                files.write(&batch(i * 100, 100), 100, start + i as i128 * NS).expect("write");
                if i == 0 {
                    assert_eq!(files.status().bytes_uncompressed, 7 + batch(0, 100).len() as u64);
                }
            }
            let finished = files.finish().expect("finish");
            assert_eq!(finished.lines, 4_000);
            let names = names(&tmp.0);
            assert!(names.len() >= 2, "{compress:?}: {names:?}");
            for name in names {
                assert!(decode(&tmp.0.join(&name)).starts_with(b"CFRAW\x01\n{"), "{name} lacks the header");
            }
        }
    }

    /// Proves nothing is created for nothing: an empty batch opens no file, and a run that
    /// wrote nothing leaves an empty directory.
    #[test]
    fn no_batch_no_file() {
        let tmp = TempDir::new("empty");
        let start = utc(2026, 12, 1, 16, 0, 0);
        let mut files =
            Rotating::open(set(&tmp.0, Some(Rotate::Every { seconds: 60 }), Compress::Zstd), start).expect("open");
        files.write(b"", 0, start).expect("empty write");
        files.tick(start + 3 * HOUR).expect("tick");
        files.flush().expect("flush");
        assert_eq!(files.finish().expect("finish"), Finished { files: 0, lines: 0, bytes_on_disk: 0, last: None });
        assert!(names(&tmp.0).is_empty());
    }

    /// Proves a failed write (a full disk, simulated by a byte limit under the file) names its
    /// file, stops all further output, leaves the failed file as a `.part` and never touches
    /// the file finished before it.
    #[test]
    fn a_failed_write_stops_output_and_spares_finished_files() {
        let tmp = TempDir::new("fail");
        let start = utc(2026, 12, 1, 16, 0, 0);
        let mut files =
            Rotating::open(set(&tmp.0, Some(Rotate::Every { seconds: 60 }), Compress::None), start).expect("open");
        let good = batch(0, 10);
        files.write(&good, 10, start).expect("write");
        files.limit = Some(1_000);
        let e = files.write(&batch(10, 10), 10, start + 60 * NS).expect_err("the disk is full");
        let part = tmp.0.join("coinfeed-20261201T160100Z.ndjson.part");
        assert_eq!(e.kind(), ErrorKind::StorageFull);
        assert!(e.to_string().starts_with(&format!("{}: no space left", part.display())), "{e}");
        let status = files.status();
        assert_eq!((status.part.as_deref(), status.bytes_on_disk, status.finished), (Some(part.as_path()), 1_000, 1));
        for e in [
            files.write(&batch(20, 1), 1, start + 61 * NS).expect_err("write after the error"),
            files.tick(start + 120 * NS).expect_err("tick after the error"),
            files.flush().expect_err("flush after the error"),
        ] {
            assert!(e.to_string().contains("earlier error") && e.to_string().contains(&*part.to_string_lossy()), "{e}");
        }
        let e = files.finish().expect_err("finish after the error");
        assert_eq!(e.kind(), ErrorKind::StorageFull, "{e}");
        assert_eq!(names(&tmp.0), ["coinfeed-20261201T160000Z.ndjson", "coinfeed-20261201T160100Z.ndjson.part"]);
        assert_eq!(fs::read(tmp.0.join("coinfeed-20261201T160000Z.ndjson")).expect("finished"), good);
        assert_eq!(fs::metadata(&part).expect("part").len(), 1_000, "the torn part is left for a person");
    }

    /// Proves `check_dir` creates a missing directory and leaves no probe behind, and refuses a
    /// regular file and a path under one, naming the path and the OS error. (A read-only
    /// directory cannot be tested here: the tests run as root, for whom permissions don't apply.)
    #[test]
    fn check_dir_accepts_a_writable_directory_and_refuses_a_file() {
        let tmp = TempDir::new("check");
        let nested = tmp.0.join("a/b");
        Rotating::check_dir(&nested).expect("a new nested directory");
        assert!(nested.is_dir());
        assert!(names(&nested).is_empty(), "the probe was left behind: {:?}", names(&nested));
        let file = tmp.0.join("regular");
        fs::write(&file, b"x").expect("a regular file");
        let e = Rotating::check_dir(&file).expect_err("a regular file");
        assert!(e.contains(&*file.to_string_lossy()), "{e}");
        let under = file.join("x");
        let e = Rotating::check_dir(&under).expect_err("a path under a regular file");
        assert!(e.contains(&*under.to_string_lossy()) && e.contains("os error 20"), "{e}");
        let etc = Path::new("/etc/hostname/x");
        if Path::new("/etc/hostname").is_file() {
            assert!(Rotating::check_dir(etc).expect_err("/etc/hostname/x").contains("/etc/hostname/x"));
        }
        assert!(Rotating::open(set(&under, None, Compress::None), 0).is_err(), "open refuses it too");
    }

    /// Proves `open` refuses a prefix or extension that would put files elsewhere or hide them.
    #[test]
    fn open_refuses_names_that_are_not_plain() {
        let tmp = TempDir::new("names");
        for (prefix, extension) in
            [("", "ndjson"), ("a/b", "ndjson"), (".hidden", "ndjson"), ("coinfeed", ""), ("coinfeed", "x/y")]
        {
            let mut s = set(&tmp.0, None, Compress::None);
            s.prefix = prefix.to_string();
            s.extension = extension.to_string();
            let e = Rotating::open(s, 0).expect_err("refused");
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{prefix:?} {extension:?}: {e}");
        }
    }

    /// Proves the names `Rotating` makes are recognized (with their order, compression and
    /// `.part`), and that hidden files and other names are not.
    #[test]
    fn names_are_taken_apart_as_made() {
        let tmp = TempDir::new("parse-names");
        let at16 = utc(2026, 12, 1, 16, 0, 0);
        fs::write(tmp.0.join("coinfeed-20261201T160000Z.ndjson.zst"), b"old\n").expect("old file");
        let mut files = Rotating::open(set(&tmp.0, None, Compress::Zstd), at16).expect("open");
        files.write(&batch(0, 1), 1, at16).expect("write");
        let made = names(&tmp.0);
        assert_eq!(made[1], "coinfeed-20261201T160000Z_001.ndjson.zst.part");
        let parsed = parse_name(&made[1], "coinfeed", "ndjson");
        let expected = FileName { stamp: "20261201T160000Z", suffix: 1, compress: Compress::Zstd, part: true };
        assert_eq!(parsed, Some(expected));
        files.finish().expect("finish");
        for (name, expected) in [
            ("coinfeed-20261201T160000Z.ndjson", Some(("20261201T160000Z", 0, Compress::None, false))),
            ("coinfeed-20261201T160000Z.ndjson.part", Some(("20261201T160000Z", 0, Compress::None, true))),
            ("coinfeed-20261201T160000Z_999.ndjson.gz", Some(("20261201T160000Z", 999, Compress::Gzip, false))),
            ("coinfeed-20261201T160000Z_000.ndjson", None),
            ("coinfeed-20261201T160000Z_01.ndjson", None),
            ("coinfeed-20261201T160000Z.ndjson.bz2", None),
            ("coinfeed-2026-12-01.ndjson", None),
            ("coinfeed-20261201T160000Z.cfrec", None),
            (".coinfeed-probe-1", None),
            ("other-20261201T160000Z.ndjson", None),
        ] {
            let got = parse_name(name, "coinfeed", "ndjson").map(|f| (f.stamp, f.suffix, f.compress, f.part));
            assert_eq!(got, expected, "{name}");
        }
    }

    /// Proves the name's time is the UTC second the time falls in, before 1970 too.
    #[test]
    fn utc_stamps() {
        for (unix_ns, expected) in [
            (0, "19700101T000000Z"),
            (utc(2026, 12, 1, 16, 0, 0), "20261201T160000Z"),
            (utc(2026, 12, 1, 16, 0, 0) + NS - 1, "20261201T160000Z"),
            (utc(2024, 2, 29, 23, 59, 59), "20240229T235959Z"),
            (-1, "19691231T235959Z"),
        ] {
            assert_eq!(utc_stamp(unix_ns), expected, "{unix_ns}");
        }
    }

    /// Proves a file sink can be moved into the writer thread.
    #[test]
    fn a_file_sink_is_send() {
        fn send<T: Send>() {}
        send::<Sink<io::Stdout>>();
        send::<Rotating>();
    }

    /// Proves a stream sink writes batches as they are and has no files, and a file sink passes
    /// batches, ticks and its finished count through.
    #[test]
    fn a_sink_is_a_stream_or_files() {
        let mut out = Vec::new();
        let mut sink = Sink::Stream(&mut out);
        sink.write_batch(b"{\"a\":1}\n", 1, 0).expect("write");
        sink.tick(i128::MAX).expect("tick");
        sink.flush().expect("flush");
        assert_eq!((sink.files_finished(), sink.status()), (0, None));
        let metrics = crate::metrics::Metrics::new(1);
        sink.finish(&metrics).expect("finish");
        assert_eq!(out, b"{\"a\":1}\n");

        let tmp = TempDir::new("sink");
        let start = utc(2026, 12, 1, 16, 0, 0);
        let files =
            Rotating::open(set(&tmp.0, Some(Rotate::Every { seconds: 60 }), Compress::None), start).expect("open");
        let mut sink: Sink<io::Sink> = Sink::Files(files);
        sink.write_batch(&batch(0, 1), 1, start).expect("write");
        sink.tick(start + 60 * NS).expect("tick");
        assert_eq!(sink.files_finished(), 1);
        assert_eq!(sink.status().map(|s| s.finished), Some(1));
        sink.finish(&metrics).expect("finish");
        assert_eq!(names(&tmp.0), ["coinfeed-20261201T160000Z.ndjson"]);
    }

    /// Proves a killed run's plain `.part` is cut after its last whole line and renamed, a
    /// compressed one is left, and other names are not touched.
    #[test]
    fn leftovers_of_a_killed_run_are_finished() {
        let tmp = TempDir::new("leftovers");
        let plain = tmp.0.join("coinfeed-20261201T160000Z.ndjson.part");
        fs::write(&plain, b"{\"a\":1}\n{\"b\":2}\n{\"c\":").expect("write");
        let zst = tmp.0.join("coinfeed-20261201T170000Z.ndjson.zst.part");
        fs::write(&zst, b"\x28\xb5").expect("write");
        fs::write(tmp.0.join("other.part"), b"x").expect("write");
        let (finished, left) = finish_leftovers(&tmp.0, "coinfeed", "ndjson").expect("finish");
        let done = tmp.0.join("coinfeed-20261201T160000Z.ndjson");
        assert_eq!((finished, left), (vec![done.clone()], vec![zst]));
        assert_eq!(fs::read(&done).expect("read"), b"{\"a\":1}\n{\"b\":2}\n");
        assert!(!plain.exists() && tmp.0.join("other.part").exists());
        assert_eq!(finish_leftovers(&tmp.0.join("missing"), "coinfeed", "ndjson").expect("none"), (vec![], vec![]));
        // A cut line longer than a read step; and a finished name that exists is never overwritten.
        let long = tmp.0.join("coinfeed-20261201T180000Z.ndjson.part");
        let mut text = b"{\"a\":1}\n".to_vec();
        text.extend(std::iter::repeat_n(b'x', 200_000));
        fs::write(&long, &text).expect("write");
        fs::write(tmp.0.join("coinfeed-20261201T190000Z.ndjson.part"), b"{}\n").expect("write");
        fs::write(tmp.0.join("coinfeed-20261201T190000Z.ndjson"), b"kept\n").expect("write");
        let (finished, left) = finish_leftovers(&tmp.0, "coinfeed", "ndjson").expect("finish");
        assert_eq!(finished, vec![tmp.0.join("coinfeed-20261201T180000Z.ndjson")]);
        assert_eq!(fs::read(&finished[0]).expect("read"), b"{\"a\":1}\n");
        assert!(left.contains(&tmp.0.join("coinfeed-20261201T190000Z.ndjson.part")), "{left:?}");
        assert_eq!(fs::read(tmp.0.join("coinfeed-20261201T190000Z.ndjson")).expect("read"), b"kept\n");
    }
}
