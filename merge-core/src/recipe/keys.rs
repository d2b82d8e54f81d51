//! The key check: a pass over the YAML's events (serde-saphyr's parser, with positions) that
//! finds every key the recipe schema does not have, every parameter the merge method does not
//! read and every key repeated in a mapping, at every level, before serde reads the values. serde then ignores unknown keys and keeps the
//! last of repeated ones (as PyYAML does); whether these findings are errors or warnings is
//! the caller's choice (`--lenient`).
//!
//! The allowed keys of the mapping-valued settings read as JSON (conditional parameter entries,
//! the `tokenizer:` block) are exported so the conversion can drop the unknown ones.

use serde_saphyr::granit_parser::{Event, Parser, Span};

use super::Pos;
use super::problem::{Problem, ProblemKind, closest};

/// Top-level keys.
const TOP: &[&str] = &[
    "merge_method",
    "models",
    "slices",
    "modules",
    "base_model",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "tokenizer",
    "chat_template",
    "name",
    "embed_slerp",
];
const MODEL: &[&str] = &["model", "parameters"];
const SLICE: &[&str] = &["sources", "base_model", "parameters", "residual_weight"];
const SOURCE: &[&str] = &["model", "layer_range", "parameters"];
const REF: &[&str] = &["model", "lora", "override_architecture"];
const PATH_REV: &[&str] = &["path", "revision"];
/// Keys of a `{filter, value}` entry of a conditional parameter list.
pub(super) const CONDITIONAL: &[&str] = &["filter", "value"];
/// Keys of the `tokenizer:` block.
pub(super) const TOKENIZER: &[&str] = &["source", "pad_to_multiple_of", "tokens"];
/// Keys of one `tokenizer.tokens` entry.
pub(super) const TOKEN: &[&str] = &["source", "force"];
/// Keys of a mapping-form embedding source of kind `model_token`.
const MODEL_TOKEN: &[&str] = &["kind", "model", "token", "token_id"];

/// The keys of a mapping-form embedding source of `kind` (mergekit's tagged union: a `zero`
/// source has only its kind); `None` for an unknown kind (an error of its own).
pub(super) fn token_source_keys(kind: Option<&str>) -> Option<&'static [&'static str]> {
    match kind {
        Some("zero") => Some(&["kind"]),
        Some("model_token") => Some(MODEL_TOKEN),
        _ => None,
    }
}

/// A YAML node, as much of it as the key check needs.
enum Node {
    Map(Vec<Entry>),
    Seq(Vec<Node>),
    Scalar(String),
    Other,
}

/// One mapping entry: its key (when a plain scalar) with the key's position.
struct Entry {
    key: Option<String>,
    pos: Pos,
    value: Node,
}

fn pos(span: &Span) -> Pos {
    Pos {
        line: span.start.line() as u64,
        column: span.start.col() as u64 + 1,
    }
}

/// Reads the first document of `text` into a tree; `None` when the YAML is malformed (serde
/// reports that with its own message).
fn tree(text: &str) -> Option<Node> {
    let mut events = Parser::new_from_str(text)
        .filter(|e| !matches!(e, Ok((Event::Comment(..) | Event::Anchor(..), _))));
    loop {
        match events.next()? {
            Ok((Event::StreamStart | Event::DocumentStart(..), _)) => continue,
            Ok((Event::StreamEnd, _)) => return Some(Node::Other),
            Ok((ev, _)) => return node(ev, &mut events).ok(),
            Err(_) => return None,
        }
    }
}

type Events<'a> =
    dyn Iterator<Item = Result<(Event<'a>, Span), serde_saphyr::granit_parser::ScanError>> + 'a;

fn next<'a>(events: &mut Events<'a>) -> Result<(Event<'a>, Span), ()> {
    events.next().ok_or(())?.map_err(|_| ())
}

fn node<'a>(ev: Event<'a>, events: &mut Events<'a>) -> Result<Node, ()> {
    Ok(match ev {
        Event::Scalar(s, ..) => Node::Scalar(s.into_owned()),
        Event::SequenceStart(..) => {
            let mut items = Vec::new();
            loop {
                match next(events)? {
                    (Event::SequenceEnd, _) => break Node::Seq(items),
                    (ev, _) => items.push(node(ev, events)?),
                }
            }
        }
        Event::MappingStart(..) => {
            let mut entries = Vec::new();
            loop {
                let (kev, ksp) = next(events)?;
                if matches!(kev, Event::MappingEnd) {
                    break Node::Map(entries);
                }
                let key = match node(kev, events)? {
                    Node::Scalar(s) => Some(s),
                    _ => None,
                };
                let (vev, _) = next(events)?;
                entries.push(Entry {
                    key,
                    pos: pos(&ksp),
                    value: node(vev, events)?,
                });
            }
        }
        _ => Node::Other,
    })
}

