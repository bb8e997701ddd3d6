//! The layer check: no module of `src/` names a module of a layer above
//! its own, and no two files of `src/`, `cdylib/` or `cli/` name each
//! other through a loop.
//!
//! The written order is [`LAYERS`], lowest first, the same as in
//! docs/ARCHITECTURE.md. A file's layer is its top-level module under
//! `src/` (`src/mm/zone.rs` is in `mm`), or a longer module path written
//! there (`src/heap/secure.rs` is `heap::secure`). Its imports are the `crate::...`
//! paths in its code, comments and `#[cfg(test)]` items left out (a unit
//! test may drive the whole allocator). `cargo test --test layers --
//! --nocapture` prints the import graph, file by file, layer by layer.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The layers of `src/`, lowest first, and the modules in each: top-level
/// modules, or a module inside another's folder (`heap::secure`), which
/// is then a layer of its own, above the rest of that folder. A module may
/// name its own layer and those before it.
const LAYERS: &[(&str, &[&str])] = &[
    ("os", &["os"]),
    ("options", &["options"]),
    ("counters", &["counters"]),
    ("mm", &["mm"]),
    ("profile", &["profile"]),
    ("slab", &["slab"]),
    ("ledger", &["ledger"]),
    ("large", &["large"]),
    ("views", &["views"]),
    ("heap", &["heap"]),
    ("secure", &["heap::secure"]),
    ("faces", &["global", "internals", ""]),
];

/// One file's imports: the module path of each `crate::` path it names
/// (as far as it names modules), with the first line naming it.
#[derive(Debug, Default)]
struct Imports {
    paths: BTreeMap<Vec<String>, usize>,
}

/// `text` with comments, string and character literals blanked (lines
/// kept, so line numbers still hold).
fn strip_comments_and_strings(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(if b[i] == b'\n' { b'\n' } else { b' ' });
                    i += 1;
                }
            }
        } else if c == b'r' && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#')) && (i == 0 || !is_ident(b[i - 1])) {
            // A raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == b'"' && b[j + 1..].iter().take(hashes).filter(|&&h| h == b'#').count() == hashes {
                    j += 1 + hashes;
                    break;
                }
                if b[j] == b'\n' {
                    out.push(b'\n');
                }
                j += 1;
            }
            i = j;
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                if b.get(i) == Some(&b'\n') {
                    out.push(b'\n');
                }
                i += 1;
            }
            i += 1;
        } else if c == b'\'' && b.get(i + 2) == Some(&b'\'') {
            i += 3; // 'x'
        } else if c == b'\'' && b.get(i + 1) == Some(&b'\\') {
            i += 2;
            while i < b.len() && b[i] != b'\'' {
                i += 1;
            }
            i += 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    String::from_utf8(out).expect("stripping keeps UTF-8 whole")
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// `code` (comments already stripped) without its `#[cfg(test)]` items.
fn strip_test_items(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        // The item ends at its first `;` outside braces, or at the brace
        // that closes its first `{`.
        let mut depth = 0usize;
        let mut end = item.len();
        for (k, ch) in item.char_indices().skip("#[cfg(test)]".len()) {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = k + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = k + 1;
                    break;
                }
                _ => {}
            }
        }
        // Keep the lines, so line numbers still hold.
        out.extend(item[..end].chars().filter(|&c| c == '\n'));
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

