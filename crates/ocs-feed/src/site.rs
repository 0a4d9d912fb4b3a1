//! The OCS site file: a YAML document with a `hub` block and a `hosts` map whose entries list
//! `agent-instances`. The same file drives Python and Rust agents (spec §11).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml_ng::Value;

/// A site file could not be read, or it does not describe this agent instance.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    /// The file could not be read.
    #[error("cannot read site file {path}")]
    Read {
        /// The site file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not YAML of the expected shape.
    #[error("cannot parse site file {path}")]
    Parse {
        /// The site file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_yaml_ng::Error,
    },
    /// Neither the requested host nor `localhost` is in `hosts`.
    #[error("site file {path} has no host {host:?} (nor \"localhost\"); hosts are {known:?}")]
    NoHost {
        /// The site file.
        path: PathBuf,
        /// The host looked for (`--site-host` or the hostname).
        host: String,
        /// The hosts the file has.
        known: Vec<String>,
    },
    /// No agent instance of the host matches.
    #[error(
        "site file {path}, host {host:?}: no agent instance matches instance-id {instance_id:?} \
         and agent-class {agent_class:?}"
    )]
    NoInstance {
        /// The site file.
        path: PathBuf,
        /// The host entry searched.
        host: String,
        /// The instance-id asked for, if any.
        instance_id: Option<String>,
        /// The agent class of this agent.
        agent_class: String,
    },
    /// No `--instance-id`, and more than one instance of this agent class on the host.
    #[error(
        "site file {path}, host {host:?}: multiple matches found for agent-class \
         {agent_class:?} ... you probably need to pass --instance-id="
    )]
    AmbiguousClass {
        /// The site file.
        path: PathBuf,
        /// The host entry searched.
        host: String,
        /// The agent class of this agent.
        agent_class: String,
    },
    /// `--site NAME` without `OCS_CONFIG_DIR` (where `NAME.yaml` would be).
    #[error(
        "--site {site} needs OCS_CONFIG_DIR (the directory of {site}.yaml), or use --site-file"
    )]
    NoConfigDir {
        /// The site name.
        site: String,
    },
    /// Both `--site` and `--site-file` were given.
    #[error("give --site or --site-file, not both")]
    SiteAndSiteFile,
    /// A value the agent needs is neither on the command line nor in the site file.
    #[error("no {what}: give {flag} or set it in the site file{}", file_hint(.site_file))]
    Missing {
        /// What is missing, e.g. "WAMP server URL".
        what: &'static str,
        /// The flag that sets it.
        flag: &'static str,
        /// The site file used, if any.
        site_file: Option<PathBuf>,
    },
    /// A value is not allowed as an OCS URI component.
    #[error("{what} {value:?} may not be empty or contain '.' (it is one WAMP URI component)")]
    BadUriComponent {
        /// "instance-id" or "address root".
        what: &'static str,
        /// The value.
        value: String,
    },
    /// `--access-policy` or the site's `access_policy` is not one ocs accepts (ocs refuses to
    /// start; so does this agent, rather than run unprotected).
    #[error(transparent)]
    AccessPolicy(#[from] crate::AccessPolicyError),
    /// The command line (merged with the site file's arguments) did not parse.
    #[error("invalid arguments (command line merged with the site file's `arguments`)")]
    Args(#[source] clap::Error),
}

fn file_hint(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!(" ({})", p.display()),
        None => " (no site file: use --site-file, --site or $OCS_CONFIG_DIR)".to_owned(),
    }
}

/// A parsed site file.
#[derive(Debug, Clone)]
pub struct SiteFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// The `hub` block.
    pub hub: HubConfig,
    /// The `hosts` map, by host name.
    pub hosts: BTreeMap<String, HostConfig>,
}

/// The `hub` block of a site file.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct HubConfig {
    /// WebSocket URL of the router, e.g. `ws://127.0.0.1:8001/ws`.
    pub wamp_server: Option<String>,
    /// URL of the router's HTTP caller bridge (used by clients, never by the agent).
    pub wamp_http: Option<String>,
    /// WAMP realm.
    pub wamp_realm: Option<String>,
    /// Prefix of every URI, e.g. `observatory`.
    pub address_root: Option<String>,
    /// Access policy, e.g. `none`.
    pub access_policy: Option<String>,
}

/// One entry of `hosts`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct HostConfig {
    /// `log-dir`.
    #[serde(rename = "log-dir")]
    pub log_dir: Option<PathBuf>,
    /// `crossbar_timeout` (with an underscore, as ocs reads it; the dashed spelling is ignored
    /// by ocs too).
    pub crossbar_timeout: Option<u64>,
    /// Per-host override of the hub's `wamp_server`.
    pub wamp_server: Option<String>,
    /// Per-host override of the hub's `wamp_http`.
    pub wamp_http: Option<String>,
    /// Per-host override of the hub's `wamp_realm`.
    pub wamp_realm: Option<String>,
    /// The agent instances of this host.
    #[serde(rename = "agent-instances", default)]
    pub agent_instances: Vec<InstanceConfig>,
}

