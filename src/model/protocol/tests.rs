//! Unit tests of the spawn request parser and of the bounded scan of
//! entries it cannot read.

use super::*;
use serde_json::{json, Value};

fn parse(v: Value) -> Result<SpawnRequest, RequestError> {
    parse_spawn_request(v.to_string().as_bytes(), &InputLimits::default())
}

#[test]
fn a_full_request_parses() {
    let r = parse(json!({
        "request_id": "req_123",
        "worker_config_id": "po_claude_v1",
        "worker_config_override": {"limits": {"timeout_sec": 300}},
        "task": {"user_id": "user_1", "prompt": "Check project status", "session_id": "sess_abc"},
        "dry_run": true
    }))
    .unwrap();
    assert_eq!(r.request_id, "req_123");
    assert_eq!(r.task.session_id.as_deref(), Some("sess_abc"));
    assert!(r.dry_run);
}

#[test]
fn invalid_json_is_rejected_without_a_request_id() {
    let e = parse_spawn_request(b"{not json", &InputLimits::default()).unwrap_err();
    assert_eq!(
        (e.code, e.field.as_str(), e.request_id),
        ("invalid_json", "data", None)
    );
}

#[test]
fn invalid_utf8_is_rejected() {
    let e = parse_spawn_request(b"{\"request_id\":\"\xff\"}", &InputLimits::default()).unwrap_err();
    assert_eq!(e.code, "invalid_utf8");
}

#[test]
fn a_missing_request_id_is_named() {
    let e = parse(json!({"task": {"prompt": "x"}})).unwrap_err();
    assert_eq!((e.code, e.field.as_str()), ("missing_field", "request_id"));
}

#[test]
fn request_ids_with_slashes_or_too_long_are_refused() {
    for bad in ["../etc", "a/b", "", "x".repeat(129).as_str(), "a b", ".."] {
        let e = parse(json!({"request_id": bad, "task": {"prompt": "x"}})).unwrap_err();
        assert_eq!(e.field, "request_id", "{bad:?}");
    }
}

#[test]
fn errors_after_the_request_id_keep_it() {
    let e = parse(json!({"request_id": "r1", "task": {}})).unwrap_err();
    assert_eq!(e.request_id.as_deref(), Some("r1"));
    assert_eq!(e.field, "task.prompt");
}

#[test]
fn an_empty_prompt_is_refused() {
    let e = parse(json!({"request_id": "r1", "task": {"prompt": "  "}})).unwrap_err();
    assert_eq!((e.code, e.field.as_str()), ("invalid_field", "task.prompt"));
}

#[test]
fn a_prompt_over_the_limit_is_refused() {
    let limits = InputLimits {
        max_prompt_bytes: 10,
        ..Default::default()
    };
    let body = json!({"request_id": "r1", "task": {"prompt": "x".repeat(11)}}).to_string();
    let e = parse_spawn_request(body.as_bytes(), &limits).unwrap_err();
    assert_eq!((e.code, e.field.as_str()), ("too_large", "task.prompt"));
}

#[test]
fn an_entry_over_the_size_limit_is_refused_before_parsing() {
    let limits = InputLimits {
        max_entry_bytes: 8,
        ..Default::default()
    };
    let e = parse_spawn_request(b"{\"request_id\": \"r1\"}", &limits).unwrap_err();
    assert_eq!((e.code, e.field.as_str()), ("too_large", "data"));
}

#[test]
fn a_deeply_nested_override_is_refused() {
    let mut v = json!(1);
    for _ in 0..20 {
        v = json!({ "a": v });
    }
    let e =
        parse(json!({"request_id": "r1", "worker_config_override": v, "task": {"prompt": "x"}}))
            .unwrap_err();
    assert_eq!(
        (e.code, e.field.as_str()),
        ("too_deep", "worker_config_override")
    );
}

#[test]
fn json_nested_past_serde_limits_is_an_error_not_a_crash() {
    let deep = "[".repeat(100_000);
    let e = parse_spawn_request(deep.as_bytes(), &InputLimits::default()).unwrap_err();
    assert_eq!(e.code, "invalid_json");
}

