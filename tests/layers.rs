//! The layers of `src/`: every `crate::x` a top-level module names (outside
//! comments and strings) is an edge of the module graph, and that graph must
//! have no cycle and go only down the [`TIERS`] below. A module's submodules
//! count as the module; `main.rs`, `lib.rs` and `src/bin/` are the crate's
//! roots and sit above everything.
//!
//! Its own test binary: it reads files and needs nothing of the library.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top to bottom; a module may name only modules in a tier below its own
/// (never one in its own tier). The shape is the issue's: `app` → `api`/`queue`
/// → `runs` → `runner`/`report`/`policy`/`cost`/`vcs`/`git` → `store`/`config`,
/// with the modules it does not name placed where their imports put them.
const TIERS: &[&[&str]] = &[
    &["cli"],
    &["app"],
    &["api", "queue"],
    // Webhooks in: the API mounts them.
    &["ingest"],
    &["runs"],
    // Policy groups and impact analysis report through the outbox.
    &["policy"],
    // Runs enqueue reports; the outbox renders them with `report` and
    // delivers them through `vcs`.
    &["outbox"],
    &["report"],
    // `gantry agent` runs jobs with the local runner; nothing but the CLI
    // names it.
    &["agent"],
    // `git` implements the planner's `SourceTree` and fetches with a
    // provider's credentials.
    &["git", "runner", "state"],
    // The live config, with the providers and redactor made from it.
    &["settings"],
    &["vcs", "cost", "drift", "planner", "retention", "telemetry"],
    // The store owns the records it persists (runs, plan summaries, cost
    // estimates, policy checks) and imports no domain module.
    &["store", "config", "commands"],
    &["redact"],
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to; `None` for the crate roots.
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    match name {
        "main" | "lib" | "bin" => None,
        m => Some(m.to_string()),
    }
}

/// The code of a Rust file with comments, string and char literals blanked
/// (newlines kept, so line numbers stay right).
fn code_only(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    let mut i = 0;
    while i < c.len() {
        if c[i] == '/' && at(&c, i + 1) == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && at(&c, i + 1) == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(&c, i + 1) == Some('*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && at(&c, i + 1) == Some('/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
        } else if (c[i] == 'r' || c[i] == 'b')
            && !c
                .get(i.wrapping_sub(1))
                .is_some_and(|p| p.is_alphanumeric() || *p == '_')
            && raw_string_start(&c[i..]).is_some()
        {
            let (prefix, hashes) = raw_string_start(&c[i..]).expect("checked");
            let close: Vec<char> = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            i += prefix;
            while i < c.len() && !c[i..].starts_with(&close) {
                blank(&mut out, c[i]);
                i += 1;
            }
            i += close.len();
        } else if c[i] == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                if let Some(&ch) = c.get(i) {
                    blank(&mut out, ch);
                }
                i += 1;
            }
            i += 1;
        } else if c[i] == '\'' && at(&c, i + 1) == Some('\\') {
            // An escaped char literal: '\n', '\'', '\u{..}'.
            i += 2;
            while i < c.len() && c[i] != '\'' {
                i += 1;
            }
            i += 1;
        } else if c[i] == '\'' && at(&c, i + 2) == Some('\'') {
            i += 3;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

fn at(c: &[char], i: usize) -> Option<char> {
    c.get(i).copied()
}

/// `r"`, `r#"`, `br##"`…: the length of the opening and its number of `#`.
fn raw_string_start(c: &[char]) -> Option<(usize, usize)> {
    let mut i = usize::from(c.first() == Some(&'b'));
    if c.get(i) != Some(&'r') {
        return None;
    }
    i += 1;
    let hashes = c[i..].iter().take_while(|&&h| h == '#').count();
    (c.get(i + hashes) == Some(&'"')).then_some((i + hashes + 1, hashes))
}

fn is_ident(ch: char) -> bool {
    ch.is_alphanumeric() || ch == '_'
}

/// The top-level modules `code` names through `crate::` (also inside
/// `use crate::{a, b::c}`), each with its first line.
fn named_modules(code: &str) -> Vec<(String, usize)> {
    let c: Vec<char> = code.chars().collect();
    let line_at = |i: usize| c[..i].iter().filter(|&&ch| ch == '\n').count() + 1;
    let skip_ws = |mut i: usize| {
        while c.get(i).is_some_and(|ch| ch.is_whitespace()) {
            i += 1;
        }
        i
    };
    let ident_at = |i: usize| -> String { c[i..].iter().take_while(|&&ch| is_ident(ch)).collect() };
    let mut found = Vec::new();
    let mut i = 0;
    while i + 5 <= c.len() {
        let starts = c[i..].starts_with(&['c', 'r', 'a', 't', 'e'])
            && !(i > 0 && is_ident(c[i - 1]))
            && !c.get(i + 5).is_some_and(|&ch| is_ident(ch));
        if !starts {
            i += 1;
            continue;
        }
        let mut j = skip_ws(i + 5);
        if !(c.get(j) == Some(&':') && c.get(j + 1) == Some(&':')) {
            i += 5;
            continue;
        }
        j = skip_ws(j + 2);
        if c.get(j) == Some(&'{') {
            // A group: the first segment of each path at depth 1.
            let mut depth = 0;
            let mut expect_segment = true;
            while j < c.len() {
                match c[j] {
                    '{' => {
                        depth += 1;
                        expect_segment = depth == 1;
                    }
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => expect_segment = true,
                    ch if is_ident(ch) && expect_segment && depth == 1 => {
                        let name = ident_at(j);
                        j += name.len();
                        found.push((name, line_at(j)));
                        expect_segment = false;
                        continue;
                    }
                    _ => {}
                }
                j += 1;
            }
        } else {
            let name = ident_at(j);
            if !name.is_empty() {
                found.push((name, line_at(j)));
            }
        }
        i = j.max(i + 5);
    }
    found
}

/// Edges between top-level modules, each with the first `file:line` that makes it.
fn graph() -> BTreeMap<(String, String), String> {
    let root = src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files.sort();
    let mut edges = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&root).expect("under src");
        let Some(from) = module_of(rel) else { continue };
        let text = std::fs::read_to_string(&file).expect("read source");
        for (to, line) in named_modules(&code_only(&text)) {
            if to != from && to != "self" && to != "super" {
                edges
                    .entry((from.clone(), to))
                    .or_insert_with(|| format!("src/{}:{line}", rel.display()));
            }
        }
    }
    edges
}

