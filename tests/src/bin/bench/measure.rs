//! Measuring tools: CPU time of finished children and of a running process, the memory high-water mark,
//! percentiles, and how durations are printed.

use std::time::Duration;

use anyhow::{Context, Result, bail};

/// User plus system CPU time of every child process this process has waited for so far
/// (`getrusage(RUSAGE_CHILDREN)`). The delta around one `Command::output()` is that child's CPU time, as long as
/// no other child is reaped meanwhile.
pub fn children_cpu() -> Result<Duration> {
    // SAFETY: `rusage` is plain old data, so all-zero is a valid value; getrusage only writes into the struct
    // whose address it is given, and that struct lives until the call returns.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: see above; RUSAGE_CHILDREN is a valid `who`.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    if rc != 0 {
        bail!("getrusage(RUSAGE_CHILDREN) failed: {}", std::io::Error::last_os_error());
    }
    Ok(timeval(usage.ru_utime) + timeval(usage.ru_stime))
}

fn timeval(tv: libc::timeval) -> Duration {
    Duration::from_secs(tv.tv_sec.max(0) as u64) + Duration::from_micros(tv.tv_usec.max(0) as u64)
}

/// The kernel's clock tick (`sysconf(_SC_CLK_TCK)`), the unit of `/proc/<pid>/stat` times.
pub fn clock_tick() -> Result<Duration> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        bail!("sysconf(_SC_CLK_TCK) answered {hz}");
    }
    Ok(Duration::from_secs(1) / hz as u32)
}

/// User plus system CPU time of a running process, all its threads, from `/proc/<pid>/stat` (utime + stime).
/// The resolution is one clock tick (usually 10 ms).
pub fn process_cpu(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) is in parentheses and may contain spaces, so count fields after the last ')'.
    let rest = text.rsplit_once(')').map(|(_, rest)| rest).with_context(|| format!("{path} has no command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')' the first field is field 3 (state); utime is field 14 and stime field 15.
    let ticks = |index: usize, name: &str| -> Result<u64> {
        let value = fields.get(index).with_context(|| format!("{path} has no {name}"))?;
        value.parse().with_context(|| format!("{path}: {name} {value:?} is not a number"))
    };
    let total = ticks(11, "utime")? + ticks(12, "stime")?;
    Ok(clock_tick()? * total as u32)
}

/// This process's memory: the peak resident set (VmHWM) and the current one (VmRSS), in bytes.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Memory {
    pub peak: u64,
    pub current: u64,
}

/// Reads [`Memory`] from `/proc/self/status`.
pub fn memory() -> Result<Memory> {
    let text = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let kib = |name: &str| -> Result<u64> {
        let line =
            text.lines().find(|l| l.starts_with(name)).with_context(|| format!("/proc/self/status has no {name}"))?;
        let value = line.split_whitespace().nth(1).with_context(|| format!("/proc/self/status: empty {name}"))?;
        Ok(value.parse::<u64>().with_context(|| format!("/proc/self/status: {name} {value:?}"))? * 1024)
    };
    Ok(Memory { peak: kib("VmHWM:")?, current: kib("VmRSS:")? })
}

/// The nearest-rank percentile `p` (0–100) of `samples`; zero when there are none.
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The mean of `samples`; zero when there are none.
pub fn mean(samples: &[Duration]) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.iter().sum::<Duration>() / samples.len() as u32
}

/// `1.23 s` or `456 ms`, whichever reads better.
pub fn human(duration: Duration) -> String {
    if duration >= Duration::from_secs(10) {
        format!("{:.1} s", duration.as_secs_f64())
    } else if duration >= Duration::from_secs(1) {
        format!("{:.2} s", duration.as_secs_f64())
    } else {
        format!("{:.0} ms", duration.as_secs_f64() * 1000.0)
    }
}

/// Milliseconds with one decimal.
pub fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

/// Bytes as MB (10^6 bytes).
pub fn mb(bytes: u64) -> String {
    format!("{:.0} MB", bytes as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=50).map(Duration::from_millis).collect();
        assert_eq!(percentile(&samples, 50.0), Duration::from_millis(25));
        assert_eq!(percentile(&samples, 99.0), Duration::from_millis(50));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn own_process_is_measurable() {
        assert!(memory().unwrap().peak > 0);
        process_cpu(std::process::id()).unwrap();
        children_cpu().unwrap();
    }
}
