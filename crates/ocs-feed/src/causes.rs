//! An error's message with its causes, on one line, each cause said once.

/// `err`'s message followed by the messages of its causes (`Error::source`), joined by
/// `": "`, for logs and failure messages: `Display` alone leaves the causes out.
///
/// A cause whose message its wrapper's message already contains is left out. Some errors
/// both print their source and return it (tungstenite's `IO error: {0}`, sqlx's
/// `error communicating with database: {0}`); walking their chain naively repeats the cause
/// (`IO error: Connection refused (os error 111): Connection refused (os error 111)`).
/// The walk goes on past a left-out cause, so its own causes still appear.
///
/// ```
/// use std::io;
/// #[derive(Debug, thiserror::Error)]
/// enum Error {
///     /// Prints its source, as tungstenite does.
///     #[error("IO error: {0}")]
///     Io(#[from] io::Error),
///     /// Leaves its source to the chain, as it should.
///     #[error("cannot open {path}")]
///     Open { path: String, #[source] source: io::Error },
/// }
/// let refused = || io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused");
/// assert_eq!(
///     ocs_feed::error_with_causes(&Error::Io(refused())),
///     "IO error: connection refused"
/// );
/// assert_eq!(
///     ocs_feed::error_with_causes(&Error::Open { path: "/x".into(), source: refused() }),
///     "cannot open /x: connection refused"
/// );
/// ```
pub fn error_with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut wrapper = text.clone();
    let mut source = err.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !wrapper.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        wrapper = message;
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reconnect line's cause: tungstenite's `Io` prints the io::Error and returns it
    /// as its source.
    #[test]
    fn a_cause_the_wrapper_already_prints_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused (os 111)");
        let ws = tokio_tungstenite::tungstenite::Error::Io(io);
        assert_eq!(error_with_causes(&ws), "IO error: refused (os 111)");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct Chain {
        text: &'static str,
        #[source]
        source: Option<Box<Chain>>,
    }

    #[test]
    fn every_new_cause_is_said_in_order_even_after_a_repeated_one() {
        let inner = Chain {
            text: "disk full",
            source: None,
        };
        let middle = Chain {
            text: "write failed",
            source: Some(Box::new(inner)),
        };
        let repeats = Chain {
            text: "flush: write failed",
            source: Some(Box::new(middle)),
        };
        let outer = Chain {
            text: "cannot save",
            source: Some(Box::new(repeats)),
        };
        assert_eq!(
            error_with_causes(&outer),
            "cannot save: flush: write failed: disk full"
        );
    }
}
