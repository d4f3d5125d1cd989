//! The server's CPU time, from `/proc/<pid>/stat`: user and system time of
//! every thread of the process, in clock ticks. Read before and after a
//! run, it gives what the run cost the server, which unlike latency does
//! not move with whatever else the machine runs.

use std::time::Duration;

use anyhow::Context;

/// How long after the last answer the harness waits before reading the
/// server's CPU time again: what was answered 202 is committed after the
/// answer, and that work is the run's too.
pub const SETTLE: Duration = Duration::from_millis(500);

/// The process's CPU time (user + system) so far.
pub fn of(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat (is --server-pid right?)"))?;
    ticks(&stat)
        .map(|t| Duration::from_secs_f64(t as f64 / clock_ticks_per_second()))
        .context("an unreadable /proc/<pid>/stat")
}

/// utime + stime: fields 14 and 15, counted after the command name (field
/// 2, in parentheses, which may hold spaces).
fn ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': field 3 is at index 0, so 14 and 15 are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `getconf CLK_TCK` (the workspace forbids the `unsafe` a `sysconf` call
/// takes); 100, Linux's `USER_HZ` everywhere it runs, if that fails.
fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok()?.trim().parse().ok())
        .filter(|hz: &f64| *hz > 0.0)
        .unwrap_or(100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_system_ticks_are_read_past_a_name_with_spaces() {
        let stat = "4242 (abacus serve) S 1 4242 4242 0 -1 4194560 2 0 0 0 \
                    1500 250 0 0 20 0 12 0 100 0 0";
        assert_eq!(ticks(stat), Some(1750));
        assert_eq!(ticks("garbage"), None);
    }

    #[test]
    fn this_process_has_spent_some_cpu() {
        let mut spin = 0u64;
        for i in 0..5_000_000u64 {
            spin = spin.wrapping_add(i * i);
        }
        assert!(spin > 0);
        assert!(of(std::process::id()).expect("readable") > Duration::ZERO);
    }
}