/// `code` with the relative paths it starts with `super::`, `self::` or a
/// child module's name (`mod zone;` ... `zone::`) written as `crate::`
/// paths, for a file whose module path is `module`.
fn absolute_paths(code: &str, module: &[String]) -> String {
    let mut children = Vec::new();
    for line in code.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(at) = words.iter().position(|&w| w == "mod") {
            if let Some(name) = words.get(at + 1).and_then(|w| w.strip_suffix(';')) {
                children.push(name.to_string());
            }
        }
    }
    let parent = module[..module.len().saturating_sub(1)].join("::");
    let own = module.join("::");
    let absolute = |m: &str| if m.is_empty() { "crate::".to_string() } else { format!("crate::{m}::") };
    let mut out = String::with_capacity(code.len());
    let b = code.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let starts_word = i == 0 || !(is_ident(b[i - 1]) || b[i - 1] == b':' || b[i - 1] == b'$');
        if starts_word {
            let rest = &code[i..];
            if let Some(tail) = rest.strip_prefix("super::") {
                out.push_str(&absolute(&parent));
                i = code.len() - tail.len();
                continue;
            }
            if let Some(tail) = rest.strip_prefix("self::") {
                out.push_str(&absolute(&own));
                i = code.len() - tail.len();
                continue;
            }
            if let Some(child) = children.iter().find(|c| rest.starts_with(&format!("{c}::"))) {
                out.push_str(&absolute(&own));
                out.push_str(child);
                out.push_str("::");
                i += child.len() + 2;
                continue;
            }
        }
        let ch = code[i..].chars().next().unwrap();
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// The module paths that `code` names through `crate::`, `use crate::{...}`
/// trees included, each with the line it is first named on.
fn imports_of(code: &str) -> Imports {
    let mut imports = Imports::default();
    let b = code.as_bytes();
    let mut at = 0;
    while let Some(found) = code[at..].find("crate::") {
        let start = at + found;
        at = start + "crate::".len();
        if start > 0 && (is_ident(b[start - 1]) || b[start - 1] == b'$') {
            continue; // `$crate::` or a longer name
        }
        let line = code[..start].matches('\n').count() + 1;
        let mut paths = Vec::new();
        parse_tree(code, &mut at, Vec::new(), &mut paths);
        for p in paths {
            imports.paths.entry(p).or_insert(line);
        }
    }
    imports
}

/// Reads one use-tree at `code[*at..]` (after `prefix::`), adding each
/// whole path it names to `out`.
fn parse_tree(code: &str, at: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let b = code.as_bytes();
    let skip_ws = |at: &mut usize| {
        while *at < b.len() && b[*at].is_ascii_whitespace() {
            *at += 1;
        }
    };
    skip_ws(at);
    if b.get(*at) == Some(&b'{') {
        *at += 1;
        loop {
            skip_ws(at);
            match b.get(*at) {
                Some(b'}') => {
                    *at += 1;
                    return;
                }
                Some(b',') => *at += 1,
                None => return,
                _ => parse_tree(code, at, prefix.clone(), out),
            }
        }
    }
    let mut path = prefix;
    loop {
        let s = *at;
        while *at < b.len() && is_ident(b[*at]) {
            *at += 1;
        }
        let segment = &code[s..*at];
        if segment.is_empty() {
            // `*` or something else: the path so far is the import.
            if b.get(*at) == Some(&b'*') {
                *at += 1;
            }
            out.push(path);
            return;
        }
        if segment != "self" {
            path.push(segment.to_string());
        }
        if code[*at..].starts_with("::") {
            *at += 2;
            skip_ws(at);
            if b.get(*at) == Some(&b'{') {
                parse_tree(code, at, path, out);
                return;
            }
        } else {
            // ` as name`, `,`, `}`, `;`, `(`, `.`, ... end the path.
            out.push(path);
            return;
        }
    }
}

/// The files of a crate's source tree, by path.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir).expect("readable source tree").map(|e| e.unwrap().path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// A crate's files, each with its module path (`src/mm/zone.rs` is
/// `["mm", "zone"]`, the crate root `[]`) and its imports.
fn read_crate(src: &Path) -> Vec<(PathBuf, Vec<String>, Imports)> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files
        .into_iter()
        .map(|path| {
            let rel = path.strip_prefix(src).unwrap();
            let mut module: Vec<String> = rel.iter().map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string()).collect();
            if matches!(module.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                module.pop();
            }
            let text = fs::read_to_string(&path).unwrap();
            let code = strip_test_items(&strip_comments_and_strings(&text));
            (path, module.clone(), imports_of(&absolute_paths(&code, &module)))
        })
        .collect()
}

