//! The node's configuration: one [`Config`] with serde defaults.
//!
//! Precedence, highest first: command-line flags ([`ConfigOverrides`]),
//! environment (`RENDERTRUST_<FIELD>`, lists comma-separated), the TOML file,
//! the defaults below. `node/rendertrust.toml` documents every field.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use rendertrust_protocol::identity::NodeId;
use rendertrust_protocol::wire::Role;
use serde::{Deserialize, Serialize};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(ConfigError::Invalid {
                field: "log_format",
                reason: format!("{other:?}: expected text or json"),
            }),
        }
    }
}

/// Every setting of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Data dir: keys, store, logs. Default `$XDG_DATA_HOME/rendertrust` or `~/.local/share/rendertrust`.
    pub data_dir: PathBuf,
    /// Listen multiaddrs.
    pub listen: Vec<String>,
    /// Bootstrap peers: multiaddrs ending in `/p2p/<peer id>`.
    pub bootstrap: Vec<String>,
    /// Roles this node takes.
    pub roles: Vec<Role>,
    /// Local API address.
    pub api: SocketAddr,
    /// Bearer token for the API; required when `api` is not loopback.
    pub api_token: Option<String>,
    /// Region label for proximity.
    pub region: String,
    /// Asking price per task, credits.
    pub price_per_task: u64,
    /// Tasks run at once.
    pub max_tasks: u16,
    /// Seconds without a heartbeat before a scheduler gives a worker's task
    /// to another worker; workers report at a fifth of it.
    pub heartbeat_timeout_secs: u64,
    /// Seconds between capacity adverts.
    pub advert_interval_secs: u64,
    /// Seconds a node stays in the capacity table after its last advert.
    pub capacity_ttl_secs: u64,
    /// Run Kademlia in server mode (answer queries).
    pub kad_server: bool,
    /// Log format.
    pub log_format: LogFormat,
    /// `[anchor]`: where a ledger anchors its epoch roots.
    pub anchor: AnchorConfig,
    /// `[ledger]`: the credit ledger and epochs of a ledger peer.
    pub ledger: LedgerSettings,
    /// TEST ONLY (feature `dishonest-test-hooks`): how this worker cheats.
    /// Never read from a file: only `node start --dishonest`.
    #[cfg(feature = "dishonest-test-hooks")]
    #[serde(skip)]
    pub dishonest: Option<crate::jobs::dishonest::Dishonesty>,
}

/// `[ledger]`: settings of a ledger peer's credit ledger and epoch rollups.
/// Every ledger peer of a mesh must use the same values (their roots and
/// balances agree only then); other nodes ignore the section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerSettings {
    /// Peer id of the mint authority, the only key whose mints count
    /// (unset: no minting).
    pub mint_authority: Option<String>,
    /// Credits each node starts with: peer id → credits.
    pub genesis: BTreeMap<String, u64>,
    /// Epoch length, seconds: receipts fall in an epoch by acceptance time.
    pub epoch_secs: u64,
    /// Seconds after its end an epoch closes (late receipts still join).
    pub grace_secs: u64,
    /// Seconds after closing an epoch turns final without every ledger agreeing.
    pub reconcile_secs: u64,
}

impl Default for LedgerSettings {
    fn default() -> Self {
        LedgerSettings {
            mint_authority: None,
            genesis: BTreeMap::new(),
            epoch_secs: 3600,
            grace_secs: 300,
            reconcile_secs: 600,
        }
    }
}

fn parse_node(field: &'static str, text: &str) -> Result<NodeId, ConfigError> {
    text.trim().parse().map_err(|_| ConfigError::Invalid {
        field,
        reason: format!("{text:?} is not a peer id (12D3KooW…) or 64 hex digits"),
    })
}

/// Parses `PEER_ID=CREDITS` (a genesis allocation on the command line or in
/// `RENDERTRUST_LEDGER_GENESIS`, comma-separated).
pub fn parse_allocation(text: &str) -> Result<(String, u64), ConfigError> {
    let bad = || ConfigError::Invalid {
        field: "ledger.genesis",
        reason: format!("{text:?}: expected PEER_ID=CREDITS"),
    };
    let (node, credits) = text.split_once('=').ok_or_else(bad)?;
    let credits = credits.trim().parse().map_err(|_| bad())?;
    parse_node("ledger.genesis", node)?;
    Ok((node.trim().to_owned(), credits))
}

