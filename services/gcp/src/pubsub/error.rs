//! The one place that turns a Pub/Sub failure (gRPC status, HTTP status, transport
//! error) into a [`BusError`]; the official crate's clients and the REST pull client
//! both sort their errors here.

use google_cloud_gax::error::rpc::Code;
use google_cloud_pubsub::error::PublishError;
use reel_runtime::bus::BusError;

/// A Pub/Sub error as a [`BusError`].
///
/// `size` is the size of the message being published, if any (for `TooLarge`).
pub(crate) fn bus_error(context: &str, size: Option<usize>, err: &google_cloud_pubsub::Error) -> BusError {
    let text = format!("{context}: {err}");
    if let Some(status) = err.status() {
        let message = status.message.to_ascii_lowercase();
        return match status.code {
            Code::NotFound => BusError::NotFound(text),
            Code::PermissionDenied | Code::Unauthenticated => BusError::PermissionDenied(text),
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Internal
            | Code::Aborted
            | Code::Unknown
            | Code::Cancelled => BusError::Transient(text),
            Code::InvalidArgument
                if message.contains("too large") || message.contains("exceeds") || message.contains("maximum") =>
            {
                BusError::TooLarge(size.unwrap_or(0))
            }
            Code::InvalidArgument | Code::FailedPrecondition
                if message.contains("ack id") || message.contains("ack_id") || message.contains("ackid") =>
            {
                BusError::InvalidAckId(text)
            }
            _ => BusError::Other(text),
        };
    }
    if let Some(code) = err.http_status_code() {
        return http_error(code, size, text);
    }
    if err.is_authentication() {
        return BusError::PermissionDenied(text);
    }
    if err.is_timeout() || err.is_io() || err.is_connect() || err.is_transport() || err.is_exhausted() {
        return BusError::Transient(text);
    }
    BusError::Other(text)
}

/// An HTTP status from Pub/Sub as a [`BusError`] (`text` says what failed).
pub(crate) fn http_error(code: u16, size: Option<usize>, text: String) -> BusError {
    match code {
        401 | 403 => BusError::PermissionDenied(text),
        404 => BusError::NotFound(text),
        413 => BusError::TooLarge(size.unwrap_or(0)),
        408 | 429 | 500..=599 => BusError::Transient(text),
        _ => BusError::Other(text),
    }
}

/// An HTTP error of the REST pull client: as [`http_error`], except that a 400 on
/// `acknowledge` or `modifyAckDeadline` means the ack id is unknown or expired.
pub(crate) fn rest_error(verb: &str, code: u16, text: String) -> BusError {
    if code == 400 && verb != "pull" {
        return BusError::InvalidAckId(text);
    }
    http_error(code, None, text)
}

pub(crate) fn publish_error(context: &str, size: usize, err: PublishError) -> BusError {
    match err {
        PublishError::Rpc(e) => bus_error(context, Some(size), &e),
        PublishError::Shutdown => BusError::Closed,
        // The key was paused by an earlier failure; the publish may succeed once resumed.
        other => BusError::Transient(format!("{context}: {other}")),
    }
}

pub(crate) fn is_already_exists(err: &google_cloud_pubsub::Error) -> bool {
    err.status().is_some_and(|s| s.code == Code::AlreadyExists) || err.http_status_code() == Some(409)
}

pub(crate) fn builder_error(what: &str, err: impl std::fmt::Display) -> BusError {
    BusError::Other(format!("cannot build the Pub/Sub {what} client: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use google_cloud_gax::error::rpc::Status;

    fn status(code: Code, message: &str) -> google_cloud_pubsub::Error {
        google_cloud_pubsub::Error::service(Status::default().set_code(code).set_message(message))
    }

    #[test]
    fn errors_are_classified_in_one_place() {
        assert!(matches!(bus_error("x", None, &status(Code::NotFound, "no")), BusError::NotFound(_)));
        assert!(matches!(bus_error("x", None, &status(Code::PermissionDenied, "no")), BusError::PermissionDenied(_)));
        for code in [Code::Unavailable, Code::DeadlineExceeded, Code::ResourceExhausted, Code::Internal, Code::Aborted]
        {
            assert!(bus_error("x", None, &status(code, "busy")).is_transient(), "{code:?}");
        }
        assert!(matches!(
            bus_error("x", Some(11_000_000), &status(Code::InvalidArgument, "Request payload size exceeds the limit")),
            BusError::TooLarge(11_000_000)
        ));
        assert!(matches!(
            bus_error("x", None, &status(Code::InvalidArgument, "Invalid ack ID")),
            BusError::InvalidAckId(_)
        ));
        assert!(matches!(bus_error("x", None, &status(Code::InvalidArgument, "bad")), BusError::Other(_)));
        assert!(is_already_exists(&status(Code::AlreadyExists, "exists")));
    }

    #[test]
    fn rest_errors_are_classified_in_one_place() {
        let t = || "x".to_string();
        assert!(matches!(rest_error("pull", 404, t()), BusError::NotFound(_)));
        assert!(matches!(rest_error("pull", 403, t()), BusError::PermissionDenied(_)));
        assert!(rest_error("pull", 503, t()).is_transient());
        assert!(rest_error("pull", 429, t()).is_transient());
        assert!(matches!(rest_error("pull", 400, t()), BusError::Other(_)));
        assert!(matches!(rest_error("acknowledge", 400, t()), BusError::InvalidAckId(_)));
        assert!(matches!(rest_error("modifyAckDeadline", 400, t()), BusError::InvalidAckId(_)));
    }
}
