//! The layer picture of DESIGN.md §1 holds: every `crate::` path in `src/`
//! (in `use` declarations and inline) names a module of the same or a
//! lower rank, and every module of `src/` is placed in the table. A
//! violation names the file and line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Module name -> rank, from the table of DESIGN.md §1.
type Layers = BTreeMap<String, u32>;

/// Reads the `| rank | module | ... |` table of the section `## 1. Layers`.
fn layers_from_design(design: &str) -> Layers {
    let section = design
        .split("\n## ")
        .find(|section| section.starts_with("1. Layers"))
        .expect("DESIGN.md has a section 1. Layers");
    let mut layers = Layers::new();
    for line in section.lines().filter(|line| line.starts_with("| ")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (Some(rank), Some(modules)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        let Ok(rank) = rank.parse::<u32>() else {
            continue;
        };
        for module in modules.split(',') {
            let module = module.trim().trim_matches('`').to_string();
            assert!(
                layers.insert(module.clone(), rank).is_none(),
                "{module} is placed twice"
            );
        }
    }
    assert!(!layers.is_empty(), "no layer table in section 1");
    layers
}

/// The names `lib.rs` re-exports at the crate root (`crate::Engine`), with
/// the module each comes from.
fn root_reexports(lib: &str) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    for statement in lib.split(';') {
        let Some(rest) = statement.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, items)) = rest.split_once("::") else {
            continue;
        };
        for item in items.trim_matches(|c| c == '{' || c == '}').split(',') {
            let item = item.trim();
            if !item.is_empty() {
                names.insert(item.to_string(), module.trim().to_string());
            }
        }
    }
    names
}

/// The code of a file that the layering applies to: without comments
/// (doc links are not imports) and without its `#[cfg(test)] mod tests`
/// block, which may also use `testing`.
fn code_lines(text: &str) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    let mut in_test_module = false;
    let mut previous_was_cfg_test = false;
    for (number, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if previous_was_cfg_test && trimmed.starts_with("mod tests") {
            in_test_module = true;
        }
        if trimmed.starts_with("#[cfg(test)]") {
            previous_was_cfg_test = true;
        } else if !trimmed.starts_with("#[") {
            previous_was_cfg_test = false;
        }
        if in_test_module {
            continue;
        }
        let code = match line.find("//") {
            Some(comment) => &line[..comment],
            None => line,
        };
        lines.push((number + 1, code.to_string()));
    }
    lines
}

/// The modules a line names through `crate::`: `crate::a::...`, and each
/// top-level name of a `use crate::{a, b::c}` group (whose braces may span
/// lines: `open_group` carries that state).
fn named_modules(line: &str, open_group: &mut Option<u32>) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = line;
    if let Some(depth) = open_group.as_mut() {
        rest = take_group_names(rest, depth, &mut names);
        if *depth == 0 {
            *open_group = None;
        }
    }
    while let Some(position) = rest.find("crate::") {
        let after = &rest[position + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let mut depth = 1;
            rest = take_group_names(group, &mut depth, &mut names);
            if depth > 0 {
                *open_group = Some(depth);
            }
        } else {
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            names.push(name);
            rest = after;
        }
    }
    names
}

/// Collects the names at depth 1 of a brace group from `text` until the
/// group closes (`depth` reaches 0) or the text ends; returns the rest.
fn take_group_names<'t>(text: &'t str, depth: &mut u32, names: &mut Vec<String>) -> &'t str {
    let mut expecting_name = true;
    for (index, c) in text.char_indices() {
        match c {
            '{' => *depth += 1,
            '}' => {
                *depth -= 1;
                if *depth == 0 {
                    return &text[index + 1..];
                }
            }
            ',' if *depth == 1 => expecting_name = true,
            c if expecting_name && *depth == 1 && (c.is_alphanumeric() || c == '_') => {
                let name: String = text[index..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                names.push(name);
                expecting_name = false;
            }
            _ => {}
        }
    }
    ""
}

