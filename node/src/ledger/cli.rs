//! The `ledger` and `receipt` client commands: talk to a node's API and
//! print for humans (tables) or scripts (`--json`).
//!
//! `receipt verify` trusts no node: it takes the inclusion proof from the
//! API, then reads the anchored root itself (the anchorer's journal, fetched
//! through the API and re-verified here, signature by signature and link by
//! link; or the anchor contract, read through the JSON-RPC URL the caller
//! gives) and checks the proof against it ([`crate::anchor::check_receipt`]).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use rendertrust_protocol::identity::NodeId;
use rendertrust_protocol::merkle::InclusionProof;
use rendertrust_protocol::signed::{MessageId, Signed};
use rendertrust_protocol::wire::Mint;
use serde::{Deserialize, Serialize};

use super::view::{
    BalanceView, ChainPageView, EpochsView, LeaderboardView, MintRequest, MintView, ProofView,
    ReceiptView,
};
use crate::anchor::journal::ChainCopy;
use crate::anchor::{Anchorer, EvmAnchor, Verdict, check_receipt};
use crate::api::StatusView;
use crate::cli::ApiClient;

/// `rendertrust ledger balance [NODE]` (default: the node behind the API).
pub async fn balance(client: &ApiClient, node: Option<&str>, json: bool) -> Result<String> {
    let node = match node {
        Some(n) => n.trim().to_owned(),
        None => client.get::<StatusView>("/v1/status").await?.peer_id,
    };
    let b: BalanceView = client.get(&format!("/v1/ledger/balances/{node}")).await?;
    if json {
        return Ok(serde_json::to_string_pretty(&b)?);
    }
    Ok(format!(
        "{}: {} credits (ledger {})",
        b.node, b.balance, b.ledger
    ))
}

/// `rendertrust ledger leaderboard`.
pub async fn leaderboard(client: &ApiClient, limit: usize, json: bool) -> Result<String> {
    let l: LeaderboardView = client
        .get(&format!("/v1/ledger/leaderboard?limit={limit}"))
        .await?;
    if json {
        return Ok(serde_json::to_string_pretty(&l)?);
    }
    let mut out = String::new();
    writeln!(
        out,
        "{:>4}  {:<54} {:>10} {:>7} {:>12}",
        "rank", "node", "earned", "tasks", "balance"
    )?;
    for (i, r) in l.rows.iter().enumerate() {
        writeln!(
            out,
            "{:>4}  {:<54} {:>10} {:>7} {:>12}",
            i + 1,
            r.node,
            r.earned,
            r.tasks,
            r.balance
        )?;
    }
    write!(out, "(ledger {})", l.ledger)?;
    Ok(out)
}

/// `rendertrust ledger epochs`.
pub async fn epochs(client: &ApiClient, limit: usize, json: bool) -> Result<String> {
    let e: EpochsView = client
        .get(&format!("/v1/ledger/epochs?limit={limit}"))
        .await?;
    if json {
        return Ok(serde_json::to_string_pretty(&e)?);
    }
    let mut out = String::new();
    writeln!(
        out,
        "ledger {} ({} backend), epochs of {} s, now in epoch {}",
        e.ledger,
        e.backend,
        e.epoch_ms / 1000,
        e.current_epoch
    )?;
    writeln!(
        out,
        "{:>12} {:>8} {:<18} {:<9} {:<12} where",
        "epoch", "receipts", "root", "state", "anchor"
    )?;
    for ep in &e.epochs {
        let root = ep
            .root
            .as_deref()
            .map_or("-".to_owned(), |r| format!("{}…", &r[..16.min(r.len())]));
        let state = if ep.is_final {
            "final"
        } else if ep.root.is_some() {
            "closed"
        } else {
            "open"
        };
        let (status, place) = match &ep.anchor {
            Some(a) => {
                let place = match (&a.reference, &a.error) {
                    (Some(r), _) => describe_reference(r),
                    (None, Some(err)) => err.clone(),
                    (None, None) => ep
                        .anchorer
                        .as_deref()
                        .map_or(String::new(), |l| format!("by ledger {l}")),
                };
                (a.status.clone(), place)
            }
            None => ("-".to_owned(), String::new()),
        };
        writeln!(
            out,
            "{:>12} {:>8} {:<18} {:<9} {:<12} {}",
            ep.epoch,
            if ep.late > 0 {
                format!("{}+{}", ep.count, ep.late)
            } else {
                ep.count.to_string()
            },
            root,
            state,
            status,
            place
        )?;
    }
    Ok(out)
}

