//! The standard OCS site arguments and their merge with the site file (spec §11).

use std::ffi::OsString;
use std::path::PathBuf;

use crate::site::{SiteError, SiteFile};

/// The command-line flags every OCS agent accepts. Flatten it into an agent's own clap parser
/// and implement [`HasSiteArgs`]:
///
/// ```
/// use clap::Parser;
/// use ocs_feed::{HasSiteArgs, SiteArgs};
///
/// #[derive(Parser)]
/// struct Args {
///     #[command(flatten)]
///     site: SiteArgs,
///     /// An argument of this agent.
///     #[arg(long, default_value_t = 1.0)]
///     rate: f64,
/// }
/// impl HasSiteArgs for Args {
///     fn site_args(&self) -> &SiteArgs {
///         &self.site
///     }
/// }
///
/// let (args, site) = ocs_feed::parse_args_from::<Args, _, _>("MyAgent", [
///     "my-agent", "--site-hub", "ws://127.0.0.1:8001/ws", "--site-realm", "test_realm",
///     "--address-root", "observatory", "--instance-id", "my1", "--rate", "2",
/// ]).unwrap();
/// assert_eq!(args.rate, 2.0);
/// assert_eq!(site.agent_address(), "observatory.my1");
/// ```
#[derive(Debug, Clone, Default, clap::Args)]
// Without this, clap would use this doc comment as the flattening command's description.
#[command(about = None, long_about = None, next_help_heading = "OCS site options")]
pub struct SiteArgs {
    /// Site name: the site file is $OCS_CONFIG_DIR/SITE.yaml ("none": no site file).
    #[arg(long, value_name = "SITE")]
    pub site: Option<String>,
    /// Path to the site file.
    #[arg(long, value_name = "PATH")]
    pub site_file: Option<PathBuf>,
    /// Host entry of the site file to use (default: this machine's hostname, then localhost).
    #[arg(long, value_name = "HOST")]
    pub site_host: Option<String>,
    /// WebSocket URL of the WAMP router, e.g. ws://127.0.0.1:8001/ws.
    #[arg(long, value_name = "URL")]
    pub site_hub: Option<String>,
    /// HTTP bridge URL of the WAMP router (clients use it; the agent does not).
    #[arg(long, value_name = "URL")]
    pub site_http: Option<String>,
    /// WAMP realm.
    #[arg(long, value_name = "REALM")]
    pub site_realm: Option<String>,
    /// Agent instance-id (one URI component: no '.').
    #[arg(long, value_name = "ID")]
    pub instance_id: Option<String>,
    /// Root of every WAMP address, e.g. observatory.
    #[arg(long, value_name = "ROOT")]
    pub address_root: Option<String>,
    /// Deprecated; accepted and ignored, as in ocs.
    #[arg(long, value_name = "ADDR", hide = true)]
    pub registry_address: Option<String>,
    /// Log directory (kept in the site config; the agent binary sets up logging).
    #[arg(long, value_name = "DIR")]
    pub log_dir: Option<PathBuf>,
    /// Working directory.
    #[arg(long, value_name = "DIR")]
    pub working_dir: Option<PathBuf>,
    /// After losing the router, stop all ops and end after this many seconds without it
    /// (0 = never). Unset (here and in the site host), the agent reconnects forever.
    #[arg(long, value_name = "SECONDS")]
    pub crossbar_timeout: Option<u64>,
    /// PEM file of a private CA to trust, besides the system's roots, for a wss:// router.
    #[arg(long, value_name = "FILE", env = "OCS_SITE_CA_FILE")]
    pub site_ca_file: Option<PathBuf>,
    /// Access policy: none, override:PW2,PW3 or director:ID (as ocs 0.12).
    #[arg(long, value_name = "POLICY")]
    pub access_policy: Option<String>,
}

/// An agent's clap parser that contains a flattened [`SiteArgs`].
pub trait HasSiteArgs: clap::Parser {
    /// The flattened site arguments.
    fn site_args(&self) -> &SiteArgs;
}

impl HasSiteArgs for SiteArgsOnly {
    fn site_args(&self) -> &SiteArgs {
        &self.site
    }
}