/// Collects the key problems of a recipe.
struct Checker {
    /// The recipe's merge method.
    method: String,
    /// The parameters of the recipe's merge method, if it is known.
    params: Option<Vec<&'static str>>,
    problems: Vec<Problem>,
}

impl Checker {
    /// The entries of mapping `n` whose keys are allowed (all of them when `allowed` is
    /// `None`), after noting unknown and repeated keys.
    fn map<'n>(
        &mut self,
        n: &'n Node,
        place: &'static str,
        allowed: Option<&'static [&'static str]>,
    ) -> Vec<(&'n str, &'n Node)> {
        let Node::Map(entries) = n else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let Some(key) = e.key.as_deref() else {
                continue;
            };
            if let Some(first) = entries[..i].iter().find(|f| f.key.as_deref() == Some(key)) {
                self.problems.push(Problem {
                    pos: e.pos,
                    kind: ProblemKind::DuplicateKey {
                        key: key.to_string(),
                        first: first.pos,
                        again: e.pos,
                    },
                });
            }
            match allowed {
                // `<<` merges another mapping in (YAML merge key): not a key of its own
                Some(list) if !list.contains(&key) && key != "<<" => {
                    self.unknown(key, e.pos, place, list)
                }
                _ => out.push((key, &e.value)),
            }
        }
        out
    }

    fn unknown(&mut self, key: &str, pos: Pos, place: &'static str, allowed: &'static [&str]) {
        let as_param = self
            .params
            .as_ref()
            .filter(|p| p.contains(&key) && allowed.contains(&"parameters"))
            .map(|_| format!("parameters.{key}"));
        self.problems.push(Problem {
            pos,
            kind: ProblemKind::UnknownKey {
                key: key.to_string(),
                place,
                allowed,
                suggestion: as_param.or_else(|| closest(key, allowed.iter().copied())),
            },
        });
    }

    fn token_source(&mut self, n: &Node) {
        let Node::Map(entries) = n else {
            return;
        };
        let kind = entries
            .iter()
            .find(|e| e.key.as_deref() == Some("kind"))
            .and_then(|e| match &e.value {
                Node::Scalar(s) => Some(s.as_str()),
                _ => None,
            });
        if let Some(allowed) = token_source_keys(kind) {
            self.map(n, "in a token source", Some(allowed));
        }
    }

    fn each(n: &Node) -> &[Node] {
        match n {
            Node::Seq(items) => items,
            _ => &[],
        }
    }

    fn top(&mut self, n: &Node) {
        for (k, v) in self.map(n, "at the top level", Some(TOP)) {
            match k {
                "models" => {
                    for m in Self::each(v) {
                        self.entry(m, "in a `models:` entry", MODEL);
                    }
                }
                "slices" => {
                    for s in Self::each(v) {
                        self.entry(s, "in a slice", SLICE);
                    }
                }
                "base_model" => self.model_ref(v),
                "parameters" => self.parameters(v),
                "tokenizer" => self.tokenizer(v),
                _ => {}
            }
        }
    }

    /// A models entry, a slice or a slice source.
    fn entry(&mut self, n: &Node, place: &'static str, allowed: &'static [&'static str]) {
        for (k, v) in self.map(n, place, Some(allowed)) {
            match k {
                "model" | "base_model" => self.model_ref(v),
                "parameters" => self.parameters(v),
                "sources" => {
                    for s in Self::each(v) {
                        self.entry(s, "in a slice source", SOURCE);
                    }
                }
                _ => {}
            }
        }
    }

    fn model_ref(&mut self, n: &Node) {
        for (k, v) in self.map(n, "in a model reference", Some(REF)) {
            if k == "model" || k == "lora" {
                self.map(v, "in a model path", Some(PATH_REV));
            }
        }
    }

    fn parameters(&mut self, n: &Node) {
        let Node::Map(entries) = n else {
            return;
        };
        if let Some(known) = self.params.clone() {
            for e in entries {
                let Some(name) = e.key.as_deref().filter(|k| !known.contains(k)) else {
                    continue;
                };
                let kind = ProblemKind::UnknownParameter {
                    name: name.to_string(),
                    method: self.method.clone(),
                    suggestion: closest(name, known.iter().copied()),
                    known: known.clone(),
                };
                self.problems.push(Problem { pos: e.pos, kind });
            }
        }
        for (_, v) in self.map(n, "in parameters", None) {
            for item in Self::each(v) {
                self.map(item, "in a conditional parameter entry", Some(CONDITIONAL));
            }
        }
    }

    fn tokenizer(&mut self, n: &Node) {
        for (k, v) in self.map(n, "in the `tokenizer:` block", Some(TOKENIZER)) {
            if k == "tokens" {
                for (_, t) in self.map(v, "in `tokenizer.tokens`", None) {
                    for (k2, s) in self.map(t, "in a `tokens` entry", Some(TOKEN)) {
                        if k2 == "source" {
                            self.token_source(s);
                        }
                    }
                }
            }
        }
    }
}

