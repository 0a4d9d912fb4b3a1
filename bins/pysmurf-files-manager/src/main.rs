//! `pysmurf-files-manager`: create, drop and inspect the `pysmurf_files_v<N>`
//! table outside the monitor agent, list its recent rows, backfill files the
//! monitor missed, and replay the monitor's dead letters. Each subcommand is a
//! short function over `files_db` (and `file_registration`) calls; backfill's
//! walking lives in [`backfill`] (the columns pysmurf's directory layout gives
//! in `file_registration`), the dead-letter replay in [`replay`], the
//! listing's formats in [`list`].
//!
//! The database is chosen as the monitor chooses it: `--db-url`, else the
//! `MYSQL_*` environment (MariaDB), else the SQLite file `--sqlite-file`.

#![allow(
    clippy::print_stdout,
    reason = "a command-line tool prints its results"
)]
#![allow(
    rustdoc::broken_intra_doc_links,
    rustdoc::invalid_html_tags,
    reason = "doc comments here are clap help texts: [:PORT] means optional, <data> a placeholder"
)]

mod backfill;
mod list;
mod replay;
mod suprsync_list;

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use files_db::{Backend, CreateOutcome, DbStatus, DbTarget, DropOutcome, FileFilter, FilesDb};

/// Create, drop and inspect the pysmurf_files table of the files database,
/// list its rows, backfill missed files and replay the monitor's dead letters.
///
/// The database is MariaDB when --db-url or any of MYSQL_HOST, MYSQL_PORT,
/// MYSQL_DATABASE (default "files"), MYSQL_USER, MYSQL_PASSWORD is given, and
/// otherwise the embedded SQLite file the monitor uses by default. Without a
/// password and on a terminal, you are prompted for one (never pass it on the
/// command line).
#[derive(Debug, Parser)]
#[command(name = "pysmurf-files-manager", version)]
struct Args {
    /// Database URL: mysql://USER@HOST[:PORT]/DATABASE or sqlite://PATH.
    /// Give the password through MYSQL_PASSWORD or the prompt, not the URL.
    #[arg(long, value_name = "URL", global = true)]
    db_url: Option<String>,

    /// SupRsync's SQLite database (socs 0.6's --db-path, by default
    /// /data/so/databases/suprsync.db there): work on its supersync_v0 and
    /// timecode_dirs_v0 tables, as the monitor's --db-path does.
    #[arg(long, value_name = "PATH", global = true, conflicts_with = "db_url")]
    db_path: Option<PathBuf>,

