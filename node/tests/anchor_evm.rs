//! The EVM anchor backend against a real local chain: an `anvil` started by
//! the test on a free loopback port (installed by `scripts/deps.sh` into
//! `.tools/`; `RENDERTRUST_ANVIL` overrides the path). Without anvil the test
//! is skipped with a loud message, except in CI (`CI` set), where it fails.
//!
//! It deploys the contract with the real `rendertrust ledger deploy-contract`
//! command, anchors epochs, reads them back, checks receipts against them,
//! and checks every refusal. Gas per anchor is printed (run with
//! `--nocapture` to see it), never asserted.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alloy::primitives::Address;
use alloy::providers::{Provider, ProviderBuilder};
use alloy::rpc::types::Filter;
use alloy::sol_types::SolEvent;
use rendertrust_node::anchor::evm::{self, Anchor, EvmAnchor, EvmSettings};
use rendertrust_node::anchor::{
    AnchorBackend, AnchorError, AnchorRef, Anchorer, Backend, Verdict, check_receipt, header_hash,
};
use rendertrust_node::config::{AnchorBackendKind, AnchorConfig, Secret};
use rendertrust_node::store::Store;
use rendertrust_protocol::identity::NodeKey;
use rendertrust_protocol::merkle::{Hash32, MerkleTree};
use rendertrust_protocol::signed::{MessageId, Signed};
use rendertrust_protocol::wire::RollupHeader;

// anvil's first two development accounts (public knowledge; never on a real chain).
const KEY0: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
const KEY1: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";

/// A running anvil, killed when dropped (also when the test panics).
struct Anvil {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn anvil_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RENDERTRUST_ANVIL") {
        return Some(PathBuf::from(p));
    }
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/node_modules/.bin/anvil");
    if local.exists() {
        return Some(local);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("anvil"))
            .find(|p| p.is_file())
    })
}

