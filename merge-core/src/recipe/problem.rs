//! What can be wrong with a recipe, as data: every problem found in a file is collected as a
//! [`Problem`] (position and [`ProblemKind`]) and reported together, each with a snippet of
//! the file. The kinds mergekit tolerates (unknown keys and parameters, repeated keys, the old
//! `model:PATH` tokenizer syntax) say so and name `--lenient`; under `--lenient` they become
//! warnings instead ([`Problem::warning`]).

use std::fmt;
use std::path::Path;

use super::Pos;

/// One problem in a recipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where it is (line 0: the whole file).
    pub pos: Pos,
    /// What it is.
    pub kind: ProblemKind,
}

/// The kinds of recipe problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProblemKind {
    /// A key the schema does not have at this place (mergekit ignores it).
    UnknownKey {
        /// The key as written.
        key: String,
        /// Where in the recipe (`at the top level`, `in a slice`, ...).
        place: &'static str,
        /// The keys allowed there.
        allowed: &'static [&'static str],
        /// The closest allowed key (or `parameters.KEY` for a parameter written as a key).
        suggestion: Option<String>,
    },
    /// A parameter the merge method does not read (mergekit ignores it).
    UnknownParameter {
        /// The parameter as written.
        name: String,
        /// The merge method.
        method: String,
        /// The parameters the method reads.
        known: Vec<&'static str>,
        /// The closest known parameter.
        suggestion: Option<String>,
    },
    /// A key given twice in one mapping (PyYAML, and so mergekit, keeps the last value).
    DuplicateKey {
        /// The key.
        key: String,
        /// Where it first appears.
        first: Pos,
        /// Where it appears again (also the problem's position).
        again: Pos,
    },
    /// `tokenizer_source: model:PATH`, mergekit's syntax before July 2024.
    OldTokenizerSyntax {
        /// The model reference after `model:`.
        path: String,
    },
    /// The YAML is malformed, or a value has the wrong type.
    Yaml(String),
    /// Any other invalid value.
    Invalid(String),
}

impl ProblemKind {
    /// Whether mergekit runs a recipe with this problem (and `--lenient` would too).
    pub fn lenient_ok(&self) -> bool {
        !matches!(self, ProblemKind::Yaml(_) | ProblemKind::Invalid(_))
    }
}

fn did_you_mean(s: &Option<String>) -> String {
    s.as_ref()
        .map(|s| format!(": did you mean `{s}`?"))
        .unwrap_or_default()
}

fn maybe_meant(s: &Option<String>) -> String {
    s.as_ref()
        .map(|s| format!(" (did you mean `{s}`?)"))
        .unwrap_or_default()
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProblemKind::UnknownKey {
                key,
                place,
                allowed,
                suggestion,
            } => write!(
                f,
                "unknown key `{key}` {place}{} (allowed: {}). mergekit ignores unknown keys; pass --lenient to do the same",
                did_you_mean(suggestion),
                allowed.join(", ")
            ),
            ProblemKind::UnknownParameter {
                name,
                method,
                known,
                suggestion,
            } => write!(
                f,
                "unknown parameter `{name}` for merge method `{method}`{} (it knows: {}). mergekit ignores unknown parameters; pass --lenient to do the same",
                did_you_mean(suggestion),
                if known.is_empty() {
                    "no parameters".to_string()
                } else {
                    known.join(", ")
                }
            ),
            ProblemKind::DuplicateKey { key, first, again } => write!(
                f,
                "key `{key}` is given twice in the same mapping, on line {} and line {}; mergekit (PyYAML) keeps the last value; pass --lenient to do the same, or remove one",
                first.line, again.line
            ),
            ProblemKind::OldTokenizerSyntax { path } => write!(
                f,
                "`tokenizer_source: model:{path}` is mergekit's old syntax (before July 2024), which read it as `{path}`; write `tokenizer_source: {path}`, or pass --lenient to read it so"
            ),
            ProblemKind::Yaml(m) | ProblemKind::Invalid(m) => f.write_str(m),
        }
    }
}

impl Problem {
    /// The message, position first.
    pub fn message(&self) -> String {
        let text = self.kind.to_string();
        if self.pos.line == 0 {
            text
        } else {
            format!("{}: {text}", self.pos)
        }
    }

    /// The warning `--lenient` gives instead of this problem (for the kinds mergekit accepts).
    pub fn warning(&self) -> String {
        let what = match &self.kind {
            ProblemKind::UnknownKey {
                key,
                place,
                suggestion,
                ..
            } => format!(
                "unknown key `{key}` {place} is ignored, as mergekit ignores it{}",
                maybe_meant(suggestion)
            ),
            ProblemKind::UnknownParameter {
                name,
                method,
                suggestion,
                ..
            } => format!(
                "unknown parameter `{name}` of merge method `{method}` is ignored, as mergekit ignores it{}",
                maybe_meant(suggestion)
            ),
            ProblemKind::DuplicateKey { key, first, .. } => format!(
                "key `{key}` is given again (first on line {}); the last value is used, as in mergekit",
                first.line
            ),
            ProblemKind::OldTokenizerSyntax { path } => format!(
                "`tokenizer_source: model:{path}` (mergekit's old syntax) is read as `{path}`"
            ),
            other => other.to_string(),
        };
        if self.pos.line == 0 {
            what
        } else {
            format!("{}: {what}", self.pos)
        }
    }
}

