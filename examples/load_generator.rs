//! Load generator for benchmarking a pysmurf monitor: sends `data_file` registrations (of real
//! files it creates), `session_log` bursts or streamer `metadata`, at a fixed rate or as fast as
//! possible, from several sockets at once, through `smurf_protocol::Publisher`.
//!
//! ```text
//! cargo run --release -p pysmurf-examples --example load_generator -- \
//!     --target 127.0.0.1:8200 --kind data-file --count 100000 --senders 2 \
//!     --file-dir /tmp/bench-files --file-size 1024 [--rate 20000]
//! ```
//!
//! Only loopback targets are accepted. Files are created (and, with `--create-only`, only
//! created) before the first datagram is sent, so file creation is never part of the timed
//! send. `data_file` registration `i` names `<file-dir>/<prefix>_<i>.dat`; with
//! `--distinct-files M` registrations reuse `M` files round-robin.
//!
//! `data_file` and `metadata` datagrams are encoded before the first send and go out up to 32
//! per system call (`sendmmsg`), so a burst leaves at the socket's speed, not the encoder's; a
//! paced sender sends what is due and sleeps only when it is ahead of its schedule by more than
//! 200 µs, so at high rates it sends in short runs.
//!
//! When done it prints one JSON object on stdout: what was sent, send errors, the wall times
//! (Unix seconds) of the first and last send, for the caller to time the monitor against, and
//! the send rate between them. Every `session_log` payload is `"bench <seq> <unix time of send>"`; the
//! envelope's `time` is the send time too, so a subscriber on the same machine can compute
//! the UDP→feed latency.

// Reporting is this example's job.
#![allow(clippy::print_stdout)]

use std::error::Error;
use std::fs;
use std::io::{IoSlice, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use nix::sys::socket::{sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
use serde_json::json;
use smurf_protocol::{FilePayload, MetadataPayload, PublishError, Publisher, PublisherConfig};

/// What to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    /// `data_file` registrations of real files.
    DataFile,
    /// `session_log` lines.
    SessionLog,
    /// Streamer `metadata` (integer values).
    Metadata,
}

/// Sends benchmark load to a pysmurf monitor on loopback.
#[derive(Debug, Parser)]
#[command(name = "load_generator")]
struct Args {
    /// Where the monitor receives (loopback only).
    #[arg(long, default_value = "127.0.0.1:8200")]
    target: SocketAddr,
    /// What to send.
    #[arg(long, value_enum, default_value_t = Kind::DataFile)]
    kind: Kind,
    /// Datagrams in total (over all senders).
    #[arg(long, default_value_t = 1000)]
    count: u64,
    /// Sockets (one thread each) sending at once; datagrams are split evenly.
    #[arg(long, default_value_t = 1)]
    senders: u64,
    /// Datagrams per second in total; 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Directory for the registered files (created if missing).
    #[arg(long, default_value = "/tmp/pysmurf-load")]
    file_dir: PathBuf,
    /// Size of each registered file in bytes.
    #[arg(long, default_value_t = 1024)]
    file_size: u64,
    /// Number of distinct files to create and register round-robin (default: one per
    /// registration).
    #[arg(long)]
    distinct_files: Option<u64>,
    /// File name prefix (keeps runs apart in one directory).
    #[arg(long, default_value = "load")]
    prefix: String,
    /// Publisher id in every envelope (`metadata` should use `STREAMER:<stream-id>`).
    #[arg(long, default_value = "bench")]
    pub_id: String,
    /// Only create the files, send nothing.
    #[arg(long)]
    create_only: bool,
    /// Do not create the files (they exist from an earlier `--create-only`).
    #[arg(long)]
    no_create: bool,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn file_path(dir: &Path, prefix: &str, i: u64) -> PathBuf {
    dir.join(format!("{prefix}_{i}.dat"))
}

/// Writes `size` pseudo-random bytes (xorshift, seeded by `seed`) to `path`.
fn write_file(path: &Path, size: u64, seed: u64) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, fs::File::create(path)?);
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut block = vec![0u8; 1 << 16];
    let mut left = size;
    while left > 0 {
        for chunk in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let bytes = state.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        let n = left.min(block.len() as u64) as usize;
        out.write_all(&block[..n])?;
        left -= n as u64;
    }
    out.flush()
}

/// Most datagrams one `sendmmsg` sends.
const SEND_BATCH: usize = 32;

