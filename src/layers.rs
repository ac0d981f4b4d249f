//! The crate's layers, checked against its source: which top-level module may import which.
//! `storage` is a leaf, `repository` builds on it, neither talks to the API server, and none
//! of the libraries or the agent reaches into the operator's controllers. A file that breaks a
//! rule fails `every_module_keeps_to_its_layer` with its path and line.

use std::path::{Path, PathBuf};

/// What the files below a top-level module may not import.
struct Rule {
    module: &'static str,
    /// Top-level modules of this crate it may not name.
    modules: &'static [&'static str],
    /// External crates it may not name.
    crates: &'static [&'static str],
    why: &'static str,
}

const CLIENT: &[&str] = &["kube", "k8s_openapi", "kube_lease_manager"];

/// What builds on the libraries: the components, the Secret-reading way into a vault, and
/// (last, so that the repository's rule can leave it out) the repository itself.
const ABOVE_STORAGE: &[&str] = &[
    "controllers",
    "operator",
    "agent",
    "cli",
    "vault_access",
    "repository",
];

const RULES: &[Rule] = &[
    Rule {
        module: "storage",
        modules: ABOVE_STORAGE,
        crates: CLIENT,
        why: "storage is a leaf: object stores and paths, no repository, no API server",
    },
    Rule {
        module: "repository",
        modules: ABOVE_STORAGE.split_at(5).0,
        crates: CLIENT,
        why: "the repository is a library over storage: no API server, no component",
    },
    Rule {
        module: "agent",
        modules: &["controllers", "operator", "cli"],
        crates: &[],
        why: "the agent shares only the contract (api) and the libraries with the operator",
    },
    Rule {
        module: "cache",
        modules: ABOVE_STORAGE,
        crates: &[],
        why: "the caches' projections serve the operator and the agents alike: no component's behaviour",
    },
    Rule {
        module: "api",
        modules: ABOVE_STORAGE,
        crates: &[],
        why: "api is the contract: types, conditions and reasons, no behaviour of a component",
    },
];

/// One import across a forbidden layer.
#[derive(Debug, PartialEq)]
struct Violation {
    file: String,
    line: usize,
    names: String,
    why: &'static str,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: imports `{}`: {}",
            self.file, self.line, self.names, self.why
        )
    }
}