impl LedgerSettings {
    fn apply_env(&mut self, get: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = get("RENDERTRUST_LEDGER_MINT_AUTHORITY") {
            self.mint_authority = Some(v);
        }
        if let Some(v) = get("RENDERTRUST_LEDGER_GENESIS") {
            self.genesis = list(&v)
                .iter()
                .map(|a| parse_allocation(a))
                .collect::<Result<_, _>>()?;
        }
        if let Some(v) = get("RENDERTRUST_LEDGER_EPOCH_SECS") {
            self.epoch_secs = parse_env("ledger_epoch_secs", &v)?;
        }
        if let Some(v) = get("RENDERTRUST_LEDGER_GRACE_SECS") {
            self.grace_secs = parse_env("ledger_grace_secs", &v)?;
        }
        if let Some(v) = get("RENDERTRUST_LEDGER_RECONCILE_SECS") {
            self.reconcile_secs = parse_env("ledger_reconcile_secs", &v)?;
        }
        Ok(())
    }

    /// The mint authority, parsed.
    pub fn mint_authority_id(&self) -> Result<Option<NodeId>, ConfigError> {
        self.mint_authority
            .as_deref()
            .filter(|a| !a.trim().is_empty())
            .map(|a| parse_node("ledger.mint_authority", a))
            .transpose()
    }

    /// The protocol machines' settings: the ledger's (authority, genesis;
    /// the rest default) and the rollup's (epochs).
    pub fn to_protocol(
        &self,
    ) -> Result<
        (
            rendertrust_protocol::ledger::LedgerConfig,
            rendertrust_protocol::rollup::RollupConfig,
        ),
        ConfigError,
    > {
        let mut genesis = Vec::with_capacity(self.genesis.len());
        for (node, credits) in &self.genesis {
            genesis.push((parse_node("ledger.genesis", node)?, *credits));
        }
        let ledger = rendertrust_protocol::ledger::LedgerConfig {
            mint_authority: self.mint_authority_id()?,
            genesis,
            ..Default::default()
        };
        let rollup = rendertrust_protocol::rollup::RollupConfig {
            epoch_ms: self.epoch_secs.saturating_mul(1000),
            grace_ms: self.grace_secs.saturating_mul(1000),
            reconcile_window_ms: self.reconcile_secs.saturating_mul(1000),
            ..Default::default()
        };
        Ok((ledger, rollup))
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.epoch_secs == 0 {
            return Err(ConfigError::Invalid {
                field: "ledger.epoch_secs",
                reason: "must be at least 1".into(),
            });
        }
        self.to_protocol().map(|_| ())
    }
}

/// Which anchor backend a ledger uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnchorBackendKind {
    /// The embedded hash-chained journal (no set-up).
    #[default]
    Journal,
    /// The anchor contract on an EVM chain, through JSON-RPC.
    Evm,
}

impl std::str::FromStr for AnchorBackendKind {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "journal" => Ok(AnchorBackendKind::Journal),
            "evm" => Ok(AnchorBackendKind::Evm),
            other => Err(ConfigError::Invalid {
                field: "anchor.backend",
                reason: format!("{other:?}: expected journal or evm"),
            }),
        }
    }
}

/// A secret setting: never printed (`Debug` shows `<redacted>`), never
/// serialised, wiped from memory when dropped.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The secret value: handle with care.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// `[anchor]`: the anchor backend and, for `evm`, the chain to use.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnchorConfig {
    /// `journal` (default) or `evm`.
    pub backend: AnchorBackendKind,
    /// evm: JSON-RPC URL of the chain.
    pub rpc_url: Option<String>,
    /// evm: the signer's private key, hex (prefer `key_file`). Never logged.
    #[serde(skip_serializing)]
    pub key: Option<Secret>,
    /// evm: a file holding the signer's private key, hex.
    pub key_file: Option<PathBuf>,
    /// evm: address of the anchor contract (`rendertrust ledger deploy-contract`).
    pub contract: Option<String>,
    /// evm: blocks to wait for after the anchor's block (1: its own block).
    pub confirmations: Option<u64>,
}