/// How far ahead of its schedule a paced sender may be before it sleeps: sleeping for less
/// costs more than it waits (timer slack), so a sender at a high rate sends in short runs.
const PACING_SLACK: Duration = Duration::from_micros(200);

/// The datagram registration or message `i` is, encoded (it uses up a `seq_no`).
fn encode(args: &Args, publisher: &mut Publisher, i: u64) -> Result<Vec<u8>, PublishError> {
    let distinct = args.distinct_files.unwrap_or(args.count).max(1);
    let now = unix_now();
    match args.kind {
        Kind::DataFile => {
            let path = file_path(&args.file_dir, &args.prefix, i % distinct);
            let file = FilePayload {
                format: Some("dat".to_owned()),
                action: Some("bench".to_owned()),
                action_ts: Some(now as i64),
                timestamp: Some(now),
                plot: Some(false),
                pysmurf_version: Some("bench".to_owned()),
                ..FilePayload::new(path.to_string_lossy().into_owned(), "bench")
            };
            publisher.prepare("data_file", &file.to_json())
        }
        Kind::SessionLog => publisher.prepare("session_log", &json!(format!("bench {i} {now:.6}"))),
        Kind::Metadata => {
            let meta = MetadataPayload {
                path: format!("AMCc.Bench.Value{}", i % 16),
                value_type: "int".to_owned(),
                value: json!(i),
            };
            publisher.prepare("metadata", &meta.to_json())
        }
    }
}

/// Sends one prepared datagram on the publisher's connected socket.
fn send(publisher: &Publisher, bytes: &[u8]) -> Result<(), PublishError> {
    publisher
        .socket()
        .send(bytes)
        .map(drop)
        .map_err(|source| PublishError::Send {
            target: publisher.target(),
            source,
        })
}