/// The problems an error about a recipe holds: its own list, or one problem whose position is
/// read back from the `line L column C: ` that [`super::Recipe::error`] puts first.
pub(super) fn from_error(e: crate::error::Error) -> Vec<Problem> {
    use crate::error::Error;
    let message = match e {
        Error::RecipeProblems { problems, .. } => return problems,
        Error::Recipe { message, .. } => message,
        other => other.to_string(),
    };
    let parsed = message.strip_prefix("line ").and_then(|rest| {
        let (line, rest) = rest.split_once(" column ")?;
        let (column, msg) = rest.split_once(": ")?;
        let pos = Pos {
            line: line.parse().ok()?,
            column: column.parse().ok()?,
        };
        Some((pos, msg.to_string()))
    });
    let (pos, message) = parsed.unwrap_or((Pos::default(), message));
    vec![Problem {
        pos,
        kind: ProblemKind::Invalid(message),
    }]
}

/// The closest of `candidates` to `word`, if close enough to be a likely misspelling.
pub(super) fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.to_string())
}

/// Every problem with its message and the lines of `text` it concerns, under a header naming
/// the file.
pub(super) fn render(path: &Path, text: &str, problems: &[Problem]) -> String {
    let name = path.display();
    let mut out = if problems.len() == 1 {
        format!("{name}: ")
    } else {
        format!("{name}: {} problems\n", problems.len())
    };
    for (i, p) in problems.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&p.message());
        let mut lines = Vec::new();
        if let ProblemKind::DuplicateKey { first, .. } = &p.kind {
            lines.push(*first);
        }
        lines.push(p.pos);
        out.push_str(&snippet(&name.to_string(), text, &lines));
    }
    out
}

/// ` --> FILE:LINE:COLUMN` and the lines at `positions`, each with a caret under its column.
fn snippet(name: &str, text: &str, positions: &[Pos]) -> String {
    let Some(last) = positions.last().filter(|p| p.line > 0) else {
        return String::new();
    };
    let all: Vec<&str> = text.lines().collect();
    let width = positions
        .iter()
        .map(|p| p.line.to_string().len())
        .max()
        .unwrap_or(1);
    let pad = " ".repeat(width);
    let mut out = format!("\n{pad}--> {name}:{}:{}\n{pad} |", last.line, last.column);
    for p in positions.iter().filter(|p| p.line > 0) {
        let Some(line) = all.get(p.line as usize - 1) else {
            continue;
        };
        let caret = " ".repeat(p.column.saturating_sub(1) as usize);
        out.push_str(&format!("\n{:>width$} | {line}\n{pad} | {caret}^", p.line));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_finds_misspellings_only() {
        let keys = ["tokenizer_source", "parameters", "normalize", "weight"];
        let c = |w| closest(w, keys);
        assert_eq!(c("tokenzer_source").as_deref(), Some("tokenizer_source"));
        assert_eq!(c("paramters").as_deref(), Some("parameters"));
        assert_eq!(c("nomalize").as_deref(), Some("normalize"));
        assert_eq!(c("wieght").as_deref(), Some("weight"));
        assert_eq!(c("int8_mask"), None);
        assert_eq!(c("x"), None);
    }

    #[test]
    fn errors_become_problems_with_their_positions() {
        let e = crate::error::Error::Recipe {
            path: "r.yml".into(),
            message: "line 3 column 5: model `a` is listed twice".into(),
        };
        assert_eq!(
            from_error(e),
            [Problem {
                pos: Pos { line: 3, column: 5 },
                kind: ProblemKind::Invalid("model `a` is listed twice".into()),
            }]
        );
        let e = crate::error::Error::GgufWithoutConfig;
        assert_eq!(from_error(e)[0].pos, Pos::default());
    }

    #[test]
    fn render_names_the_file_and_both_lines_of_a_duplicate() {
        let text = "merge_method: linear\nmodels:\n  - model: a\nmerge_method: ties\n";
        let p = Problem {
            pos: Pos { line: 4, column: 1 },
            kind: ProblemKind::DuplicateKey {
                key: "merge_method".into(),
                first: Pos { line: 1, column: 1 },
                again: Pos { line: 4, column: 1 },
            },
        };
        let r = render(Path::new("dir/r.yml"), text, &[p]);
        assert!(r.contains("dir/r.yml:4:1"), "{r}");
        assert!(!r.contains("<input>"), "{r}");
        assert!(r.contains("on line 1 and line 4"), "{r}");
        assert!(r.contains("1 | merge_method: linear"), "{r}");
        assert!(r.contains("4 | merge_method: ties"), "{r}");
        assert!(r.contains("--lenient"), "{r}");
    }
}
