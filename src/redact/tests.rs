use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::json;

use super::*;

/// Holds `>>>` and `???`, whose base64 (`Pj4+`, `Pz8/`) differs between the two
/// alphabets at every alignment, so both alphabets are really exercised.
const SECRET: &str = "tok>>>en???Zq9";

fn redactor(secrets: &[&str]) -> Redactor {
    let mut r = Redactor::default();
    for s in secrets {
        r.add(s);
    }
    r
}

/// Splits a redacted text at its single mask.
fn around_mask(out: &str) -> (&str, &str) {
    assert_eq!(out.matches(MASK).count(), 1, "one mask expected in {out:?}");
    out.split_once(MASK).unwrap()
}

#[test]
fn replaces_every_secret_and_ignores_short_values() {
    let mut r = Redactor::new(&[SecretString::from("ghp_abcdef123456")]);
    r.add("abc");
    r.add("hunter22");
    assert_eq!(
        r.redact("token=ghp_abcdef123456 pw=hunter22 abc"),
        "token=*** pw=*** abc"
    );
    assert_eq!(r.len(), 2);
    assert!(Redactor::looks_secret("AWS_SECRET_ACCESS_KEY"));
    assert!(!Redactor::looks_secret("AWS_REGION"));
}

#[test]
fn text_without_secrets_is_not_copied() {
    let r = redactor(&[SECRET]);
    assert!(matches!(r.redact_str("plain text"), Cow::Borrowed(_)));
    assert!(matches!(
        Redactor::default().redact_str(SECRET),
        Cow::Borrowed(_)
    ));
}

#[test]
fn base64_at_every_alignment_in_both_alphabets_is_masked() {
    let r = redactor(&[SECRET]);
    let mut alphabets_differ = false;
    // Secrets of each length modulo 3, so the secret also ends at every alignment.
    for secret in [SECRET, &SECRET[..13], &SECRET[..12]] {
        let r = if secret == SECRET {
            r.clone()
        } else {
            redactor(&[secret])
        };
        for prefix in 0..3 {
            for suffix in 0..3 {
                let mut data = b"xx"[..prefix].to_vec();
                data.extend_from_slice(secret.as_bytes());
                data.extend_from_slice(&b"yy"[..suffix]);
                let std = STANDARD.encode(&data);
                alphabets_differ |= std != URL_SAFE.encode(&data);
                for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
                    let encoded = engine.encode(&data);
                    let text = format!("data: {encoded} end");
                    let out = r.redact(&text);
                    let (before, after) = around_mask(&out);
                    // Only the characters that hold bits of the neighbouring
                    // bytes may be left: at most 3 before, 4 after, plus padding.
                    let before = before.strip_prefix("data: ").unwrap();
                    let after = after.strip_suffix(" end").unwrap();
                    assert!(before.len() <= 3, "{prefix}/{suffix}: {out}");
                    assert!(
                        after.trim_end_matches('=').len() <= 4,
                        "{prefix}/{suffix}: {out}"
                    );
                    // Whatever is left decodes to at most 2 bytes of the secret.
                    assert!(before.len() + after.trim_end_matches('=').len() < encoded.len() / 2);
                }
            }
        }
    }
    assert!(alphabets_differ, "the fixture must exercise both alphabets");
}

#[test]
fn base64_of_the_bare_secret_is_masked() {
    let r = redactor(&[SECRET]);
    for engine in [&STANDARD, &URL_SAFE] {
        let encoded = engine.encode(SECRET);
        let out = r.redact(&format!("Authorization: Basic {encoded}"));
        assert!(out.starts_with("Authorization: Basic ***"), "{out}");
        assert!(!out.contains(&encoded[..encoded.len() - 4]), "{out}");
    }
}

#[test]
fn hex_in_both_cases_is_masked() {
    let r = redactor(&[SECRET]);
    let lower = SECRET
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let upper = lower.to_uppercase();
    assert_eq!(r.redact(&format!("a={lower} b={upper}")), "a=*** b=***");
}

