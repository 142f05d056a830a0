//! Keeps secrets out of everything gantry writes where people can read it: run
//! logs, PR/MR comments, statuses, issues, webhooks, API responses, its own log.
//!
//! - [`Redactor`] masks known secret values in clear and in their common
//!   encodings (base64 at each byte alignment in both alphabets, hex,
//!   URL-encoding, JSON string escaping) with one Aho-Corasick automaton.
//! - [`mask_sensitive_plan`] replaces the values a `terraform show -json` plan
//!   marks sensitive, before any of it reaches policies, comments or excerpts.
//! - [`global`] / [`set_global`]: the process-wide redactor the log writer
//!   (`telemetry`) and the API response layer (`api`) use; the app sets it from
//!   the config at build and on every reload.
//!
//! The bottom layer: it imports no other module of gantry (the redactor of a
//! configuration, `Redactor::for_config`, is built in `config`).

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::{Arc, LazyLock};

use aho_corasick::AhoCorasick;
use arc_swap::ArcSwap;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// What a value a plan marks sensitive is replaced with (Terraform's own words).
pub const SENSITIVE_VALUE: &str = "(sensitive value)";

/// Secrets shorter than this are not redacted: they would mangle ordinary text.
const MIN_SECRET_LEN: usize = 6;

/// Derived forms (encodings) shorter than this are not matched. Only base64
/// fragments can be this short: a fragment at alignment 1 or 2 drops the
/// characters shared with the neighbouring bytes, so a 6-byte secret leaves 7
/// characters. 8 base64 characters carry 48 bits of the secret, as much as the
/// shortest clear secret accepted (6 bytes), so no derived pattern is more likely
/// to turn up by chance in ordinary text than a clear one; in practice only
/// 6-byte secrets lose their two shifted base64 forms. Hex and URL-encoded
/// forms are never shorter than the secret itself.
const MIN_DERIVED_LEN: usize = 8;

/// Replaces known secret values, and their encodings, with `***`.
#[derive(Clone, Default)]
pub struct Redactor {
    /// The secrets as registered, deduplicated.
    secrets: BTreeSet<String>,
    /// Every pattern matched: the secrets and their derived forms.
    patterns: BTreeSet<String>,
    /// Built from `patterns`; `None` when there is nothing to mask.
    matcher: Option<AhoCorasick>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Redactor({} secrets, {} patterns)",
            self.secrets.len(),
            self.patterns.len()
        )
    }
}

impl Redactor {
    pub fn new(secrets: &[SecretString]) -> Redactor {
        let mut r = Redactor::default();
        r.extend(secrets.iter().map(|s| s.expose_secret()));
        r
    }

    /// Registers one secret and its encodings.
    pub fn add(&mut self, secret: &str) {
        self.extend(std::iter::once(secret));
    }

    /// Registers several secrets, rebuilding the matcher once.
    pub fn extend<'a>(&mut self, secrets: impl IntoIterator<Item = &'a str>) {
        let mut changed = false;
        for secret in secrets {
            if secret.len() < MIN_SECRET_LEN || !self.secrets.insert(secret.to_string()) {
                continue;
            }
            changed = true;
            self.patterns.insert(secret.to_string());
            for form in derived_forms(secret) {
                if form.len() >= MIN_DERIVED_LEN {
                    self.patterns.insert(form);
                }
            }
        }
        if changed {
            // Standard semantics: `redact_bytes` walks every overlapping match
            // and masks their union, so of two overlapping secrets neither
            // leaks a part (leftmost-longest would leave the tail of the second).
            self.matcher = Some(
                AhoCorasick::new(&self.patterns)
                    .expect("secret patterns are far below the automaton's size limits"),
            );
        }
    }

    /// How many secrets are registered.
    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
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
        self.redact_str(text).into_owned()
    }

    /// Like [`Redactor::redact`], without copying text that holds no secret.
    pub fn redact_str<'t>(&self, text: &'t str) -> Cow<'t, str> {
        match self.redact_bytes(text.as_bytes()) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            // Every pattern is valid UTF-8, and a valid UTF-8 needle found in
            // valid UTF-8 text starts and ends on character boundaries, so the
            // result is valid UTF-8; the lossy path is never taken.
            Cow::Owned(bytes) => Cow::Owned(
                String::from_utf8(bytes)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            ),
        }
    }

    /// Masks every occurrence of every pattern: overlapping matches are merged
    /// and each merged span becomes one `***`.
    pub fn redact_bytes<'t>(&self, text: &'t [u8]) -> Cow<'t, [u8]> {
        let Some(matcher) = &self.matcher else {
            return Cow::Borrowed(text);
        };
        let mut spans: Vec<(usize, usize)> = matcher
            .find_overlapping_iter(text)
            .map(|m| (m.start(), m.end()))
            .collect();
        if spans.is_empty() {
            return Cow::Borrowed(text);
        }
        spans.sort_unstable();
        let mut out = Vec::with_capacity(text.len());
        let mut pos = 0;
        let mut i = 0;
        while i < spans.len() {
            let (start, mut end) = spans[i];
            i += 1;
            while i < spans.len() && spans[i].0 < end {
                end = end.max(spans[i].1);
                i += 1;
            }
            out.extend_from_slice(&text[pos..start]);
            out.extend_from_slice(MASK.as_bytes());
            pos = end;
        }
        out.extend_from_slice(&text[pos..]);
        Cow::Owned(out)
    }
}

