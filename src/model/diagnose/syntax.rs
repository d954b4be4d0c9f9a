//! JSON syntax errors of a preset file in words: line, column and the
//! likely slip.

/// A JSON syntax error of `bytes`, with line, column and the likely slip:
/// `not JSON at line 4, column 1: trailing comma (JSON allows no comma
/// after the last entry of an object or list)`.
pub fn json_error(bytes: &[u8], e: &serde_json::Error) -> String {
    let full = e.to_string();
    let what = full
        .rsplit_once(" at line ")
        .map_or(full.as_str(), |(w, _)| w)
        .to_string();
    let (line, column) = (e.line(), e.column());
    let text = String::from_utf8_lossy(bytes);
    if text.trim().is_empty() {
        return "not JSON: the file is empty (a preset is one JSON object, { ... })".to_string();
    }
    let at = text
        .lines()
        .nth(line.saturating_sub(1))
        .and_then(|l| l.chars().nth(column.saturating_sub(1)));
    let hint = if text.starts_with('\u{feff}') {
        "the file starts with a byte-order mark: save it as UTF-8 without BOM".to_string()
    } else if what.starts_with("trailing comma") {
        "JSON allows no comma after the last entry of an object or list".to_string()
    } else if what.starts_with("EOF while parsing") {
        "the file ends too early: a closing }, ] or \" is missing".to_string()
    } else if what.starts_with("key must be a string") {
        match at {
            Some('\'') => "keys take double quotes, not single quotes".to_string(),
            _ => "keys take double quotes: \"name\": ...".to_string(),
        }
    } else if what.starts_with("expected `,` or `}`") || what.starts_with("expected `,` or `]`") {
        "a comma is probably missing before this point".to_string()
    } else if what.starts_with("expected `:`") {
        "a key must be followed by a colon".to_string()
    } else if what.starts_with("control character") {
        "a string holds a raw line break or tab: write \\n or \\t".to_string()
    } else if what.starts_with("invalid escape") {
        "a backslash in a string starts an escape: write \\\\ for a backslash".to_string()
    } else if what.starts_with("trailing characters") {
        "there is more after the end of the object: a preset file holds one JSON object".to_string()
    } else if what.starts_with("expected ident") {
        "true, false and null are written in lower case, without quotes".to_string()
    } else if what.starts_with("expected value") {
        match at {
            Some('/') | Some('#') => "JSON allows no comments".to_string(),
            Some('\'') => "strings take double quotes, not single quotes".to_string(),
            Some(c) if c.is_alphabetic() => {
                "a text value needs double quotes; true, false and null are lower case".to_string()
            }
            _ => String::new(),
        }
    } else {
        String::new()
    };
    let hint = if hint.is_empty() {
        String::new()
    } else {
        format!(" ({hint})")
    };
    format!("not JSON at line {line}, column {column}: {what}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn json_syntax_errors_give_line_column_and_the_likely_slip() {
        let cases: [(&str, &str); 9] = [
            ("{\n  \"id\": \"a\",\n}\n", "not JSON at line 3, column 1: trailing comma (JSON allows no comma after the last entry of an object or list)"),
            ("", "not JSON: the file is empty (a preset is one JSON object, { ... })"),
            ("{\n  // the id\n  \"id\": \"a\"\n}", "not JSON at line 2, column 3: key must be a string (keys take double quotes: \"name\": ...)"),
            ("{\"id\": // the id\n \"a\"}", "not JSON at line 1, column 8: expected value (JSON allows no comments)"),
            ("{'id': 'a'}", "not JSON at line 1, column 2: key must be a string (keys take double quotes, not single quotes)"),
            ("{\"id\": \"a\"\n \"name\": \"b\"}", "not JSON at line 2, column 2: expected `,` or `}` (a comma is probably missing before this point)"),
            ("{\"has_internet\": yes}", "not JSON at line 1, column 18: expected value (a text value needs double quotes; true, false and null are lower case)"),
            ("{\"id\": \"a\"", "not JSON at line 1, column 10: EOF while parsing an object (the file ends too early: a closing }, ] or \" is missing)"),
            ("\u{feff}{\"id\": \"a\"}", "not JSON at line 1, column 1: expected value (the file starts with a byte-order mark: save it as UTF-8 without BOM)"),
        ];
        for (text, want) in cases {
            let e = serde_json::from_slice::<Value>(text.as_bytes()).unwrap_err();
            assert_eq!(json_error(text.as_bytes(), &e), want, "{text:?}");
        }
    }
}