/// Starts anvil on a free port (it picks one: `--port 0`), or says why not.
fn start_anvil() -> Option<Anvil> {
    let Some(bin) = anvil_binary() else {
        let msg = "anvil not found: run scripts/deps.sh (installs it into .tools/) or set RENDERTRUST_ANVIL";
        if std::env::var_os("CI").is_some() {
            panic!("{msg}");
        }
        eprintln!("\n!!!!!!!! SKIPPED the EVM anchor test: {msg} !!!!!!!!\n");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("anvil.log");
    let child = Command::new(&bin)
        .args(["--host", "127.0.0.1", "--port", "0"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    let mut anvil = Anvil {
        child,
        url: String::new(),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(addr) = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Listening on "))
        {
            anvil.url = format!("http://{}", addr.trim());
            return Some(anvil);
        }
        if let Some(status) = anvil.child.try_wait().unwrap() {
            panic!("anvil exited ({status}) before listening:\n{text}");
        }
        assert!(
            Instant::now() < deadline,
            "anvil did not listen within 60 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn header(k: &NodeKey, epoch: u64, root: Hash32, count: u64, prev: Hash32) -> Signed<RollupHeader> {
    Signed::sign(
        k,
        &RollupHeader {
            epoch,
            root,
            count,
            ledger: k.node_id(),
            prev,
            closed_at_ms: 1_780_000_000_000 + epoch,
        },
    )
    .unwrap()
}

fn gas(r: &AnchorRef) -> Option<u64> {
    match r {
        AnchorRef::Evm { gas_used, .. } => *gas_used,
        AnchorRef::Journal { .. } => None,
    }
}

/// Deploys with the CLI (`--json`) and returns the contract address.
fn deploy_with_cli(url: &str, key_file: &std::path::Path) -> Address {
    let out = Command::new(env!("CARGO_BIN_EXE_rendertrust"))
        .args(["ledger", "deploy-contract", "--rpc-url", url, "--key-file"])
        .arg(key_file)
        .arg("--json")
        .env_remove("RENDERTRUST_ANCHOR_RPC_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "deploy-contract failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["address"].as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn evm_backend_on_a_real_anvil() {
    let Some(anvil) = start_anvil() else { return };
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("anchor.key");
    std::fs::write(&key_file, format!("{KEY0}\n")).unwrap();

    // Deploy with the real command; the backend opens from an [anchor] config.
    let contract = deploy_with_cli(&anvil.url, &key_file);
    let config = AnchorConfig {
        backend: AnchorBackendKind::Evm,
        rpc_url: Some(anvil.url.clone()),
        key: None,
        key_file: Some(key_file.clone()),
        contract: Some(contract.to_string()),
        confirmations: None,
    };
    config.validate().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let backend = Backend::open(&config, &store).await.unwrap();
    assert!(matches!(backend, Backend::Evm(_)));
    let settings = EvmSettings::from_config(&config).unwrap();
    let chain = EvmAnchor::connect(settings.clone()).await.unwrap();
    let me = Anchorer::Evm(chain.anchorer());
    assert_eq!(chain.chain_id(), 31337);

    // An address that holds no contract, or another contract, is refused.
    let e = EvmAnchor::connect(EvmSettings {
        contract: chain.anchorer(),
        ..settings.clone()
    })
    .await
    .unwrap_err();
    assert!(e.to_string().contains("no contract"), "{e}");

    let provider = ProviderBuilder::new().connect_http(anvil.url.parse().unwrap());
    let nonce = || async {
        provider
            .get_transaction_count(chain.anchorer())
            .await
            .unwrap()
    };

    // Epoch 1 and 2 of a real ledger, with real Merkle roots.
    let ledger = NodeKey::from_secret_bytes(&[7; 32]);
    let mut receipts: Vec<Hash32> = (0u32..1000)
        .map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes())
        .collect();
    receipts.sort();
    let tree1 = MerkleTree::from_sorted_unique(receipts[..3].to_vec()).unwrap();
    let tree2 = MerkleTree::from_sorted_unique(receipts.clone()).unwrap();
    let h1 = header(&ledger, 1, tree1.root(), 3, [0; 32]);
    let h2 = header(&ledger, 2, tree2.root(), 1000, header_hash(&h1));

    let n0 = nonce().await;
    let r1 = backend.anchor(&h1).await.unwrap();
    let r2 = backend.anchor(&h2).await.unwrap();
    assert!(!r1.already_anchored && !r2.already_anchored);
    assert_eq!(nonce().await, n0 + 2, "one transaction per epoch");
    println!(
        "gas per anchor on anvil: epoch 1 ({} receipts): {}, epoch 2 ({} receipts): {}",
        r1.count,
        gas(&r1.reference).unwrap(),
        r2.count,
        gas(&r2.reference).unwrap()
    );

    // Read back, from a separate connection.
    let a1 = chain.anchored_root(&me, 1).await.unwrap().unwrap();
    assert_eq!((a1.root, a1.count), (tree1.root(), 3));
    let a2 = chain.anchored_root(&me, 2).await.unwrap().unwrap();
    assert_eq!((a2.root, a2.count), (tree2.root(), 1000));
    assert!(matches!(a2.reference, AnchorRef::Evm { block, .. } if block > 0));
    assert!(chain.anchored_root(&me, 3).await.unwrap().is_none());
    assert!(matches!(
        chain
            .anchored_root(&Anchorer::Ledger(ledger.node_id()), 1)
            .await,
        Err(AnchorError::WrongAnchorer { .. })
    ));

    // Receipts check against the anchored roots.
    let proof = tree2.proof(417).unwrap();
    let v = check_receipt(&chain, &MessageId(receipts[417]), &proof, &me, 2).await;
    assert!(v.is_included(), "{v}");
    println!("receipt verify: {v}");
    let v = check_receipt(&chain, &MessageId(receipts[418]), &proof, &me, 2).await;
    assert!(matches!(v, Verdict::NotIncluded { .. }), "{v}");
    let v = check_receipt(&chain, &MessageId(receipts[417]), &proof, &me, 1).await;
    assert!(matches!(v, Verdict::NotIncluded { .. }), "wrong epoch: {v}");
    let v = check_receipt(&chain, &MessageId(receipts[417]), &proof, &me, 9).await;
    assert!(matches!(v, Verdict::NotAnchored { .. }), "{v}");

    // The same header again: a no-op, nothing sent.
    let again = backend.anchor(&h1).await.unwrap();
    assert!(again.already_anchored);
    assert_eq!(nonce().await, n0 + 2);

    // Another root for epoch 1: refused before sending...
    let forged = header(&ledger, 1, [0xee; 32], 3, [0; 32]);
    let e = backend.anchor(&forged).await.unwrap_err();
    assert!(matches!(e, AnchorError::Conflict { epoch: 1, .. }), "{e}");
    // ...and by the contract itself (a clear error, decoded from the revert).
    let e = chain.send_anchor(1, [0xee; 32], 3).await.unwrap_err();
    assert!(
        matches!(&e, AnchorError::Conflict { epoch: 1, anchored_root, anchored_count: 3, .. }
            if *anchored_root == hex::encode(tree1.root())),
        "{e}"
    );
    println!("conflicting re-anchor: {e}");
    let e = chain.send_anchor(1, tree1.root(), 4).await.unwrap_err();
    assert!(
        matches!(e, AnchorError::Conflict { .. }),
        "same root, another count: {e}"
    );
    let e = chain.send_anchor(5, [0; 32], 0).await.unwrap_err();
    assert!(matches!(e, AnchorError::ZeroRoot { epoch: 5 }), "{e}");
    assert_eq!(nonce().await, n0 + 2, "refused anchors send nothing");
    // Re-sending the same root is a successful no-op on chain.
    let noop = chain.send_anchor(1, tree1.root(), 3).await.unwrap();
    println!(
        "re-anchoring the same root on chain: gas {}",
        gas(&noop.reference).unwrap()
    );
    assert_eq!(
        chain.anchored_root(&me, 1).await.unwrap().unwrap().root,
        tree1.root()
    );

    // A header with a bad signature is never sent.
    let mut bytes = header(&ledger, 6, [6; 32], 1, [0; 32]).into_bytes();
    bytes[40] ^= 1;
    let bad = Signed::<RollupHeader>::from_bytes(bytes).unwrap();
    assert!(matches!(
        backend.anchor(&bad).await,
        Err(AnchorError::InvalidHeader(_))
    ));

    // Another account has its own namespace: it cannot shadow ours.
    let other = EvmAnchor::connect(EvmSettings {
        signer: evm::load_signer(Some(&Secret::new(KEY1.into())), None).unwrap(),
        ..settings.clone()
    })
    .await
    .unwrap();
    other.anchor(&forged).await.unwrap();
    assert_eq!(
        chain.anchored_root(&me, 1).await.unwrap().unwrap().root,
        tree1.root()
    );
    assert_eq!(
        chain
            .anchored_root(&Anchorer::Evm(other.anchorer()), 1)
            .await
            .unwrap()
            .unwrap()
            .root,
        [0xee; 32]
    );

    // Gas does not grow with the receipt count: one fixed-size call per epoch.
    let mut line = String::from("gas per anchor by receipt count:");
    for (epoch, count) in [(10u64, 1u64), (11, 1_000), (12, 1_000_000), (13, u64::MAX)] {
        let r = chain
            .send_anchor(epoch, [epoch as u8; 32], count)
            .await
            .unwrap();
        line.push_str(&format!(" {count}: {}", gas(&r.reference).unwrap()));
    }
    println!("{line}");

    // The contract emitted one Anchored event per new anchor (none for no-ops).
    let logs = provider
        .get_logs(
            &Filter::new()
                .address(contract)
                .event_signature(Anchor::Anchored::SIGNATURE_HASH)
                .from_block(0),
        )
        .await
        .unwrap();
    let events: Vec<_> = logs
        .iter()
        .map(|l| l.log_decode::<Anchor::Anchored>().unwrap().inner.data)
        .collect();
    assert_eq!(events.len(), 2 + 1 + 4, "{events:?}");
    assert_eq!(
        (
            events[0].anchorer,
            events[0].epoch,
            events[0].root.0,
            events[0].count
        ),
        (chain.anchorer(), 1, tree1.root(), 3)
    );
    drop(anvil);
}

/// Without a chain, opening the evm backend fails with a clear error.
#[tokio::test]
async fn evm_backend_without_a_chain_fails_clearly() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let settings = EvmSettings {
        rpc_url: evm::parse_rpc_url(&format!("http://127.0.0.1:{port}")).unwrap(),
        contract: Address::ZERO,
        signer: evm::load_signer(Some(&Secret::new(KEY0.into())), None).unwrap(),
        confirmations: 1,
    };
    let e = EvmAnchor::connect(settings).await.unwrap_err();
    assert!(e.to_string().contains("reaching the chain"), "{e}");
}