/// Index in [`LAYERS`] of the layer of a file or module path: the layer
/// of the longest module written there that the path starts with (the
/// crate root, `""`, is only the root itself).
fn layer_of(module: &[String]) -> Option<usize> {
    let mut best: Option<(usize, usize)> = None;
    for (i, (_, modules)) in LAYERS.iter().enumerate() {
        for written in modules.iter() {
            let segments: Vec<&str> = if written.is_empty() { Vec::new() } else { written.split("::").collect() };
            let matches = if segments.is_empty() {
                module.is_empty()
            } else {
                module.len() >= segments.len() && segments.iter().zip(module).all(|(s, m)| *s == m.as_str())
            };
            if matches && best.is_none_or(|(_, len)| segments.len() > len) {
                best = Some((i, segments.len()));
            }
        }
    }
    best.map(|(i, _)| i)
}

/// Every import that runs upward, as `file:line: names crate::path (layer
/// `upper` above `lower`)`; an unknown top-level module is one too.
fn upward_imports(files: &[(PathBuf, Vec<String>, Imports)], root: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    for (path, module, imports) in files {
        let shown = path.strip_prefix(root).unwrap_or(path).display();
        let Some(own) = layer_of(module) else {
            bad.push(format!("{shown}: the module `{}` is in no layer of LAYERS", module.join("::")));
            continue;
        };
        for (target, line) in &imports.paths {
            match layer_of(target) {
                Some(t) if t <= own => {}
                Some(t) => bad.push(format!(
                    "{shown}:{line}: names crate::{} (layer `{}` is above `{}`)",
                    target.join("::"),
                    LAYERS[t].0,
                    LAYERS[own].0
                )),
                None => bad.push(format!("{shown}:{line}: names crate::{}, in no layer of LAYERS", target.join("::"))),
            }
        }
    }
    bad
}

/// The file a module path resolves to: the longest prefix of `target` that
/// is a file of the crate.
fn file_of<'a>(files: &'a [(PathBuf, Vec<String>, Imports)], target: &[String]) -> Option<&'a Path> {
    (0..=target.len()).rev().find_map(|n| files.iter().find(|(_, m, _)| m[..] == target[..n]).map(|(p, _, _)| p.as_path()))
}

/// The file-level graph (crate roots left out: they declare every module),
/// and its circles (strongly connected components of two files or more).
fn circles(files: &[(PathBuf, Vec<String>, Imports)]) -> Vec<Vec<PathBuf>> {
    let mut graph: BTreeMap<&Path, BTreeSet<&Path>> = BTreeMap::new();
    for (path, module, imports) in files {
        if module.is_empty() {
            continue;
        }
        let edges = graph.entry(path.as_path()).or_default();
        for target in imports.paths.keys() {
            if let Some(to) = file_of(files, target) {
                if to != path.as_path() && !files.iter().any(|(p, m, _)| p == to && m.is_empty()) {
                    edges.insert(to);
                }
            }
        }
    }
    // Tarjan's strongly connected components, small enough to recurse.
    struct State<'a> {
        graph: &'a BTreeMap<&'a Path, BTreeSet<&'a Path>>,
        index: BTreeMap<&'a Path, usize>,
        low: BTreeMap<&'a Path, usize>,
        stack: Vec<&'a Path>,
        on_stack: BTreeSet<&'a Path>,
        found: Vec<Vec<PathBuf>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a Path) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for &w in s.graph.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on_stack.remove(w);
                component.push(w.to_path_buf());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut s = State { graph: &graph, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), on_stack: BTreeSet::new(), found: Vec::new() };
    for &v in graph.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.found
}