/// The source with comments and the contents of string and char literals blanked out
/// (newlines kept, so that offsets still give lines).
fn code_only(source: &str) -> Vec<char> {
    let s: Vec<char> = source.chars().collect();
    let mut out = s.clone();
    // Everything from `from` to `to` becomes spaces, except newlines.
    let blank = |out: &mut Vec<char>, from: usize, to: usize| {
        for c in &mut out[from..to.min(s.len())] {
            if *c != '\n' {
                *c = ' ';
            }
        }
    };
    let mut i = 0;
    while i < s.len() {
        let next = s.get(i + 1).copied();
        match s[i] {
            '/' if next == Some('/') => {
                let end = s[i..]
                    .iter()
                    .position(|c| *c == '\n')
                    .map_or(s.len(), |p| i + p);
                blank(&mut out, i, end);
                i = end;
            }
            '/' if next == Some('*') => {
                let (mut depth, mut j) = (1, i + 2);
                while j < s.len() && depth > 0 {
                    match (s[j], s.get(j + 1)) {
                        ('/', Some('*')) => (depth, j) = (depth + 1, j + 2),
                        ('*', Some('/')) => (depth, j) = (depth - 1, j + 2),
                        _ => j += 1,
                    }
                }
                blank(&mut out, i, j);
                i = j;
            }
            // r"…", r#"…"#, br"…": the `r` starts a word, or follows a `b` that does.
            'r' if matches!(next, Some('#' | '"'))
                && (i == 0
                    || !is_ident(s[i - 1])
                    || (s[i - 1] == 'b' && (i == 1 || !is_ident(s[i - 2])))) =>
            {
                let hashes = s[i + 1..].iter().take_while(|c| **c == '#').count();
                if s.get(i + 1 + hashes) != Some(&'"') {
                    i += 1;
                    continue;
                }
                let close: Vec<char> = std::iter::once('"')
                    .chain(std::iter::repeat_n('#', hashes))
                    .collect();
                let start = i + 2 + hashes;
                let end = (start..s.len())
                    .find(|j| s[*j..].starts_with(&close))
                    .map_or(s.len(), |j| j + close.len());
                blank(&mut out, start, end);
                i = end;
            }
            '"' => {
                let mut j = i + 1;
                while j < s.len() && s[j] != '"' {
                    j += if s[j] == '\\' { 2 } else { 1 };
                }
                blank(&mut out, i + 1, j);
                i = j + 1;
            }
            // A char literal ('x', '\n', '\u{1F600}'); otherwise a lifetime.
            '\'' if next == Some('\\') => {
                let end = (i + 2..s.len())
                    .find(|j| s[*j] == '\'')
                    .map_or(s.len(), |j| j + 1);
                blank(&mut out, i + 1, end - 1);
                i = end;
            }
            '\'' if s.get(i + 2) == Some(&'\'') => {
                blank(&mut out, i + 1, i + 2);
                i += 3;
            }
            _ => i += 1,
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The identifier starting at `at`, if one does.
fn ident_at(code: &[char], at: usize) -> Option<String> {
    let word: String = code[at..].iter().take_while(|c| is_ident(**c)).collect();
    (!word.is_empty()).then_some(word)
}

/// The first segment of each item of a `{...}` group opening at `open` (nested groups are
/// inside their item and not followed).
fn group_heads(code: &[char], open: usize) -> Vec<String> {
    let (mut depth, mut item, mut heads) = (0, String::new(), Vec::new());
    for c in &code[open..] {
        match c {
            '{' => {
                depth += 1;
                if depth == 1 {
                    continue;
                }
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    heads.push(std::mem::take(&mut item));
                    break;
                }
            }
            ',' if depth == 1 => {
                heads.push(std::mem::take(&mut item));
                continue;
            }
            _ => {}
        }
        item.push(*c);
    }
    heads
        .iter()
        .filter_map(|i| {
            let head: String = i
                .trim_start()
                .chars()
                .take_while(|c| is_ident(*c))
                .collect();
            (!head.is_empty()).then_some(head)
        })
        .collect()
}

/// Every path in `code` that names a top-level module of this crate, as (offset, module):
/// `crate::x`, `crate::{x, y::z}`, and `super::…::x` chains that climb to the crate root
/// from `module_path` (the file's module, e.g. `["storage", "location"]`).
fn crate_paths(code: &[char], module_path: &[String]) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut i = 0;
    while i < code.len() {
        let starts_path = i == 0 || !(is_ident(code[i - 1]) || code[i - 1] == ':');
        let Some(word) = starts_path.then(|| ident_at(code, i)).flatten() else {
            i += 1;
            continue;
        };
        let start = i;
        i += word.len();
        // How many modules below the crate root the path stands after its leading
        // `crate` or `super`s: `crate` is the root; each `super` climbs one from this file's.
        let mut depth = match word.as_str() {
            "crate" => 0,
            "super" => module_path.len().saturating_sub(1),
            _ => continue,
        };
        while code[i..].starts_with(&[':', ':']) {
            let after = i + 2;
            if code.get(after) == Some(&'{') {
                if depth == 0 {
                    found.extend(group_heads(code, after).into_iter().map(|m| (start, m)));
                }
                break;
            }
            let Some(segment) = ident_at(code, after) else {
                break;
            };
            i = after + segment.len();
            if segment != "super" {
                if depth == 0 {
                    found.push((start, segment));
                }
                break;
            }
            depth = depth.saturating_sub(1);
        }
    }
    found
}

/// Every path in `code` that starts with one of `crates` (`kube::…`, `::kube::…`, `use kube;`),
/// as (offset, crate).
fn crate_uses(code: &[char], crates: &[&str]) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for i in 0..code.len() {
        if i > 0 && is_ident(code[i - 1]) {
            continue;
        }
        // `x::kube::…` is a path inside `x`; only `::kube::…` names the crate.
        if i >= 2 && code[i - 2..i] == [':', ':'] && i >= 3 && is_ident(code[i - 3]) {
            continue;
        }
        if i >= 1 && code[i - 1] == ':' && !(i >= 2 && code[i - 2] == ':') {
            continue;
        }
        let Some(word) = ident_at(code, i) else {
            continue;
        };
        if !crates.contains(&word.as_str()) {
            continue;
        }
        let follows = &code[i + word.len()..];
        let is_path = follows.starts_with(&[':', ':'])
            || follows.iter().find(|c| !c.is_whitespace()) == Some(&';');
        if is_path {
            found.push((i, word));
        }
    }
    found
}

