//! The samba process of a test DC: finding it, starting it detached, waiting
//! until LDAPS answers, and stopping it.

use std::fs::{self, File};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use rustix::io::Errno;
use rustix::process::{Pid, Signal, kill_process};

use super::layout::Layout;
use super::{ADMIN_DN, DcInfo, LDAP_PORT, LDAPS_PORT, LISTEN_IP, client, cmd, provision};

/// Generous: on this machine kind samba answers in well under a second, but CI
/// runners can be slow and a timeout here fails the whole run.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const TERM_TIMEOUT: Duration = Duration::from_secs(10);
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Marks each start in samba.log, so a failure shows only this start's lines.
const LOG_MARKER: &str = "==== testdc: starting samba";
const LOG_TAIL_LINES: usize = 40;

/// Returns the running DC in `dir`, provisioning and starting it first if needed.
pub fn ensure(dir: &Path) -> Result<DcInfo> {
    let layout = Layout::create(dir)?;
    let _lock = layout.lock()?;
    if let Some(info) = running_and_answering(&layout)? {
        return Ok(info);
    }
    if !layout.is_provisioned() {
        provision::provision(&layout)?;
    }
    start(&layout)
}

/// Stops the DC in `dir` if it runs; returns the pid it had. The provisioned
/// directory stays, so a later `ensure` or `restart` starts the same domain.
pub fn stop(dir: &Path) -> Result<Option<u32>> {
    if !dir.exists() {
        return Ok(None);
    }
    let layout = Layout::create(dir)?;
    let _lock = layout.lock()?;
    stop_locked(&layout)
}

/// Stops and starts the DC in `dir` with its data intact, like a DC reboot.
/// Everything else talking to it sees its connections drop.
pub fn restart(dir: &Path) -> Result<DcInfo> {
    let layout = Layout::create(dir)?;
    let _lock = layout.lock()?;
    stop_locked(&layout)?;
    if !layout.is_provisioned() {
        provision::provision(&layout)?;
    }
    start(&layout)
}

fn stop_locked(layout: &Layout) -> Result<Option<u32>> {
    let pid = running_pid(layout);
    if let Some(pid) = pid {
        terminate(pid)?;
    }
    remove_info(layout)?;
    Ok(pid)
}

/// The running DC, if there is one and it passes an LDAPS admin bind. One
/// that runs but does not answer is stopped, so the caller starts a new one.
fn running_and_answering(layout: &Layout) -> Result<Option<DcInfo>> {
    let Some(pid) = running_pid(layout) else {
        return Ok(None);
    };
    let info = DcInfo::new(layout, pid);
    let password = read_password(layout)?;
    // A DC busy with other tests' work can miss one probe; restarting it would break every test using it,
    // so it must fail several probes over some seconds first.
    let mut answer = block_on(probe(&info, &password));
    for _ in 0..4 {
        if answer.is_ok() || running_pid(layout) != Some(pid) {
            break;
        }
        thread::sleep(Duration::from_secs(3));
        answer = block_on(probe(&info, &password));
    }
    if let Err(e) = answer {
        eprintln!("testdc: samba pid {pid} runs but does not answer LDAPS ({e:#}); restarting it");
        terminate(pid)?;
        return Ok(None);
    }
    if DcInfo::load(layout.dir()).ok().as_ref() != Some(&info) {
        write_info(layout, &info)?;
    }
    Ok(Some(info))
}

/// Starts samba and waits until it answers; on failure the error carries the
/// tail of samba.log and no half-started samba is left behind.
fn start(layout: &Layout) -> Result<DcInfo> {
    ensure_ports_free()?;
    let password = read_password(layout)?;
    let started = Instant::now();
    let mut child = spawn_samba(layout)?;
    let info = DcInfo::new(layout, child.id());
    if let Err(e) = block_on(wait_until_ready(&mut child, &info, &password)) {
        if child.try_wait().ok().flatten().is_none() {
            let _ = terminate(child.id());
        }
        bail!("samba did not come up: {e:#}\nlast lines of {}:\n{}", layout.samba_log().display(), log_tail(layout));
    }
    write_info(layout, &info)?;
    eprintln!("testdc: samba pid {} answering on {} after {:.1}s", info.pid, info.url, started.elapsed().as_secs_f64());
    Ok(info)
}

/// A DC left by another directory (or a system samba) would make ours fail
/// to bind; say so plainly instead of timing out on a misleading probe.
fn ensure_ports_free() -> Result<()> {
    for port in [LDAPS_PORT, LDAP_PORT] {
        let addr = SocketAddr::new(LISTEN_IP.parse().expect("LISTEN_IP is an IP"), port);
        if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
            bail!(
                "something already listens on {addr}: another test DC (stop it with \
                 `testdc stop --dir <its dir>`) or a system samba"
            );
        }
    }
    Ok(())
}

/// Spawns `samba -i -M single`: foreground and one process, so the pid we get
/// is samba's own and its log goes to our file rather than /var/log.
fn spawn_samba(layout: &Layout) -> Result<Child> {
    let log_path = layout.samba_log();
    let mut log = File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    writeln!(log, "{LOG_MARKER} at unix time {} ====", now.as_secs())?;
    Command::new(cmd::program("samba")?)
        .arg("-s")
        .arg(layout.smb_conf())
        .args(["-i", "-M", "single"])
        // Lets running_pid recognise this samba later; see is_samba_in.
        .current_dir(layout.dir())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Own process group: the DC is shared by the whole run, so neither
        // Ctrl-C in a terminal nor nextest killing one test's process group
        // may take it down. Its stdio is a file, so no test waits on a pipe.
        .process_group(0)
        .spawn()
        .context("spawning samba")
}

