//! The EVM anchor backend: the anchor contract (`node/contracts/Anchor.sol`)
//! on an EVM chain, driven through alloy over JSON-RPC.
//!
//! One transaction per epoch, whatever the number of receipts: the contract
//! stores `(root, count)` under `(msg.sender, epoch)` and emits `Anchored`.
//! Re-anchoring the same root is a no-op; another root for an anchored epoch
//! reverts with `AlreadyAnchored`, so a ledger cannot rewrite its history
//! (rules and reasons in `node/contracts/README.md`).
//!
//! The contract's interface, init code and runtime code come from the
//! committed artifact `node/contracts/Anchor.json` (built by
//! `scripts/build-contract.sh`), read at compile time by alloy's `sol!`: a
//! build needs no Solidity compiler. [`EvmAnchor::connect`] refuses an
//! address whose code is not exactly that runtime code, so a verifier reads
//! roots from the real contract or from nothing.
//!
//! The signer key (hex, from the config or a file) is never logged: the
//! settings' `Debug` shows only the signer's address. This module does not
//! decide what to anchor or when (the ledger driver does).

use std::path::Path;
use std::time::Duration;

use alloy::network::{EthereumWallet, TransactionBuilder};
use alloy::primitives::{Address, B256, keccak256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolCall;
use alloy::transports::http::reqwest::{self, Url};
use alloy::transports::{RpcError, TransportErrorKind};
use rendertrust_protocol::signed::Signed;
use rendertrust_protocol::wire::RollupHeader;
use serde::Serialize;
use zeroize::Zeroizing;

use super::{
    AnchorBackend, AnchorError, AnchorReceipt, AnchorRef, AnchoredRoot, Anchorer, OpenError,
};
use crate::config::{AnchorConfig, Secret};

alloy::sol!(
    /// Bindings of the anchor contract, from the committed artifact
    /// (`Anchor::BYTECODE` is its init code, `Anchor::DEPLOYED_BYTECODE` its
    /// runtime code).
    #[derive(Debug, PartialEq, Eq)]
    Anchor,
    "contracts/Anchor.json"
);

/// Time limit for one JSON-RPC request.
const RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// Time limit for a sent transaction to be mined (and confirmed).
const RECEIPT_TIMEOUT: Duration = Duration::from_secs(300);

/// What the EVM backend needs, parsed and checked.
#[derive(Debug, Clone)]
pub struct EvmSettings {
    /// The chain's JSON-RPC URL.
    pub rpc_url: Url,
    /// The anchor contract.
    pub contract: Address,
    /// The signer (its `Debug` shows the address only).
    pub signer: PrivateKeySigner,
    /// Blocks to wait for, counting the anchor's own (at least 1).
    pub confirmations: u64,
}

impl EvmSettings {
    /// Reads the `[anchor]` settings of the `evm` backend.
    pub fn from_config(config: &AnchorConfig) -> Result<EvmSettings, OpenError> {
        let field = |field, reason: String| OpenError::Config { field, reason };
        let rpc_url = parse_rpc_url(config.rpc_url.as_deref().unwrap_or_default())?;
        let contract = config
            .contract
            .as_deref()
            .unwrap_or_default()
            .trim()
            .parse::<Address>()
            .map_err(|e| {
                field(
                    "contract",
                    format!("expected the contract's address (0x + 40 hex digits): {e}"),
                )
            })?;
        let signer = load_signer(config.key.as_ref(), config.key_file.as_deref())?;
        Ok(EvmSettings {
            rpc_url,
            contract,
            signer,
            confirmations: config.confirmations.unwrap_or(1).max(1),
        })
    }
}

/// Parses a JSON-RPC URL (http or https).
pub fn parse_rpc_url(text: &str) -> Result<Url, OpenError> {
    let url = Url::parse(text.trim()).map_err(|e| OpenError::Config {
        field: "rpc_url",
        reason: format!("{text:?} is not a URL: {e}"),
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(OpenError::Config {
            field: "rpc_url",
            reason: format!("{text:?}: expected an http:// or https:// JSON-RPC URL"),
        });
    }
    Ok(url)
}

/// The signer from a hex key (`key`) or a file holding one (`key_file`).
/// Errors never contain the key.
pub fn load_signer(
    key: Option<&Secret>,
    key_file: Option<&Path>,
) -> Result<PrivateKeySigner, OpenError> {
    let text: Zeroizing<String> = match (key, key_file) {
        (Some(k), None) => Zeroizing::new(k.expose().to_owned()),
        (None, Some(path)) => Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            OpenError::Key(format!("cannot read key file {}: {e}", path.display()))
        })?),
        (None, None) => {
            return Err(OpenError::Key(
                "none given: set [anchor] key_file (or key)".into(),
            ));
        }
        (Some(_), Some(_)) => {
            return Err(OpenError::Key("set key or key_file, not both".into()));
        }
    };
    let hex_text = text.trim();
    let hex_text = hex_text
        .strip_prefix("0x")
        .or_else(|| hex_text.strip_prefix("0X"))
        .unwrap_or(hex_text);
    let mut bytes = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(hex_text, bytes.as_mut()).map_err(|_| {
        let from = key_file.map_or_else(
            || "the key".to_owned(),
            |p| format!("key file {}", p.display()),
        );
        OpenError::Key(format!(
            "{from} must hold a secp256k1 private key as 64 hex digits (optionally 0x-prefixed)"
        ))
    })?;
    PrivateKeySigner::from_slice(bytes.as_ref())
        .map_err(|_| OpenError::Key("not a valid secp256k1 private key (zero or too large)".into()))
}