/// Every import against `layers` in `files` (path relative to `src/`,
/// text), as `path:line: message`.
fn violations(
    layers: &Layers,
    reexports: &BTreeMap<String, String>,
    files: &[(String, String)],
) -> Vec<String> {
    let mut found = Vec::new();
    for (path, text) in files {
        let module = path
            .split('/')
            .next()
            .unwrap_or(path)
            .trim_end_matches(".rs")
            .to_string();
        let Some(&rank) = layers.get(&module) else {
            found.push(format!(
                "src/{path}: module {module} is not placed in DESIGN.md §1"
            ));
            continue;
        };
        let mut open_group = None;
        for (line, code) in code_lines(text) {
            for name in named_modules(&code, &mut open_group) {
                let target = reexports.get(&name).cloned().unwrap_or(name);
                if target == module {
                    continue;
                }
                match layers.get(&target) {
                    Some(&target_rank) if target_rank < rank => {}
                    Some(&target_rank) => found.push(format!(
                        "src/{path}:{line}: {module} (rank {rank}) imports {target} (rank {target_rank})"
                    )),
                    None => found.push(format!(
                        "src/{path}:{line}: {module} imports {target}, which DESIGN.md §1 does not place"
                    )),
                }
            }
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_import_in_src_follows_the_layers_of_design_section_1() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let layers =
        layers_from_design(&std::fs::read_to_string(root.join("DESIGN.md")).expect("DESIGN.md"));
    let src = root.join("src");
    let reexports = root_reexports(&std::fs::read_to_string(src.join("lib.rs")).expect("lib.rs"));
    // Every module of src/ is placed, the binary included.
    for entry in std::fs::read_dir(&src).expect("src") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .to_string();
        let module = name.trim_end_matches(".rs");
        if module != "lib" {
            assert!(
                layers.contains_key(module),
                "src/{name} is not placed in DESIGN.md §1"
            );
        }
    }
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    paths.sort();
    let files: Vec<(String, String)> = paths
        .iter()
        .filter_map(|path| {
            let relative = path.strip_prefix(&src).expect("under src");
            let relative = relative.to_string_lossy().to_string();
            // lib.rs declares the modules; the binary is its own crate and
            // reaches the library through `blocksnap::`, not `crate::`.
            (relative != "lib.rs" && !relative.starts_with("bin/")).then(|| {
                (
                    relative,
                    std::fs::read_to_string(path).expect("read source"),
                )
            })
        })
        .collect();
    assert!(files.len() > 50, "only {} files", files.len());
    let found = violations(&layers, &reexports, &files);
    assert!(
        found.is_empty(),
        "imports against the layers:\n{}",
        found.join("\n")
    );
}

/// The checker itself, on a small example: a forbidden import is named
/// with its file and line, in every form an import can take.
#[test]
fn the_checker_names_each_forbidden_import_with_its_file_and_line() {
    let layers = layers_from_design(
        "# Design\n\n## 1. Layers\n\n| rank | module | what |\n|---|---|---|\n| 0 | `ids`, `error` | leaf |\n| 1 | `format` | bytes |\n| 2 | `engine` | engine |\n| 3 | `api` | façade |\n\n## 2. Next\n",
    );
    let reexports =
        root_reexports("pub use engine::{Engine, EngineConfig};\npub use error::Error;");
    assert_eq!(reexports.get("Engine").map(String::as_str), Some("engine"));
    let files = vec![
        (
            "api/mod.rs".to_string(),
            "use crate::engine::Engine;\nuse crate::{format, ids::SnapshotId};\n".to_string(),
        ),
        (
            "engine/mod.rs".to_string(),
            "use crate::format::pack;\n// use crate::api::Ebs; only a comment\nfn f() { crate::api::validate(); }\n".to_string(),
        ),
        (
            "format/wire.rs".to_string(),
            "use crate::{\n    error::Error,\n    Engine,\n};\n#[cfg(test)]\nmod tests {\n    use crate::api::Ebs;\n}\n".to_string(),
        ),
        ("stray.rs".to_string(), "fn lost() {}\n".to_string()),
    ];
    let found = violations(&layers, &reexports, &files);
    assert_eq!(
        found,
        [
            "src/engine/mod.rs:3: engine (rank 2) imports api (rank 3)",
            "src/format/wire.rs:3: format (rank 1) imports engine (rank 2)",
            "src/stray.rs: module stray is not placed in DESIGN.md §1",
        ]
    );
}