/// A cycle of `edges`, as `a -> b -> … -> a`.
fn find_cycle(edges: &BTreeSet<(&str, &str)>) -> Option<Vec<String>> {
    fn visit<'a>(
        node: &'a str,
        edges: &BTreeSet<(&'a str, &'a str)>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|&n| n == node) {
            let mut cycle: Vec<String> = path[at..].iter().map(|s| s.to_string()).collect();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if !done.insert(node) {
            return None;
        }
        path.push(node);
        for &(_, to) in edges.iter().filter(|(f, _)| *f == node) {
            if let Some(cycle) = visit(to, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for &(from, _) in edges {
        if let Some(cycle) = visit(from, edges, &mut Vec::new(), &mut done) {
            return Some(cycle);
        }
    }
    None
}

#[test]
fn no_import_cycles_between_top_level_modules() {
    let graph = graph();
    let edges: BTreeSet<(&str, &str)> = graph
        .keys()
        .map(|(f, t)| (f.as_str(), t.as_str()))
        .collect();
    if let Some(cycle) = find_cycle(&edges) {
        let hops: Vec<String> = cycle
            .windows(2)
            .map(|w| {
                format!(
                    "  {} -> {} ({})",
                    w[0],
                    w[1],
                    graph[&(w[0].clone(), w[1].clone())]
                )
            })
            .collect();
        panic!("import cycle {}:\n{}", cycle.join(" -> "), hops.join("\n"));
    }
}

#[test]
fn every_import_goes_down_the_tiers() {
    let tier = |m: &str| TIERS.iter().position(|t| t.contains(&m));
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut problems: Vec<String> = files
        .iter()
        .filter_map(|f| module_of(f.strip_prefix(src()).expect("under src")))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|m| tier(m).is_none())
        .map(|m| format!("module `{m}` is in no tier of TIERS: place it"))
        .collect();
    let graph = graph();
    for ((from, to), at) in &graph {
        if let (Some(f), Some(t)) = (tier(from), tier(to)) {
            if t <= f {
                problems.push(format!("{from} -> {to} goes up or sideways ({at})"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "layering broken:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_scanner_sees_code_only() {
    let text = r##"use crate::store::Store; // crate::cli
/* crate::api /* nested crate::app */ */
let s = "crate::queue"; let r = r#"crate::runs "quoted""#; let c = '"';
use crate::{config::Config, vcs};
fn f<'a>(x: &'a str) -> crate::git::Mirror { todo!() } pub(crate) fn g() {}
"##;
    let found = named_modules(&code_only(text));
    assert_eq!(
        found,
        [
            ("store".to_string(), 1),
            ("config".to_string(), 4),
            ("vcs".to_string(), 4),
            ("git".to_string(), 5)
        ]
    );
}