/// One entry of a host's `agent-instances`.
#[derive(Debug, Clone, Deserialize)]
pub struct InstanceConfig {
    /// `agent-class`: optional, as in ocs (only needed to find the instance by class when
    /// no `--instance-id` is given).
    #[serde(rename = "agent-class", default)]
    pub agent_class: Option<String>,
    /// `instance-id`.
    #[serde(rename = "instance-id")]
    pub instance_id: String,
    /// `arguments`, stringified and flattened as ocs does (`2` becomes `"2"`).
    #[serde(default, deserialize_with = "flatten_arguments")]
    pub arguments: Vec<String>,
    /// `manage` (a HostManager hint; not used by the agent).
    pub manage: Option<String>,
}

#[derive(Deserialize)]
struct RawSiteFile {
    #[serde(default)]
    hub: HubConfig,
    #[serde(default)]
    hosts: BTreeMap<String, HostConfig>,
}

fn flatten_arguments<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Sequence(items) => items.iter().for_each(|i| walk(i, out)),
            Value::String(s) => out.push(s.clone()),
            // Python's str(): True/False, and floats keep their ".0".
            Value::Bool(b) => out.push(if *b { "True" } else { "False" }.to_owned()),
            Value::Number(n) if n.is_f64() => {
                let f = n.as_f64().unwrap_or_default();
                out.push(if f.fract() == 0.0 && f.is_finite() {
                    format!("{f:.1}")
                } else {
                    f.to_string()
                });
            }
            Value::Number(n) => out.push(n.to_string()),
            Value::Null => out.push("None".to_owned()),
            other => out.push(serde_yaml_ng::to_string(other).unwrap_or_default()),
        }
    }
    let v = Value::deserialize(d)?;
    let mut out = Vec::new();
    if !v.is_null() {
        walk(&v, &mut out);
    }
    Ok(out)
}

