//! `writeback plugin new`: a buildable naming-policy project with the plugin contract embedded, a sample policy,
//! its test and a build script, so that a plugin author starts from something `plugin check` passes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

/// The contract the project is built against: the newest version the agent runs.
const CONTRACT: &str = include_str!("../../../wit/plugin.wit");

/// A project's files: its path inside the project, and its text, in which `{name}` is the project's name,
/// `{crate}` that name with underscores, and `{contract}` the contract's version.
type Files = &'static [(&'static str, &'static str)];

const RUST: Files = &[
    ("Cargo.toml", include_str!("plugin_kit/rust/Cargo.toml.in")),
    ("src/lib.rs", include_str!("plugin_kit/rust/lib.rs.in")),
    ("build.sh", include_str!("plugin_kit/rust/build.sh.in")),
];

const PYTHON: Files = &[
    ("app.py", include_str!("plugin_kit/python/app.py.in")),
    ("policy.py", include_str!("plugin_kit/python/policy.py.in")),
    ("test_policy.py", include_str!("plugin_kit/python/test_policy.py.in")),
    ("build.sh", include_str!("plugin_kit/python/build.sh.in")),
];

const JS: Files = &[
    ("package.json", include_str!("plugin_kit/js/package.json.in")),
    ("app.js", include_str!("plugin_kit/js/app.js.in")),
    ("policy.js", include_str!("plugin_kit/js/policy.js.in")),
    ("policy.test.js", include_str!("plugin_kit/js/test_policy.test.js.in")),
    ("build.sh", include_str!("plugin_kit/js/build.sh.in")),
];

/// Arguments of `plugin new`.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// The project's name: lower-case letters, digits and hyphens, starting with a letter (as Cargo and npm
    /// take it).
    pub name: String,
    /// The language of the project.
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    pub lang: Lang,
    /// Where the project's directory is made.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
}

/// The languages `plugin new` writes projects in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

/// Writes the project and prints what to do next.
pub fn run(args: &NewArgs) -> Result<()> {
    let valid = args.name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && args.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!("plugin name {:?} must be lower-case letters, digits and hyphens, starting with a letter", args.name);
    }
    let (files, test) = match args.lang {
        Lang::Rust => (RUST, "cargo test"),
        Lang::Python => (PYTHON, "python3 -m unittest"),
        Lang::Js => (JS, "npm test"),
    };
    let root = args.dir.join(&args.name);
    if root.exists() {
        bail!("{} exists already; choose another name or --dir", root.display());
    }
    let crate_name = args.name.replace('-', "_");
    for (path, text) in files {
        let text = text.replace("{name}", &args.name).replace("{crate}", &crate_name);
        write(&root.join(path), &text.replace("{contract}", contract_version()))?;
    }
    write(&root.join("wit/plugin.wit"), CONTRACT)?;
    let build = root.join("build.sh");
    std::fs::set_permissions(&build, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .with_context(|| format!("cannot make {} executable", build.display()))?;
    println!("wrote {}: a naming policy against writeback:plugin@{}", root.display(), contract_version());
    println!("  {test:<21} runs the policy's tests");
    println!("  ./build.sh            builds the component and prints its path");
    println!("  writeback plugin check \"$(./build.sh)\"");
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// The version the embedded contract declares.
fn contract_version() -> &'static str {
    CONTRACT.lines().find_map(|l| l.strip_prefix("package writeback:plugin@")?.strip_suffix(';')).unwrap_or("?")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_embedded_contract_is_the_newest() {
        assert_eq!(super::contract_version(), *crate::plugins::CONTRACT_VERSIONS.last().unwrap());
    }
}