/// A parser with only the site arguments, for agents without arguments of their own.
#[derive(Debug, Clone, clap::Parser)]
pub struct SiteArgsOnly {
    /// The site arguments.
    #[command(flatten)]
    pub site: SiteArgs,
}

/// The resolved settings of this agent instance: command line first, then the site file's host
/// entry, then its hub block.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteConfig {
    /// WebSocket URL of the router.
    pub hub_url: String,
    /// HTTP bridge URL, if known.
    pub http_url: Option<String>,
    /// WAMP realm.
    pub realm: String,
    /// Address root, e.g. `observatory`.
    pub address_root: String,
    /// This agent's instance-id.
    pub instance_id: String,
    /// Seconds without the router after which ops stop and [`crate::Agent::run`] ends
    /// (`--crossbar-timeout` or the site host's `crossbar_timeout`; 0 = never). `None` when
    /// neither is set: the agent reconnects forever (ocs then uses 10 s for agents listed in
    /// a site file).
    pub crossbar_timeout: Option<u64>,
    /// Log directory, if any.
    pub log_dir: Option<PathBuf>,
    /// Working directory, if any.
    pub working_dir: Option<PathBuf>,
    /// Access policy, if any.
    pub access_policy: Option<String>,
    /// The site file used, if any.
    pub site_file: Option<PathBuf>,
    /// A private CA (PEM) trusted besides the system's roots for a `wss://` router
    /// (`--site-ca-file` or `OCS_SITE_CA_FILE`).
    pub ca_file: Option<PathBuf>,
}

impl SiteConfig {
    /// A configuration without a site file, e.g. for tests.
    ///
    /// ```
    /// let site = ocs_feed::SiteConfig::new("ws://127.0.0.1:8001/ws", "test_realm", "observatory", "my1");
    /// assert_eq!(site.agent_address(), "observatory.my1");
    /// ```
    pub fn new(hub_url: &str, realm: &str, address_root: &str, instance_id: &str) -> SiteConfig {
        SiteConfig {
            hub_url: hub_url.to_owned(),
            http_url: None,
            realm: realm.to_owned(),
            address_root: address_root.to_owned(),
            instance_id: instance_id.to_owned(),
            crossbar_timeout: None,
            log_dir: None,
            working_dir: None,
            access_policy: None,
            site_file: None,
            ca_file: None,
        }
    }

    /// `{address_root}.{instance_id}`.
    pub fn agent_address(&self) -> String {
        format!("{}.{}", self.address_root, self.instance_id)
    }

    /// The log file ocs would write: `{log_dir}/{address_root}.{instance_id}.log`, with a
    /// relative `log_dir` taken from `working_dir`; `None` without a log dir, or with a
    /// relative one and no working dir (ocs logs an error and writes no file then).
    ///
    /// ```
    /// let mut site = ocs_feed::SiteConfig::new("ws://127.0.0.1:8001/ws", "r", "observatory", "m1");
    /// site.log_dir = Some("logs".into());
    /// assert_eq!(site.log_file(), None);
    /// site.working_dir = Some("/srv/ocs".into());
    /// assert_eq!(site.log_file().unwrap(), std::path::Path::new("/srv/ocs/logs/observatory.m1.log"));
    /// ```
    pub fn log_file(&self) -> Option<PathBuf> {
        let dir = self.log_dir.as_ref()?;
        let dir = if dir.is_absolute() {
            dir.clone()
        } else {
            self.working_dir.as_ref()?.join(dir)
        };
        Some(dir.join(format!("{}.log", self.agent_address())))
    }
}

/// Parses this process's command line as ocs does: the site file's `arguments` for this
/// instance, overridden flag by flag by the command line, then the site values. Exits with
/// clap's message on `--help` or a usage error, like [`clap::Parser::parse`].
pub fn parse_args<T: HasSiteArgs>(agent_class: &str) -> Result<(T, SiteConfig), SiteError> {
    match parse_args_from::<T, _, _>(agent_class, std::env::args_os()) {
        Err(SiteError::Args(e)) => e.exit(),
        other => other,
    }
}

