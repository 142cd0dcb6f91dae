//! nats-server's permission errors: a publish or subscription the connection's user may not make
//! is refused with `-ERR 'Permissions Violation for Publish to "<subject>"'` (or `for
//! Subscription to`, `for Publish with Reply of`), which async-nats reports as
//! [`async_nats::Event::ServerError`] while the operation itself just gets no answer.
//! The message texts are nats-server's (`server/client.go`, `pubPermissionViolation`,
//! `subPermissionViolation`, `replySubjectViolation`), the same from 2.9 to 2.15.

use async_nats::ServerError;

/// What a permission violation refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Publishing to the subject.
    Publish,
    /// Publishing with the subject as reply subject.
    Reply,
    /// Subscribing to the subject.
    Subscribe,
}

impl Operation {
    /// `publish to`, `reply on` or `subscribe to`: the verb of a message about it.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Publish => "publish to",
            Operation::Reply => "ask for replies on",
            Operation::Subscribe => "subscribe to",
        }
    }
}

/// One permission violation nats-server reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// What was refused.
    pub operation: Operation,
    /// The subject, as the server quoted it.
    pub subject: String,
}

impl std::fmt::Display for Denied {
    /// `permission denied: <subject>`, what the CLI prints.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "permission denied: {}", self.subject)
    }
}

/// The violation `error` reports, `None` when it is another error.
pub fn denied(error: &ServerError) -> Option<Denied> {
    match error {
        ServerError::Other(text) => parse(text),
        _ => None,
    }
}

/// Parses the text of nats-server's `-ERR` (its quotes stripped, as async-nats does).
fn parse(text: &str) -> Option<Denied> {
    const FORMS: [(&str, Operation); 3] = [
        ("Permissions Violation for Publish to ", Operation::Publish),
        (
            "Permissions Violation for Publish with Reply of ",
            Operation::Reply,
        ),
        (
            "Permissions Violation for Subscription to ",
            Operation::Subscribe,
        ),
    ];
    let text = text.trim().trim_matches('\'');
    FORMS.iter().find_map(|(prefix, operation)| {
        let rest = text.strip_prefix(prefix)?;
        let quoted = rest.strip_prefix('"')?;
        let subject = &quoted[..quoted.find('"')?];
        Some(Denied {
            operation: *operation,
            subject: subject.to_owned(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_three_forms_and_nothing_else() {
        let publish = denied(&ServerError::Other(
            "Permissions Violation for Publish to \"lattice.default.ctl.v1.app.deploy\"".into(),
        ))
        .unwrap();
        assert_eq!(publish.operation, Operation::Publish);
        assert_eq!(
            publish.to_string(),
            "permission denied: lattice.default.ctl.v1.app.deploy"
        );
        let sub =
            parse("Permissions Violation for Subscription to \"_INBOX.x.*\" using queue \"q\"")
                .unwrap();
        assert_eq!(
            (sub.operation, sub.subject.as_str()),
            (Operation::Subscribe, "_INBOX.x.*")
        );
        let reply = parse("Permissions Violation for Publish with Reply of \"_INBOX.a\"").unwrap();
        assert_eq!(reply.operation, Operation::Reply);
        assert_eq!(parse("Maximum Payload Violation"), None);
        assert_eq!(denied(&ServerError::AuthorizationViolation), None);
    }
}