/// The encodings of a secret that are matched besides the secret itself.
fn derived_forms(secret: &str) -> Vec<String> {
    let bytes = secret.as_bytes();
    let mut out = base64_fragments(bytes);
    out.push(hex::encode(bytes));
    out.push(hex::encode_upper(bytes));
    out.extend(percent_encodings(bytes));
    out.extend(json_escapes(secret));
    out
}

/// The part of the base64 encoding of the secret that its bytes alone
/// determine, at each of the three alignments the secret can have inside a
/// longer encoded text (the technique of GitHub Actions' log masker).
///
/// Base64 turns each 3 bytes into 4 characters of 6 bits. When `offset` bytes
/// of the same 3-byte group precede the secret, the characters whose bits
/// overlap those bytes vary with them, and so do the characters shared with
/// whatever follows: character `k` covers bits `6k..6k+6` of the prefixed input,
/// so the stable ones are those with `6k >= 8 * offset` and `6k + 6 <= 8 * len`.
/// The fragment does not include padding, so it matches whether the encoder
/// pads or not, and whatever comes before or after. Each is produced in the
/// standard (`+/`) and the URL-safe (`-_`) alphabet.
fn base64_fragments(secret: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for offset in 0..3 {
        let mut input = vec![0u8; offset];
        input.extend_from_slice(secret);
        let start = (8 * offset).div_ceil(6);
        let end = 8 * input.len() / 6;
        if end <= start {
            continue;
        }
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            out.push(engine.encode(&input)[start..end].to_string());
        }
    }
    out
}

/// Percent-encodings of the secret as URL encoders write them. Letters, digits
/// and `-._` are never escaped, `%`, controls and non-ASCII bytes always are;
/// encoders differ on the rest of the ASCII punctuation (RFC 3986, WHATWG form
/// and path sets, JavaScript's encodeURIComponent, Go and Python each leave a
/// different set alone), on a space (`%20` or `+`) and on the escapes' case. So
/// when the secret holds few distinct such characters, every choice of escaped
/// and literal ones is generated; beyond that (2^k forms), the sets of the
/// common encoders are.
fn percent_encodings(secret: &[u8]) -> Vec<String> {
    const MAX_ENUMERATED: usize = 5;
    const STYLES: [&[u8]; 6] = [
        // Every punctuation character escaped.
        b"",
        // RFC 3986 unreserved (Go url.QueryEscape/PathEscape, Python quote_plus).
        b"~",
        // WHATWG application/x-www-form-urlencoded (the url crate, Java URLEncoder).
        b"*",
        // JavaScript encodeURIComponent.
        b"!~*'()",
        // Python urllib.parse.quote with its default safe="/".
        b"~/",
        // WHATWG path segment set (what Url::path_segments_mut writes).
        b"!$&'()*+,:;=@[]^|~",
    ];
    let ambiguous: BTreeSet<u8> = secret
        .iter()
        .copied()
        .filter(|b| b.is_ascii_punctuation() && !b"-._%".contains(b))
        .collect();
    let ambiguous: Vec<u8> = ambiguous.into_iter().collect();
    let kept_sets: Vec<Vec<u8>> = if ambiguous.len() <= MAX_ENUMERATED {
        (0..1u32 << ambiguous.len())
            .map(|mask| {
                ambiguous
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, b)| *b)
                    .collect()
            })
            .collect()
    } else {
        STYLES.iter().map(|s| s.to_vec()).collect()
    };
    let mut out = Vec::new();
    for kept in &kept_sets {
        for space_plus in [false, true] {
            for upper in [true, false] {
                let mut s = String::with_capacity(secret.len() * 3);
                for &b in secret {
                    if b.is_ascii_alphanumeric() || b"-._".contains(&b) || kept.contains(&b) {
                        s.push(b as char);
                    } else if b == b' ' && space_plus {
                        s.push('+');
                    } else if upper {
                        s.push_str(&format!("%{b:02X}"));
                    } else {
                        s.push_str(&format!("%{b:02x}"));
                    }
                }
                out.push(s);
            }
        }
    }
    out
}

/// The secret inside a JSON string, as serde_json writes it and as Go's
/// encoding/json does (terraform's JSON), which also escapes `<`, `>` and `&`.
fn json_escapes(secret: &str) -> Vec<String> {
    let quoted = serde_json::to_string(secret).expect("a string serializes");
    let serde = quoted[1..quoted.len() - 1].to_string();
    let go = serde
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026");
    vec![serde, go]
}

static GLOBAL: LazyLock<ArcSwap<Redactor>> =
    LazyLock::new(|| ArcSwap::from_pointee(Redactor::default()));

/// The process-wide redactor: gantry's log output and API responses go through it.
pub fn global() -> Arc<Redactor> {
    GLOBAL.load_full()
}

