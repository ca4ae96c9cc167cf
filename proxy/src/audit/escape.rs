//! JSON text that carries no control or formatting character raw.
//!
//! serde_json escapes C0 controls but writes DEL, C1 controls (U+009B is a
//! terminal's CSI), bidi overrides (U+202E) and other invisible format
//! characters as they are, so a workspace-chosen name could reorder or hide
//! what `cat audit.jsonl` or a log viewer shows. These characters can only
//! stand inside JSON strings (the structure is ASCII), so replacing each by
//! its `\u` escape keeps the JSON valid and the value the same.

/// Whether `c` must not appear raw in a log line.
fn needs_escape(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}'            // C0 controls
        | '\u{7f}'..='\u{9f}'         // DEL, C1 controls
        | '\u{ad}'                    // soft hyphen (invisible)
        | '\u{61c}'                   // Arabic letter mark
        | '\u{180e}'                  // Mongolian vowel separator
        | '\u{200b}'..='\u{200f}'     // zero widths, LRM, RLM
        | '\u{2028}'..='\u{202e}'     // line/paragraph separators, bidi embeddings and overrides
        | '\u{2060}'..='\u{206f}'     // word joiner, invisible operators, bidi isolates
        | '\u{feff}'                  // byte order mark
        | '\u{fff9}'..='\u{fffb}'     // interlinear annotations
        | '\u{e0000}'..='\u{e007f}'   // tags
    )
}

/// `json` with every character [`needs_escape`] names written as `\uXXXX`
/// (a surrogate pair beyond the BMP). Borrowed when nothing changes.
pub fn escape_json_text(json: &str) -> std::borrow::Cow<'_, str> {
    // Printable ASCII, the usual line, is checked a byte at a time.
    if json.bytes().all(|b| (0x20..0x7f).contains(&b)) || !json.chars().any(needs_escape) {
        return std::borrow::Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if needs_escape(c) {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_characters_are_escaped_and_read_back() {
        let name = "a\u{9b}31m\u{7f}b\u{202e}c\u{2066}d\u{200b}e\u{e0041}f\u{1b}g\u{2028}";
        let json = serde_json::to_string(&serde_json::json!({ "target": name }))
            .unwrap_or_else(|e| panic!("{e}"));
        let safe = escape_json_text(&json);
        assert!(safe.chars().all(|c| !needs_escape(c)), "{safe}");
        assert!(safe.is_ascii(), "{safe}");
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back["target"], name);
    }

    #[test]
    fn plain_text_is_untouched() {
        let json = r#"{"target":"caf\u00e9 é 日本 ok"}"#;
        assert!(matches!(
            escape_json_text(json),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