fn provider(url: &Url, signer: PrivateKeySigner) -> Result<DynProvider, AnchorError> {
    let client = reqwest::Client::builder()
        .timeout(RPC_TIMEOUT)
        .build()
        .map_err(|e| AnchorError::Rpc {
            action: "building the HTTP client",
            message: e.to_string(),
        })?;
    // **Decision: the nonce is asked of the node for every transaction**
    // (`SimpleNonceManager`), not cached. The recommended fillers cache it and
    // fill it concurrently with gas estimation, so an anchor the contract
    // refuses (estimation reverts: a conflicting root) still used up a
    // nonce locally; the next anchor then went out with a nonce gap and sat
    // in the node's queue forever. One `eth_getTransactionCount` per epoch
    // costs nothing; one sender per key is assumed (the ledger's anchoring
    // task sends one transaction at a time).
    Ok(ProviderBuilder::new()
        .disable_recommended_fillers()
        .with_gas_estimation()
        .with_simple_nonce_management()
        .fetch_chain_id()
        .wallet(EthereumWallet::from(signer))
        .connect_reqwest(client, url.clone())
        .erased())
}

fn rpc_err(action: &'static str, e: impl std::fmt::Display) -> AnchorError {
    AnchorError::Rpc {
        action,
        message: e.to_string(),
    }
}

/// The first request to a chain failed: say where, and what to check.
fn unreachable_err(url: &Url, e: RpcError<TransportErrorKind>) -> AnchorError {
    let mut message = format!("{url}: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    message.push_str(" (is the chain's JSON-RPC endpoint up, and is [anchor] rpc_url right?)");
    AnchorError::Rpc {
        action: "reaching the chain",
        message,
    }
}

/// Turns a failed send into a clear error: a revert of the anchor contract
/// (seen when the node estimates gas) is decoded to its custom error.
fn send_error(epoch: u64, e: RpcError<TransportErrorKind>) -> AnchorError {
    if let Some(payload) = e.as_error_resp() {
        if let Some(err) = payload.as_decoded_interface_error::<Anchor::AnchorErrors>() {
            return match err {
                Anchor::AnchorErrors::AlreadyAnchored(a) => AnchorError::Conflict {
                    epoch: a.epoch,
                    anchorer: Anchorer::Evm(a.anchorer).to_string(),
                    anchored_root: hex::encode(a.root),
                    anchored_count: a.count,
                    new_root: "(the one sent)".into(),
                    new_count: 0,
                },
                Anchor::AnchorErrors::ZeroRoot(_) => AnchorError::ZeroRoot { epoch },
            };
        }
        if payload.message.contains("revert") {
            return AnchorError::Reverted {
                epoch,
                reason: payload.message.to_string(),
            };
        }
    }
    rpc_err("sending the anchor transaction", e)
}

/// A deployed anchor contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deployment {
    /// The contract's address: `[anchor] contract`.
    pub address: Address,
    /// Chain id.
    pub chain_id: u64,
    /// The deploying account.
    pub deployer: Address,
    /// The deployment transaction.
    pub tx: B256,
    /// Its block.
    pub block: u64,
    /// Gas it used.
    pub gas_used: u64,
}

impl std::fmt::Display for Deployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "anchor contract deployed at {}", self.address)?;
        writeln!(
            f,
            "  chain {}, block {}, tx {}, gas used {}, deployer {}",
            self.chain_id, self.block, self.tx, self.gas_used, self.deployer
        )?;
        write!(
            f,
            "use it with:\n  [anchor]\n  backend = \"evm\"\n  contract = \"{}\"",
            self.address
        )
    }
}