/// Replaces the process-wide redactor (at app build and on config reload).
pub fn set_global(redactor: Redactor) {
    GLOBAL.store(Arc::new(redactor));
}

/// Replaces, in a `terraform show -json` plan, every value the plan marks
/// sensitive with `"(sensitive value)"`:
///
/// - `resource_changes[]` and `resource_drift[]`: `change.before`/`change.after`
///   where `change.before_sensitive`/`change.after_sensitive` mark them;
/// - `planned_values` and `prior_state.values`: each resource's `values` where
///   its `sensitive_values` marks them (root module and child modules), and
///   `outputs` with `sensitive: true`;
/// - `output_changes`: `before`/`after` by their sensitive markers;
/// - `variables`: those the root module declares `sensitive = true`.
///
/// A marker is `true` (the whole value) or an object/array mirroring the
/// value's shape. Returns the string values masked (each at least the
/// redactor's minimum length, deduplicated), so the caller can add them to a
/// [`Redactor`] and catch them elsewhere (run logs, plan text).
pub fn mask_sensitive_plan(plan: &mut Value) -> Vec<SecretString> {
    let mut found = BTreeSet::new();
    for key in ["resource_changes", "resource_drift"] {
        if let Some(Value::Array(changes)) = plan.get_mut(key) {
            for rc in changes {
                if let Some(change) = rc.get_mut("change") {
                    mask_change(change, &mut found);
                }
            }
        }
    }
    if let Some(Value::Object(outputs)) = plan.get_mut("output_changes") {
        for change in outputs.values_mut() {
            mask_change(change, &mut found);
        }
    }
    if let Some(values) = plan.get_mut("planned_values") {
        mask_values(values, &mut found);
    }
    if let Some(values) = plan.pointer_mut("/prior_state/values") {
        mask_values(values, &mut found);
    }
    let sensitive_vars: Vec<String> = plan
        .pointer("/configuration/root_module/variables")
        .and_then(Value::as_object)
        .map(|vars| {
            vars.iter()
                .filter(|(_, v)| v.get("sensitive") == Some(&Value::Bool(true)))
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default();
    if let Some(Value::Object(vars)) = plan.get_mut("variables") {
        for name in &sensitive_vars {
            if let Some(value) = vars.get_mut(name).and_then(|v| v.get_mut("value")) {
                mask(value, &Value::Bool(true), &mut found);
            }
        }
    }
    found.into_iter().map(SecretString::from).collect()
}

/// A change object: `before`/`after` by `before_sensitive`/`after_sensitive`.
fn mask_change(change: &mut Value, found: &mut BTreeSet<String>) {
    for (value_key, marker_key) in [("before", "before_sensitive"), ("after", "after_sensitive")] {
        let Some(marker) = change.get(marker_key).cloned() else {
            continue;
        };
        if let Some(value) = change.get_mut(value_key) {
            mask(value, &marker, found);
        }
    }
}

/// A values representation (`planned_values`, `prior_state.values`).
fn mask_values(values: &mut Value, found: &mut BTreeSet<String>) {
    if let Some(Value::Object(outputs)) = values.get_mut("outputs") {
        for output in outputs.values_mut() {
            if output.get("sensitive") == Some(&Value::Bool(true)) {
                if let Some(value) = output.get_mut("value") {
                    mask(value, &Value::Bool(true), found);
                }
            }
        }
    }
    if let Some(module) = values.get_mut("root_module") {
        mask_module(module, found);
    }
}

fn mask_module(module: &mut Value, found: &mut BTreeSet<String>) {
    if let Some(Value::Array(resources)) = module.get_mut("resources") {
        for resource in resources {
            let Some(marker) = resource.get("sensitive_values").cloned() else {
                continue;
            };
            if let Some(values) = resource.get_mut("values") {
                mask(values, &marker, found);
            }
        }
    }
    if let Some(Value::Array(children)) = module.get_mut("child_modules") {
        for child in children {
            mask_module(child, found);
        }
    }
}

/// Applies one sensitivity marker to a value.
fn mask(value: &mut Value, marker: &Value, found: &mut BTreeSet<String>) {
    match (marker, value) {
        (Value::Bool(true), value) => {
            collect_strings(value, found);
            *value = Value::String(SENSITIVE_VALUE.into());
        }
        (Value::Object(markers), Value::Object(fields)) => {
            for (k, m) in markers {
                if let Some(v) = fields.get_mut(k) {
                    mask(v, m, found);
                }
            }
        }
        (Value::Array(markers), Value::Array(items)) => {
            for (v, m) in items.iter_mut().zip(markers) {
                mask(v, m, found);
            }
        }
        _ => {}
    }
}

fn collect_strings(value: &Value, found: &mut BTreeSet<String>) {
    match value {
        Value::String(s) if s.len() >= MIN_SECRET_LEN => {
            found.insert(s.clone());
        }
        Value::Array(items) => items.iter().for_each(|v| collect_strings(v, found)),
        Value::Object(fields) => fields.values().for_each(|v| collect_strings(v, found)),
        _ => {}
    }
}

#[cfg(test)]
mod tests;
