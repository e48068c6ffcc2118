//! What every section shares: the machine's description, medians, CPU time from /proc/stat,
//! interface counters, and a small SVG line plot.

use std::fmt::Write as _;

use mirror_tests::netns::{NetNs, in_netns};

pub fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("Linux {}, {cpus} x {cpu}", kernel.trim())
}

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Busy and total time of one CPU from /proc/stat, in nanoseconds (USER_HZ ticks).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTimes {
    pub busy_ns: u64,
    /// System + irq + softirq: the kernel's share, where packets are processed.
    pub kernel_ns: u64,
    pub total_ns: u64,
}

pub fn cpu_times(cpu: usize) -> CpuTimes {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let name = format!("cpu{cpu} ");
    let Some(line) = stat.lines().find(|l| l.starts_with(&name)) else {
        return CpuTimes::default();
    };
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let get = |i: usize| f.get(i).copied().unwrap_or(0) * 1_000_000_000 / hz;
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    CpuTimes {
        busy_ns: busy,
        kernel_ns: get(2) + get(5) + get(6),
        total_ns: busy + get(3) + get(4),
    }
}

impl CpuTimes {
    pub fn since(self, before: CpuTimes) -> CpuTimes {
        CpuTimes {
            busy_ns: self.busy_ns.saturating_sub(before.busy_ns),
            kernel_ns: self.kernel_ns.saturating_sub(before.kernel_ns),
            total_ns: self.total_ns.saturating_sub(before.total_ns),
        }
    }
}

/// CPU time a process used so far, in nanoseconds: (user, system).
pub fn process_cpu(pid: u32) -> (u64, u64) {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces: fields start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state(0) ... utime(11) stime(12).
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (t(11) * 1_000_000_000 / hz, t(12) * 1_000_000_000 / hz)
}

/// Packet counters of an interface in a namespace (`ip -s -j link show`).
#[derive(Clone, Copy, Debug, Default)]
pub struct IfStats {
    pub rx_packets: u64,
    pub rx_dropped: u64,
    pub tx_packets: u64,
    pub tx_dropped: u64,
}

/// Read from /proc/thread-self/net/dev on a thread inside `ns`: no process to start, so the
/// counters of one snapshot are read within microseconds of each other.
pub fn if_stats(ns: &NetNs, dev: &str) -> IfStats {
    let text = in_netns(ns, || {
        std::fs::read_to_string("/proc/thread-self/net/dev").expect("reading /proc/net/dev")
    });
    let line = text
        .lines()
        .find_map(|l| {
            let (name, rest) = l.split_once(':')?;
            (name.trim() == dev).then_some(rest)
        })
        .unwrap_or_else(|| panic!("{dev} not in /proc/net/dev of {}", ns.name));
    let f: Vec<u64> = line
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let n = |i: usize| f.get(i).copied().unwrap_or(0);
    // rx: bytes packets errs drop fifo frame compressed multicast; tx: bytes packets errs drop …
    IfStats {
        rx_packets: n(1),
        rx_dropped: n(3),
        tx_packets: n(9),
        tx_dropped: n(11),
    }
}

impl IfStats {
    pub fn since(self, b: IfStats) -> IfStats {
        IfStats {
            rx_packets: self.rx_packets.saturating_sub(b.rx_packets),
            rx_dropped: self.rx_dropped.saturating_sub(b.rx_dropped),
            tx_packets: self.tx_packets.saturating_sub(b.tx_packets),
            tx_dropped: self.tx_dropped.saturating_sub(b.tx_dropped),
        }
    }
}

pub use mirror_tests::topology::{mac_of, mac_text};

