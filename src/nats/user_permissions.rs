//! The publish permissions a NATS user JWT grants (the `nats.pub` claim of a user JWT,
//! <https://docs.nats.io/running-a-nats-service/configuration/securing_nats/jwt>), read from
//! the node's own creds file so a node can say at its start that its user may not write the
//! lattice's desired state (a *serve-only node*, PROTOCOL.md §Roles): through a leaf
//! connection the hub's refusals are silent, so the node would otherwise see only timeouts.
//!
//! The JWT is not verified here (nats-server does that); it is read for what it says.

use base64::Engine as _;
use serde::Deserialize;

/// The permissions part of a user JWT's claims.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct UserPermissions {
    /// `nats.pub`.
    #[serde(default, rename = "pub")]
    pub publish: Permission,
}

/// One direction's allow and deny lists (NATS subjects with wildcards).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Permission {
    /// Allowed subjects; empty allows every subject.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Denied subjects, winning over `allow`.
    #[serde(default)]
    pub deny: Vec<String>,
}

#[derive(Deserialize)]
struct Claims {
    /// The user's public key (`U…`).
    #[serde(default)]
    sub: String,
    #[serde(default)]
    nats: UserPermissions,
}

/// The claims of the user JWT in the NATS credentials file text `creds`.
fn claims(creds: &str) -> Result<Claims, String> {
    let jwt = creds
        .split("-----BEGIN NATS USER JWT-----")
        .nth(1)
        .and_then(|rest| rest.split("------END").next())
        .map(str::trim)
        .filter(|jwt| !jwt.is_empty())
        .ok_or("no user JWT in it")?;
    let payload = jwt.split('.').nth(1).ok_or("the JWT has no payload")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| format!("the JWT's payload is not base64url: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("the JWT's claims are not JSON: {e}"))
}

/// The public key (`U…`, the JWT's `sub`) of the user of the NATS credentials file text
/// `creds`: what nats-server's permission template `{{subject()}}` stands for.
///
/// # Errors
/// No JWT in it, one that is not base64url JSON claims, or one without a user key in `sub`.
pub fn user_key(creds: &str) -> Result<String, String> {
    let sub = claims(creds)?.sub;
    if sub.starts_with('U') && sub.len() == 56 && sub.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(sub)
    } else {
        Err(format!("the JWT's subject {sub:?} is not a user key (U…)"))
    }
}

impl UserPermissions {
    /// Reads the user JWT of the NATS credentials file text `creds` (between
    /// `-----BEGIN NATS USER JWT-----` and the next `------END`).
    ///
    /// # Errors
    /// No JWT in it, or one whose payload is not base64url JSON claims; the message says which.
    pub fn from_creds(creds: &str) -> Result<UserPermissions, String> {
        Ok(claims(creds)?.nats)
    }

    /// Whether the user may publish to the literal subject `subject`.
    pub fn may_publish(&self, subject: &str) -> bool {
        let p = &self.publish;
        (p.allow.is_empty() || p.allow.iter().any(|a| matches(a, subject)))
            && !p.deny.iter().any(|d| matches(d, subject))
    }

    /// The first of `subjects` the user may not publish to.
    pub fn first_denied<'a>(&self, subjects: &'a [String]) -> Option<&'a str> {
        subjects
            .iter()
            .find(|s| !self.may_publish(s))
            .map(String::as_str)
    }
}

/// Logs a warning when the user of the creds file `creds` may not write the desired state of
/// `lattice` (the apps bucket, through the plain, the mapped `$JS.API` and, if given, the
/// `js_domain` prefix): this node then serves only (PROTOCOL.md §Roles, *serve-only node*), and
/// its config dir's manifests and store re-publishes will fail. Says nothing when the file
/// cannot be read as creds (the node's start checks it).
pub fn warn_if_serve_only(creds: &std::path::Path, lattice: &str, js_domain: Option<&str>) {
    let Ok(text) = std::fs::read_to_string(creds) else {
        return;
    };
    let permissions = match UserPermissions::from_creds(&text) {
        Ok(permissions) => permissions,
        Err(e) => {
            tracing::debug!(creds = %creds.display(), error = e, "reading the creds' permissions");
            return;
        }
    };
    let bucket = super::subjects::apps_bucket(lattice);
    let mut writes = vec![
        format!("$KV.{bucket}.app"),
        format!("$JS.API.$KV.{bucket}.app"),
    ];
    if let Some(domain) = js_domain {
        writes.push(format!("$JS.{domain}.API.$KV.{bucket}.app"));
    }
    if let Some(subject) = permissions.first_denied(&writes) {
        tracing::warn!(
            creds = %creds.display(),
            denied = subject,
            "serve-only node: the NATS user of the creds file may not write the lattice's desired \
             state (publish to {subject} denied): this node runs its share of the apps, but the \
             manifests of its config dir are not stored"
        );
    }
}

/// Whether NATS subject pattern `pattern` (`*` one token, `>` one or more trailing tokens)
/// matches the literal subject `subject`.
fn matches(pattern: &str, subject: &str) -> bool {
    let mut subject = subject.split('.');
    for token in pattern.split('.') {
        match (token, subject.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (token, Some(s)) if token == s => {}
            _ => return false,
        }
    }
    subject.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(claims: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!(
            "-----BEGIN NATS USER JWT-----\n{}.{}.sig\n------END NATS USER JWT------\n",
            b64("{\"alg\":\"ed25519-nkey\"}"),
            b64(claims)
        )
    }

    #[test]
    fn subject_wildcards() {
        assert!(matches("$KV.lattice_a_apps.>", "$KV.lattice_a_apps.app.x"));
        assert!(!matches("$KV.lattice_a_apps.>", "$KV.lattice_a_apps"));
        assert!(matches("$JS.*.API.>", "$JS.hub.API.$KV.b.k"));
        assert!(!matches("a.*", "a.b.c"));
        assert!(matches("a.b", "a.b"));
    }

    #[test]
    fn reads_allow_and_deny_from_the_jwt() {
        let text = creds(
            r#"{"sub":"U","nats":{"pub":{"allow":["$KV.>"],"deny":["$KV.lattice_default_apps.>"]},"type":"user"}}"#,
        );
        let perms = UserPermissions::from_creds(&text).unwrap();
        assert!(perms.may_publish("$KV.other.k"));
        assert!(!perms.may_publish("$KV.lattice_default_apps.k"));
        assert!(!perms.may_publish("lattice.default.evt.v1.x"));
        let all = UserPermissions::from_creds(&creds(r#"{"nats":{"type":"user"}}"#)).unwrap();
        assert!(all.may_publish("anything.at.all"));
        assert!(UserPermissions::from_creds("nothing").is_err());
    }

    #[test]
    fn reads_the_user_key_from_the_jwt() {
        let key = nkeys::KeyPair::new_user().public_key();
        let text = creds(&format!(r#"{{"sub":"{key}","nats":{{"type":"user"}}}}"#));
        assert_eq!(user_key(&text).unwrap(), key);
        let account = nkeys::KeyPair::new_account().public_key();
        let text = creds(&format!(r#"{{"sub":"{account}"}}"#));
        assert!(user_key(&text).unwrap_err().contains("not a user key"));
        assert!(user_key("nothing").is_err());
    }
}