fn describe_reference(r: &serde_json::Value) -> String {
    match r.get("backend").and_then(|b| b.as_str()) {
        Some("journal") => format!(
            "journal entry {}",
            r.get("index").map(|i| i.to_string()).unwrap_or_default()
        ),
        Some("evm") => {
            let field = |k: &str| {
                r.get(k)
                    .map(|v| v.as_str().map_or(v.to_string(), str::to_owned))
                    .unwrap_or_default()
            };
            let mut s = format!(
                "chain {} contract {} block {}",
                field("chain_id"),
                field("contract"),
                field("block")
            );
            if let Some(g) = r.get("gas_used").filter(|g| !g.is_null()) {
                let _ = write!(s, " gas {g}");
            }
            s
        }
        _ => r.to_string(),
    }
}

/// `rendertrust ledger mint`: signs a mint with the authority key (here,
/// never sent anywhere) and posts the frame to the node, which publishes it.
pub async fn mint(
    client: &ApiClient,
    authority_key: &Path,
    to: &str,
    amount: u64,
    nonce: Option<u64>,
    json: bool,
) -> Result<String> {
    let key = crate::keys::load_key_file(authority_key)
        .with_context(|| format!("reading the authority key {}", authority_key.display()))?;
    let to: NodeId = to
        .trim()
        .parse()
        .map_err(|_| anyhow!("--to {to:?}: expected a peer id (12D3KooW…) or 64 hex digits"))?;
    if amount == 0 {
        bail!("--amount must be at least 1");
    }
    let nonce = nonce.unwrap_or_else(crate::net::unix_now_ms);
    let mint = Mint {
        authority: key.node_id(),
        to,
        amount,
        nonce,
    };
    let signed = Signed::sign(&key, &mint).context("signing the mint")?;
    let v: MintView = client
        .post(
            "/v1/ledger/mint",
            &MintRequest {
                frame: hex::encode(signed.as_bytes()),
            },
        )
        .await?;
    if json {
        return Ok(serde_json::to_string_pretty(&v)?);
    }
    let mut out = format!(
        "minted {} credits to {} (mint {}, authority {})",
        v.amount, v.to, v.id, v.authority
    );
    if let Some(l) = &v.local {
        let _ = write!(out, "\nthis node's ledger: {l}");
    }
    if !v.published {
        out.push_str("\nwarning: not published on the receipts topic yet (no peer subscribed); ledger peers have not seen it");
    }
    Ok(out)
}

