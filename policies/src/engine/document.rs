//! From TOML text to sections: walks the top level of a parsed document
//! (`version`, `[workspace."NAME"]`) and hands each section's table to
//! that section's reader (see `crate::schema::read`).

use nexus_protocol::Section;
use toml::de::{DeTable, DeValue};

use crate::schema::decision::shown_name;
use crate::schema::diag::{Diagnostic, Reporter};
use crate::schema::read::{Key, Parser, Value, path_key};
use crate::sections::Sections;

/// Everything found in one source.
#[derive(Debug, Default)]
pub(crate) struct ParsedFile {
    /// The rules of each section.
    pub sections: Sections,
    /// Errors, in no particular order.
    pub errors: Vec<Diagnostic>,
    /// Warnings, in no particular order.
    pub warnings: Vec<Diagnostic>,
    /// Top-level sections holding anything but deny rules (see `layers`).
    pub allow_sections: std::collections::BTreeSet<Section>,
    /// `[workspace."NAME"]` sections, each parsed like a file of its own.
    pub workspaces: Vec<(String, ParsedFile)>,
}

/// Parses and validates one policy source.
pub(crate) fn parse_source(file: &str, text: &str) -> ParsedFile {
    let mut report = Reporter::new(file, text);
    let mut parser = Parser {
        report: &mut report,
        out: ParsedFile::default(),
    };
    // Only the first syntax error: those after it are mostly echoes of it.
    match DeTable::parse(text) {
        Ok(root) => parser.document(root.get_ref(), false),
        Err(e) => parser.syntax_error(&e),
    }
    let mut out = parser.out;
    out.errors = report.errors;
    out.warnings = report.warnings;
    out
}

impl Parser<'_, '_, ParsedFile> {
    /// Reports what the TOML parser rejected.
    fn syntax_error(&mut self, error: &toml::de::Error) {
        let span = error.span().unwrap_or(0..0);
        let mut message = format!("TOML syntax error: {}", error.message());
        if error.message() == "duplicate key" {
            let key = self.report.text(&span);
            message =
                format!("{message} {key:?}; a key or [table] may be defined only once per file");
        }
        self.report.error(&span, message);
    }

    /// The top level: `version`, `[tokens]`, `[ssh]`, and the other sections.
    fn document(&mut self, root: &DeTable<'_>, nested: bool) {
        for (key, value) in root {
            let name: &str = key.get_ref();
            match name {
                "version" => self.version(value),
                "workspace" => self.workspaces(key, value, nested),
                _ => match self.out.sections.parse(self.report, name, value) {
                    Some(section) => {
                        if holds_allow_rules(value.get_ref()) {
                            self.out.allow_sections.insert(section);
                        }
                    }
                    None => self.report.error(
                        &key.span(),
                        format!(
                            "unknown top-level key {name:?}; expected version, [tokens.NAME], \
                         [[tokens.deny]], [[ssh.allow]], [[ssh.deny]], [[git-credential.allow]], \
                         [[files.allow]], [files.sets.NAME], [tools.NAME], [http.NAME], each \
                         also in [workspace.\"NAME\"]"
                        ),
                    ),
                },
            }
        }
    }

    /// `[workspace."NAME"]`: rules that narrow the others for one workspace.
    fn workspaces(&mut self, key: &Key<'_>, value: &Value<'_>, nested: bool) {
        let DeValue::Table(table) = value.get_ref() else {
            let found = value.get_ref();
            return self.wrong_type("workspace", value, found, "a table of [workspace.\"NAME\"]");
        };
        if nested {
            return self.report.error(
                &key.span(),
                "workspace: a [workspace.\"NAME\"] section cannot hold another one",
            );
        }
        for (name, body) in table {
            let section = format!("workspace.{}", path_key(name.get_ref()));
            if let Err(why) = check_workspace_name(name.get_ref()) {
                self.report.error(&name.span(), format!("{section}: {why}"));
                continue;
            }
            let DeValue::Table(inner) = body.get_ref() else {
                let found = body.get_ref();
                self.wrong_type(
                    &section,
                    body,
                    found,
                    "a table of rules ([tokens.NAME], [[ssh.allow]], ...)",
                );
                continue;
            };
            let outer = std::mem::take(&mut self.out);
            self.document(inner, true);
            let parsed = std::mem::replace(&mut self.out, outer);
            self.out
                .workspaces
                .push((name.get_ref().to_string(), parsed));
        }
    }

    /// `version = 1`.
    fn version(&mut self, value: &Value<'_>) {
        match value.get_ref() {
            DeValue::Integer(n) if i64::from_str_radix(n.as_str(), n.radix()) == Ok(1) => {}
            DeValue::Integer(_) => {
                let written = self.report.text(&value.span());
                self.report.error(
                    &value.span(),
                    format!(
                        "version: unsupported policy version {written}; this build understands version = 1"
                    ),
                );
            }
            other => self.wrong_type("version", value, other, "an integer (version = 1)"),
        }
    }
}

/// Whether the value of a top-level section holds allow rules: anything
/// but a table of only `deny` rules.
fn holds_allow_rules(value: &DeValue<'_>) -> bool {
    !matches!(value, DeValue::Table(t) if t.iter().all(|(k, _)| k.get_ref() == "deny"))
}

/// The rules for a workspace name (the laptop's pairing name).
fn check_workspace_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid workspace name {:?}; expected the laptop's pairing name: 1-64 letters, \
             digits, '-', '_' or '.', not starting with '.'",
            shown_name(name)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sections::tokens::TokenRule;

    #[test]
    fn rule_refs_point_at_table_headers() {
        let text = "version = 1\n\n[tokens.a]\nsource = \"env:A\"\n\n  [[tokens.deny]]\nname = \"x*\"\n\n[tokens]\nb = { source = \"env:B\" }\n";
        let parsed = parse_source("p.toml", text);
        assert_eq!(parsed.errors, vec![]);
        let at = |t: &TokenRule| (t.name.clone(), t.rule.line, t.rule.col);
        let mut tokens: Vec<_> = parsed.sections.tokens.tokens.values().map(at).collect();
        tokens.sort();
        assert_eq!(tokens, vec![("a".into(), 3, 1), ("b".into(), 10, 5)]);
        let deny = &parsed.sections.tokens.denies[0].rule;
        assert_eq!(
            (deny.line, deny.col, deny.section.as_str()),
            (6, 3, "tokens.deny")
        );
    }
}