/// The import graph, layer by layer, one line per file: what it names.
fn print_graph(files: &[(PathBuf, Vec<String>, Imports)], root: &Path) {
    for (i, (layer, _)) in LAYERS.iter().enumerate() {
        println!("layer {} {layer}", i + 1);
        for (path, module, imports) in files.iter().filter(|(_, m, _)| layer_of(m) == Some(i)) {
            let _ = module;
            let names: BTreeSet<String> = imports
                .paths
                .keys()
                .filter_map(|t| file_of(files, t))
                .filter(|&to| to != path.as_path())
                .map(|to| to.strip_prefix(root).unwrap_or(to).display().to_string())
                .collect();
            let names: Vec<_> = names.into_iter().collect();
            println!("  {} -> {}", path.strip_prefix(root).unwrap_or(path).display(), names.join(", "));
        }
    }
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn no_module_of_src_names_a_layer_above_its_own() {
    let root = workspace();
    let files = read_crate(&root.join("src"));
    print_graph(&files, &root);
    let bad = upward_imports(&files, &root);
    assert!(bad.is_empty(), "imports against the layer order (docs/ARCHITECTURE.md):\n{}", bad.join("\n"));
}

#[test]
fn no_circles_among_the_files_of_any_crate() {
    let root = workspace();
    let mut all = Vec::new();
    for dir in ["src", "cdylib/src", "cli/src"] {
        for circle in circles(&read_crate(&root.join(dir))) {
            let names: Vec<_> = circle.iter().map(|p| p.strip_prefix(&root).unwrap_or(p).display().to_string()).collect();
            all.push(names.join(" <-> "));
        }
    }
    assert!(all.is_empty(), "files that name each other in a loop:\n{}", all.join("\n"));
}

// The checker checks: made-up sources it must reject.

fn made_up(files: &[(&str, &str)]) -> Vec<(PathBuf, Vec<String>, Imports)> {
    files
        .iter()
        .map(|(path, text)| {
            let mut module: Vec<String> = path.trim_end_matches(".rs").split('/').map(String::from).collect();
            if matches!(module.last().map(String::as_str), Some("mod" | "lib")) {
                module.pop();
            }
            let code = absolute_paths(&strip_test_items(&strip_comments_and_strings(text)), &module);
            (PathBuf::from(path), module, imports_of(&code))
        })
        .collect()
}

#[test]
fn the_check_names_an_upward_import_and_its_line() {
    let files = made_up(&[
        ("mm/zone.rs", "use crate::os::PAGE_SIZE;\n\nfn grow() {\n    crate::heap::ensure_init();\n}\n"),
        ("slab/cache.rs", "use crate::{mm::{self, ZONE}, views::stats::fmt_hex};\n"),
        ("heap/mod.rs", "use crate::mm::zone;\nuse crate::views::stats;\n"),
    ]);
    let bad = upward_imports(&files, Path::new(""));
    assert_eq!(
        bad,
        [
            "mm/zone.rs:4: names crate::heap::ensure_init (layer `heap` is above `mm`)",
            "slab/cache.rs:1: names crate::views::stats::fmt_hex (layer `views` is above `slab`)",
        ]
    );
}

#[test]
fn the_check_names_an_import_of_a_layer_inside_a_folder() {
    let files = made_up(&[
        ("heap/mod.rs", "#[cfg(feature = \"secure\")]\npub mod secure;\nfn f() {\n    secure::free();\n}\n"),
        ("heap/check.rs", "use crate::heap::secure::usable_size;\n"),
        ("heap/secure.rs", "use crate::heap;\nuse crate::mm::page;\n"),
    ]);
    let bad = upward_imports(&files, Path::new(""));
    assert_eq!(
        bad,
        [
            "heap/mod.rs:4: names crate::heap::secure::free (layer `secure` is above `heap`)",
            "heap/check.rs:1: names crate::heap::secure::usable_size (layer `secure` is above `heap`)",
        ]
    );
}

#[test]
fn the_check_ignores_comments_strings_and_unit_tests() {
    let files = made_up(&[(
        "mm/zone.rs",
        "//! See [`crate::heap::free`].\nconst S: &str = \"crate::views\";\n/* crate::heap */\n#[cfg(test)]\nmod tests {\n    use crate::heap;\n}\n#[cfg(test)]\nuse crate::views;\nfn f() { crate::os::fatal(); }\n",
    )]);
    assert!(upward_imports(&files, Path::new("")).is_empty());
    assert_eq!(files[0].2.paths.keys().cloned().collect::<Vec<_>>(), [vec!["os".to_string(), "fatal".to_string()]]);
}

#[test]
fn the_check_finds_a_circle_of_files() {
    let files = made_up(&[
        ("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n"),
        ("a.rs", "use crate::b::X;\n"),
        ("b.rs", "pub struct X; fn f() { crate::c::g() }\n"),
        ("c.rs", "fn g() { let _ = super::a::Y; }\n"),
    ]);
    assert_eq!(circles(&files), [vec![PathBuf::from("a.rs"), PathBuf::from("b.rs"), PathBuf::from("c.rs")]]);
}