/// Deploys the anchor contract (the committed init code) from `signer`'s
/// account and waits for it to be mined.
pub async fn deploy_contract(
    rpc_url: &Url,
    signer: PrivateKeySigner,
) -> Result<Deployment, AnchorError> {
    let deployer = signer.address();
    let provider = provider(rpc_url, signer)?;
    let chain_id = provider
        .get_chain_id()
        .await
        .map_err(|e| unreachable_err(rpc_url, e))?;
    let tx = TransactionRequest::default()
        .with_from(deployer)
        .with_deploy_code(Anchor::BYTECODE.clone());
    let receipt = provider
        .send_transaction(tx)
        .await
        .map_err(|e| rpc_err("sending the deployment transaction", e))?
        .with_timeout(Some(RECEIPT_TIMEOUT))
        .get_receipt()
        .await
        .map_err(|e| rpc_err("waiting for the deployment", e))?;
    if !receipt.status() {
        return Err(rpc_err(
            "deploying the anchor contract",
            format!("transaction {} failed", receipt.transaction_hash),
        ));
    }
    let address = receipt.contract_address.ok_or_else(|| {
        rpc_err(
            "deploying the anchor contract",
            "the receipt names no contract address",
        )
    })?;
    tracing::info!(%address, chain_id, gas_used = receipt.gas_used, "anchor contract deployed");
    Ok(Deployment {
        address,
        chain_id,
        deployer,
        tx: receipt.transaction_hash,
        block: receipt.block_number.unwrap_or_default(),
        gas_used: receipt.gas_used,
    })
}

/// Where [`EvmAnchor::checked`] connects.
struct CheckedSettings<'a> {
    rpc_url: &'a Url,
    contract: Address,
}

/// The EVM backend: anchors as the signer's account in one contract.
#[derive(Debug, Clone)]
pub struct EvmAnchor {
    provider: DynProvider,
    contract: Address,
    anchorer: Address,
    chain_id: u64,
    confirmations: u64,
}

impl EvmAnchor {
    /// Connects, and checks that the code at the contract address is the
    /// anchor contract's runtime code.
    pub async fn connect(settings: EvmSettings) -> Result<EvmAnchor, AnchorError> {
        let anchorer = settings.signer.address();
        let provider = provider(&settings.rpc_url, settings.signer)?;
        Self::checked(
            provider,
            &settings.rpc_url,
            settings.contract,
            anchorer,
            settings.confirmations,
        )
        .await
    }

    /// Connects without a signer, to read anchored roots only (what
    /// `receipt verify` needs); checks the contract's code like
    /// [`EvmAnchor::connect`]. Anchoring through it fails.
    pub async fn reader(rpc_url: &Url, contract: Address) -> Result<EvmAnchor, AnchorError> {
        let client = reqwest::Client::builder()
            .timeout(RPC_TIMEOUT)
            .build()
            .map_err(|e| AnchorError::Rpc {
                action: "building the HTTP client",
                message: e.to_string(),
            })?;
        let provider = ProviderBuilder::new()
            .connect_reqwest(client, rpc_url.clone())
            .erased();
        Self::checked(provider, rpc_url, contract, Address::ZERO, 1).await
    }

    async fn checked(
        provider: DynProvider,
        rpc_url: &Url,
        contract: Address,
        anchorer: Address,
        confirmations: u64,
    ) -> Result<EvmAnchor, AnchorError> {
        let settings = CheckedSettings { rpc_url, contract };
        let chain_id = provider
            .get_chain_id()
            .await
            .map_err(|e| unreachable_err(settings.rpc_url, e))?;
        let code = provider
            .get_code_at(settings.contract)
            .await
            .map_err(|e| rpc_err("reading the anchor contract's code", e))?;
        if code.is_empty() {
            return Err(rpc_err(
                "checking the anchor contract",
                format!(
                    "no contract at {} on chain {chain_id}: deploy one with `rendertrust ledger deploy-contract` and set [anchor] contract",
                    settings.contract
                ),
            ));
        }
        if keccak256(&code) != keccak256(&Anchor::DEPLOYED_BYTECODE) {
            return Err(rpc_err(
                "checking the anchor contract",
                format!(
                    "the code at {} on chain {chain_id} is not this release's anchor contract (code hash {}, expected {})",
                    settings.contract,
                    keccak256(&code),
                    keccak256(&Anchor::DEPLOYED_BYTECODE)
                ),
            ));
        }
        Ok(EvmAnchor {
            provider,
            contract: settings.contract,
            anchorer,
            chain_id,
            confirmations,
        })
    }

