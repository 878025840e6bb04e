//! The source layout keeps its promises: no import cycles between the library's modules, and
//! the rules of generation defined once (see the map at the top of `src/lib.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/generate/engine.rs` → `generate::engine`; `src/nn/mod.rs` → `nn`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts.join("::")
}

/// The library's code (not its tests, not comments).
fn code_of(text: &str) -> String {
    let end = [
        "#[cfg(test)]\nmod tests",
        "#[cfg(test)]\npub(crate) mod tests",
    ]
    .iter()
    .filter_map(|m| text.find(m))
    .min()
    .unwrap_or(text.len());
    text[..end]
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `prefix::name(::name)?` path in `code`.
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (i, _) in code.match_indices(prefix) {
        let before = code[..i].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[i + prefix.len()..];
        let mut segs = Vec::new();
        let mut s = rest;
        loop {
            let name: String = s
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if name.is_empty() {
                break;
            }
            s = &s[name.len()..];
            segs.push(name);
            match s.strip_prefix("::") {
                Some(r) if segs.len() < 2 => s = r,
                _ => break,
            }
        }
        if !segs.is_empty() {
            out.push(segs);
        }
    }
    out
}

/// Module → modules its code uses (resolved to the longest known module path).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let lib: Vec<PathBuf> = files
        .into_iter()
        .filter(|f| !f.starts_with(src.join("cli")) && !f.ends_with("main.rs"))
        .collect();
    let mods: BTreeSet<String> = lib.iter().map(|f| module_of(&src, f)).collect();
    let resolve = |segs: &[String]| -> Option<String> {
        (1..=segs.len())
            .rev()
            .map(|n| segs[..n].join("::"))
            .find(|m| mods.contains(m))
    };
    let mut g = BTreeMap::new();
    for f in &lib {
        let m = module_of(&src, f);
        let code = code_of(&fs::read_to_string(f).unwrap());
        let parent: Vec<String> = if f.ends_with("mod.rs") {
            m.split("::").map(str::to_string).collect()
        } else {
            let mut p: Vec<String> = m.split("::").map(str::to_string).collect();
            p.pop();
            p
        };
        let mut deps = BTreeSet::new();
        for segs in paths_after(&code, "crate::") {
            deps.extend(resolve(&segs));
        }
        for segs in paths_after(&code, "super::") {
            let full: Vec<String> = parent.iter().cloned().chain(segs).collect();
            deps.extend(resolve(&full));
        }
        deps.remove(&m);
        deps.remove("");
        g.insert(m, deps);
    }
    g
}

#[test]
fn the_library_has_no_import_cycles() {
    let g = graph();
    assert!(g.contains_key("generate::engine") && g["generate::engine"].contains("nn::generator"));
    // Depth-first search; a back edge is a cycle.
    fn visit(
        u: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(u.to_string(), 1);
        path.push(u.to_string());
        for v in g.get(u).into_iter().flatten() {
            match state.get(v.as_str()) {
                Some(1) => {
                    let start = path.iter().position(|p| p == v).unwrap();
                    let mut cycle = path[start..].to_vec();
                    cycle.push(v.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(v, g, state, path) {
                        return Some(c);
                    }
                }
            }
        }
        path.pop();
        state.insert(u.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in g.keys() {
        if !state.contains_key(m.as_str()) {
            let cycle = visit(m, &g, &mut state, &mut Vec::new());
            assert!(
                cycle.is_none(),
                "import cycle: {}",
                cycle.unwrap().join(" -> ")
            );
        }
    }
}

#[test]
fn generation_rules_are_defined_once() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let count = |needle: &str| -> Vec<String> {
        files
            .iter()
            .filter(|f| fs::read_to_string(f).unwrap().contains(needle))
            .map(|f| f.strip_prefix(&src).unwrap().display().to_string())
            .collect()
    };
    assert_eq!(count("fn start_tokens("), vec!["generate/stream.rs"]);
    assert_eq!(count("fn sample_seed("), vec!["generate/stream.rs"]);
    assert_eq!(count("enum StopReason"), vec!["generate/stream.rs"]);
    // Outside tests, only the stream samples a token and feeds the decoder.
    let decoding: Vec<String> = files
        .iter()
        .filter(|f| {
            let code = code_of(&fs::read_to_string(f).unwrap());
            code.contains(".sample(") && code.contains("push_into(")
        })
        .map(|f| f.strip_prefix(&src).unwrap().display().to_string())
        .collect();
    assert_eq!(decoding, vec!["generate/stream.rs"]);
}
