//! Keeps secrets out of everything gantry writes where people can read it: run
//! logs, PR comments, statuses.

use secrecy::{ExposeSecret, SecretString};

/// Replaces known secret values with `***`.
#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

/// Values shorter than this are not redacted: they would mangle ordinary text.
const MIN_SECRET_LEN: usize = 6;

impl Redactor {
    pub fn new(secrets: &[SecretString]) -> Redactor {
        let mut r = Redactor::default();
        for s in secrets {
            r.add(s.expose_secret());
        }
        r
    }

    pub fn add(&mut self, secret: &str) {
        if secret.len() >= MIN_SECRET_LEN && !self.secrets.iter().any(|s| s == secret) {
            self.secrets.push(secret.to_string());
            // Longest first, so a secret containing another is replaced whole.
            self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    /// Whether an environment variable's name suggests its value is a secret.
    pub fn looks_secret(name: &str) -> bool {
        let n = name.to_ascii_uppercase();
        [
            "SECRET",
            "TOKEN",
            "PASSWORD",
            "PASSWD",
            "KEY",
            "CREDENTIAL",
            "PRIVATE",
            "AUTH",
        ]
        .iter()
        .any(|w| n.contains(w))
    }

    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "***");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_every_secret_and_ignores_short_values() {
        let mut r = Redactor::new(&[SecretString::from("ghp_abcdef123456")]);
        r.add("abc");
        r.add("hunter22");
        assert_eq!(
            r.redact("token=ghp_abcdef123456 pw=hunter22 abc"),
            "token=*** pw=*** abc"
        );
        assert!(Redactor::looks_secret("AWS_SECRET_ACCESS_KEY"));
        assert!(!Redactor::looks_secret("AWS_REGION"));
    }
}
