//! Asking ledger peers: one request on `/rendertrust/ledger/1`, and "ask this
//! node's ledger, else the live ledger peers in turn", which is how a node
//! that is not a ledger peer answers receipt, proof and balance questions.
//!
//! Every answer is decoded with the bounded [`RollupResponse::decode`]; what
//! it claims is checked by whoever uses it (a proof against an anchored
//! root, never against the answering peer's word).

use rendertrust_protocol::identity::NodeId;
use rendertrust_protocol::ledger::wire::{RollupRequest, RollupResponse};
use rendertrust_protocol::wire::Role;

use super::handle::LedgerHandle;
use crate::net::{NetHandle, Service};

/// Sends one request to a ledger peer and decodes its answer.
pub async fn request(
    net: &NetHandle,
    peer: NodeId,
    req: &RollupRequest,
) -> Result<RollupResponse, String> {
    let bytes = req.encode().map_err(|e| e.to_string())?;
    let answer = net
        .request(peer, Service::Ledger, bytes)
        .await
        .map_err(|e| e.to_string())?;
    RollupResponse::decode(&answer).map_err(|e| format!("answer from ledger {peer}: {e}"))
}

/// Live ledger peers other than `me`, from the capacity table (node id order).
pub async fn live_ledgers(net: &NetHandle, me: NodeId) -> Result<Vec<NodeId>, String> {
    Ok(net
        .capacity()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|e| e.advert.roles.contains(&Role::Ledger) && e.advert.node != me)
        .map(|e| e.advert.node)
        .collect())
}

/// Where an answer came from and what it was.
pub type Answer = (NodeId, RollupResponse);

/// Asks `req` of `first` if given (this node when `first == me`), else of
/// this node's ledger (if it is one), then of the live ledger peers in turn,
/// until an answer is `useful`; returns that answer, or the last one, or why
/// nobody answered.
pub async fn ask_any(
    local: Option<&LedgerHandle>,
    net: &NetHandle,
    me: NodeId,
    first: Option<NodeId>,
    req: &RollupRequest,
    useful: impl Fn(&RollupResponse) -> bool,
) -> Result<Answer, String> {
    let mut order: Vec<NodeId> = Vec::new();
    if let Some(f) = first {
        order.push(f);
    }
    if local.is_some() && !order.contains(&me) {
        order.push(me);
    }
    for l in live_ledgers(net, me).await.unwrap_or_default() {
        if !order.contains(&l) {
            order.push(l);
        }
    }
    let mut last: Option<Answer> = None;
    let mut errors = Vec::new();
    for peer in order {
        let answer = if peer == me {
            match local {
                Some(h) => h.ask(req.clone()).await.map_err(|e| e.to_string()),
                None => Err("this node is not a ledger peer".into()),
            }
        } else {
            request(net, peer, req).await
        };
        match answer {
            Ok(a) if useful(&a) => return Ok((peer, a)),
            Ok(a) => last = Some((peer, a)),
            Err(e) => errors.push(format!("{peer}: {e}")),
        }
    }
    last.ok_or_else(|| {
        if errors.is_empty() {
            "no ledger peer is live in this node's capacity table (is a node with the ledger role running?)".into()
        } else {
            format!("no ledger peer answered: {}", errors.join("; "))
        }
    })
}