async fn wait_until_ready(child: &mut Child, info: &DcInfo, password: &str) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().context("checking on samba")? {
            bail!("samba exited ({status}) before LDAPS answered");
        }
        let error = match probe(info, password).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(error.context(format!(
                "LDAPS on {} not answering after {}s",
                info.url,
                READY_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// An admin bind over verified LDAPS: proves TLS, our certificate and the
/// directory database all work, which a TCP connect would not.
async fn probe(info: &DcInfo, password: &str) -> Result<()> {
    let mut ldap = client::connect(info, ADMIN_DN, password).await?;
    ldap.unbind().await.context("unbinding")?;
    Ok(())
}

/// Runs `future` to completion on a fresh thread with its own runtime, so the
/// synchronous API works both from plain code and from inside a tokio test
/// (where blocking on a nested runtime would panic).
fn block_on<T: Send>(future: impl Future<Output = Result<T>> + Send) -> Result<T> {
    thread::scope(|scope| {
        let worker = scope.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building a tokio runtime")?
                .block_on(future)
        });
        worker.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// The pid of this directory's samba, from samba's own pid file, if that
/// process is alive and really is our samba (pids get reused after a reboot).
fn running_pid(layout: &Layout) -> Option<u32> {
    let text = fs::read_to_string(layout.pid_file()).ok()?;
    let pid = text.trim().parse().ok()?;
    (is_alive(pid) && is_samba_in(pid, layout.dir())).then_some(pid)
}

/// Samba overwrites its command line ("samba: root process"), so the
/// `-s smb.conf` argument cannot identify it. Its binary and its working
/// directory, which [`spawn_samba`] sets to the DC directory, can.
fn is_samba_in(pid: u32, dir: &Path) -> bool {
    let proc_dir = Path::new("/proc").join(pid.to_string());
    let exe_is_samba =
        fs::read_link(proc_dir.join("exe")).is_ok_and(|exe| exe.file_name().is_some_and(|name| name == "samba"));
    exe_is_samba && fs::read_link(proc_dir.join("cwd")).is_ok_and(|cwd| cwd == dir)
}

/// Alive means running, not a zombie: a samba we started ourselves stays a
/// zombie until this process exits, and `kill(pid, 0)` would still succeed.
fn is_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may
    // itself contain ") ".
    let state = stat.rfind(") ").and_then(|i| stat[i + 2..].chars().next());
    !matches!(state, None | Some('Z' | 'X'))
}

/// SIGTERM, then SIGKILL if samba has not exited within [`TERM_TIMEOUT`].
fn terminate(pid: u32) -> Result<()> {
    send_signal(pid, Signal::TERM)?;
    // A samba frozen with SIGSTOP (a hung-DC fault test) acts on SIGTERM
    // only once continued.
    send_signal(pid, Signal::CONT)?;
    if wait_for_exit(pid, TERM_TIMEOUT) {
        return Ok(());
    }
    eprintln!("testdc: samba pid {pid} still running {TERM_TIMEOUT:?} after SIGTERM; killing it");
    send_signal(pid, Signal::KILL)?;
    if wait_for_exit(pid, KILL_TIMEOUT) {
        return Ok(());
    }
    bail!("samba pid {pid} survived SIGKILL for {KILL_TIMEOUT:?}")
}

fn send_signal(pid: u32, signal: Signal) -> Result<()> {
    let raw = i32::try_from(pid).context("pid out of range")?;
    let target = Pid::from_raw(raw).context("pid 0")?;
    match kill_process(target, signal) {
        Ok(()) | Err(Errno::SRCH) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("signalling samba pid {pid}")),
    }
}

fn wait_for_exit(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while is_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL_INTERVAL / 2);
    }
    true
}

fn read_password(layout: &Layout) -> Result<String> {
    let path = layout.password_file();
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.trim_end().to_owned())
}

/// Written via rename so a reader never sees half a file.
fn write_info(layout: &Layout, info: &DcInfo) -> Result<()> {
    let path = layout.info_file();
    let tmp = path.with_extension("json.tmp");
    let json = serde_json::to_string_pretty(info).context("serialising info.json")?;
    fs::write(&tmp, json + "\n").with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))
}

fn remove_info(layout: &Layout) -> Result<()> {
    match fs::remove_file(layout.info_file()) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", layout.info_file().display()))
        }
        _ => Ok(()),
    }
}

/// The lines samba wrote since the last start, at most [`LOG_TAIL_LINES`].
fn log_tail(layout: &Layout) -> String {
    let Ok(log) = fs::read_to_string(layout.samba_log()) else {
        return "(no samba.log)".to_owned();
    };
    let this_start = log.rfind(LOG_MARKER).map_or(log.as_str(), |i| &log[i..]);
    cmd::tail(this_start, LOG_TAIL_LINES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_not_samba() {
        let me = std::process::id();
        assert!(is_alive(me));
        assert!(!is_samba_in(me, &std::env::current_dir().unwrap()));
    }

    #[test]
    fn reaped_pid_is_not_alive() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!is_alive(pid));
    }

    #[test]
    fn unreaped_child_counts_as_exited() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        assert!(wait_for_exit(pid, Duration::from_secs(5)), "zombie seen as alive");
        child.wait().unwrap();
    }
}