    /// The account roots are anchored under (the signer's address).
    pub fn anchorer(&self) -> Address {
        self.anchorer
    }

    /// The contract.
    pub fn contract(&self) -> Address {
        self.contract
    }

    /// The chain id.
    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    async fn root_of(
        &self,
        anchorer: Address,
        epoch: u64,
    ) -> Result<Option<AnchoredRoot>, AnchorError> {
        let call = Anchor::rootOfCall { anchorer, epoch };
        let tx = TransactionRequest::default()
            .with_to(self.contract)
            .with_input(call.abi_encode());
        let out = self
            .provider
            .call(tx)
            .await
            .map_err(|e| rpc_err("reading an anchored root", e))?;
        let r = Anchor::rootOfCall::abi_decode_returns(&out)
            .map_err(|e| rpc_err("decoding an anchored root", e))?;
        if r.root == B256::ZERO {
            return Ok(None);
        }
        Ok(Some(AnchoredRoot {
            anchorer: Anchorer::Evm(anchorer),
            epoch,
            root: r.root.0,
            count: r.count,
            reference: AnchorRef::Evm {
                chain_id: self.chain_id,
                contract: self.contract,
                anchorer,
                block: r.anchoredAt,
                tx: None,
                gas_used: None,
            },
        }))
    }

    /// Sends the `anchor` transaction as is, without checking first what is
    /// anchored: the contract's own rules decide (and its reverts come back
    /// as [`AnchorError::Conflict`] / [`AnchorError::ZeroRoot`]).
    /// [`AnchorBackend::anchor`] checks first and is what the node uses;
    /// this is for tests and tools.
    pub async fn send_anchor(
        &self,
        epoch: u64,
        root: [u8; 32],
        count: u64,
    ) -> Result<AnchorReceipt, AnchorError> {
        let call = Anchor::anchorCall {
            epoch,
            root: B256::from(root),
            count,
        };
        let tx = TransactionRequest::default()
            .with_from(self.anchorer)
            .with_to(self.contract)
            .with_input(call.abi_encode());
        let receipt = self
            .provider
            .send_transaction(tx)
            .await
            .map_err(|e| match send_error(epoch, e) {
                AnchorError::Conflict {
                    epoch,
                    anchorer,
                    anchored_root,
                    anchored_count,
                    ..
                } => AnchorError::Conflict {
                    epoch,
                    anchorer,
                    anchored_root,
                    anchored_count,
                    new_root: hex::encode(root),
                    new_count: count,
                },
                other => other,
            })?
            .with_required_confirmations(self.confirmations)
            .with_timeout(Some(RECEIPT_TIMEOUT))
            .get_receipt()
            .await
            .map_err(|e| rpc_err("waiting for the anchor transaction", e))?;
        if !receipt.status() {
            return Err(AnchorError::Reverted {
                epoch,
                reason: format!(
                    "transaction {} failed when mined (gas used {})",
                    receipt.transaction_hash, receipt.gas_used
                ),
            });
        }
        tracing::info!(
            epoch,
            count,
            root = %hex::encode(root),
            tx = %receipt.transaction_hash,
            gas_used = receipt.gas_used,
            "rollup anchored on chain {}",
            self.chain_id
        );
        Ok(AnchorReceipt {
            epoch,
            root,
            count,
            already_anchored: false,
            reference: AnchorRef::Evm {
                chain_id: self.chain_id,
                contract: self.contract,
                anchorer: self.anchorer,
                block: receipt.block_number.unwrap_or_default(),
                tx: Some(receipt.transaction_hash),
                gas_used: Some(receipt.gas_used),
            },
        })
    }
}

impl AnchorBackend for EvmAnchor {
    /// Checks the header's signature, reads what this account anchored for
    /// the epoch (the same root: done, nothing sent; another: `Conflict`),
    /// then sends one transaction and waits for its receipt.
    async fn anchor(&self, header: &Signed<RollupHeader>) -> Result<AnchorReceipt, AnchorError> {
        let h = header.verify()?;
        if h.root == [0; 32] {
            return Err(AnchorError::ZeroRoot { epoch: h.epoch });
        }
        if let Some(existing) = self.root_of(self.anchorer, h.epoch).await? {
            if existing.root == h.root && existing.count == h.count {
                return Ok(AnchorReceipt {
                    epoch: h.epoch,
                    root: h.root,
                    count: h.count,
                    already_anchored: true,
                    reference: existing.reference,
                });
            }
            return Err(AnchorError::Conflict {
                epoch: h.epoch,
                anchorer: existing.anchorer.to_string(),
                anchored_root: hex::encode(existing.root),
                anchored_count: existing.count,
                new_root: hex::encode(h.root),
                new_count: h.count,
            });
        }
        self.send_anchor(h.epoch, h.root, h.count).await
    }