/// The violations of `rule` in one file's source.
fn check(file: &str, module_path: &[String], source: &str, rule: &Rule) -> Vec<Violation> {
    let code = code_only(source);
    let line_of = |offset: usize| code[..offset].iter().filter(|c| **c == '\n').count() + 1;
    let mut found: Vec<(usize, String)> = crate_paths(&code, module_path)
        .into_iter()
        .filter(|(_, m)| rule.modules.contains(&m.as_str()))
        .map(|(at, m)| (at, format!("crate::{m}")))
        .chain(crate_uses(&code, rule.crates))
        .collect();
    found.sort();
    found
        .into_iter()
        .map(|(at, names)| Violation {
            file: file.to_string(),
            line: line_of(at),
            names,
            why: rule.why,
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/storage/location.rs` → `["storage", "location"]`; `src/storage/mod.rs` → `["storage"]`.
fn module_path(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

#[test]
fn every_module_keeps_to_its_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    for rule in RULES {
        let mut files = Vec::new();
        let dir = src.join(rule.module);
        if dir.is_dir() {
            rust_files(&dir, &mut files);
        }
        let single = src.join(format!("{}.rs", rule.module));
        if single.is_file() {
            files.push(single);
        }
        assert!(!files.is_empty(), "no source of module {}", rule.module);
        for path in files {
            let relative = path.strip_prefix(&src).unwrap();
            let source = std::fs::read_to_string(&path).unwrap();
            let name = format!("src/{}", relative.display());
            violations.extend(check(&name, &module_path(relative), &source, rule));
        }
    }
    assert!(
        violations.is_empty(),
        "imports across a forbidden layer:\n{}",
        violations
            .iter()
            .map(|v| format!("  {v}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_checker_finds_each_form_of_import_and_its_line() {
    let storage = &RULES[0];
    let source = r##"//! Mentions crate::controllers and kube::Api in a comment only.
use crate::api::vault::Storage;
use crate::repository::Repository;
use crate::{api, controllers::Context};
use super::super::operator::Settings;
use super::layout;
fn f() -> kube::Error {
    let s = "crate::agent::run and kube::Client in a string";
    let r = r#"use crate::cli;"#;
    let c = '"';
    ::kube::api::Api::<()>::all(crate::cli::client());
    site_recovery::kube::x();
    prekube::y();
}
use kube;
"##;
    let found: Vec<(usize, String)> = check(
        "src/storage/x.rs",
        &["storage".into(), "x".into()],
        source,
        storage,
    )
    .into_iter()
    .map(|v| (v.line, v.names))
    .collect();
    assert_eq!(
        found,
        [
            (3, "crate::repository".to_string()),
            (4, "crate::controllers".into()),
            (5, "crate::operator".into()),
            (7, "kube".into()),
            (11, "kube".into()),
            (11, "crate::cli".into()),
            (15, "kube".into()),
        ]
    );
    let violation = check(
        "src/storage/y.rs",
        &["storage".into()],
        "\n\nuse crate::repository;",
        storage,
    );
    assert_eq!(
        violation[0].to_string(),
        "src/storage/y.rs:3: imports `crate::repository`: storage is a leaf: object stores and paths, no repository, no API server"
    );
}
