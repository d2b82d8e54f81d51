//! Chat templates (mergekit §4.6): the bundled ones (`templates/*.jinja`, written for smelt
//! from the formats' documentation), validation of a literal template, reading a model's own
//! template, and `auto` (the most common template among the inputs).

use std::path::Path;

use serde_json::Value as Json;

use super::config::ChatTemplate;
use crate::error::{Error, Result};

/// The bundled templates, by name.
pub const BUILTIN: &[(&str, &str)] = &[
    ("alpaca", include_str!("templates/alpaca.jinja")),
    ("chatml", include_str!("templates/chatml.jinja")),
    ("exaone", include_str!("templates/exaone.jinja")),
    ("llama3", include_str!("templates/llama3.jinja")),
    ("mistral", include_str!("templates/mistral.jinja")),
];

/// The text of bundled template `name`.
pub fn builtin(name: &str) -> Option<&'static str> {
    BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// Parses a `chat_template` value as mergekit does: `auto`; a bundled name (a short value
/// without a newline or `{`); otherwise a literal template of at least 20 characters
/// containing `{`.
pub fn parse(s: &str) -> std::result::Result<ChatTemplate, String> {
    if s == "auto" {
        return Ok(ChatTemplate::Auto);
    }
    if s.len() < 256
        && !s.contains('\n')
        && !s.contains('{')
        && let Some((name, _)) = BUILTIN.iter().find(|(n, _)| *n == s)
    {
        return Ok(ChatTemplate::Builtin(name));
    }
    if s.chars().count() < 20 || !s.contains('{') {
        return Err(format!(
            "Invalid chat template {s:?}: use `auto`, a bundled template ({}) or a Jinja template (at least 20 characters, containing `{{`)",
            BUILTIN
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(ChatTemplate::Literal(s.to_string()))
}

/// The chat template a model folder carries: `chat_template.jinja`, else
/// `tokenizer_config.json`'s `chat_template` (a string, or a list of named templates whose
/// `default` entry is used).
pub fn model_template(dir: &Path) -> Result<Option<String>> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return std::fs::read_to_string(&jinja)
            .map(Some)
            .map_err(|e| Error::io(&jinja, e));
    }
    let cfg = dir.join("tokenizer_config.json");
    if !cfg.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&cfg).map_err(|e| Error::io(&cfg, e))?;
    let v: Json =
        serde_json::from_str(&text).map_err(|e| Error::bad_checkpoint(&cfg, e.to_string()))?;
    Ok(match v.get("chat_template") {
        Some(Json::String(s)) => Some(s.clone()),
        Some(Json::Array(list)) => list
            .iter()
            .find(|e| e.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|e| e.get("template"))
            .and_then(|t| t.as_str())
            .map(String::from),
        _ => None,
    })
}

/// The template text to write for `ct`; `dirs` are the input models' folders in recipe order
/// (for `auto`). `None`: `auto` found no template, leave the tokenizer's own.
pub fn resolve(ct: &ChatTemplate, dirs: &[&Path]) -> Result<Option<String>> {
    Ok(match ct {
        ChatTemplate::Builtin(n) => builtin(n).map(String::from),
        ChatTemplate::Literal(s) => Some(s.clone()),
        ChatTemplate::Auto => {
            // most common stripped template; ties go to the first seen
            let mut counts: Vec<(String, usize)> = Vec::new();
            for d in dirs {
                if let Some(t) = model_template(d)? {
                    let t = t.trim().to_string();
                    if t.is_empty() {
                        continue;
                    }
                    match counts.iter_mut().find(|(x, _)| *x == t) {
                        Some((_, c)) => *c += 1,
                        None => counts.push((t, 1)),
                    }
                }
            }
            let best = counts.iter().map(|(_, c)| *c).max();
            best.and_then(|b| counts.into_iter().find(|(_, c)| *c == b).map(|(t, _)| t))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_templates_are_valid_literals() {
        for (name, t) in BUILTIN {
            assert!(t.contains("{%") && t.len() >= 20, "{name}");
            assert_eq!(parse(name).unwrap(), ChatTemplate::Builtin(name));
        }
        assert!(builtin("chatml").unwrap().contains("<|im_start|>"));
        assert!(builtin("llama3").unwrap().contains("<|start_header_id|>"));
        assert!(builtin("mistral").unwrap().contains("[INST]"));
        assert!(builtin("alpaca").unwrap().contains("### Instruction:"));
    }

    #[test]
    fn auto_picks_the_most_common_first_seen_on_ties() {
        let tmp = tempfile::tempdir().unwrap();
        let mk = |name: &str, cfg: Option<&str>, jinja: Option<&str>| {
            let d = tmp.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            if let Some(c) = cfg {
                std::fs::write(d.join("tokenizer_config.json"), c).unwrap();
            }
            if let Some(j) = jinja {
                std::fs::write(d.join("chat_template.jinja"), j).unwrap();
            }
            d
        };
        let a = mk("a", Some(r#"{"chat_template": "  {{ A }}\n"}"#), None);
        let b = mk("b", None, Some("{{ B }}"));
        let c = mk(
            "c",
            Some(
                r#"{"chat_template": [{"name": "tool_use", "template": "{{ T }}"}, {"name": "default", "template": "{{ B }}"}]}"#,
            ),
            None,
        );
        let none = mk("none", Some("{}"), None);
        let r = resolve(&ChatTemplate::Auto, &[&a, &b, &c, &none]).unwrap();
        assert_eq!(r.as_deref(), Some("{{ B }}"));
        let r = resolve(&ChatTemplate::Auto, &[&a, &b]).unwrap();
        assert_eq!(r.as_deref(), Some("{{ A }}"), "tie: first seen, stripped");
        assert_eq!(resolve(&ChatTemplate::Auto, &[&none]).unwrap(), None);
    }
}
