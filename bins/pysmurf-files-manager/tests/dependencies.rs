//! The files manager is a database tool: it must not grow a WebSocket, WAMP
//! or OCS dependency again (issue #15). What both binaries share about a file
//! registration lives in `file-registration`, not in `monitor-core`.

use std::collections::BTreeSet;
use std::process::Command;

/// Packages that would bring the monitor's router connection into the
/// files manager.
const FORBIDDEN: [&str; 5] = [
    "monitor-core",
    "ocs-feed",
    "tokio-tungstenite",
    "tungstenite",
    "rustls",
];

/// The names of the packages `pysmurf-files-manager` is built with (normal
/// dependencies, transitively), from `cargo tree` on the lock file as it is:
/// offline and locked, so the test needs no network and changes nothing.
fn normal_dependencies() -> BTreeSet<String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let out = Command::new(cargo)
        .current_dir(workspace)
        .args([
            "tree",
            "--offline",
            "--locked",
            "-p",
            "pysmurf-files-manager",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("cargo tree prints UTF-8")
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_files_manager_has_no_websocket_or_ocs_dependency() {
    let packages = normal_dependencies();
    // The listing is real: the crates the manager does use are in it.
    for used in [
        "pysmurf-files-manager",
        "file-registration",
        "files-db",
        "sqlx",
    ] {
        assert!(packages.contains(used), "{used} missing from {packages:?}");
    }
    let found: Vec<&str> = FORBIDDEN
        .into_iter()
        .filter(|forbidden| packages.contains(*forbidden))
        .collect();
    assert!(
        found.is_empty(),
        "pysmurf-files-manager depends on {found:?}: move what it needs into a crate without them"
    );
}
