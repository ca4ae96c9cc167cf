//! Codex: `~/.codex/config.toml` (or `$CODEX_HOME/config.toml`). Codex
//! ignores `OPENAI_BASE_URL`: the API is a `[model_providers.nexus]` with
//! the placeholder as its bearer token, chosen by `model_provider`. Codex
//! clears the environment of MCP servers, so `[mcp_servers.nexus]` passes
//! the state dir in its args, and (unless `--ask`) its tools are approved
//! (`default_tools_approval_mode = "approve"`): the laptop is the gate.
//! Edited with `toml_edit`, so comments and layout stay as they were.

use std::path::PathBuf;

use toml_edit::{Array, DocumentMut, Item, Table, value};

use super::{EditFn, Home, MCP_NAME, PLACEHOLDER_KEY, Wiring};

pub(super) fn edits(home: &Home) -> Vec<(PathBuf, EditFn)> {
    let dir = home
        .codex_home
        .clone()
        .unwrap_or_else(|| home.home.join(".codex"));
    vec![(dir.join("config.toml"), edit)]
}

fn edit(text: &str, wiring: Option<&Wiring>) -> Result<String, String> {
    let mut doc: DocumentMut = text.parse().map_err(|e| format!("not valid TOML: {e}"))?;
    match wiring {
        Some(w) => {
            let api = w.api()?;
            doc["model_provider"] = value(MCP_NAME);
            let mut provider = Table::new();
            provider["name"] = value("Nexus (the laptop adds the key)");
            provider["base_url"] = value(api.v1_url());
            provider["experimental_bearer_token"] = value(PLACEHOLDER_KEY);
            provider["wire_api"] = value("responses");
            subtable(&mut doc, "model_providers")?.insert(MCP_NAME, Item::Table(provider));
            let command = w.mcp_command();
            let mut server = Table::new();
            server["command"] = value(&command[0]);
            server["args"] = value(command[1..].iter().collect::<Array>());
            if !w.ask {
                server["default_tools_approval_mode"] = value("approve");
            }
            subtable(&mut doc, "mcp_servers")?.insert(MCP_NAME, Item::Table(server));
        }
        None => {
            if doc.get("model_provider").and_then(Item::as_str) == Some(MCP_NAME) {
                doc.remove("model_provider");
            }
            for parent in ["model_providers", "mcp_servers"] {
                let Some(table) = doc.get_mut(parent).and_then(Item::as_table_mut) else {
                    continue;
                };
                table.remove(MCP_NAME);
                if table.is_empty() && table.is_implicit() {
                    doc.remove(parent);
                }
            }
        }
    }
    Ok(doc.to_string())
}

/// The table `[name]`, created implicit (only its subtables shown).
fn subtable<'a>(doc: &'a mut DocumentMut, name: &str) -> Result<&'a mut Table, String> {
    let item = doc.entry(name).or_insert_with(|| {
        let mut t = Table::new();
        t.set_implicit(true);
        Item::Table(t)
    });
    item.as_table_mut()
        .ok_or_else(|| format!("`{name}` is not a table; fix it by hand"))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{round_trip, wiring};
    use super::*;

    const ORIGINAL: &str = "# my settings\nmodel = \"gpt-5\"\napproval_policy = \"on-request\"\n\n[mcp_servers.docs]\ncommand = \"docs-mcp\" # keep\n\n[profiles.fast]\nmodel = \"gpt-5-mini\"\n";

    #[test]
    fn the_provider_and_the_mcp_server_merge_into_other_settings() {
        let set = round_trip(edit, ORIGINAL, false);
        let doc: DocumentMut = set.parse().unwrap_or_default();
        assert_eq!(doc["model_provider"].as_str(), Some("nexus"));
        let p = &doc["model_providers"]["nexus"];
        assert_eq!(
            p["base_url"].as_str(),
            Some("http://127.0.0.1:4000/cap/anthropic/v1")
        );
        assert_eq!(
            p["experimental_bearer_token"].as_str(),
            Some(PLACEHOLDER_KEY)
        );
        assert_eq!(p["wire_api"].as_str(), Some("responses"));
        let m = &doc["mcp_servers"]["nexus"];
        assert_eq!(m["command"].as_str(), Some("/usr/local/bin/nexus-shim"));
        assert_eq!(m["args"][1].as_str(), Some("/home/dev/.local/state/nexus"));
        assert_eq!(m["default_tools_approval_mode"].as_str(), Some("approve"));
        assert_eq!(
            doc["mcp_servers"]["docs"]["command"].as_str(),
            Some("docs-mcp")
        );
        assert!(set.starts_with("# my settings\n"), "{set}");
        assert!(set.contains("# keep"), "{set}");
    }

    #[test]
    fn ask_leaves_approvals_to_codex() {
        let set = round_trip(edit, ORIGINAL, true);
        assert!(!set.contains("default_tools_approval_mode"), "{set}");
    }

    #[test]
    fn a_v1_upstream_gets_no_second_v1() {
        let mut w = wiring(false);
        if let Some(api) = w.api.as_mut() {
            api.upstream_has_v1 = true;
        }
        let set = edit("", Some(&w)).unwrap_or_default();
        assert!(
            set.contains("base_url = \"http://127.0.0.1:4000/cap/anthropic\"\n"),
            "{set}"
        );
    }

    #[test]
    fn a_provider_the_user_chose_is_left_on_removal() {
        let text = "model_provider = \"azure\"\n";
        assert_eq!(edit(text, None).as_deref(), Ok(text));
        assert!(edit("mcp_servers = 3\n", Some(&wiring(false))).is_err());
        assert!(edit("[x\n", Some(&wiring(false))).is_err());
    }
}