/// `rendertrust receipt show ID`.
pub async fn show(client: &ApiClient, id: &str, json: bool) -> Result<String> {
    let r: ReceiptView = client.get(&format!("/v1/receipts/{}", id.trim())).await?;
    if json {
        return Ok(serde_json::to_string_pretty(&r)?);
    }
    let mut out = String::new();
    writeln!(out, "receipt  {}", r.id)?;
    write!(out, "status   {}", r.status)?;
    if let Some(why) = &r.reason {
        write!(out, ": {why}")?;
    }
    writeln!(out)?;
    match r.epoch {
        Some(e) => writeln!(
            out,
            "epoch    {e}{}{}",
            if r.epoch_final {
                " (final)"
            } else {
                " (open or reconciling)"
            },
            if r.late {
                ", arrived late: in no root"
            } else {
                ""
            }
        )?,
        None => writeln!(out, "epoch    - (not matched to an escrow)")?,
    }
    if let Some(b) = &r.receipt {
        writeln!(
            out,
            "job      {} task {} attempt {}",
            b.job, b.task, b.attempt
        )?;
        writeln!(out, "worker   {}", b.worker)?;
        writeln!(out, "creator  {}", b.creator)?;
        writeln!(out, "output   {}", b.output_hash)?;
        writeln!(
            out,
            "usage    cpu {} ms, gpu {} ms, wall {} ms, peak memory {} bytes",
            b.cpu_ms,
            b.gpu_ms,
            b.finished_at_ms.saturating_sub(b.started_at_ms),
            b.peak_mem_bytes
        )?;
        writeln!(out, "price    {} credits", b.price)?;
    }
    write!(out, "(ledger {})", r.ledger)?;
    Ok(out)
}

/// Where `receipt verify` reads EVM anchors.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// The chain's JSON-RPC URL (needed for roots anchored on an EVM chain).
    pub rpc_url: Option<String>,
    /// The anchor contract to trust (default: the one the ledger names).
    pub contract: Option<String>,
}

/// What `receipt verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// The receipt id.
    pub receipt: String,
    /// `VALID`, `INVALID`, `NOT ANCHORED`, `TAMPERED` or `UNKNOWN`.
    pub verdict: String,
    /// The verdict and why, in words.
    pub reason: String,
    /// The receipt's epoch, when known.
    pub epoch: Option<u64>,
    /// The anchorer checked against.
    pub anchorer: Option<String>,
    /// The ledger that gave the proof.
    pub ledger: Option<String>,
}

impl VerifyReport {
    /// True only for `VALID`.
    pub fn is_valid(&self) -> bool {
        self.verdict == "VALID"
    }
}

fn code(v: &Verdict) -> &'static str {
    match v {
        Verdict::Included { .. } => "VALID",
        Verdict::NotIncluded { .. } => "INVALID",
        Verdict::NotAnchored { .. } => "NOT ANCHORED",
        Verdict::Tampered { .. } => "TAMPERED",
        _ => "UNKNOWN",
    }
}

fn parse_hash(text: &str, what: &str) -> Result<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out)
        .map_err(|_| anyhow!("{what} {text:?}: expected 64 hex digits"))?;
    Ok(out)
}

/// Fetches `ledger`'s anchor journal through the API, through epoch `upto`.
async fn fetch_chain(client: &ApiClient, ledger: &NodeId, upto: u64) -> Result<ChainCopy> {
    let mut entries = Vec::new();
    let mut after: Option<u64> = None;
    loop {
        let path = match after {
            None => format!("/v1/ledger/chain/{ledger}"),
            Some(a) => format!("/v1/ledger/chain/{ledger}?after={a}"),
        };
        let page: ChainPageView = client.get(&path).await?;
        let last = page.entries.last().map(|e| e.epoch);
        for e in page.entries {
            let frame = hex::decode(&e.frame)
                .map_err(|_| anyhow!("journal entry of epoch {} is not hex", e.epoch))?;
            entries.push((e.epoch, frame));
        }
        match last {
            Some(l) if page.more && l < upto && Some(l) > after => after = Some(l),
            _ => break,
        }
    }
    Ok(ChainCopy::new(*ledger, entries))
}

