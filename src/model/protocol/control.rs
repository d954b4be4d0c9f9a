//! Control commands of `workers:control` (PROTOCOL.md section 9) and their
//! parser.

use serde_json::Value;

use super::request::is_valid_request_id;

/// A command from `workers:control` (PROTOCOL.md section 9).
#[derive(Debug, Clone, PartialEq)]
pub enum ControlCommand {
    /// Stop the worker running this request.
    CancelRequest {
        /// The request to cancel.
        request_id: String,
    },
    /// End this session's container (its volumes stay for a later task).
    CancelSession {
        /// The session to end.
        session_id: String,
    },
    /// End this session for good: its container and its volumes (the
    /// workspace and the agent's conversation).
    EndSession {
        /// The session to end.
        session_id: String,
    },
}

/// Parses a control entry; the error says why it is not a known command.
pub fn parse_control(data: &[u8]) -> Result<ControlCommand, String> {
    let v: Value = serde_json::from_slice(data).map_err(|e| format!("not JSON: {e}"))?;
    let command = v.get("command").and_then(Value::as_str);
    let id = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .filter(|s| is_valid_request_id(s))
            .map(str::to_string)
    };
    match command {
        Some("cancel") => match (id("request_id"), id("session_id")) {
            (Some(request_id), None) => Ok(ControlCommand::CancelRequest { request_id }),
            (None, Some(session_id)) => Ok(ControlCommand::CancelSession { session_id }),
            _ => Err("cancel needs exactly one valid request_id or session_id".into()),
        },
        Some("end_session") => match (id("session_id"), v.get("request_id")) {
            (Some(session_id), None) => Ok(ControlCommand::EndSession { session_id }),
            _ => Err("end_session needs a valid session_id and no request_id".into()),
        },
        Some(other) => Err(format!("unknown command {other:?}")),
        None => Err("missing string field \"command\"".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_commands_parse_and_unknown_ones_are_explained() {
        assert_eq!(
            parse_control(br#"{"command":"cancel","request_id":"r1"}"#),
            Ok(ControlCommand::CancelRequest {
                request_id: "r1".into()
            })
        );
        assert_eq!(
            parse_control(br#"{"command":"cancel","session_id":"s1"}"#),
            Ok(ControlCommand::CancelSession {
                session_id: "s1".into()
            })
        );
        assert_eq!(
            parse_control(br#"{"command":"end_session","session_id":"s1"}"#),
            Ok(ControlCommand::EndSession {
                session_id: "s1".into()
            })
        );
        assert!(parse_control(br#"{"command":"end_session"}"#).is_err());
        assert!(
            parse_control(br#"{"command":"end_session","session_id":"s1","request_id":"r"}"#)
                .is_err()
        );
        assert!(parse_control(br#"{"command":"nuke"}"#)
            .unwrap_err()
            .contains("unknown command"));
        assert!(parse_control(b"nope").is_err());
        assert!(parse_control(br#"{"command":"cancel"}"#).is_err());
    }
}
