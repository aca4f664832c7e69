//! The signed reputation report (message kind 20).

use serde::{Deserialize, Serialize};

use crate::identity::NodeId;
use crate::wire::{MessageKind, ValidationError, WireMessage};

/// Most entries in one report.
pub const MAX_REPORT_ENTRIES: usize = 1024;
/// Largest evidence value of an entry, milli-outcomes (a million outcomes).
pub const MAX_EVIDENCE_MILLI: u64 = 1_000_000_000;

/// One node's evidence as the reporter observed it, decayed to the report time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportEntry {
    /// The node reported on.
    pub subject: NodeId,
    /// Verified outcomes, milli.
    pub verified_milli: u64,
    /// Failed outcomes, milli.
    pub failed_milli: u64,
    /// Lost tasks, milli.
    pub lost_milli: u64,
}

/// A node's signed report of its own observations of other nodes, gossiped
/// on `rendertrust/reputation/1` and merged by
/// [`ReputationBook::merge`](super::ReputationBook::merge).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReputationReport {
    /// The reporting node (must be the signer).
    pub reporter: NodeId,
    /// When it was issued (reporter's clock, Unix ms); the evidence is decayed to then.
    pub issued_at_ms: u64,
    /// At most [`MAX_REPORT_ENTRIES`], strictly increasing by subject, none
    /// about the reporter itself.
    pub entries: Vec<ReportEntry>,
}

impl WireMessage for ReputationReport {
    const KIND: MessageKind = MessageKind::ReputationReport;
    const VERSION: u8 = 1;
    /// 1024 entries of at most 32 + 3 × 9 bytes, and the header.
    const MAX_BODY: usize = 64 * 1024;

    fn signer(&self) -> Option<&NodeId> {
        Some(&self.reporter)
    }

    fn validate(&self) -> Result<(), ValidationError> {
        if self.entries.len() > MAX_REPORT_ENTRIES {
            return Err(ValidationError::TooLong {
                field: "entries",
                max: MAX_REPORT_ENTRIES,
                found: self.entries.len(),
            });
        }
        let mut last: Option<&NodeId> = None;
        for e in &self.entries {
            if last.is_some_and(|l| *l >= e.subject) {
                return Err(ValidationError::Invalid {
                    field: "entries",
                    reason: "subjects must be strictly increasing (sorted, no repeats)".into(),
                });
            }
            last = Some(&e.subject);
            if e.subject == self.reporter {
                return Err(ValidationError::Invalid {
                    field: "entries.subject",
                    reason: "a reporter may not report on itself".into(),
                });
            }
            let most = e.verified_milli.max(e.failed_milli).max(e.lost_milli);
            if most > MAX_EVIDENCE_MILLI {
                return Err(ValidationError::Invalid {
                    field: "entries",
                    reason: format!(
                        "evidence {most} milli-outcomes; expected at most {MAX_EVIDENCE_MILLI}"
                    ),
                });
            }
        }
        Ok(())
    }
}