impl SiteFile {
    /// Reads and parses a site file.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("default.yaml");
    /// std::fs::write(&path, "hub: {wamp_server: 'ws://127.0.0.1:8001/ws', wamp_realm: test_realm,
    ///   address_root: observatory}
    /// hosts: {localhost: {agent-instances: [
    ///   {agent-class: MyAgent, instance-id: my1, arguments: ['--rate', 2]}]}}").unwrap();
    /// let site = ocs_feed::SiteFile::load(&path).unwrap();
    /// assert_eq!(site.hosts["localhost"].agent_instances[0].arguments, ["--rate", "2"]);
    /// ```
    pub fn load(path: &Path) -> Result<SiteFile, SiteError> {
        let text = std::fs::read_to_string(path).map_err(|source| SiteError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses site-file text; `path` is only used in errors and in [`SiteFile::path`].
    pub fn parse(path: &Path, text: &str) -> Result<SiteFile, SiteError> {
        let raw: RawSiteFile =
            serde_yaml_ng::from_str(text).map_err(|source| SiteError::Parse {
                path: path.to_owned(),
                source,
            })?;
        Ok(SiteFile {
            path: path.to_owned(),
            hub: raw.hub,
            hosts: raw.hosts,
        })
    }

    /// The entry for `host`, falling back to `localhost` as ocs does.
    pub fn host(&self, host: &str) -> Result<(&str, &HostConfig), SiteError> {
        self.hosts
            .get_key_value(host)
            .or_else(|| self.hosts.get_key_value("localhost"))
            .map(|(k, v)| (k.as_str(), v))
            .ok_or_else(|| SiteError::NoHost {
                path: self.path.clone(),
                host: host.to_owned(),
                known: self.hosts.keys().cloned().collect(),
            })
    }

    /// Finds the instance on `host`: by `instance_id` if given (whatever its class, as ocs),
    /// else the only instance of `agent_class`.
    pub fn instance(
        &self,
        host: &str,
        instance_id: Option<&str>,
        agent_class: &str,
    ) -> Result<&InstanceConfig, SiteError> {
        let (host_name, entry) = self.host(host)?;
        let no_instance = || SiteError::NoInstance {
            path: self.path.clone(),
            host: host_name.to_owned(),
            instance_id: instance_id.map(str::to_owned),
            agent_class: agent_class.to_owned(),
        };
        match instance_id {
            // As ocs: the instance-id alone decides; its agent-class is not checked.
            Some(id) => entry
                .agent_instances
                .iter()
                .find(|i| i.instance_id == id)
                .ok_or_else(no_instance),
            None => {
                let mut of_class = entry
                    .agent_instances
                    .iter()
                    .filter(|i| i.agent_class.as_deref() == Some(agent_class));
                match (of_class.next(), of_class.next()) {
                    (Some(only), None) => Ok(only),
                    (Some(_), Some(_)) => Err(SiteError::AmbiguousClass {
                        path: self.path.clone(),
                        host: host_name.to_owned(),
                        agent_class: agent_class.to_owned(),
                    }),
                    _ => Err(no_instance()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_SITE: &str = include_str!("../tests/vectors/site-default.yaml");

    fn spec_site() -> SiteFile {
        SiteFile::parse(Path::new("site-default.yaml"), SPEC_SITE).unwrap()
    }

    #[test]
    fn parses_the_spec_site_file() {
        let site = spec_site();
        assert_eq!(
            site.hub.wamp_server.as_deref(),
            Some("ws://127.0.0.1:8001/ws")
        );
        assert_eq!(site.hub.wamp_realm.as_deref(), Some("test_realm"));
        assert_eq!(site.hub.address_root.as_deref(), Some("observatory"));
        let host = &site.hosts["localhost"];
        assert_eq!(host.log_dir.as_deref(), Some(Path::new("/opt/ocsref/log")));
        let fake = site.instance("localhost", Some("fake-data1"), "FakeDataAgent");
        assert_eq!(
            fake.unwrap().arguments,
            [
                "--mode",
                "idle",
                "--num-channels",
                "2",
                "--sample-rate",
                "2",
                "--frame-length",
                "10"
            ]
        );
    }

    #[test]
    fn unknown_host_falls_back_to_localhost() {
        let site = spec_site();
        assert_eq!(site.host("some-daq-node").unwrap().0, "localhost");
    }

    #[test]
    fn missing_host_names_file_and_host() {
        let site = SiteFile::parse(Path::new("/etc/site.yaml"), "hosts: {daq1: {}}").unwrap();
        let err = site.host("daq2").unwrap_err().to_string();
        assert!(
            err.contains("/etc/site.yaml") && err.contains("daq2"),
            "{err}"
        );
    }

    #[test]
    fn instance_found_by_class_when_unique() {
        let site = spec_site();
        let inst = site.instance("localhost", None, "RegistryAgent").unwrap();
        assert_eq!(inst.instance_id, "registry");
        assert_eq!(inst.arguments, ["--wait-time", "5"]);
    }

    #[test]
    fn missing_instance_names_file_host_and_id() {
        let site = spec_site();
        let err = site
            .instance("localhost", Some("nope1"), "FakeDataAgent")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("site-default.yaml") && err.contains("localhost") && err.contains("nope1"),
            "{err}"
        );
    }

    #[test]
    fn arguments_are_stringified_and_flattened_like_python() {
        let site = SiteFile::parse(
            Path::new("s.yaml"),
            "hosts: {h: {agent-instances: [{agent-class: A, instance-id: a,
               arguments: [['--x', 1], '--f', 2.0, '--b', true, '--g', 0.5]}]}}",
        )
        .unwrap();
        assert_eq!(
            site.hosts["h"].agent_instances[0].arguments,
            ["--x", "1", "--f", "2.0", "--b", "True", "--g", "0.5"]
        );
    }

    #[test]
    fn instances_are_found_as_ocs_finds_them() {
        let site = SiteFile::parse(
            Path::new("s.yaml"),
            "hosts: {h: {agent-instances: [{instance-id: noclass},
               {agent-class: B, instance-id: b1}, {agent-class: B, instance-id: b2},
               {agent-class: C, instance-id: c1}]}}",
        )
        .unwrap();
        // By instance-id: no agent-class needed, another class allowed.
        assert_eq!(
            site.instance("h", Some("noclass"), "A")
                .unwrap()
                .instance_id,
            "noclass"
        );
        assert_eq!(
            site.instance("h", Some("c1"), "A").unwrap().instance_id,
            "c1"
        );
        assert_eq!(site.instance("h", None, "C").unwrap().instance_id, "c1");
        let e = site.instance("h", None, "B").unwrap_err();
        assert!(matches!(e, SiteError::AmbiguousClass { .. }), "{e}");
        assert!(matches!(
            site.instance("h", None, "A").unwrap_err(),
            SiteError::NoInstance { .. }
        ));
    }

    #[test]
    fn crossbar_timeout_needs_the_underscore() {
        let site = SiteFile::parse(
            Path::new("s.yaml"),
            "hosts: {h: {crossbar_timeout: 20}, k: {crossbar-timeout: 30}}",
        )
        .unwrap();
        assert_eq!(site.hosts["h"].crossbar_timeout, Some(20));
        assert_eq!(site.hosts["k"].crossbar_timeout, None);
    }
}
