//! Running the external tools the harness depends on (samba, samba-tool,
//! openssl) with errors that say what to do about them.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// samba itself lives in /usr/sbin, which is not on every user's PATH.
const EXTRA_DIRS: [&str; 2] = ["/usr/sbin", "/sbin"];

/// Finds `name` on PATH or in the sbin directories.
pub(crate) fn program(name: &str) -> Result<PathBuf> {
    let path_dirs = env::var_os("PATH").map(|p| env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .with_context(|| format!("`{name}` not found; run tests/setup.sh to install Samba and openssl"))
}

/// Runs `program args…` to completion; on failure the error carries the tail
/// of its output, which is where samba-tool and openssl explain themselves.
pub(crate) fn run(program_name: &str, args: &[&str], cwd: &Path) -> Result<()> {
    let binary = program(program_name)?;
    let output = Command::new(&binary)
        .args(args)
        .current_dir(cwd)
        .output()
        .with_context(|| format!("starting {}", binary.display()))?;
    if !output.status.success() {
        let combined = [output.stdout, output.stderr].concat();
        bail!(
            "{program_name} {} failed ({}):\n{}",
            args.first().copied().unwrap_or_default(),
            output.status,
            tail(&String::from_utf8_lossy(&combined), 30)
        );
    }
    Ok(())
}

/// The last `lines` lines of `text`.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a\nb", 5), "a\nb");
        assert_eq!(tail("", 3), "");
    }
}