/// `rendertrust receipt verify ID`: gets the receipt's inclusion proof from
/// a ledger peer (through the node's API), reads the anchored root from the
/// backend the anchorer used, and checks the proof against it.
pub async fn verify(client: &ApiClient, id: &str, opts: &VerifyOptions) -> Result<VerifyReport> {
    let receipt = MessageId(parse_hash(id, "receipt id")?);
    let mut report = VerifyReport {
        receipt: receipt.to_string(),
        verdict: String::new(),
        reason: String::new(),
        epoch: None,
        anchorer: None,
        ledger: None,
    };
    let done = |mut r: VerifyReport, code: &str, reason: String| {
        r.verdict = code.to_owned();
        r.reason = reason;
        r
    };
    let p: ProofView = match client.get(&format!("/v1/receipts/{receipt}/proof")).await {
        Ok(p) => p,
        Err(e) => {
            let text = e.to_string();
            return Ok(if text.starts_with("404") {
                done(
                    report,
                    "NOT ANCHORED",
                    format!(
                        "NOT ANCHORED: no ledger peer has the receipt in a closed epoch yet ({text})"
                    ),
                )
            } else {
                done(
                    report,
                    "UNKNOWN",
                    format!("UNKNOWN: the inclusion proof could not be fetched: {text}"),
                )
            });
        }
    };
    report.epoch = Some(p.epoch);
    report.ledger = Some(p.ledger.clone());
    let path = p
        .path
        .iter()
        .map(|h| parse_hash(h, "proof hash"))
        .collect::<Result<Vec<_>>>()?;
    let proof = InclusionProof {
        leaf_index: p.leaf_index,
        tree_size: p.tree_size,
        path,
    };
    let evm = p.anchor.as_ref().filter(|a| a.backend == "evm");
    let verdict = if let Some(a) = evm {
        let account = a.account.clone().unwrap_or_default();
        let anchorer: Anchorer = account
            .parse()
            .map_err(|e| anyhow!("the ledger named anchorer {account:?}: {e}"))?;
        report.anchorer = Some(account);
        let Some(url) = &opts.rpc_url else {
            let reason = format!(
                "UNKNOWN: epoch {} was anchored on EVM chain {} (contract {}): give its JSON-RPC URL with --rpc-url (or [anchor] rpc_url in --config) to read the root",
                p.epoch,
                a.chain_id.unwrap_or_default(),
                a.contract.as_deref().unwrap_or("?")
            );
            return Ok(done(report, "UNKNOWN", reason));
        };
        let contract_text = opts
            .contract
            .clone()
            .or_else(|| a.contract.clone())
            .unwrap_or_default();
        let contract = contract_text
            .trim()
            .parse()
            .map_err(|e| anyhow!("anchor contract {contract_text:?}: {e}"))?;
        let url = crate::anchor::evm::parse_rpc_url(url)?;
        match EvmAnchor::reader(&url, contract).await {
            Ok(chain) => check_receipt(&chain, &receipt, &proof, &anchorer, p.epoch).await,
            Err(e) => Verdict::Unavailable {
                error: e.to_string(),
            },
        }
    } else {
        let Some(ledger_text) = p.anchorer_ledger.as_deref() else {
            let reason = format!(
                "NOT ANCHORED: epoch {} is not final yet, so no ledger has anchored it; try again after the epoch's grace period",
                p.epoch
            );
            return Ok(done(report, "NOT ANCHORED", reason));
        };
        let ledger: NodeId = ledger_text
            .parse()
            .map_err(|_| anyhow!("the ledger named anchorer {ledger_text:?}, not a peer id"))?;
        report.anchorer = Some(ledger.to_string());
        match fetch_chain(client, &ledger, p.epoch).await {
            Ok(chain) => {
                check_receipt(&chain, &receipt, &proof, &Anchorer::Ledger(ledger), p.epoch).await
            }
            Err(e) => Verdict::Unavailable {
                error: format!("fetching the anchor journal of ledger {ledger}: {e}"),
            },
        }
    };
    let c = code(&verdict);
    Ok(done(report, c, verdict.to_string()))
}

/// Prints a verify report.
pub fn format_report(r: &VerifyReport, json: bool) -> Result<String> {
    if json {
        return Ok(serde_json::to_string_pretty(r)?);
    }
    let mut out = format!("receipt {}\n{}", r.receipt, r.reason);
    if let Some(l) = &r.ledger {
        let _ = write!(out, "\n(proof from ledger {l})");
    }
    Ok(out)
}
