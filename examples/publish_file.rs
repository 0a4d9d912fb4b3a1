//! Writes a small file and registers it with a pysmurf monitor, as pysmurf's
//! `register_file` does.
//!
//! ```text
//! cargo run -p pysmurf-examples --example publish_file [ADDR]
//! ```
//!
//! `ADDR` defaults to `127.0.0.1:8200`, the monitor's usual port; only loopback addresses are
//! accepted, so the example cannot spray datagrams at another host. The file is left in the
//! temporary directory: the monitor reads it after registration to compute its md5sum.

// The example reports what it sent; printing is its job.
#![allow(clippy::print_stdout)]

use std::error::Error;
use std::net::SocketAddr;

use smurf_protocol::{FilePayload, Publisher, PublisherConfig};

fn main() -> Result<(), Box<dyn Error>> {
    let target: SocketAddr = match std::env::args().nth(1) {
        Some(addr) => addr.parse()?,
        None => SocketAddr::from(([127, 0, 0, 1], 8200)),
    };
    if !target.ip().is_loopback() {
        return Err(format!("{target} is not a loopback address").into());
    }

    let path = std::env::temp_dir().join(format!("publish_file_{}.txt", std::process::id()));
    std::fs::write(&path, "written by the publish_file example\n")?;
    let path = path
        .to_str()
        .ok_or("temporary directory is not UTF-8")?
        .to_owned();

    let mut publisher = Publisher::new(target, PublisherConfig::new("example", "publish_file"))?;
    let file = FilePayload {
        format: Some("txt".to_owned()),
        ..FilePayload::new(path, "example")
    };
    let sent = publisher.register_file(&file)?;
    println!(
        "registered {} with {target} (seq_no {:?})",
        file.path, sent.seq_no
    );
    Ok(())
}