impl AnchorConfig {
    fn apply_env(&mut self, get: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = get("RENDERTRUST_ANCHOR_BACKEND") {
            self.backend = v.parse()?;
        }
        if let Some(v) = get("RENDERTRUST_ANCHOR_RPC_URL") {
            self.rpc_url = Some(v);
        }
        // A key given in a higher layer replaces the other form from below.
        if let Some(v) = get("RENDERTRUST_ANCHOR_KEY") {
            self.key = Some(Secret(v));
            self.key_file = None;
        }
        if let Some(v) = get("RENDERTRUST_ANCHOR_KEY_FILE") {
            self.key_file = Some(PathBuf::from(v));
            self.key = None;
        }
        if let Some(v) = get("RENDERTRUST_ANCHOR_CONTRACT") {
            self.contract = Some(v);
        }
        if let Some(v) = get("RENDERTRUST_ANCHOR_CONFIRMATIONS") {
            self.confirmations = Some(parse_env("anchor_confirmations", &v)?);
        }
        Ok(())
    }

    /// Checks that an `evm` backend has what it needs (the values themselves
    /// are parsed when the backend opens).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.backend != AnchorBackendKind::Evm {
            return Ok(());
        }
        let missing = |field, what: &str| ConfigError::Invalid {
            field,
            reason: format!("the evm backend needs {what}"),
        };
        if self.rpc_url.as_deref().is_none_or(str::is_empty) {
            return Err(missing("anchor.rpc_url", "the chain's JSON-RPC URL"));
        }
        if self.contract.as_deref().is_none_or(str::is_empty) {
            return Err(missing(
                "anchor.contract",
                "the anchor contract's address (deploy one with `rendertrust ledger deploy-contract`)",
            ));
        }
        match (&self.key, &self.key_file) {
            (None, None) => Err(missing(
                "anchor.key_file",
                "a signer key: key_file (or key)",
            )),
            (Some(_), Some(_)) => Err(ConfigError::Invalid {
                field: "anchor.key",
                reason: "set key or key_file, not both".into(),
            }),
            _ => Ok(()),
        }
    }
}

fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("rendertrust");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/share/rendertrust"),
        None => PathBuf::from("rendertrust-data"),
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: default_data_dir(),
            listen: vec![
                "/ip4/0.0.0.0/udp/0/quic-v1".into(),
                "/ip4/0.0.0.0/tcp/0".into(),
            ],
            bootstrap: vec![],
            roles: vec![Role::Worker],
            api: SocketAddr::from(([127, 0, 0, 1], 7700)),
            api_token: None,
            region: String::new(),
            price_per_task: 10,
            max_tasks: 1,
            heartbeat_timeout_secs: 15,
            advert_interval_secs: 10,
            capacity_ttl_secs: 30,
            kad_server: true,
            log_format: LogFormat::Text,
            anchor: AnchorConfig::default(),
            ledger: LedgerSettings::default(),
            #[cfg(feature = "dishonest-test-hooks")]
            dishonest: None,
        }
    }
}