/// [`parse_args`] over an explicit argument list (the first item is the program name).
pub fn parse_args_from<T, I, S>(agent_class: &str, argv: I) -> Result<(T, SiteConfig), SiteError>
where
    T: HasSiteArgs,
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let env = Env {
        config_dir: std::env::var_os("OCS_CONFIG_DIR").map(PathBuf::from),
        hostname: hostname(),
    };
    resolve(agent_class, argv, &env)
}

struct Env {
    config_dir: Option<PathBuf>,
    hostname: Option<String>,
}

/// This machine's hostname, as Python's `socket.gethostname()` gives it on Linux.
pub(crate) fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
}

fn resolve<T, I, S>(agent_class: &str, argv: I, env: &Env) -> Result<(T, SiteConfig), SiteError>
where
    T: HasSiteArgs,
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let argv: Vec<String> = argv
        .into_iter()
        .map(|s| s.into().to_string_lossy().into_owned())
        .collect();
    let (prog, cmdline) = match argv.split_first() {
        Some((p, rest)) => (p.clone(), rest.to_vec()),
        None => (agent_class.to_owned(), Vec::new()),
    };

    let site = flag_value(&cmdline, "--site");
    let site_file = flag_value(&cmdline, "--site-file");
    let site_path = match (site.as_deref(), site_file) {
        (Some(_), Some(_)) => return Err(SiteError::SiteAndSiteFile),
        (Some("none"), None) => None,
        (_, Some(file)) => Some(PathBuf::from(file)),
        (name, None) => match (&env.config_dir, name) {
            (Some(d), _) => Some(d.join(format!("{}.yaml", name.unwrap_or("default")))),
            // ocs needs OCS_CONFIG_DIR here; without it and without --site, this agent runs
            // on the local defaults (see docs/ocs-compatibility.md), but a named site that
            // cannot be found is an error, never silently ignored.
            (None, Some(site)) => {
                return Err(SiteError::NoConfigDir {
                    site: site.to_owned(),
                })
            }
            (None, None) => None,
        },
    };
    let site_file = site_path.as_deref().map(SiteFile::load).transpose()?;
    let host = flag_value(&cmdline, "--site-host")
        .or_else(|| env.hostname.clone())
        .unwrap_or_else(|| "localhost".to_owned());

    let mut merged = Vec::new();
    if let Some(file) = &site_file {
        let cli_id = flag_value(&cmdline, "--instance-id");
        let inst = file.instance(&host, cli_id.as_deref(), agent_class)?;
        let mut site_args = inst.arguments.clone();
        if cli_id.is_none() {
            site_args.extend(["--instance-id".to_owned(), inst.instance_id.clone()]);
        }
        merged = merge_arguments(&site_args, &cmdline);
    } else {
        merged.extend(cmdline);
    }
    merged.insert(0, prog);
    // Values like `-5` are values, as for ocs's argparse (only for arguments that take a
    // value: clap refuses the setting on a flag such as `--echo-sql`).
    let mut matches = T::command()
        .mut_args(|a| {
            if a.get_action().takes_values() {
                a.allow_negative_numbers(true)
            } else {
                a
            }
        })
        .try_get_matches_from(&merged)
        .map_err(SiteError::Args)?;
    let args = T::from_arg_matches_mut(&mut matches).map_err(SiteError::Args)?;

    let cli = args.site_args();
    let host_entry = site_file
        .as_ref()
        .and_then(|f| f.host(&host).ok().map(|h| h.1));
    let hub = site_file.as_ref().map(|f| &f.hub);
    let missing = |what, flag| SiteError::Missing {
        what,
        flag,
        site_file: site_path.clone(),
    };
    let pick =
        |cli: &Option<String>, host: Option<&Option<String>>, hub: Option<&Option<String>>| {
            cli.clone()
                .or_else(|| host.cloned().flatten())
                .or_else(|| hub.cloned().flatten())
        };
    let config = SiteConfig {
        hub_url: pick(
            &cli.site_hub,
            host_entry.map(|h| &h.wamp_server),
            hub.map(|h| &h.wamp_server),
        )
        .ok_or_else(|| missing("WAMP server URL", "--site-hub"))?,
        http_url: pick(
            &cli.site_http,
            host_entry.map(|h| &h.wamp_http),
            hub.map(|h| &h.wamp_http),
        ),
        realm: pick(
            &cli.site_realm,
            host_entry.map(|h| &h.wamp_realm),
            hub.map(|h| &h.wamp_realm),
        )
        .ok_or_else(|| missing("WAMP realm", "--site-realm"))?,
        address_root: pick(&cli.address_root, None, hub.map(|h| &h.address_root))
            .ok_or_else(|| missing("address root", "--address-root"))?,
        instance_id: cli
            .instance_id
            .clone()
            .ok_or_else(|| missing("instance-id", "--instance-id"))?,
        crossbar_timeout: cli
            .crossbar_timeout
            .or(host_entry.and_then(|h| h.crossbar_timeout)),
        log_dir: cli
            .log_dir
            .clone()
            .or_else(|| host_entry.and_then(|h| h.log_dir.clone())),
        working_dir: cli.working_dir.clone(),
        access_policy: pick(&cli.access_policy, None, hub.map(|h| &h.access_policy)),
        site_file: site_path.clone(),
        ca_file: cli.site_ca_file.clone(),
    };
    check_uri_component("instance-id", &config.instance_id)?;
    crate::AccessPolicy::parse(config.access_policy.as_deref())?;
    if config.address_root.is_empty() {
        return Err(SiteError::BadUriComponent {
            what: "address root",
            value: config.address_root,
        });
    }
    Ok((args, config))
}