    async fn anchored_root(
        &self,
        anchorer: &Anchorer,
        epoch: u64,
    ) -> Result<Option<AnchoredRoot>, AnchorError> {
        match anchorer {
            Anchorer::Evm(a) => self.root_of(*a, epoch).await,
            Anchorer::Ledger(id) => Err(AnchorError::WrongAnchorer {
                backend: "evm",
                expected: "EVM account (0x…)",
                found: format!("ledger {id}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::sol_types::{SolError, SolEvent};

    // anvil's first development key (public knowledge, never for real chains).
    const DEV_KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

    #[test]
    fn artifact_has_code_and_the_expected_interface() {
        assert!(Anchor::BYTECODE.len() > 100);
        assert!(Anchor::DEPLOYED_BYTECODE.len() > 100);
        // The init code (no constructor) carries the runtime code at its end.
        assert!(Anchor::BYTECODE.ends_with(&Anchor::DEPLOYED_BYTECODE));
        assert_eq!(
            Anchor::anchorCall::SIGNATURE,
            "anchor(uint64,bytes32,uint64)"
        );
        assert_eq!(Anchor::rootOfCall::SIGNATURE, "rootOf(address,uint64)");
        assert_eq!(
            Anchor::Anchored::SIGNATURE,
            "Anchored(address,uint64,bytes32,uint64)"
        );
        assert_eq!(
            Anchor::AlreadyAnchored::SIGNATURE,
            "AlreadyAnchored(address,uint64,bytes32,uint64)"
        );
    }

    #[test]
    fn signer_from_key_or_file_never_echoes_the_key() {
        let s = load_signer(Some(&Secret::new(DEV_KEY.into())), None).unwrap();
        assert_eq!(
            s.address(),
            "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
                .parse::<Address>()
                .unwrap()
        );
        assert!(!format!("{s:?}").contains("ac0974bec"));

        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("k");
        std::fs::write(&f, format!("  {}\n", &DEV_KEY[2..])).unwrap();
        assert_eq!(load_signer(None, Some(&f)).unwrap().address(), s.address());

        let bad = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ffZZ";
        let e = load_signer(Some(&Secret::new(bad.into())), None).unwrap_err();
        assert!(!e.to_string().contains("ac0974"), "{e}");
        std::fs::write(&f, bad).unwrap();
        let e = load_signer(None, Some(&f)).unwrap_err();
        assert!(!e.to_string().contains("ac0974"), "{e}");
        let e = load_signer(Some(&Secret::new("0x00".to_owned())), None).unwrap_err();
        assert!(matches!(e, OpenError::Key(_)), "{e}");
        let zero = format!("0x{}", "00".repeat(32));
        assert!(load_signer(Some(&Secret::new(zero)), None).is_err());
        assert!(load_signer(None, Some(&d.path().join("missing"))).is_err());
        assert!(load_signer(None, None).is_err());
    }

    #[test]
    fn settings_from_config() {
        let mut c = AnchorConfig {
            backend: crate::config::AnchorBackendKind::Evm,
            rpc_url: Some("http://127.0.0.1:8545".into()),
            key: Some(Secret::new(DEV_KEY.into())),
            key_file: None,
            contract: Some("0x5FbDB2315678afecb367f032d93F642f64180aa3".into()),
            confirmations: None,
        };
        let s = EvmSettings::from_config(&c).unwrap();
        assert_eq!(s.confirmations, 1);
        assert!(!format!("{s:?}").contains("ac0974bec"));
        c.rpc_url = Some("ws://127.0.0.1:8545".into());
        assert!(matches!(
            EvmSettings::from_config(&c),
            Err(OpenError::Config {
                field: "rpc_url",
                ..
            })
        ));
        c.rpc_url = Some("http://127.0.0.1:8545".into());
        c.contract = Some("0x1234".into());
        assert!(matches!(
            EvmSettings::from_config(&c),
            Err(OpenError::Config {
                field: "contract",
                ..
            })
        ));
    }
}