/// Values given on the command line (each `None` leaves the lower layers).
#[derive(Debug, Clone, Default)]
pub struct ConfigOverrides {
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--listen` (all of them).
    pub listen: Option<Vec<String>>,
    /// `--bootstrap` (all of them).
    pub bootstrap: Option<Vec<String>>,
    /// `--roles`.
    pub roles: Option<String>,
    /// `--api`.
    pub api: Option<SocketAddr>,
    /// `--api-token`.
    pub api_token: Option<String>,
    /// `--advert-interval-secs`.
    pub advert_interval_secs: Option<u64>,
    /// `--capacity-ttl-secs`.
    pub capacity_ttl_secs: Option<u64>,
    /// `--max-tasks`.
    pub max_tasks: Option<u16>,
    /// `--heartbeat-timeout-secs`.
    pub heartbeat_timeout_secs: Option<u64>,
    /// `--log-format`.
    pub log_format: Option<String>,
    /// `--anchor-backend`.
    pub anchor_backend: Option<String>,
    /// `--anchor-rpc-url`.
    pub anchor_rpc_url: Option<String>,
    /// `--anchor-key-file`.
    pub anchor_key_file: Option<PathBuf>,
    /// `--anchor-contract`.
    pub anchor_contract: Option<String>,
    /// `--mint-authority`.
    pub mint_authority: Option<String>,
    /// `--genesis` (all of them, `PEER_ID=CREDITS`).
    pub genesis: Option<Vec<String>>,
    /// `--epoch-secs`.
    pub epoch_secs: Option<u64>,
    /// `--epoch-grace-secs`.
    pub epoch_grace_secs: Option<u64>,
    /// `--reconcile-secs`.
    pub reconcile_secs: Option<u64>,
}

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config file {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for a config.
    #[error("config file {path}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// Parser message.
        message: String,
    },
    /// A value is wrong.
    #[error("{field}: {reason}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Parses `worker,scheduler,…`.
pub fn parse_roles(text: &str) -> Result<Vec<Role>, ConfigError> {
    let mut roles = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let r: Role = part
            .parse()
            .map_err(
                |e: rendertrust_protocol::wire::ValidationError| ConfigError::Invalid {
                    field: "roles",
                    reason: e.to_string(),
                },
            )?;
        if !roles.contains(&r) {
            roles.push(r);
        }
    }
    if roles.is_empty() {
        return Err(ConfigError::Invalid {
            field: "roles",
            reason: "no role given; expected e.g. worker,scheduler".into(),
        });
    }
    Ok(roles)
}

fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn parse_env<T: std::str::FromStr>(field: &'static str, v: &str) -> Result<T, ConfigError> {
    v.trim().parse().map_err(|_| ConfigError::Invalid {
        field,
        reason: format!(
            "RENDERTRUST_{}={v:?} does not parse",
            field.to_ascii_uppercase()
        ),
    })
}

impl Config {
    /// Loads defaults, then the file (if any), then the environment, then `overrides`.
    pub fn load(file: Option<&Path>, overrides: &ConfigOverrides) -> Result<Config, ConfigError> {
        let mut c = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?
            }
            None => Config::default(),
        };
        c.apply_env(|k| std::env::var(k).ok())?;
        c.apply_overrides(overrides)?;
        c.validate()?;
        Ok(c)
    }

    /// Applies `RENDERTRUST_*` variables read through `get`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = get("RENDERTRUST_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = get("RENDERTRUST_LISTEN") {
            self.listen = list(&v);
        }
        if let Some(v) = get("RENDERTRUST_BOOTSTRAP") {
            self.bootstrap = list(&v);
        }
        if let Some(v) = get("RENDERTRUST_ROLES") {
            self.roles = parse_roles(&v)?;
        }
        if let Some(v) = get("RENDERTRUST_API_ADDR") {
            self.api = parse_env("api", &v)?;
        }
        if let Some(v) = get("RENDERTRUST_API_TOKEN") {
            self.api_token = Some(v);
        }
        if let Some(v) = get("RENDERTRUST_REGION") {
            self.region = v;
        }
        if let Some(v) = get("RENDERTRUST_PRICE_PER_TASK") {
            self.price_per_task = parse_env("price_per_task", &v)?;
        }
        if let Some(v) = get("RENDERTRUST_MAX_TASKS") {
            self.max_tasks = parse_env("max_tasks", &v)?;
        }
        if let Some(v) = get("RENDERTRUST_HEARTBEAT_TIMEOUT_SECS") {
            self.heartbeat_timeout_secs = parse_env("heartbeat_timeout_secs", &v)?;
        }
        if let Some(v) = get("RENDERTRUST_ADVERT_INTERVAL_SECS") {
            self.advert_interval_secs = parse_env("advert_interval_secs", &v)?;
        }
        if let Some(v) = get("RENDERTRUST_CAPACITY_TTL_SECS") {
            self.capacity_ttl_secs = parse_env("capacity_ttl_secs", &v)?;
        }
        if let Some(v) = get("RENDERTRUST_KAD_SERVER") {
            self.kad_server = parse_env("kad_server", &v)?;
        }
        if let Some(v) = get("RENDERTRUST_LOG_FORMAT") {
            self.log_format = v.parse()?;
        }
        self.anchor.apply_env(&get)?;
        self.ledger.apply_env(&get)?;
        Ok(())
    }

    fn apply_overrides(&mut self, o: &ConfigOverrides) -> Result<(), ConfigError> {
        if let Some(v) = &o.data_dir {
            self.data_dir = v.clone();
        }
        if let Some(v) = &o.listen {
            self.listen = v.clone();
        }
        if let Some(v) = &o.bootstrap {
            self.bootstrap = v.clone();
        }
        if let Some(v) = &o.roles {
            self.roles = parse_roles(v)?;
        }
        if let Some(v) = o.api {
            self.api = v;
        }
        if let Some(v) = &o.api_token {
            self.api_token = Some(v.clone());
        }
        if let Some(v) = o.advert_interval_secs {
            self.advert_interval_secs = v;
        }
        if let Some(v) = o.capacity_ttl_secs {
            self.capacity_ttl_secs = v;
        }
        if let Some(v) = o.max_tasks {
            self.max_tasks = v;
        }
        if let Some(v) = o.heartbeat_timeout_secs {
            self.heartbeat_timeout_secs = v;
        }
        if let Some(v) = &o.log_format {
            self.log_format = v.parse()?;
        }
        if let Some(v) = &o.anchor_backend {
            self.anchor.backend = v.parse()?;
        }
        if let Some(v) = &o.anchor_rpc_url {
            self.anchor.rpc_url = Some(v.clone());
        }
        if let Some(v) = &o.anchor_key_file {
            // A key file on the command line replaces a key from lower layers.
            self.anchor.key = None;
            self.anchor.key_file = Some(v.clone());
        }
        if let Some(v) = &o.anchor_contract {
            self.anchor.contract = Some(v.clone());
        }
        if let Some(v) = &o.mint_authority {
            self.ledger.mint_authority = Some(v.clone());
        }
        if let Some(v) = &o.genesis {
            self.ledger.genesis = v
                .iter()
                .map(|a| parse_allocation(a))
                .collect::<Result<_, _>>()?;
        }
        if let Some(v) = o.epoch_secs {
            self.ledger.epoch_secs = v;
        }
        if let Some(v) = o.epoch_grace_secs {
            self.ledger.grace_secs = v;
        }
        if let Some(v) = o.reconcile_secs {
            self.ledger.reconcile_secs = v;
        }
        Ok(())
    }

    /// Checks values that do not depend on the machine.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_multiaddrs()?;
        self.bootstrap_multiaddrs()?;
        if !self.api.ip().is_loopback() && self.api_token.as_deref().is_none_or(str::is_empty) {
            return Err(ConfigError::Invalid {
                field: "api",
                reason: format!(
                    "{} is not a loopback address: set api_token (or RENDERTRUST_API_TOKEN) so the API is not open to the network",
                    self.api
                ),
            });
        }
        if self.max_tasks == 0 {
            return Err(ConfigError::Invalid {
                field: "max_tasks",
                reason: "must be at least 1".into(),
            });
        }
        if self.heartbeat_timeout_secs < 2 {
            return Err(ConfigError::Invalid {
                field: "heartbeat_timeout_secs",
                reason: format!("{} s is too short: at least 2", self.heartbeat_timeout_secs),
            });
        }
        if self.advert_interval_secs == 0 || self.capacity_ttl_secs <= self.advert_interval_secs {
            return Err(ConfigError::Invalid {
                field: "capacity_ttl_secs",
                reason: format!(
                    "must exceed advert_interval_secs (ttl {} s, interval {} s), or live nodes expire between adverts",
                    self.capacity_ttl_secs, self.advert_interval_secs
                ),
            });
        }
        if self.roles.is_empty() {
            return Err(ConfigError::Invalid {
                field: "roles",
                reason: "no role given".into(),
            });
        }
        self.anchor.validate()?;
        self.ledger.validate()?;
        Ok(())
    }

    /// Parsed listen addresses.
    pub fn listen_multiaddrs(&self) -> Result<Vec<Multiaddr>, ConfigError> {
        self.listen
            .iter()
            .map(|a| {
                a.parse().map_err(|e| ConfigError::Invalid {
                    field: "listen",
                    reason: format!("{a:?} is not a multiaddr: {e}"),
                })
            })
            .collect()
    }

    /// Parsed bootstrap addresses; each must end in `/p2p/<peer id>`.
    pub fn bootstrap_multiaddrs(&self) -> Result<Vec<Multiaddr>, ConfigError> {
        self.bootstrap
            .iter()
            .map(|a| {
                let m: Multiaddr = a.parse().map_err(|e| ConfigError::Invalid {
                    field: "bootstrap",
                    reason: format!("{a:?} is not a multiaddr: {e}"),
                })?;
                if !matches!(m.iter().last(), Some(Protocol::P2p(_))) {
                    return Err(ConfigError::Invalid {
                        field: "bootstrap",
                        reason: format!("{a:?} must end in /p2p/<peer id> (the bootstrap peer prints its full address)"),
                    });
                }
                Ok(m)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_file_parses_to_defaults() {
        let text = include_str!("../rendertrust.toml");
        let c: Config = toml::from_str(text).unwrap();
        let d = Config::default();
        assert_eq!(
            Config {
                data_dir: d.data_dir.clone(),
                ..c
            },
            d
        );
    }

    #[test]
    fn precedence_flags_over_env_over_file() {
        let mut c: Config =
            toml::from_str("region = \"file\"\nmax_tasks = 3\nroles = [\"scheduler\"]").unwrap();
        c.apply_env(|k| match k {
            "RENDERTRUST_REGION" => Some("env".into()),
            "RENDERTRUST_ROLES" => Some("worker,ledger".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.region, "env");
        assert_eq!(c.max_tasks, 3);
        assert_eq!(c.roles, vec![Role::Worker, Role::Ledger]);
        c.apply_overrides(&ConfigOverrides {
            roles: Some("scheduler".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.roles, vec![Role::Scheduler]);
    }

    #[test]
    fn sample_anchor_section_names_real_settings() {
        // Uncomment the sample's [anchor] section: every setting it shows parses.
        let sample = include_str!("../rendertrust.toml");
        let section = sample.split("# [anchor]").nth(1).unwrap();
        let mut text = String::from("[anchor]\n");
        for line in section.lines() {
            if let Some(setting) = line.strip_prefix("# ")
                && setting.contains(" = ")
                && !setting.starts_with(char::is_uppercase)
            {
                text.push_str(setting);
                text.push('\n');
            }
        }
        let c: Config = toml::from_str(&text).unwrap();
        assert!(c.anchor.rpc_url.is_some() && c.anchor.contract.is_some());
        assert!(c.anchor.key.is_some() && c.anchor.key_file.is_some());
        assert_eq!(c.anchor.confirmations, Some(1));
    }

    #[test]
    fn anchor_section_precedence_validation_and_secrecy() {
        let text = "[anchor]\nbackend = \"evm\"\nrpc_url = \"http://127.0.0.1:8545\"\nkey = \"0xsecretkeyhex\"\ncontract = \"0x5FbDB2315678afecb367f032d93F642f64180aa3\"\n";
        let mut c: Config = toml::from_str(text).unwrap();
        assert_eq!(c.anchor.backend, AnchorBackendKind::Evm);
        c.validate().unwrap();
        // The key never shows in Debug or in serialised config.
        assert!(!format!("{c:?}").contains("secretkeyhex"));
        assert!(!toml::to_string(&c).unwrap().contains("secretkeyhex"));
        assert!(!serde_json::to_string(&c).unwrap().contains("secretkeyhex"));

        // A key file from the environment replaces the file's key; a flag wins over both.
        c.apply_env(|k| match k {
            "RENDERTRUST_ANCHOR_KEY_FILE" => Some("/env/key".into()),
            "RENDERTRUST_ANCHOR_CONTRACT" => {
                Some("0x0000000000000000000000000000000000000001".into())
            }
            _ => None,
        })
        .unwrap();
        assert!(c.anchor.key.is_none());
        assert_eq!(c.anchor.key_file.as_deref(), Some(Path::new("/env/key")));
        c.apply_overrides(&ConfigOverrides {
            anchor_key_file: Some("/flag/key".into()),
            anchor_backend: Some("journal".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.anchor.key_file.as_deref(), Some(Path::new("/flag/key")));
        assert_eq!(c.anchor.backend, AnchorBackendKind::Journal);
        assert_eq!(
            c.anchor.contract.as_deref(),
            Some("0x0000000000000000000000000000000000000001")
        );

        // evm without its settings is refused, with the setting named.
        for (text, field) in [
            ("[anchor]\nbackend = \"evm\"", "anchor.rpc_url"),
            (
                "[anchor]\nbackend = \"evm\"\nrpc_url = \"http://x\"",
                "anchor.contract",
            ),
            (
                "[anchor]\nbackend = \"evm\"\nrpc_url = \"http://x\"\ncontract = \"0x1\"",
                "anchor.key_file",
            ),
            (
                "[anchor]\nbackend = \"evm\"\nrpc_url = \"http://x\"\ncontract = \"0x1\"\nkey = \"k\"\nkey_file = \"f\"",
                "anchor.key",
            ),
        ] {
            let c: Config = toml::from_str(text).unwrap();
            assert!(
                matches!(c.validate(), Err(ConfigError::Invalid { field: f, .. }) if f == field),
                "{text}"
            );
        }
        // journal needs nothing; unknown backends and keys are refused.
        let c: Config = toml::from_str("[anchor]\nbackend = \"journal\"").unwrap();
        c.validate().unwrap();
        assert!(toml::from_str::<Config>("[anchor]\nbackend = \"ipfs\"").is_err());
        assert!(toml::from_str::<Config>("[anchor]\nrpc = \"x\"").is_err());
        assert!("chain".parse::<AnchorBackendKind>().is_err());
    }

    #[test]
    fn ledger_section_parses_with_precedence_and_validation() {
        let a = NodeKeyForTest::id(1);
        let b = NodeKeyForTest::id(2);
        let text = format!(
            "[ledger]\nmint_authority = \"{a}\"\nepoch_secs = 60\ngrace_secs = 5\n[ledger.genesis]\n\"{a}\" = 100\n\"{b}\" = 7\n"
        );
        let mut c: Config = toml::from_str(&text).unwrap();
        c.validate().unwrap();
        let (ledger, rollup) = c.ledger.to_protocol().unwrap();
        assert_eq!(ledger.mint_authority, Some(a));
        assert_eq!(ledger.genesis.len(), 2);
        assert!(ledger.genesis.contains(&(b, 7)));
        assert_eq!((rollup.epoch_ms, rollup.grace_ms), (60_000, 5_000));
        assert_eq!(rollup.reconcile_window_ms, 600_000);

        // Environment over the file, flags over both.
        c.apply_env(|k| match k {
            "RENDERTRUST_LEDGER_EPOCH_SECS" => Some("30".into()),
            "RENDERTRUST_LEDGER_GENESIS" => Some(format!("{b}=9")),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.ledger.epoch_secs, 30);
        assert_eq!(c.ledger.genesis.len(), 1);
        c.apply_overrides(&ConfigOverrides {
            epoch_secs: Some(5),
            epoch_grace_secs: Some(1),
            genesis: Some(vec![format!("{a}=3"), format!("{b}=4")]),
            mint_authority: Some(b.to_string()),
            ..Default::default()
        })
        .unwrap();
        let (ledger, rollup) = c.ledger.to_protocol().unwrap();
        assert_eq!((rollup.epoch_ms, rollup.grace_ms), (5_000, 1_000));
        assert_eq!(ledger.mint_authority, Some(b));
        assert!(ledger.genesis.contains(&(a, 3)) && ledger.genesis.contains(&(b, 4)));

        // Refused, with the setting named.
        for (text, field) in [
            ("[ledger]\nepoch_secs = 0", "ledger.epoch_secs"),
            (
                "[ledger]\nmint_authority = \"nobody\"",
                "ledger.mint_authority",
            ),
            ("[ledger.genesis]\nnobody = 5", "ledger.genesis"),
        ] {
            let c: Config = toml::from_str(text).unwrap();
            assert!(
                matches!(c.validate(), Err(ConfigError::Invalid { field: f, .. }) if f == field),
                "{text}"
            );
        }
        assert!(parse_allocation("x").is_err());
        assert!(parse_allocation(&format!("{a}=lots")).is_err());
        assert!(toml::from_str::<Config>("[ledger]\nepochs = 1").is_err());
    }

    /// Node ids for config tests.
    struct NodeKeyForTest;
    impl NodeKeyForTest {
        fn id(seed: u8) -> NodeId {
            rendertrust_protocol::identity::NodeKey::from_secret_bytes(&[seed; 32]).node_id()
        }
    }

    #[test]
    fn rejects_bad_values() {
        assert!(parse_roles("worker,boss").is_err());
        let mut c = Config {
            api: "0.0.0.0:7700".parse().unwrap(),
            ..Config::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Invalid { field: "api", .. })
        ));
        c.api_token = Some("t".into());
        assert!(c.validate().is_ok());
        let c = Config {
            bootstrap: vec!["/ip4/127.0.0.1/udp/1/quic-v1".into()],
            ..Config::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Invalid {
                field: "bootstrap",
                ..
            })
        ));
        let c = Config {
            listen: vec!["not an addr".into()],
            ..Config::default()
        };
        assert!(c.validate().is_err());
        assert!(toml::from_str::<Config>("unknown_key = 1").is_err());
    }
}