fn check_uri_component(what: &'static str, value: &str) -> Result<(), SiteError> {
    if value.is_empty() || value.contains('.') || value.contains(char::is_whitespace) {
        return Err(SiteError::BadUriComponent {
            what,
            value: value.to_owned(),
        });
    }
    Ok(())
}

/// The value of `--flag VALUE` or `--flag=VALUE` (the last one wins, as in argparse).
fn flag_value(args: &[String], flag: &str) -> Option<String> {
    let mut found = None;
    let mut iter = args.iter();
    while let Some(a) = iter.next() {
        if a == flag {
            found = iter.next().cloned();
        } else if let Some(v) = a.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
            found = Some(v.to_owned());
        }
    }
    found
}

/// The flag a group starts with (`--x` for both `--x 1` and `--x=1`), or "" for leading
/// positional values.
fn group_key(arg: &str) -> &str {
    if arg.starts_with('-') {
        arg.split('=').next().unwrap_or(arg)
    } else {
        ""
    }
}

/// Whether an argument starts a new flag group: ocs's `ArgContainer.is_new_arg`, a `-` and
/// then (after the dashes) a letter, so `-5` and `-1.5` are values.
fn is_new_arg(arg: &str) -> bool {
    arg.starts_with('-')
        && arg
            .trim_start_matches('-')
            .chars()
            .next()
            .is_some_and(char::is_alphabetic)
}

/// Splits arguments into groups, each a flag and the values after it (ocs's `ArgContainer`).
fn groups(args: &[String]) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    for a in args {
        let starts_group = is_new_arg(a);
        match out.last_mut() {
            Some(g) if !starts_group => g.push(a.clone()),
            _ => out.push(vec![a.clone()]),
        }
    }
    out
}

