//! `monitor-core` will own the pysmurf monitor's pipeline: the UDP receiver,
//! the datagram router, the durable spool, the md5 hasher pool, the batcher
//! writing through `files-db`, the counters, and the `init`/`run` OCS
//! operations it registers on an `ocs-feed` agent. It will not own how the
//! monitor is launched (arguments, logging, signals: `bins/pysmurf-monitor`).
//!
//! Nothing is implemented yet; this crate exists so the workspace has its
//! final shape. See `docs/architecture.md`.