/// Every unknown key, unknown parameter and repeated key of recipe `text`, in file order (none when the YAML
/// is malformed: serde reports that).
pub(super) fn check(text: &str) -> Vec<Problem> {
    let Some(root) = tree(text) else {
        return Vec::new();
    };
    let method = match &root {
        Node::Map(entries) => entries
            .iter()
            .rev()
            .find(|e| e.key.as_deref() == Some("merge_method"))
            .and_then(|e| match &e.value {
                Node::Scalar(s) => Some(s.as_str()),
                _ => None,
            }),
        _ => None,
    };
    let mut c = Checker {
        method: method.unwrap_or_default().to_string(),
        params: method
            .and_then(crate::methods::lookup)
            .map(|m| m.info().params.iter().map(|p| p.name).collect()),
        problems: Vec::new(),
    };
    c.top(&root);
    c.problems.sort_by_key(|p| (p.pos.line, p.pos.column));
    c.problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<(u64, ProblemKind)> {
        check(text)
            .into_iter()
            .map(|p| (p.pos.line, p.kind))
            .collect()
    }

    #[test]
    fn every_unknown_key_at_every_level() {
        let k = kinds(
            "merge_method: ties\nbase_model: a\nmodels:\n  - model: a\n  - model: b\n    paramters: {weight: 1}\n\
             tokenzer_source: union\nint8_mask: true\nparameters:\n  weight:\n    - pattern: mlp\n      value: 1\n",
        );
        let keys: Vec<(u64, &str, Option<&str>)> = k
            .iter()
            .map(|(l, k)| match k {
                ProblemKind::UnknownKey {
                    key, suggestion, ..
                } => (*l, key.as_str(), suggestion.as_deref()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            keys,
            [
                (6, "paramters", Some("parameters")),
                (7, "tokenzer_source", Some("tokenizer_source")),
                (8, "int8_mask", Some("parameters.int8_mask")),
                (11, "pattern", None),
            ]
        );
    }

    #[test]
    fn repeated_keys_name_both_lines() {
        let k = kinds(
            "merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1, weight: 2}\nmerge_method: ties\n",
        );
        assert!(matches!(
            &k[0],
            (4, ProblemKind::DuplicateKey { key, first, again })
                if key == "weight" && first.line == 4 && again.column > first.column
        ));
        assert!(matches!(
            &k[1],
            (5, ProblemKind::DuplicateKey { key, first, .. }) if key == "merge_method" && first.line == 1
        ));
        assert_eq!(k.len(), 2);
    }

    #[test]
    fn tokenizer_block_and_model_dicts_are_checked() {
        let k = kinds(
            "merge_method: linear\nmodels:\n  - model: {model: {path: a, revison: r}}\n\
             tokenizer:\n  source: union\n  tokens:\n    \"<x>\":\n      source: {kind: model_token, modle: a, token: b}\n",
        );
        let keys: Vec<&str> = k
            .iter()
            .map(|(_, k)| match k {
                ProblemKind::UnknownKey { key, .. } => key.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(keys, ["revison", "modle"]);
    }

    #[test]
    fn malformed_yaml_is_left_to_serde() {
        assert!(check("merge_method: [x\n").is_empty());
        assert!(check("").is_empty());
    }
}
