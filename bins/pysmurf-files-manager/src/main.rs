//! `pysmurf-files-manager`: create, drop and inspect the `pysmurf_files_v<N>`
//! table outside the monitor agent. Each subcommand is one `files_db` call.
//!
//! The database is chosen as the monitor chooses it: `--db-url`, else the
//! `MYSQL_*` environment (MariaDB), else the SQLite file `--sqlite-file`.

#![allow(
    clippy::print_stdout,
    reason = "a command-line tool prints its results"
)]
#![allow(
    rustdoc::broken_intra_doc_links,
    reason = "doc comments here are clap help texts, where [:PORT] means optional"
)]

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use files_db::{Backend, CreateOutcome, DbStatus, DbTarget, DropOutcome, FilesDb};

/// Create, drop and inspect the pysmurf_files table of the files database.
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
    /// Exits non-zero when the current version's table is absent.
    Status,
}

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
    let target = DbTarget::resolve(args.db_url.as_deref(), &args.sqlite_file)?;
    let target = with_prompted_password(target)?;
    match args.command {
        Command::Create => create(&target).await,
        Command::Drop { yes } => drop(&target, yes).await,
        Command::Status => status(&target).await,
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