fn run_sender(args: &Args, sender: u64, indices: std::ops::Range<u64>) -> SenderResult {
    let config = PublisherConfig::new(args.pub_id.clone(), format!("load_generator_{sender}"));
    let failed = |err: &dyn std::fmt::Display| {
        eprintln!("load_generator: sender {sender}: {err}");
        SenderResult {
            sent: 0,
            errors: indices.end - indices.start,
            first: 0.0,
            last: 0.0,
        }
    };
    let mut publisher = match Publisher::new(args.target, config) {
        Ok(p) => p,
        Err(err) => return failed(&err),
    };
    // A connected socket spares the kernel a route look-up per datagram.
    if let Err(err) = publisher.socket().connect(args.target) {
        return failed(&err);
    }
    // `data_file` and `metadata` datagrams are encoded before the timed send, so the send
    // rate is the socket's, not the encoder's; `session_log` lines carry their send time (for
    // the latency run), so they are encoded as they go.
    let ahead = args.kind != Kind::SessionLog;
    let prepared: Vec<Vec<u8>> = if ahead {
        match indices
            .clone()
            .map(|i| encode(args, &mut publisher, i))
            .collect()
        {
            Ok(prepared) => prepared,
            Err(err) => return failed(&err),
        }
    } else {
        Vec::new()
    };
    let per_sender_rate = if args.rate > 0.0 {
        args.rate / args.senders as f64
    } else {
        0.0
    };
    let total = indices.end - indices.start;
    let mut results = SenderResult::default();
    let start = Instant::now();
    if ahead {
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(SEND_BATCH, None);
        let iovs: Vec<[IoSlice<'_>; 1]> = prepared.iter().map(|b| [IoSlice::new(b)]).collect();
        let mut n = 0;
        while n < iovs.len() {
            // Everything due by now, at most a batch: one `sendmmsg`.
            let due = if per_sender_rate > 0.0 {
                let due = (start.elapsed().as_secs_f64() * per_sender_rate) as usize + 1;
                if due <= n {
                    pace(start, n as u64, per_sender_rate);
                    continue;
                }
                due
            } else {
                iovs.len()
            };
            let end = due.min(iovs.len()).min(n + SEND_BATCH);
            let batch = &iovs[n..end];
            let addresses = vec![None; batch.len()];
            match sendmmsg(
                publisher.socket().as_raw_fd(),
                &mut headers,
                batch,
                &addresses,
                [],
                MsgFlags::empty(),
            ) {
                Ok(sent) => {
                    let sent = sent.count().max(1);
                    results.sent(sent as u64);
                    n += sent;
                }
                Err(errno) => {
                    results.failed(sender, &errno);
                    n += 1;
                }
            }
        }
    } else {
        for (n, i) in indices.enumerate() {
            if per_sender_rate > 0.0 {
                pace(start, n as u64, per_sender_rate);
            }
            match encode(args, &mut publisher, i).and_then(|bytes| send(&publisher, &bytes)) {
                Ok(()) => results.sent(1),
                Err(err) => results.failed(sender, &err),
            }
        }
    }
    debug_assert_eq!(results.sent + results.errors, total);
    results
}

/// Sleeps until datagram `n` of a sender at `rate` is due, if that is more than
/// [`PACING_SLACK`] away.
fn pace(start: Instant, n: u64, rate: f64) {
    let due = start + Duration::from_secs_f64(n as f64 / rate);
    let now = Instant::now();
    if due > now + PACING_SLACK {
        std::thread::sleep(due - now);
    } else if due > now {
        std::thread::yield_now();
    }
}

/// What one sender sent, failed to send, and when (Unix seconds).
#[derive(Default)]
struct SenderResult {
    sent: u64,
    errors: u64,
    first: f64,
    last: f64,
}

impl SenderResult {
    fn sent(&mut self, count: u64) {
        let now = unix_now();
        if self.sent == 0 {
            self.first = now;
        }
        self.last = now;
        self.sent += count;
    }

    fn failed(&mut self, sender: u64, err: &dyn std::fmt::Display) {
        if self.errors == 0 {
            eprintln!("load_generator: sender {sender}: {err}");
        }
        self.errors += 1;
    }
}
fn main() -> Result<(), Box<dyn Error>> {
    let mut args = Args::parse();
    // The monitor refuses relative paths: registrations always name absolute ones.
    args.file_dir = std::path::absolute(&args.file_dir)?;
    if !args.target.ip().is_loopback() {
        return Err(format!("{} is not a loopback address: refused", args.target).into());
    }
    if args.senders == 0 {
        return Err("--senders must be at least 1".into());
    }

    if args.kind == Kind::DataFile && !args.no_create {
        fs::create_dir_all(&args.file_dir)?;
        let distinct = args.distinct_files.unwrap_or(args.count).min(args.count);
        let started = Instant::now();
        for i in 0..distinct {
            write_file(
                &file_path(&args.file_dir, &args.prefix, i),
                args.file_size,
                i,
            )?;
        }
        eprintln!(
            "load_generator: created {distinct} files of {} bytes in {:.2} s",
            args.file_size,
            started.elapsed().as_secs_f64()
        );
    }
    if args.create_only {
        return Ok(());
    }

    let per = args.count / args.senders;
    let extra = args.count % args.senders;
    let results: Vec<SenderResult> = std::thread::scope(|scope| {
        let mut handles = Vec::new();
        let mut next = 0;
        for sender in 0..args.senders {
            let n = per + u64::from(sender < extra);
            let range = next..next + n;
            next += n;
            let args = &args;
            handles.push(scope.spawn(move || run_sender(args, sender, range)));
        }
        handles
            .into_iter()
            .map(|h| h.join().expect("sender thread"))
            .collect()
    });
    let sent: u64 = results.iter().map(|r| r.sent).sum();
    let errors: u64 = results.iter().map(|r| r.errors).sum();
    let first = results
        .iter()
        .filter(|r| r.sent > 0)
        .map(|r| r.first)
        .fold(f64::INFINITY, f64::min);
    let last = results.iter().map(|r| r.last).fold(0.0, f64::max);
    // From the first send to the last (datagrams prepared ahead are not part of it).
    let elapsed = if first.is_finite() { last - first } else { 0.0 };
    let summary = json!({
        "kind": format!("{:?}", args.kind),
        "target": args.target.to_string(),
        "senders": args.senders,
        "requested_rate": args.rate,
        "sent": sent,
        "send_errors": errors,
        "send_seconds": elapsed,
        "send_rate": if elapsed > 0.0 { sent as f64 / elapsed } else { 0.0 },
        "first_send_unix": if first.is_finite() { first } else { 0.0 },
        "last_send_unix": last,
    });
    println!("{summary}");
    if errors > 0 {
        return Err(format!("{errors} datagrams could not be sent").into());
    }
    Ok(())
}
