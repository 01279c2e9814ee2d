//! Where the external tools live: anvil, forge, cast and `libonnxruntime`.
//!
//! `scripts/setup` installs them into ignored folders of the repository and writes
//! `.infergrid/env`; an environment variable of the same name overrides each entry, and
//! `INFERGRID_ENV_FILE` points at another env file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A tool that could not be found.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{tool} not found ({detail}); run `scripts/setup` or set {var}")]
    Missing { tool: &'static str, var: &'static str, detail: String },
}

/// The tools `scripts/setup` installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Anvil,
    Forge,
    Cast,
    OnnxRuntime,
    Python,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Anvil => "anvil",
            Tool::Forge => "forge",
            Tool::Cast => "cast",
            Tool::OnnxRuntime => "libonnxruntime",
            Tool::Python => "python (setup venv)",
        }
    }

    fn var(self) -> &'static str {
        match self {
            Tool::Anvil => "INFERGRID_ANVIL",
            Tool::Forge => "INFERGRID_FORGE",
            Tool::Cast => "INFERGRID_CAST",
            Tool::OnnxRuntime => "ORT_DYLIB_PATH",
            Tool::Python => "INFERGRID_PYTHON",
        }
    }
}

/// Resolves the path of `tool`: its environment variable first, then the env file.
pub fn locate(tool: Tool) -> Result<PathBuf, ToolError> {
    let missing =
        |detail: String| ToolError::Missing { tool: tool.name(), var: tool.var(), detail };
    let path = match std::env::var_os(tool.var()) {
        Some(value) => PathBuf::from(value),
        None => {
            let file = env_file().ok_or_else(|| missing("no .infergrid/env found".into()))?;
            let entries =
                read_env_file(&file).map_err(|e| missing(format!("{}: {e}", file.display())))?;
            entries
                .get(tool.var())
                .map(PathBuf::from)
                .ok_or_else(|| missing(format!("{} has no {}", file.display(), tool.var())))?
        }
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(missing(format!("{} does not exist", path.display())))
    }
}

/// The env file: `INFERGRID_ENV_FILE`, else `.infergrid/env` in the current directory or an
/// ancestor, else next to (an ancestor of) the running executable.
pub fn env_file() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("INFERGRID_ENV_FILE") {
        return Some(PathBuf::from(path));
    }
    let from_cwd = std::env::current_dir().ok();
    let from_exe = std::env::current_exe().ok();
    [from_cwd, from_exe]
        .into_iter()
        .flatten()
        .find_map(|start| find_upwards(&start, ".infergrid/env"))
}

/// The repository root: the directory holding `.infergrid/env`, when there is one.
pub fn repo_root() -> Option<PathBuf> {
    env_file()?.parent()?.parent().map(Path::to_path_buf)
}

fn find_upwards(start: &Path, relative: &str) -> Option<PathBuf> {
    start.ancestors().map(|dir| dir.join(relative)).find(|candidate| candidate.is_file())
}

fn read_env_file(path: &Path) -> std::io::Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect())
}