/// The site file's arguments with every flag group that the command line also has replaced by
/// the command line's group (command line wins), as ocs's `site_config.parse_args` does.
fn merge_arguments(site: &[String], cmdline: &[String]) -> Vec<String> {
    let cli_groups = groups(cmdline);
    let cli_keys: Vec<&str> = cli_groups.iter().map(|g| group_key(&g[0])).collect();
    let mut out: Vec<String> = groups(site)
        .into_iter()
        .filter(|g| !cli_keys.contains(&group_key(&g[0])))
        .flatten()
        .collect();
    out.extend(cli_groups.into_iter().flatten());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct FakeArgs {
        #[command(flatten)]
        site: SiteArgs,
        #[arg(long)]
        mode: Option<String>,
        #[arg(long, default_value_t = 1)]
        num_channels: u32,
        #[arg(long)]
        sample_rate: Option<f64>,
        #[arg(long)]
        frame_length: Option<u32>,
        /// A flag (takes no value), as socs's `--echo-sql`.
        #[arg(long)]
        verbose: bool,
    }
    impl HasSiteArgs for FakeArgs {
        fn site_args(&self) -> &SiteArgs {
            &self.site
        }
    }

    fn env_with_spec_site() -> (tempfile::TempDir, Env) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("default.yaml"),
            include_str!("../tests/vectors/site-default.yaml"),
        )
        .unwrap();
        let env = Env {
            config_dir: Some(dir.path().to_owned()),
            hostname: Some("not-in-the-file".to_owned()),
        };
        (dir, env)
    }

    fn run(argv: &[&str], env: &Env) -> Result<(FakeArgs, SiteConfig), SiteError> {
        resolve::<FakeArgs, _, _>("FakeDataAgent", argv.iter().copied(), env)
    }

    #[test]
    fn site_file_values_and_instance_arguments_apply() {
        let (_dir, env) = env_with_spec_site();
        let (args, site) = run(&["agent"], &env).unwrap();
        assert_eq!(args.mode.as_deref(), Some("idle"));
        assert_eq!(args.num_channels, 2);
        assert_eq!(args.sample_rate, Some(2.0));
        assert_eq!(site.hub_url, "ws://127.0.0.1:8001/ws");
        assert_eq!(site.http_url.as_deref(), Some("http://127.0.0.1:8001/call"));
        assert_eq!(site.realm, "test_realm");
        assert_eq!(site.instance_id, "fake-data1");
        assert_eq!(site.agent_address(), "observatory.fake-data1");
        assert_eq!(site.crossbar_timeout, None, "unset: reconnect forever");
        assert_eq!(
            site.log_dir.as_deref(),
            Some(std::path::Path::new("/opt/ocsref/log"))
        );
    }

    #[test]
    fn command_line_wins_flag_by_flag() {
        let (_dir, env) = env_with_spec_site();
        let (args, site) = run(
            &[
                "agent",
                "--num-channels=5",
                "--site-hub",
                "ws://127.0.0.1:9999/ws",
                "--crossbar-timeout",
                "0",
            ],
            &env,
        )
        .unwrap();
        assert_eq!(args.num_channels, 5);
        assert_eq!(args.mode.as_deref(), Some("idle"));
        assert_eq!(args.frame_length, Some(10));
        assert_eq!(site.hub_url, "ws://127.0.0.1:9999/ws");
        assert_eq!(site.crossbar_timeout, Some(0));
    }

    #[test]
    fn merge_replaces_whole_groups() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            merge_arguments(
                &s(&["--a", "1", "2", "--b", "x", "--c"]),
                &s(&["--a", "9", "--d"])
            ),
            s(&["--b", "x", "--c", "--a", "9", "--d"])
        );
    }

    #[test]
    fn unknown_instance_id_names_file_host_and_id() {
        let (dir, env) = env_with_spec_site();
        let err = run(&["agent", "--instance-id", "ghost"], &env).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("ghost"), "{text}");
        assert!(text.contains("localhost"), "{text}");
        assert!(
            text.contains(&dir.path().join("default.yaml").display().to_string()),
            "{text}"
        );
    }

    #[test]
    fn site_name_selects_the_file() {
        let (dir, env) = env_with_spec_site();
        let err = run(&["agent", "--site", "other"], &env).unwrap_err();
        assert!(
            matches!(&err, SiteError::Read { path, .. } if *path == dir.path().join("other.yaml")),
            "{err}"
        );
        let err = run(&["agent", "--site", "x", "--site-file", "y"], &env).unwrap_err();
        assert!(matches!(err, SiteError::SiteAndSiteFile));
    }

    #[test]
    fn without_site_file_everything_comes_from_the_command_line() {
        let env = Env {
            config_dir: None,
            hostname: None,
        };
        let err = run(&["agent", "--instance-id", "x"], &env).unwrap_err();
        assert!(err.to_string().contains("--site-hub"), "{err}");
        let (_, site) = run(
            &[
                "agent",
                "--site-hub",
                "ws://127.0.0.1:1/ws",
                "--site-realm",
                "r",
                "--address-root",
                "obs",
                "--instance-id",
                "x",
            ],
            &env,
        )
        .unwrap();
        assert_eq!(
            site,
            SiteConfig::new("ws://127.0.0.1:1/ws", "r", "obs", "x")
        );
    }

    #[test]
    fn instance_id_with_a_dot_is_rejected() {
        let env = Env {
            config_dir: None,
            hostname: None,
        };
        let err = run(
            &[
                "agent",
                "--site-hub",
                "ws://h/ws",
                "--site-realm",
                "r",
                "--address-root",
                "obs",
                "--instance-id",
                "a.b",
            ],
            &env,
        )
        .unwrap_err();
        assert!(matches!(err, SiteError::BadUriComponent { .. }), "{err}");
    }

    #[test]
    fn host_crossbar_timeout_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.yaml");
        std::fs::write(
            &path,
            "hub: {wamp_server: 'ws://127.0.0.1:1/ws', wamp_realm: r, address_root: obs}\n\
             hosts: {daq: {crossbar_timeout: 20, wamp_server: 'ws://127.0.0.1:2/ws',\n\
             agent-instances: [{agent-class: FakeDataAgent, instance-id: f1}]}}",
        )
        .unwrap();
        let env = Env {
            config_dir: None,
            hostname: Some("daq".to_owned()),
        };
        let (_, site) = run(&["agent", "--site-file", path.to_str().unwrap()], &env).unwrap();
        assert_eq!(site.crossbar_timeout, Some(20));
        assert_eq!(site.hub_url, "ws://127.0.0.1:2/ws");
        assert_eq!(site.instance_id, "f1");
    }

    #[test]
    fn negative_values_are_values_and_site_needs_a_config_dir() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.yaml");
        std::fs::write(
            &path,
            "hub: {wamp_server: 'ws://127.0.0.1:1/ws', wamp_realm: r, address_root: obs}\n\
             hosts: {daq: {agent-instances: [{instance-id: f1,\n\
             arguments: [--sample-rate, -5, --frame-length, 3, --verbose]}]}}",
        )
        .unwrap();
        let env = Env {
            config_dir: None,
            hostname: Some("daq".to_owned()),
        };
        let file = path.to_str().unwrap();
        let (args, _) = run(&["agent", "--site-file", file, "--instance-id", "f1"], &env).unwrap();
        assert_eq!(args.sample_rate, Some(-5.0));
        assert_eq!(args.frame_length, Some(3));
        assert!(args.verbose, "a flag beside negative values");
        let (args, _) = run(
            &[
                "agent",
                "--site-file",
                file,
                "--instance-id",
                "f1",
                "--sample-rate",
                "-1.5",
            ],
            &env,
        )
        .unwrap();
        assert_eq!(args.sample_rate, Some(-1.5), "the command line wins");
        assert_eq!(args.frame_length, Some(3));
        let e = run(&["agent", "--site", "lab"], &env).unwrap_err();
        assert!(matches!(e, SiteError::NoConfigDir { .. }), "{e}");
    }

    #[test]
    fn an_access_policy_ocs_refuses_is_an_error_not_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.yaml");
        std::fs::write(
            &path,
            "hub: {wamp_server: 'ws://127.0.0.1:1/ws', wamp_realm: r, address_root: obs,\n\
             access_policy: 'strict:pw'}\n\
             hosts: {daq: {agent-instances: [{agent-class: FakeDataAgent, instance-id: f1}]}}",
        )
        .unwrap();
        let env = Env {
            config_dir: None,
            hostname: Some("daq".to_owned()),
        };
        let file = path.to_str().unwrap();
        let err = run(&["agent", "--site-file", file], &env).unwrap_err();
        assert!(matches!(err, SiteError::AccessPolicy(_)), "{err}");
        assert!(!err.to_string().contains("pw"), "no password in: {err}");
        let (_, site) = run(
            &[
                "agent",
                "--site-file",
                file,
                "--access-policy",
                "override:a,b",
            ],
            &env,
        )
        .unwrap();
        assert_eq!(site.access_policy.as_deref(), Some("override:a,b"));
    }
}
