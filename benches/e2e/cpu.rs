//! CPU accounting of the server process and of the whole machine, from `/proc`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The server process's CPU time so far.
pub(crate) struct CpuSnapshot {
    /// On-CPU nanoseconds per live thread, from `schedstat`; empty when unavailable.
    threads: HashMap<String, u64>,
    /// `utime + stime` of the whole process (live and exited threads), in ticks.
    ticks: u64,
}

/// Linux's `USER_HZ`, the unit of `/proc/<pid>/stat` times.
pub(crate) const TICKS_PER_SECOND: u64 = 100;

impl CpuSnapshot {
    pub(crate) fn now() -> Self {
        let mut threads = HashMap::new();
        if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
            for task in tasks.flatten() {
                let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
                    continue;
                };
                if let Some(ns) = text.split_whitespace().next().and_then(|f| f.parse().ok()) {
                    threads.insert(task.file_name().to_string_lossy().into_owned(), ns);
                }
            }
        }
        let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
        // Fields after the command name: state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')').expect("stat format") + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| -> u64 { fields[n - 3].parse().expect("stat field") };
        Self {
            threads,
            ticks: field(14) + field(15),
        }
    }

    /// Nanoseconds of CPU from `self` to `later`: (per-thread schedstat if available,
    /// process ticks), and how many threads seen in `self` were gone in `later`.
    pub(crate) fn until(&self, later: &Self) -> (Option<u64>, u64, usize) {
        let ticks_ns = (later.ticks - self.ticks) * (1_000_000_000 / TICKS_PER_SECOND);
        if later.threads.is_empty() {
            return (None, ticks_ns, 0);
        }
        let sched = later
            .threads
            .iter()
            .map(|(tid, ns)| ns.saturating_sub(self.threads.get(tid).copied().unwrap_or(0)))
            .sum();
        let gone = self
            .threads
            .keys()
            .filter(|tid| !later.threads.contains_key(*tid))
            .count();
        (Some(sched), ticks_ns, gone)
    }
}

/// The whole machine's CPU time so far, from the first line of `/proc/stat`, in ticks.
#[derive(Clone, Copy)]
pub(crate) struct SystemCpu {
    busy: u64,
    total: u64,
}

impl SystemCpu {
    pub(crate) fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
        let line = stat.lines().next().expect("cpu line");
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|f| f.parse().expect("/proc/stat field"))
            .collect();
        let idle = v[3] + v[4];
        let total: u64 = v.iter().sum();
        Self {
            busy: total - idle,
            total,
        }
    }

    /// Busy nanoseconds of the machine (all CPUs) from `self` to `later`, counting time
    /// stolen by the hypervisor as busy.
    pub(crate) fn busy_ns_until(&self, later: &Self) -> u64 {
        (later.busy - self.busy) * (1_000_000_000 / TICKS_PER_SECOND)
    }

    /// The busy share of the machine from `self` to `later`.
    pub(crate) fn busy_share_until(&self, later: &Self) -> f64 {
        let total = later.total - self.total;
        if total == 0 {
            0.0
        } else {
            (later.busy - self.busy) as f64 / total as f64
        }
    }
}

/// Waits, up to `max_wait`, until other processes keep the machine less than `threshold`
/// busy over a quarter of a second (the server is idle between rounds). Returns how long
/// it waited.
pub(crate) fn wait_for_quiet(threshold: f64, max_wait: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let before = SystemCpu::now();
        std::thread::sleep(Duration::from_millis(250));
        let share = before.busy_share_until(&SystemCpu::now());
        if share < threshold || started.elapsed() >= max_wait {
            return started.elapsed();
        }
    }
}