/// A line plot as SVG: x values shared, one series per name. Log-free, axes from 0.
pub fn svg_plot(
    title: &str,
    x_label: &str,
    y_label: &str,
    xs: &[f64],
    series: &[(String, Vec<f64>)],
) -> String {
    const W: f64 = 860.0;
    const H: f64 = 420.0;
    const L: f64 = 80.0;
    const R: f64 = 300.0;
    const T: f64 = 40.0;
    const B: f64 = 50.0;
    let colors = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
    ];
    let xmax = xs.iter().copied().fold(0.0, f64::max).max(1.0);
    let top = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
        .max(1e-9);
    // Round tick steps (1, 2 or 5 times a power of ten), about five of them.
    let raw = top / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let ticks = (top / step).ceil() as i32;
    let ymax = step * f64::from(ticks);
    let px = |x: f64| L + x / xmax * (W - L - R);
    let py = |y: f64| H - B - y / ymax * (H - T - B);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">{title}</text>",
        (W - R + L) / 2.0
    );
    let _ = writeln!(
        s,
        "<line x1=\"{L}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{L}\" y1=\"{T}\" x2=\"{L}\" y2=\"{}\" stroke=\"black\"/>",
        H - B,
        W - R,
        H - B,
        H - B
    );
    for i in 0..=ticks {
        let y = step * f64::from(i);
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text><line x1=\"{L}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#ddd\"/>",
            L - 6.0,
            py(y) + 4.0,
            human(y),
            py(y),
            W - R,
            py(y)
        );
    }
    for &x in xs {
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{x}</text>",
            px(x),
            H - B + 16.0
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{x_label}</text><text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">{y_label}</text>",
        (W - R + L) / 2.0,
        H - 10.0,
        (H - B + T) / 2.0,
        (H - B + T) / 2.0
    );
    for (i, (name, ys)) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        let pts: Vec<String> = xs
            .iter()
            .zip(ys)
            .filter(|(_, y)| y.is_finite())
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>",
            pts.join(" ")
        );
        for p in &pts {
            let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(s, "<circle cx=\"{x}\" cy=\"{y}\" r=\"3\" fill=\"{c}\"/>");
        }
        let ly = T + 10.0 + 20.0 * i as f64;
        let _ = writeln!(
            s,
            "<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{c}\" stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">{name}</text>",
            W - R + 10.0,
            W - R + 30.0,
            W - R + 36.0,
            ly + 4.0
        );
    }
    s.push_str("</svg>\n");
    s
}

pub fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0} k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// `a / b` as "1.23x", or "n/a" when `b` is zero.
pub fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() {
        format!("{:.2}x", a / b)
    } else {
        "n/a".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plot_has_a_line_per_series_inside_the_axes() {
        let xs = [64.0, 512.0, 1500.0];
        let series = vec![
            ("a".to_string(), vec![1.0e5, 2.5e5, 3.0e5]),
            ("b".to_string(), vec![0.0, f64::NAN, 1.2e5]),
        ];
        let svg = svg_plot("t", "x", "y", &xs, &series);
        assert_eq!(svg.matches("<polyline").count(), 2, "{svg}");
        // The NaN point is left out: 3 + 2 markers.
        assert_eq!(svg.matches("<circle").count(), 5, "{svg}");
        for c in svg.split("<circle").skip(1) {
            let num = |attr: &str| -> f64 {
                let v = c.split(attr).nth(1).expect(attr);
                v.trim_start_matches("=\"")
                    .split('"')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("number")
            };
            let (x, y) = (num(" cx"), num(" cy"));
            assert!(
                (80.0..=560.0).contains(&x) && (40.0..=370.0).contains(&y),
                "{x},{y}"
            );
        }
        // Round ticks up to the largest value: 0, 100 k, 200 k, 300 k.
        assert!(svg.contains(">300 k<") && svg.contains(">100 k<"), "{svg}");
    }

    #[test]
    fn ratios_and_percentiles() {
        assert_eq!(ratio(3.0, 2.0), "1.50x");
        assert_eq!(ratio(1.0, 0.0), "n/a");
        let v = [1.0, 2.0, 3.0, 4.0, 100.0];
        assert_eq!(percentile(&v, 0.5), 3.0);
        assert_eq!(percentile(&v, 0.99), 100.0);
        assert_eq!(median(vec![5.0, 1.0, 3.0]), 3.0);
    }
}