    /// The SQLite file used when neither --db-url nor MYSQL_* is given.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "pysmurf_files.db",
        global = true
    )]
    sqlite_file: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the current pysmurf_files table if it does not exist.
    Create,
    /// Drop the current pysmurf_files table and every row in it.
    Drop {
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Show the pysmurf_files tables present, their row counts and columns.
    ///
    /// Exits non-zero when the current version's table is absent.
    Status,
    /// List the most recently recorded rows, newest first.
    List {
        /// Show at most N rows.
        #[arg(long, value_name = "N", default_value_t = 20)]
        limit: u32,
        /// Only rows of this pysmurf action, e.g. tune_band.
        #[arg(long, value_name = "ACTION")]
        action: Option<String>,
        /// Only rows of this publisher id, e.g. crate1slot2.
        #[arg(long, value_name = "PUB_ID")]
        pub_id: Option<String>,
        /// Only rows whose path starts with PREFIX.
        #[arg(long, value_name = "PREFIX")]
        path_prefix: Option<String>,
        /// Only rows of this archive (smurf, timestreams); with --db-path only.
        #[arg(long, value_name = "ARCHIVE")]
        archive_name: Option<String>,
        /// One JSON object per row (md5sum in hex, timestamp in RFC 3339 UTC)
        /// instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Record files missed while the monitor or the database was down.
    ///
    /// Walks DIR... and adds every regular file not already recorded with the
    /// same path and md5sum.
    ///
    /// action, action_timestamp, pub_id and plot come from pysmurf's layout
    /// <data>/<ctime5>/[<pub_id>/]<action_ts>_<action>/{outputs,plots}/FILE
    /// (NULL for files outside it), format from the file's extension, and
    /// timestamp from the file's modification time. Symbolic links are not
    /// followed. Exits non-zero when any file failed (the rest are added).
    Backfill {
        /// Directories (or files) to record.
        #[arg(value_name = "DIR", required = true)]
        dirs: Vec<PathBuf>,
        /// The site column of the rows added.
        #[arg(long, value_name = "SITE", default_value = "observatory")]
        site: String,
        /// The instance_id column of the rows added.
        #[arg(long, value_name = "ID", default_value = "pysmurf-files-manager")]
        instance_id: String,
        /// Files hashed at once.
        #[arg(long, value_name = "N", default_value_t = 4)]
        jobs: usize,
        /// Report what would be added; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// With --db-path: the SupRsync archive the files belong to (smurf or
        /// timestreams); remote_path, deletable and the timecode directories
        /// follow from it as in the monitor.
        #[arg(long, value_name = "ARCHIVE", default_value = "smurf")]
        archive_name: String,
    },
    /// Record the file registrations of a monitor dead-letter file.
    ///
    /// Each data_file / g3_file datagram's row is rebuilt with the file's
    /// md5sum now and inserted unless already present. Lines that still fail
    /// are written, with the new reason, to FILE.remaining; FILE is never
    /// changed. Exits non-zero when any line still fails.
    ReplayDeadLetters {
        /// The dead-letter file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The site column of the rows added.
        #[arg(long, value_name = "SITE", default_value = "observatory")]
        site: String,
        /// The instance_id column of the rows added.
        #[arg(long, value_name = "ID", default_value = "pysmurf-files-manager")]
        instance_id: String,
        /// Only read files that resolve under DIR (repeatable), as the
        /// monitor's --data-root does.
        #[arg(long, value_name = "DIR")]
        data_root: Vec<PathBuf>,
    },
}

/// The socs_version column of the rows this program adds.
const PROGRAM: &str = concat!("pysmurf-files-manager ", env!("CARGO_PKG_VERSION"));

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let target = match &args.db_path {
        Some(path) => DbTarget::suprsync(path, false),
        None => DbTarget::resolve(args.db_url.as_deref(), &args.sqlite_file)?,
    };
    let target = with_prompted_password(target)?;
    match args.command {
        Command::Create => create(&target).await,
        Command::Drop { yes } => drop(&target, yes).await,
        Command::Status => status(&target).await,
        Command::List {
            limit,
            action,
            pub_id,
            path_prefix,
            archive_name,
            json,
        } => {
            if target.is_suprsync() {
                if action.is_some() || pub_id.is_some() {
                    bail!("--action and --pub-id are not columns of SupRsync's supersync_v0");
                }
                return list_suprsync(
                    &target,
                    archive_name.as_deref(),
                    path_prefix.as_deref(),
                    limit,
                    json,
                )
                .await;
            }
            if archive_name.is_some() {
                bail!("--archive-name needs --db-path (SupRsync's database)");
            }
            let filter = FileFilter {
                action,
                pub_id,
                path_prefix,
            };
            list(&target, &filter, limit, json).await
        }
        Command::Backfill {
            dirs,
            site,
            instance_id,
            jobs,
            dry_run,
            archive_name,
        } => {
            let recorder = recorder(site, instance_id);
            let archive = target.is_suprsync().then_some(archive_name);
            backfill(&target, &dirs, &recorder, jobs, dry_run, archive).await
        }
        Command::ReplayDeadLetters {
            file,
            site,
            instance_id,
            data_root,
        } => {
            let recorder = recorder(site, instance_id);
            replay_dead_letters(&target, &file, &recorder, &data_root).await
        }
    }
}

fn recorder(site: String, instance_id: String) -> file_registration::Recorder {
    file_registration::Recorder {
        site,
        instance_id,
        program: PROGRAM.to_owned(),
    }
}

/// On a terminal, asks for the MariaDB password when none was given.
fn with_prompted_password(target: DbTarget) -> Result<DbTarget> {
    if target.backend() != Backend::MySql
        || target.has_password()
        || !std::io::stdin().is_terminal()
    {
        return Ok(target);
    }
    let password = rpassword::prompt_password(format!("Password for {}: ", target.endpoint()))
        .context("cannot read the password from the terminal")?;
    Ok(if password.is_empty() {
        target
    } else {
        target.with_password(&password)
    })
}

async fn create(target: &DbTarget) -> Result<()> {
    let db = FilesDb::connect(target).await?;
    let outcome = db.create_table().await?;
    match outcome {
        CreateOutcome::Created => println!("created table {} in {target}", db.table()),
        CreateOutcome::AlreadyPresent => println!(
            "table {} already exists in {target}; nothing changed",
            db.table()
        ),
    }
    db.close().await;
    Ok(())
}

async fn drop(target: &DbTarget, yes: bool) -> Result<()> {
    let db = FilesDb::connect_existing(target).await?;
    let status = db.status().await?;
    let Some(table) = status.current_table() else {
        bail!(
            "table {} does not exist in {target}; nothing to drop",
            db.table()
        );
    };
    if !yes {
        confirm(&format!(
            "Drop table {} and its {} rows from {target}? Type 'yes' to confirm: ",
            table.name, table.rows
        ))?;
    }
    match db.drop_table().await? {
        DropOutcome::Dropped { rows } => {
            println!("dropped table {} ({rows} rows) from {target}", db.table())
        }
        // Dropped by someone else between the status and the drop.
        DropOutcome::Absent => println!("table {} was already gone from {target}", db.table()),
    }
    db.close().await;
    Ok(())
}