#[test]
fn url_encoded_forms_are_masked() {
    let secret = "p@ss w/rd&k=1~*!";
    let r = redactor(&[secret]);
    // WHATWG form encoding, as the url crate writes a query pair.
    let form: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    assert!(form.contains('+') && form.contains("%40"), "{form}");
    // The WHATWG path segment set, which leaves @ & = ! * ~ alone.
    let mut u = url::Url::parse("https://example.com/").unwrap();
    u.path_segments_mut().unwrap().push(secret);
    let path = u.path().trim_start_matches('/').to_string();
    // Every byte but letters and digits escaped, lower-case, as some clients do.
    let all: String = secret
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02x}")
            }
        })
        .collect();
    for encoded in [&form, &path, &all, &all.replace("%20", "+")] {
        assert_ne!(encoded, secret);
        let out = r.redact(&format!("GET /cb?pw={encoded} HTTP/1.1"));
        assert_eq!(out, "GET /cb?pw=*** HTTP/1.1", "{encoded}");
    }
    // With few distinct punctuation characters, any mix of escaped and literal
    // ones is caught, whatever the encoder's set.
    let r = redactor(&["pa$$:w0rd! x"]);
    for encoded in ["pa$$%3Aw0rd%21+x", "pa%24%24:w0rd!%20x", "pa$$%3aw0rd!%20x"] {
        assert_eq!(r.redact(&format!("[{encoded}]")), "[***]", "{encoded}");
    }
}

