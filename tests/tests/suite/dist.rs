//! The shipped systemd unit is valid and hardened, checked by systemd's own analyser.

use std::process::Command;

use writeback_tests::e2e::{text, writeback_bin};

#[test]
fn the_systemd_unit_verifies_and_is_hardened() -> anyhow::Result<()> {
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let unit = std::fs::read_to_string(workspace.join("host/dist/writeback.service"))?;
    // Point ExecStart at the binary this run built, so `verify` can check that it exists.
    let bin = writeback_bin()?;
    let unit = unit.replace("/usr/local/bin/writeback", &bin.display().to_string());
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("writeback.service");
    std::fs::write(&path, unit)?;

    let verify = Command::new("systemd-analyze").arg("verify").arg(&path).output()?;
    assert!(verify.status.success() && verify.stderr.is_empty(), "{}", text(&verify.stderr));
    let security = Command::new("systemd-analyze").args(["security", "--offline=yes"]).arg(&path).output()?;
    let report = text(&security.stdout);
    let exposure: f64 = report
        .lines()
        .find_map(|l| l.split("Overall exposure level for writeback.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    assert!(exposure <= 2.0, "exposure {exposure}:\n{report}");
    Ok(())
}
