//! Landing: the receiver's word on what it did with the file (its verdict, a failure it
//! reported early, why a connection broke) turned into the sender's outcome.

use std::net::TcpStream;
use std::time::Duration;

use super::SendReport;
use crate::auth::{Integrity, Seal};
use crate::error::SendError;
use crate::sys::CopyError;
use crate::watch::Patient;
use crate::wire::ProtocolError;
use crate::wire::{Status, Verdict};

/// Whether the receiver said something before the end of the payload. An honest receiver only
/// does so to say it failed (a full disk), which is returned as the error; anything else
/// there is a protocol error. Looks without waiting.
pub(super) fn spoke_early(
    stream: &TcpStream,
    report: &SendReport,
) -> Result<Option<SendError>, SendError> {
    let mut byte = [0u8; 1];
    let peek = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
    match rustix::net::recv(stream, &mut byte, peek) {
        Ok((0, _)) | Err(_) => return Ok(None),
        Ok(_) => {}
    }
    let verdict = Verdict::read(&mut Patient::message(stream))?;
    Ok(Some(match verdict.status {
        Status::Failed => SendError::ReceiverFailed {
            name: report.name.clone(),
            message: verdict.message,
        },
        _ => ProtocolError::Malformed(
            "a verdict before the end of the payload (the receiver could not have checked it)"
                .into(),
        )
        .into(),
    }))
}

/// Turns a failed copy into the most useful error: the receiver may have said why it stopped
/// reading (a full disk, say) before the connection broke.
pub(super) fn explain_failure(stream: &TcpStream, report: &SendReport, e: CopyError) -> SendError {
    explain(stream, report, copy_failure(report, e))
}

/// Turns a failed copy into an error, without reading from the connection (in a tree, only the
/// thread reading verdicts reads it).
pub(super) fn copy_failure(report: &SendReport, e: CopyError) -> SendError {
    match e {
        CopyError::Read(error) => SendError::Source {
            path: report.path.clone(),
            error,
        },
        CopyError::Unsupported => unreachable!("the fallback handles Unsupported"),
        CopyError::SourceChanged => SendError::SourceChangedMidway {
            sent: report.bytes_sent,
            expected: report.bytes,
        },
        CopyError::Write(error) => SendError::Network {
            during: "sending the payload".into(),
            error,
        },
    }
}

/// After a write failed in a single transfer: the receiver may have said why it stopped
/// reading (a full disk, say) before the connection broke; its failure verdict is the error
/// then.
pub(super) fn explain(stream: &TcpStream, report: &SendReport, e: SendError) -> SendError {
    let SendError::Network { error, .. } = &e else {
        return e;
    };
    // A receiver that stopped reading long enough for us to time out had all that time to
    // say why: its words are here already. One whose connection broke may still be on its way.
    let stalled = matches!(
        error.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    );
    let wait = if stalled { 100 } else { 2000 };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(wait)));
    match Verdict::read(&mut Patient::message(stream)) {
        Ok(v) if v.status != Status::Landed => SendError::ReceiverFailed {
            name: report.name.clone(),
            message: v.message,
        },
        _ => e,
    }
}

/// Turns the receiver's verdict on a single file into the outcome: success only for a landed
/// file whose digest, sealed with this connection's key, equals ours.
pub(super) fn judge(
    verdict: Verdict,
    digest: Option<[u8; 32]>,
    integrity: &Integrity,
    index: u32,
    report: &mut SendReport,
) -> Result<(), SendError> {
    let hex = |d: Option<[u8; 32]>| d.map(hex::encode).unwrap_or_else(|| "nothing".into());
    if !verdict.opens(integrity, Seal::Verdict, index) {
        return Err(SendError::Unsealed("the receiver's verdict".into()));
    }
    match verdict.status {
        Status::Landed if digest.is_some() && verdict.root.is_none() => {
            Err(ProtocolError::Malformed(
                "a landed verdict without a digest on a verified transfer".into(),
            )
            .into())
        }
        Status::Landed if verdict.root == digest => {
            report.root = digest;
            report.verified = digest.is_some();
            Ok(())
        }
        Status::Landed | Status::Mismatch => Err(SendError::Mismatch {
            sent: hex(digest),
            received: hex(verdict.root),
        }),
        Status::Failed => Err(SendError::ReceiverFailed {
            name: report.name.clone(),
            message: verdict.message,
        }),
    }
}
