//! What both bus backends encode the same way: receipts, message ids and
//! attribute JSON.

use crate::{Attributes, BusError, BusResult, MessageId, Receipt};

/// A delivery's receipt: `<seq>.<token>`, with `.g` appended for a grouped
/// message so that acking it wakes the receivers its group was holding back
/// (and, on PostgreSQL, takes the group's lock).
pub(crate) fn receipt(seq: i64, token: i64, grouped: bool) -> Receipt {
    let suffix = if grouped { ".g" } else { "" };
    Receipt(format!("{seq:x}.{:016x}{suffix}", token as u64))
}

/// What a receipt a backend issued holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Lease {
    pub seq: i64,
    pub token: i64,
    pub grouped: bool,
}

/// Reads a receipt issued by [`receipt`]; `backend` names the bus in the
/// error.
pub(crate) fn parse_receipt(backend: &str, receipt: &Receipt) -> BusResult<Lease> {
    let invalid = || BusError::InvalidArgument {
        field: "receipt",
        message: format!("{receipt} is not a receipt issued by the {backend} bus"),
    };
    let mut parts = receipt.0.split('.');
    let (Some(seq), Some(token)) = (parts.next(), parts.next()) else {
        return Err(invalid());
    };
    let grouped = match parts.next() {
        None => false,
        Some("g") => true,
        Some(_) => return Err(invalid()),
    };
    if parts.next().is_some() {
        return Err(invalid());
    }
    Ok(Lease {
        seq: i64::from_str_radix(seq, 16).map_err(|_| invalid())?,
        token: u64::from_str_radix(token, 16).map_err(|_| invalid())? as i64,
        grouped,
    })
}

pub(crate) fn attributes_json(attrs: &Attributes) -> BusResult<Option<String>> {
    if attrs.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(attrs)
        .map(Some)
        .map_err(|e| BusError::InvalidArgument {
            field: "attributes",
            message: e.to_string(),
        })
}

pub(crate) fn new_message_id() -> MessageId {
    MessageId(uuid::Uuid::now_v7().to_string())
}
