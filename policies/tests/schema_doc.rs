//! `docs/policy.md` documents exactly the keys the engine declares: every
//! declared table has a `### \`HEADER\`` heading whose key table lists its
//! keys, and the document names no table or key the engine does not read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use nexus_policy::SCHEMA;

/// The document's key tables: heading (without backquotes) -> keys listed.
fn documented() -> BTreeMap<String, BTreeSet<String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/policy.md");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut tables = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(heading) = line.strip_prefix("### ") {
            let header = heading.trim().trim_matches('`').to_owned();
            tables.insert(header.clone(), BTreeSet::new());
            current = Some(header);
        } else if line.starts_with("## ") {
            current = None;
        } else if let (Some(header), Some(row)) = (&current, line.strip_prefix("| `")) {
            let key = row.split('`').next().unwrap_or_default().to_owned();
            if let Some(keys) = tables.get_mut(header) {
                keys.insert(key);
            }
        }
    }
    tables
}

#[test]
fn the_reference_lists_every_declared_key_and_no_other() {
    let doc = documented();
    let mut declared = BTreeMap::new();
    for table in SCHEMA.iter().flat_map(|section| section.iter()) {
        let keys: BTreeSet<String> = table.fields.iter().map(|f| f.name.to_owned()).collect();
        declared.insert(table.header.to_owned(), keys);
    }
    for (header, keys) in &declared {
        let Some(listed) = doc.get(header) else {
            panic!("docs/policy.md has no heading ### `{header}`");
        };
        assert_eq!(
            listed, keys,
            "docs/policy.md, table {header}: listed vs declared keys"
        );
    }
    for header in doc.keys() {
        assert!(
            declared.contains_key(header),
            "docs/policy.md documents {header}, which the engine does not declare"
        );
    }
}

#[test]
fn every_declared_field_says_what_it_is() {
    for table in SCHEMA.iter().flat_map(|section| section.iter()) {
        for field in table.fields {
            assert!(
                !field.ty.is_empty() && !field.help.is_empty(),
                "{} {}: type and help text",
                table.header,
                field.name
            );
            assert!(
                !field.required || field.default.is_empty(),
                "{} {}: a required key has no default",
                table.header,
                field.name
            );
        }
    }
}