#[test]
fn wrong_types_are_named() {
    let cases = [
        (
            json!({"request_id": 5, "task": {"prompt": "x"}}),
            "request_id",
        ),
        (json!({"request_id": "r", "task": "x"}), "task"),
        (
            json!({"request_id": "r", "task": {"prompt": 1}}),
            "task.prompt",
        ),
        (
            json!({"request_id": "r", "task": {"prompt": "x"}, "dry_run": "yes"}),
            "dry_run",
        ),
        (
            json!({"request_id": "r", "worker_config_id": 3, "task": {"prompt": "x"}}),
            "worker_config_id",
        ),
        (
            json!({"request_id": "r", "worker_config_override": [1], "task": {"prompt": "x"}}),
            "worker_config_override",
        ),
        (
            json!({"request_id": "r", "task": {"prompt": "x", "session_id": "../x"}}),
            "task.session_id",
        ),
        (
            json!({"request_id": "r", "task": {"prompt": "x", "bogus": 1}}),
            "task.bogus",
        ),
        (
            json!({"request_id": "r", "task": {"prompt": "x"}, "bogus": 1}),
            "bogus",
        ),
    ];
    for (v, field) in cases {
        let e = parse(v.clone()).unwrap_err();
        assert_eq!(e.field, field, "{v}");
    }
}

#[test]
fn a_prompt_with_nul_is_refused() {
    let e = parse(json!({"request_id": "r", "task": {"prompt": "a\u{0}b"}})).unwrap_err();
    assert_eq!(e.field, "task.prompt");
}

// ------------------------------------------- entries the parser cannot read

const MIB: usize = 1024 * 1024;

fn parse_raw(data: &[u8]) -> RequestError {
    parse_spawn_request(data, &InputLimits::default()).unwrap_err()
}

fn nested(n: usize) -> String {
    format!("{}1{}", "[".repeat(n), "]".repeat(n))
}

#[test]
fn the_parser_reads_exactly_parser_max_depth_levels() {
    // The scan's too_deep verdict relies on serde_json's recursion limit.
    assert!(serde_json::from_str::<Value>(&nested(PARSER_MAX_DEPTH)).is_ok());
    assert!(serde_json::from_str::<Value>(&nested(PARSER_MAX_DEPTH + 1)).is_err());
}

#[test]
fn an_id_after_a_4_mib_prompt_is_found_and_the_prompt_named() {
    let prompt = "x".repeat(4 * MIB);
    let data = format!(
        r#"{{"task": {{"prompt": "{prompt}"}}, "worker_config_id": "shell_v1", "request_id": "late-id"}}"#
    );
    let e = parse_raw(data.as_bytes());
    assert_eq!(e.request_id.as_deref(), Some("late-id"));
    assert_eq!((e.code, e.field.as_str()), ("too_large", "task.prompt"));
    assert!(e.unreadable);
    assert!(
        e.message.contains(&format!("{} bytes", 4 * MIB)) && e.message.contains("262144"),
        "{}",
        e.message
    );
    assert!(e.message.contains("1048576"), "names the entry limit: {e}");
}

#[test]
fn an_oversized_override_or_other_field_is_named() {
    let blob = "y".repeat(2 * MIB);
    let data = json!({"request_id": "r1", "worker_config_override": {"env": {"A": blob}}, "task": {"prompt": "x"}}).to_string();
    let e = parse_raw(data.as_bytes());
    assert_eq!(
        (e.request_id.as_deref(), e.code, e.field.as_str()),
        (Some("r1"), "too_large", "worker_config_override")
    );
    assert!(e.message.contains("65536"), "{e}");
    let data = json!({"request_id": "r1", "blob": blob, "task": {"prompt": "x"}}).to_string();
    let e = parse_raw(data.as_bytes());
    assert_eq!((e.code, e.field.as_str()), ("too_large", "blob"));
}

#[test]
fn an_entry_large_only_as_a_whole_is_named_data_with_its_largest_field() {
    // Each field is under its own limit; together they are over.
    let limits = InputLimits {
        max_entry_bytes: 1000,
        max_prompt_bytes: 600,
        ..Default::default()
    };
    let data = json!({"request_id": "r1", "task": {"prompt": "p".repeat(500), "user_id": "u".repeat(100)}, "dry_run": true, "worker_config_override": {"name": "n".repeat(450)}}).to_string();
    let e = parse_spawn_request(data.as_bytes(), &limits).unwrap_err();
    assert_eq!(
        (e.request_id.as_deref(), e.code, e.field.as_str()),
        (Some("r1"), "too_large", "data")
    );
    assert!(e.message.contains("task.prompt (500 bytes)"), "{e}");
}

