//! CPU time of this process's threads, for the system benchmark's idle-cost figure.

use std::time::Duration;

/// CPU time (user + system) used so far by this process's threads whose name starts with
/// `name` (an agent's runtime and the threads it starts).
pub fn thread_cpu(name: &str) -> Duration {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        // `pid (comm) state ...`: comm may hold spaces, so split after its closing parenthesis.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        if !stat[open + 1..close].starts_with(name) {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        // utime and stime are fields 14 and 15 of the whole line (11 and 12 after comm).
        total += fields.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        total += fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    Duration::from_secs_f64(total as f64 / ticks)
}