#[test]
fn json_escaped_secrets_are_masked() {
    let secret = r#"a"b\c<d>&e"#;
    let r = redactor(&[secret]);
    let serde = serde_json::to_string(&json!({ "v": secret })).unwrap();
    assert_eq!(r.redact(&serde), r#"{"v":"***"}"#);
    let go = r#"{"v":"a\"b\\c\u003cd\u003e\u0026e"}"#;
    assert_eq!(r.redact(go), r#"{"v":"***"}"#);
}

#[test]
fn overlapping_and_nested_secrets_are_masked_whole() {
    let r = redactor(&["abcdef123", "def123456", "123456789xyz", "cdef12"]);
    // Overlapping occurrences merge into one mask: no tail of either leaks.
    assert_eq!(r.redact("<abcdef123456789xyz>"), "<***>");
    assert_eq!(r.redact("<def123456> <cdef12>"), "<***> <***>");
    // Adjacent secrets are two masks.
    assert_eq!(r.redact("abcdef123def123456"), "******");
}

#[test]
fn short_values_and_their_forms_are_ignored() {
    let r = redactor(&["abc", "12345", ""]);
    assert!(r.is_empty());
    let text = format!(
        "abc 12345 {} {}",
        STANDARD.encode("abc"),
        hex::encode("12345")
    );
    assert_eq!(r.redact(&text), text);
    // A 6-byte secret is masked in clear, hex and unshifted base64; its shifted
    // base64 fragments (7 characters) are below the derived minimum.
    let r = redactor(&["s3cr3t"]);
    assert_eq!(
        r.redact(&format!(
            "s3cr3t {} {}",
            hex::encode("s3cr3t"),
            STANDARD.encode("s3cr3t")
        )),
        "*** *** ***"
    );
    assert!(r.patterns.iter().all(|p| p.len() >= MIN_SECRET_LEN));
    assert!(r
        .patterns
        .iter()
        .filter(|p| p.as_str() != "s3cr3t")
        .all(|p| p.len() >= MIN_DERIVED_LEN));
}

#[test]
fn many_secrets_share_one_automaton() {
    let secrets: Vec<String> = (0..500).map(|i| format!("secret-value-{i:05}")).collect();
    let r = Redactor::new(
        &secrets
            .iter()
            .map(|s| SecretString::from(s.clone()))
            .collect::<Vec<_>>(),
    );
    assert_eq!(r.len(), 500);
    // 18 bytes: their base64 has no partial character left unmasked.
    let text = format!(
        "a secret-value-00042 b {} c",
        STANDARD.encode("secret-value-00499")
    );
    assert_eq!(r.redact(&text), "a *** b *** c");
}

#[test]
fn non_utf8_bytes_are_redacted_too() {
    let r = redactor(&[SECRET]);
    let mut data = vec![0xff, 0xfe];
    data.extend_from_slice(SECRET.as_bytes());
    data.push(0x80);
    assert_eq!(&*r.redact_bytes(&data), b"\xff\xfe***\x80");
}

/// `tests/fixtures/plans/sensitive_null.json`: terraform 1.0.3, null provider
/// 2.1.2; a root `null_resource.db` and a module's `null_resource.svc` whose
/// triggers take the sensitive variable `db_password`, a sensitive output
/// `password`, applied with `old-s3cret-value` then planned (`plan -out`,
/// `show -json`) with `new-s3cret-value`.
fn fixture_plan() -> Value {
    serde_json::from_str(include_str!(
        "../../tests/fixtures/plans/sensitive_null.json"
    ))
    .unwrap()
}

#[test]
fn plan_values_marked_sensitive_are_masked() {
    let mut plan = fixture_plan();
    let found = mask_sensitive_plan(&mut plan);
    let text = plan.to_string();
    assert!(!text.contains("s3cret"), "{text}");
    let masked = Value::String(SENSITIVE_VALUE.into());
    for pointer in [
        "/variables/db_password/value",
        "/planned_values/outputs/password/value",
        "/planned_values/root_module/resources/0/values/triggers/password",
        "/planned_values/root_module/child_modules/0/resources/0/values/triggers/token",
        "/resource_changes/0/change/before/triggers/token",
        "/resource_changes/0/change/after/triggers/token",
        "/resource_changes/1/change/before/triggers/password",
        "/resource_changes/1/change/after/triggers/password",
        "/output_changes/password/before",
        "/output_changes/password/after",
        "/prior_state/values/outputs/password/value",
        "/prior_state/values/root_module/resources/0/values/triggers/password",
        "/prior_state/values/root_module/child_modules/0/resources/0/values/triggers/token",
    ] {
        assert_eq!(plan.pointer(pointer), Some(&masked), "{pointer}");
    }
    // What is not sensitive stays.
    for (pointer, value) in [
        ("/variables/region/value", "eu-west-1"),
        ("/output_changes/region/after", "eu-west-1"),
        ("/resource_changes/0/change/after/triggers/name", "svc"),
        (
            "/resource_changes/1/change/after/triggers/region",
            "eu-west-1",
        ),
        (
            "/prior_state/values/root_module/resources/0/values/id",
            "5493087312918206335",
        ),
    ] {
        assert_eq!(plan.pointer(pointer), Some(&json!(value)), "{pointer}");
    }
    let mut found: Vec<&str> = found.iter().map(|s| s.expose_secret()).collect();
    found.sort();
    assert_eq!(found, ["new-s3cret-value", "old-s3cret-value"]);
}

#[test]
fn nested_markers_mask_only_what_they_mark() {
    let mut plan = json!({
        "resource_changes": [{
            "address": "x.y",
            "change": {
                "actions": ["update"],
                "before": {"tags": ["a", "old-secret-tag"], "conn": {"user": "admin", "pass": "hunter2222"}, "id": "1"},
                "after": {"tags": ["a", "new-secret-tag"], "conn": {"user": "admin", "pass": "hunter3333"}, "id": "1"},
                "before_sensitive": {"tags": [false, true], "conn": {"pass": true}},
                "after_sensitive": {"tags": [false, true], "conn": {"pass": true}}
            }
        }],
        "resource_drift": [{
            "change": {"before": {"k": "drifted-secret"}, "after": {"k": "x"}, "before_sensitive": true, "after_sensitive": false}
        }],
        "output_changes": {"o": {"before": null, "after": {"a": "nested-out-secret"}, "before_sensitive": false, "after_sensitive": {"a": true}}}
    });
    let found = mask_sensitive_plan(&mut plan);
    let s = SENSITIVE_VALUE;
    assert_eq!(
        plan["resource_changes"][0]["change"]["after"],
        json!({"tags": ["a", s], "conn": {"user": "admin", "pass": s}, "id": "1"})
    );
    assert_eq!(
        plan["resource_changes"][0]["change"]["before"]["tags"],
        json!(["a", s])
    );
    assert_eq!(plan["resource_drift"][0]["change"]["before"], json!(s));
    assert_eq!(
        plan["resource_drift"][0]["change"]["after"],
        json!({"k": "x"})
    );
    assert_eq!(plan["output_changes"]["o"]["after"], json!({"a": s}));
    assert_eq!(found.len(), 6);
    // The values found feed a redactor that then catches them in plan text.
    let r = Redactor::new(&found);
    assert_eq!(
        r.redact("~ pass = \"hunter2222\" -> \"hunter3333\""),
        "~ pass = \"***\" -> \"***\""
    );
}