#[test]
fn quoted_keys_inside_strings_are_not_taken_for_the_id() {
    let data = format!(
        r#"{{"task": {{"prompt": "say \"request_id\": \"evil\" and \\\"request_id\\\":\"evil2\" {}\\"}}, "request_id": "good"}}"#,
        "z".repeat(2 * MIB)
    );
    // The prompt really ends where JSON says it does.
    let v: Value = serde_json::from_str(&data).unwrap();
    assert!(v["task"]["prompt"].as_str().unwrap().ends_with('\\'));
    let e = parse_raw(data.as_bytes());
    assert_eq!(e.request_id.as_deref(), Some("good"));
    assert_eq!(e.field, "task.prompt");
    // Only a top-level key counts: one inside an object does not.
    let data = format!(
        r#"{{"worker_config_override": {{"request_id": "inner"}}, "task": {{"prompt": "{}", "request_id": "task-level"}}}}"#,
        "z".repeat(2 * MIB)
    );
    assert_eq!(parse_raw(data.as_bytes()).request_id, None);
}

#[test]
fn escaped_keys_and_ids_read_as_the_parser_reads_them() {
    let big = "q".repeat(2 * MIB);
    let data = format!(r#"{{"request\u005fid": "r\u002d1", "task": {{"pro\u006dpt": "{big}"}}}}"#);
    let e = parse_raw(data.as_bytes());
    assert_eq!(e.request_id.as_deref(), Some("r-1"));
    assert_eq!(e.field, "task.prompt");
    // The same entry under the limit: the parser agrees on both names.
    let small = data.replace(&big, "x");
    let r = parse_spawn_request(small.as_bytes(), &InputLimits::default()).unwrap();
    assert_eq!(r.request_id, "r-1");
}

#[test]
fn a_10k_deep_override_is_too_deep_with_its_id() {
    let data = format!(
        r#"{{"request_id": "deep-1", "worker_config_override": {{"env": {}}}, "task": {{"prompt": "x"}}}}"#,
        nested(10_000)
    );
    let e = parse_raw(data.as_bytes());
    assert_eq!(
        (e.request_id.as_deref(), e.code, e.field.as_str()),
        (Some("deep-1"), "too_deep", "worker_config_override")
    );
    assert!(
        e.message.contains("10001 levels") && e.message.contains("limit is 8"),
        "{e}"
    );
    // Deep anywhere else: that field is named with the parser's limit.
    let data = format!(
        r#"{{"task": {{"prompt": "x", "extra": {}}}, "request_id": "deep-2"}}"#,
        nested(200)
    );
    let e = parse_raw(data.as_bytes());
    assert_eq!(
        (e.request_id.as_deref(), e.code, e.field.as_str()),
        (Some("deep-2"), "too_deep", "task.extra")
    );
    assert!(e.message.contains("127"), "{e}");
}

#[test]
fn an_entry_nested_both_too_deep_and_too_large_is_refused_for_its_size() {
    let data = format!(
        r#"{{"request_id": "r1", "worker_config_override": {}}}"#,
        nested(MIB)
    );
    let e = parse_raw(data.as_bytes());
    assert_eq!(
        (e.request_id.as_deref(), e.code, e.field.as_str()),
        (Some("r1"), "too_large", "worker_config_override")
    );
}

#[test]
fn non_utf8_bytes_are_located_and_never_make_an_id() {
    let mut data = br#"{"request_id": "r1", "task": {"prompt": "ab"#.to_vec();
    data.extend_from_slice(b"\xff\xfe");
    data.extend_from_slice(br#""}}"#);
    let e = parse_raw(&data);
    assert_eq!(
        (e.request_id.as_deref(), e.code, e.field.as_str()),
        (Some("r1"), "invalid_utf8", "task.prompt")
    );
    let e = parse_raw(b"{\"request_id\": \"r\xff1\", \"task\": {\"prompt\": \"x\"}}");
    assert_eq!((e.request_id, e.code), (None, "invalid_utf8"));
    // Not UTF-8 before the object even starts: nothing to read.
    assert_eq!(parse_raw(b"\xff{\"request_id\": \"r1\"}").request_id, None);
}

#[test]
fn of_duplicate_request_ids_the_last_wins_in_parser_and_scan_alike() {
    let r = parse_spawn_request(
        br#"{"request_id": "first", "request_id": "last", "task": {"prompt": "x"}}"#,
        &InputLimits::default(),
    )
    .unwrap();
    assert_eq!(r.request_id, "last");
    let big = "x".repeat(2 * MIB);
    let data = format!(
        r#"{{"request_id": "first", "task": {{"prompt": "{big}"}}, "request_id": "last"}}"#
    );
    assert_eq!(
        parse_raw(data.as_bytes()).request_id.as_deref(),
        Some("last")
    );
    // A last one that is invalid wins too: no id, as the parser says.
    let data = format!(
        r#"{{"request_id": "first", "task": {{"prompt": "{big}"}}, "request_id": "../x"}}"#
    );
    assert_eq!(parse_raw(data.as_bytes()).request_id, None);
    let e = parse_raw(br#"{"request_id": "first", "request_id": "../x", "task": {"prompt": "x"}}"#);
    assert_eq!((e.request_id, e.field.as_str()), (None, "request_id"));
}

#[test]
fn ids_the_parser_would_refuse_are_not_found() {
    let big = "x".repeat(2 * MIB);
    let long = "a".repeat(128);
    let ok = parse_raw(format!(r#"{{"request_id": "{long}", "blob": "{big}"}}"#).as_bytes());
    assert_eq!(ok.request_id.as_deref(), Some(long.as_str()));
    for bad in [
        json!("a".repeat(129)),
        json!("../etc"),
        json!(""),
        json!("a b"),
        json!(".."),
        json!("caf\u{e9}"),
        json!(5),
        json!(["r1"]),
        json!(null),
    ] {
        let data = format!(r#"{{"request_id": {bad}, "blob": "{big}"}}"#);
        assert_eq!(parse_raw(data.as_bytes()).request_id, None, "{bad}");
    }
    // An id of 127 chars and one 4-byte character is 131 bytes: the cap
    // must not keep a valid-looking prefix.
    let data = format!(
        r#"{{"request_id": "{}\ud83d\ude00ab", "blob": "{big}"}}"#,
        "a".repeat(126)
    );
    assert_eq!(parse_raw(data.as_bytes()).request_id, None);
}

#[test]
fn entries_without_an_object_or_an_id_stay_without_one() {
    let big = "x".repeat(2 * MIB);
    for data in [
        format!(r#"["request_id", "r1", "{big}"]"#),
        format!(r#""{{\"request_id\": \"r1\"}}{big}""#),
        format!(r#"{{"task": {{"prompt": "{big}"}}}}"#),
        " ".repeat(2 * MIB),
        "[".repeat(100_000),
    ] {
        let e = parse_raw(data.as_bytes());
        assert_eq!(e.request_id, None, "{}", &data[..40]);
        assert!(e.unreadable);
    }
}

#[test]
fn a_truncated_entry_keeps_an_id_it_had_read_and_never_invents_one() {
    let full = json!({"worker_config_id": "shell_v1", "request_id": "r-1", "task": {"prompt": "say \"request_id\": \"no\"", "session_id": "s"}, "dry_run": false}).to_string();
    // The id counts once its closing quote is read.
    let id_end = full.find("\"r-1\"").unwrap() + 5;
    for cut in 0..full.len() {
        let e = parse_raw(&full.as_bytes()[..cut]);
        assert_eq!(e.code, "invalid_json", "cut {cut}");
        let want = (cut >= id_end).then_some("r-1");
        assert_eq!(
            e.request_id.as_deref(),
            want,
            "cut at {cut}: {}",
            &full[..cut]
        );
    }
}

#[test]
fn garbage_never_panics_the_scan() {
    let samples: [&[u8]; 12] = [
        b"{",
        b"{\"",
        b"{\"request_id\"",
        b"{\"request_id\":",
        b"{\"request_id\":\"r1",
        b"{\"request_id\":\"\\u12",
        b"{\"request_id\":\"\\ud800\"}",
        b"{\"a\":}",
        b"{\"a\":1,}",
        b"{\"a\":]]]]}",
        b"{\"task\":{\"prompt\":\"\\q\"}}",
        b"{\"request_id\":\"r1\"\x00}",
    ];
    for s in samples {
        let _ = scan_entry(s, &InputLimits::default());
        let _ = parse_spawn_request(s, &InputLimits::default());
    }
    // Lone surrogates never make a valid id.
    let scan = scan_entry(br#"{"request_id":"\ud800"}"#, &InputLimits::default());
    assert_eq!(scan.request_id, None);
    assert!(scan.complete);
}

#[test]
fn a_long_key_is_named_shortened() {
    let key = "k".repeat(500);
    let data = format!(
        r#"{{"request_id": "r1", "{key}": "{}"}}"#,
        "v".repeat(2 * MIB)
    );
    let e = parse_raw(data.as_bytes());
    assert_eq!(e.field, format!("{}...", &key[..64]));
}

#[test]
fn readable_errors_are_not_marked_unreadable() {
    let e = parse(json!({"request_id": "r1", "task": {}})).unwrap_err();
    assert!(!e.unreadable);
    let e = parse(json!({"task": {"prompt": "x"}})).unwrap_err();
    assert!(!e.unreadable);
}
