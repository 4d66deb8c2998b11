//! New keys: generation, the YAML entry that declares them, and appending that entry to the
//! `keys:` section of config.yaml while keeping the file's comments and layout.

use std::path::Path;

use serde_json::{Map, Value};
use sluice_core::keys::{KeyHash, key_from_random};

/// A fresh key from the OS CSPRNG.
pub fn generate_key() -> Result<String, String> {
    let mut random = [0u8; 64];
    getrandom::fill(&mut random).map_err(|e| format!("no randomness from the OS: {e}"))?;
    key_from_random(&random).ok_or_else(|| "could not build a key from the random bytes (try again)".into())
}

/// The `keys:` entry of a key: its hash and the given fields (never the key itself).
pub fn entry(key: &str, fields: Map<String, Value>) -> Value {
    let mut entry = Map::new();
    entry.insert("key_hash".into(), Value::String(format!("sha256:{}", KeyHash::of(key.as_bytes()).to_hex())));
    entry.extend(fields);
    Value::Object(entry)
}

/// The entry as a YAML list item indented for a top-level `keys:` section.
pub fn entry_yaml(entry: &Value) -> Result<String, String> {
    let yaml = serde_norway::to_string(&vec![entry]).map_err(|e| format!("cannot write YAML: {e}"))?;
    Ok(yaml.lines().map(|l| format!("  {l}\n")).collect())
}

fn is_top_level_key(line: &str) -> bool {
    line.chars().next().is_some_and(|c| !c.is_whitespace() && c != '#' && c != '-')
}

/// Inserts `item` (already indented) at the end of the top-level `keys:` list, adding the
/// section if the file has none.
pub fn insert_entry(text: &str, item: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let header = lines.iter().position(|l| {
        let l = l.split('#').next().unwrap_or("").trim_end();
        l == "keys:" || l == "keys: []"
    });
    let Some(header) = header else {
        let sep = if text.is_empty() || text.ends_with('\n') { "" } else { "\n" };
        return format!("{text}{sep}keys:\n{item}");
    };
    // The section ends at the next top-level key; trailing blank lines stay after the entry.
    let mut end =
        lines.iter().skip(header + 1).position(|l| is_top_level_key(l)).map_or(lines.len(), |p| header + 1 + p);
    while end > header + 1 && lines.get(end - 1).is_some_and(|l| l.trim().is_empty()) {
        end -= 1;
    }
    let mut out = String::with_capacity(text.len() + item.len());
    for (i, line) in lines.iter().enumerate() {
        if i == end {
            out.push_str(item);
        }
        if i == header {
            out.push_str(&line.replacen("keys: []", "keys:", 1));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    if end == lines.len() {
        out.push_str(item);
    }
    out
}

/// Appends the entry to a config file, verifying the result still loads, atomically.
pub fn append_to_file(
    path: &Path,
    item: &str,
    validate: impl Fn(&str) -> Result<(), Vec<String>>,
) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let updated = insert_entry(&text, item);
    validate(&updated)
        .map_err(|errors| format!("{} would no longer be valid:\n  {}", path.display(), errors.join("\n  ")))?;
    let tmp = path.with_extension("yaml.sluice-tmp");
    std::fs::write(&tmp, &updated).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot replace {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ITEM: &str = "  - key_hash: sha256:00\n    key_alias: new\n";

    #[test]
    fn appends_to_a_last_section_with_comments() {
        let text = "model_list: []\n# Keys below\nkeys:\n  # added by sluice key new\n  - key_hash: sha256:aa\n\n";
        let out = insert_entry(text, ITEM);
        assert_eq!(
            out,
            "model_list: []\n# Keys below\nkeys:\n  # added by sluice key new\n  - key_hash: sha256:aa\n  - key_hash: sha256:00\n    key_alias: new\n\n"
        );
    }

    #[test]
    fn inserts_before_the_next_section() {
        let text = "keys:\n  - key_hash: sha256:aa\nteams:\n  - team_id: t\n";
        assert_eq!(insert_entry(text, ITEM), format!("keys:\n  - key_hash: sha256:aa\n{ITEM}teams:\n  - team_id: t\n"));
    }

    #[test]
    fn creates_the_section_or_opens_an_empty_one() {
        assert_eq!(insert_entry("model_list: []", ITEM), format!("model_list: []\nkeys:\n{ITEM}"));
        assert_eq!(insert_entry("keys: []  # none yet\n", ITEM), format!("keys:  # none yet\n{ITEM}"));
    }

    #[test]
    fn entries_hold_only_the_hash() {
        let key = generate_key().unwrap();
        let mut fields = Map::new();
        fields.insert("key_alias".into(), Value::String("ci".into()));
        let e = entry(&key, fields);
        let yaml = entry_yaml(&e).unwrap();
        assert!(!yaml.contains(&key));
        assert!(yaml.starts_with("  - "), "a list item under keys:");
        assert!(yaml.contains("key_hash: sha256:"));
        assert!(yaml.contains("    key_alias: ci") || yaml.starts_with("  - key_alias: ci"));
    }
}