fn confirm(question: &str) -> Result<()> {
    if !std::io::stdin().is_terminal() {
        bail!("refusing to drop without confirmation: stdin is not a terminal (pass --yes)");
    }
    eprint!("{question}");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("cannot read the confirmation")?;
    if answer.trim() != "yes" {
        bail!("not confirmed; nothing dropped");
    }
    Ok(())
}

async fn status(target: &DbTarget) -> Result<()> {
    let db = FilesDb::connect_existing(target).await?;
    let status = db.status().await?;
    db.close().await;
    print!("{}", render_status(&status));
    if status.current_table().is_none() {
        bail!(
            "table {} does not exist in {target} (create it with `pysmurf-files-manager create`)",
            db.table()
        );
    }
    Ok(())
}

fn render_status(status: &DbStatus) -> String {
    let mut out = format!("database: {} ({})\n", status.target, status.backend);
    if status.tables.is_empty() {
        out.push_str("no pysmurf_files tables\n");
    }
    for table in &status.tables {
        let current = if table.version == status.current_version {
            " (current version)"
        } else {
            ""
        };
        out.push_str(&format!("{}{current}: {} rows\n", table.name, table.rows));
        for column in &table.columns {
            let null = if column.nullable { "" } else { "NOT NULL" };
            out.push_str(&format!(
                "  {:<22} {:<14} {null}\n",
                column.name, column.sql_type
            ));
        }
    }
    out
}

async fn list(target: &DbTarget, filter: &FileFilter, limit: u32, json: bool) -> Result<()> {
    let db = FilesDb::connect_existing(target).await?;
    let rows = db.recent_files(filter, limit).await?;
    db.close().await;
    if json {
        for row in &rows {
            println!("{}", list::json_line(row));
        }
    } else if rows.is_empty() {
        println!("no matching rows in {} of {target}", db.table());
    } else {
        print!("{}", list::table(&rows));
    }
    Ok(())
}

async fn list_suprsync(
    target: &DbTarget,
    archive: Option<&str>,
    path_prefix: Option<&str>,
    limit: u32,
    json: bool,
) -> Result<()> {
    let db = FilesDb::connect_existing(target).await?;
    let rows = db.suprsync_files(archive, path_prefix, limit).await?;
    db.close().await;
    if json {
        for row in &rows {
            println!("{}", suprsync_list::json_line(row));
        }
    } else if rows.is_empty() {
        println!("no matching rows in {} of {target}", db.table());
    } else {
        print!("{}", suprsync_list::table(&rows));
    }
    Ok(())
}

async fn backfill(
    target: &DbTarget,
    dirs: &[PathBuf],
    recorder: &file_registration::Recorder,
    jobs: usize,
    dry_run: bool,
    archive: Option<String>,
) -> Result<()> {
    if let Some(archive) = archive.as_deref() {
        if ![
            files_db::suprsync::SMURF_ARCHIVE,
            files_db::suprsync::TIMESTREAMS_ARCHIVE,
        ]
        .contains(&archive)
        {
            bail!("unknown archive {archive:?}: SupRsync's remote paths are defined only for smurf and timestreams");
        }
    }
    let db = FilesDb::connect_existing(target).await?;
    let walk = backfill::walk(dirs)?;
    let options = backfill::Options {
        recorder,
        jobs,
        dry_run,
        progress: std::io::stderr().is_terminal(),
        archive,
    };
    let outcome = backfill::record(&db, walk, &options).await;
    db.close().await;
    let summary = outcome?;
    print!("{}", summary.render(dry_run));
    if !summary.failed.is_empty() {
        bail!(
            "{} could not be backfilled (listed above); the others were {}",
            files(summary.failed.len()),
            if dry_run { "checked" } else { "recorded" }
        );
    }
    Ok(())
}

async fn replay_dead_letters(
    target: &DbTarget,
    file: &std::path::Path,
    recorder: &file_registration::Recorder,
    data_roots: &[PathBuf],
) -> Result<()> {
    let letters = replay::read(file)?;
    let hasher = replay::hasher(data_roots)?;
    let db = FilesDb::connect_existing(target).await?;
    let outcome = replay::replay(&db, &hasher, &letters, recorder).await;
    db.close().await;
    let summary = outcome?;
    let remaining = replay::write_remaining(file, &summary.remaining)?;
    print!("{}", summary.render(&remaining));
    if !summary.remaining.is_empty() {
        bail!(
            "{} still {} (written to {})",
            match summary.remaining.len() {
                1 => "1 dead letter".to_owned(),
                n => format!("{n} dead letters"),
            },
            if summary.remaining.len() == 1 {
                "fails"
            } else {
                "fail"
            },
            remaining.display()
        );
    }
    Ok(())
}

/// "1 file", "2 files".
fn files(count: usize) -> String {
    match count {
        1 => "1 file".to_owned(),
        n => format!("{n} files"),
    }
}
