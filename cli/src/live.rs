//! `buddyslab views PID` and `buddyslab top PID`: the views of a running
//! process, read from the live page it publishes (`BUDDYSLAB_LIVE=1`; the
//! layout is documented in the library's `live` module).
//!
//! Reading never stops the process: the reader adds one to the page's
//! `request` word and waits until the process, at its next slow path,
//! has written a fresh copy (`served` reaches the request); then it copies
//! the page under the seqlock (`seq` even and unchanged across the copy).
//! A process that reaches no slow path within the wait (asleep, or every
//! call served from its thread caches) still has its last copy, which is
//! shown with its age.

use crate::args::{TopOptions, ViewsOptions};
use crate::out::{sayln, show};
use crate::Failure;
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The layout's version this reader knows.
const LIVE_VERSION: u32 = 1;
const PAGE_BYTES: usize = 1 << 20;
const JSON_AT: usize = 512 << 10;
const HEADER_BYTES: usize = 64;
const MAGIC: &[u8; 8] = b"BSLIVE\0\0";
const SEQ: u64 = 16;
const REQUEST: u64 = 24;
const SERVED: u64 = 32;

/// One consistent copy of a process's views.
pub struct Copy {
    pub text: String,
    pub json: String,
    /// When the process wrote it (milliseconds since the epoch).
    pub written_ms: u64,
    /// Written after our request (not a copy left from before).
    pub fresh: bool,
}

impl Copy {
    /// How old the copy is.
    pub fn age(&self) -> Duration {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.written_ms))
    }
}

/// The live page of `pid`.
pub fn page_path(pid: i32) -> PathBuf {
    PathBuf::from(format!("/dev/shm/buddyslab-{pid}"))
}

/// Removes the live page `pid` left behind, if no process maps it (the
/// process was killed, or left by `_exit`): `run` calls this for the
/// processes of its tree whose exit handlers did not run.
pub fn remove_stale_page(pid: i32) {
    let path = page_path(pid);
    let mapped = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .is_ok_and(|maps| maps.contains(&path.to_string_lossy().to_string()));
    if !mapped {
        let _ = std::fs::remove_file(path);
    }
}

/// Opens the page of `pid`, after checking that the process is there and
/// maps it (a page left by a killed process, or by the program before an
/// `exec`, is not its).
fn open_page(pid: i32) -> Result<File, Failure> {
    let path = page_path(pid);
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|_| Failure::tool(format!("no process {pid} (or not ours to read)")))?;
    if !path.exists() {
        return Err(Failure::tool(format!(
            "process {pid} publishes no live views: start it on buddyslab with BUDDYSLAB_LIVE=1 \
             (buddyslab run --live -- PROGRAM)"
        )));
    }
    if !maps.contains(&path.to_string_lossy().to_string()) {
        return Err(Failure::tool(format!(
            "{} is stale: process {pid} does not map it (the process that made it was killed, \
             or it exec'd a program not on buddyslab)",
            path.display()
        )));
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| Failure::tool(format!("{}: {e}", path.display())))
}

fn word(file: &File, at: u64) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    file.read_exact_at(&mut b, at)?;
    Ok(u64::from_le_bytes(b))
}

/// Asks for a fresh copy and waits up to `wait` for it; returns the last
/// copy either way.
pub fn fetch(pid: i32, wait: Duration) -> Result<Copy, Failure> {
    let file = open_page(pid)?;
    let io = |e: std::io::Error| Failure::tool(format!("reading the live page of {pid}: {e}"));
    // Two readers may race here; either way `request` ends above `served`.
    let want = word(&file, REQUEST).map_err(io)? + 1;
    file.write_all_at(&want.to_le_bytes(), REQUEST).map_err(io)?;
    let begin = Instant::now();
    let mut fresh = false;
    while begin.elapsed() < wait {
        if word(&file, SERVED).map_err(io)? >= want {
            fresh = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut copy = read_copy(&file).map_err(io)?.ok_or_else(|| {
        Failure::tool(format!(
            "process {pid} has not published its views yet (it reaches no slow path: asleep, or \
             every call is served from its thread caches); try a longer --wait"
        ))
    })?;
    copy.fresh = fresh;
    Ok(copy)
}

/// A consistent copy, or `None` when the process has published none.
fn read_copy(file: &File) -> std::io::Result<Option<Copy>> {
    let mut header = [0u8; HEADER_BYTES];
    for _ in 0..1000 {
        file.read_exact_at(&mut header, 0)?;
        let u32_at = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap());
        if &header[..8] != MAGIC {
            return Ok(None);
        }
        if u32_at(8) != LIVE_VERSION {
            return Err(std::io::Error::other(format!(
                "layout version {} (this buddyslab reads {LIVE_VERSION})",
                u32_at(8)
            )));
        }
        let seq = u64_at(SEQ as usize);
        if seq == 0 {
            return Ok(None);
        }
        if seq % 2 == 1 {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let text_len = (u32_at(48) as usize).min(JSON_AT - HEADER_BYTES);
        let json_len = (u32_at(52) as usize).min(PAGE_BYTES - JSON_AT);
        let mut text = vec![0u8; text_len];
        let mut json = vec![0u8; json_len];
        file.read_exact_at(&mut text, HEADER_BYTES as u64)?;
        file.read_exact_at(&mut json, JSON_AT as u64)?;
        if word(file, SEQ)? == seq {
            return Ok(Some(Copy {
                text: String::from_utf8_lossy(&text).into_owned(),
                json: String::from_utf8_lossy(&json).into_owned(),
                written_ms: u64_at(56),
                fresh: false,
            }));
        }
    }
    Err(std::io::Error::other("the page kept changing while read"))
}

/// `buddyslab views PID [--json]`.
pub fn views(options: ViewsOptions) -> Result<u8, Failure> {
    let copy = fetch(options.pid, options.wait)?;
    if !copy.fresh {
        sayln!(
            "buddyslab: process {} reached no slow path in {:.1} s; its views as of {:.1} s ago",
            options.pid,
            options.wait.as_secs_f64(),
            copy.age().as_secs_f64()
        );
    }
    if options.json {
        show!("{}", copy.json);
    } else {
        show!("{}", copy.text);
    }
    Ok(0)
}

/// The figures `top` shows, from one copy's JSON.
struct Sample {
    json: Value,
    at: Instant,
}

impl Sample {
    fn number(&self, path: &[&str]) -> f64 {
        let mut v = &self.json;
        for key in path {
            v = &v[*key];
        }
        v.as_f64().unwrap_or(0.0)
    }
}

fn sample(pid: i32, wait: Duration) -> Result<Sample, Failure> {
    let copy = fetch(pid, wait)?;
    let json = serde_json::from_str(&copy.json)
        .map_err(|e| Failure::tool(format!("the live page of {pid} holds no valid JSON: {e}")))?;
    Ok(Sample { json, at: Instant::now() })
}

/// `buddyslab top PID`: slabtop's screen for a process on buddyslab.
pub fn top(options: TopOptions) -> Result<u8, Failure> {
    let mut previous = sample(options.pid, options.interval)?;
    let mut shown = 0u64;
    loop {
        std::thread::sleep(options.interval);
        let now = match sample(options.pid, options.interval) {
            Ok(s) => s,
            // The process ended while watched: the last screen stays.
            Err(e) if shown > 0 => {
                sayln!("buddyslab: {}", e.message);
                return Ok(0);
            }
            Err(e) => return Err(e),
        };
        let screen = render(options.pid, &previous, &now, options.interval);
        if options.once {
            show!("{screen}");
            return Ok(0);
        }
        // Home and clear, as top and slabtop redraw.
        show!("\x1b[H\x1b[2J{screen}");
        shown += 1;
        if options.count.is_some_and(|n| shown >= n) {
            return Ok(0);
        }
        previous = now;
    }
}

fn kib(bytes: f64) -> String {
    format!("{:.2}K", bytes / 1024.0)
}

fn percent(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        100.0 * part / whole
    } else {
        0.0
    }
}

/// One screen: the summary lines slabtop prints, buddyslab's totals and
/// fault rate, the buddy lists, and the caches with slabtop's columns
/// (empty caches left out, most objects first).
fn render(pid: i32, before: &Sample, now: &Sample, interval: Duration) -> String {
    let mut out = String::new();
    let caches: Vec<&Value> = now.json["slabinfo"].as_array().map(|a| a.iter().collect()).unwrap_or_default();
    let field = |c: &Value, k: &str| c[k].as_f64().unwrap_or(0.0);
    let used: Vec<&&Value> = caches.iter().filter(|c| field(c, "num_slabs") > 0.0).collect();
    let active_objs: f64 = caches.iter().map(|c| field(c, "active_objs")).sum();
    let total_objs: f64 = caches.iter().map(|c| field(c, "num_objs")).sum();
    let active_slabs: f64 = caches.iter().map(|c| field(c, "active_slabs")).sum();
    let total_slabs: f64 = caches.iter().map(|c| field(c, "num_slabs")).sum();
    let active_size: f64 = caches.iter().map(|c| field(c, "active_objs") * field(c, "objsize")).sum();
    let total_size: f64 = caches.iter().map(|c| field(c, "num_objs") * field(c, "objsize")).sum();
    let sizes: Vec<f64> = used.iter().map(|c| field(c, "objsize")).collect();
    let min = sizes.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = sizes.iter().cloned().fold(0.0, f64::max);
    let average = if total_objs > 0.0 { total_size / total_objs } else { 0.0 };
    let seconds = now.at.duration_since(before.at).as_secs_f64().max(1e-3);
    let rate = |path: &[&str]| (now.number(path) - before.number(path)).max(0.0) / seconds;
    let in_use = now.number(&["totals", "in_use"]);
    let mapped = now.number(&["totals", "mapped"]);
    let line = |out: &mut String, label: &str, value: String| out.push_str(&format!(" {label:<35}: {value}\n"));
    out.push_str(&format!(
        " buddyslab top - pid {pid}, every {:.1} s (views version {})\n",
        interval.as_secs_f64(),
        now.json["version"]
    ));
    line(&mut out, "Active / Total Objects (% used)", format!("{active_objs} / {total_objs} ({:.1}%)", percent(active_objs, total_objs)));
    line(&mut out, "Active / Total Slabs (% used)", format!("{active_slabs} / {total_slabs} ({:.1}%)", percent(active_slabs, total_slabs)));
    line(&mut out, "Active / Total Caches (% used)", format!("{} / {} ({:.1}%)", used.len(), caches.len(), percent(used.len() as f64, caches.len() as f64)));
    line(&mut out, "Active / Total Size (% used)", format!("{} / {} ({:.1}%)", kib(active_size), kib(total_size), percent(active_size, total_size)));
    if sizes.is_empty() {
        line(&mut out, "Minimum / Average / Maximum Object", "- / - / -".to_string());
    } else {
        line(&mut out, "Minimum / Average / Maximum Object", format!("{} / {} / {}", kib(min), kib(average), kib(max)));
    }
    line(&mut out, "In use / Peak / Mapped (% used)", format!(
        "{} / {} / {} ({:.1}%)",
        kib(in_use),
        kib(now.number(&["totals", "in_use_peak"])),
        kib(mapped),
        percent(in_use, mapped)
    ));
    line(&mut out, "Resident / Peak RSS / Metadata", format!(
        "{} / {} / {}",
        kib(now.number(&["totals", "resident"])),
        kib(now.number(&["totals", "peak_rss"])),
        kib(now.number(&["totals", "metadata"]))
    ));
    line(&mut out, "Minor faults per s (predicted)", format!(
        "{:.1} ({:.1}); {} in all",
        rate(&["faults", "minflt"]),
        rate(&["faults", "predicted"]),
        now.number(&["faults", "minflt"])
    ));
    let calls = now.json["totals"]["calls"].as_object().map(|m| {
        m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
    });
    line(&mut out, "Calls", calls.unwrap_or_default());
    out.push('\n');
    out.push_str(&format!("Node 0, zone {:>8} ", "buddyslab"));
    for n in now.json["buddyinfo"].as_array().into_iter().flatten() {
        out.push_str(&format!("{:>6} ", n.as_u64().unwrap_or(0)));
    }
    out.push_str("\n\n");
    out.push_str("  OBJS ACTIVE  USE OBJ SIZE  SLABS OBJ/SLAB CACHE SIZE NAME\n");
    let mut rows = used;
    rows.sort_by(|a, b| field(b, "num_objs").total_cmp(&field(a, "num_objs")));
    for c in rows {
        let objs = field(c, "num_objs");
        let active = field(c, "active_objs");
        let cache_kib = field(c, "num_slabs") * field(c, "pagesperslab") * 4.0;
        out.push_str(&format!(
            "{:>6} {:>6} {:>3.0}% {:>7} {:>6} {:>8} {:>10} {}\n",
            objs,
            active,
            percent(active, objs),
            kib(field(c, "objsize")),
            field(c, "num_slabs"),
            field(c, "objperslab"),
            format!("{}K", cache_kib),
            c["name"].as_str().unwrap_or("?")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_screen_has_slabtop_s_lines_and_columns() {
        let json = |minflt: u64, objs: u64| {
            serde_json::json!({
                "version": 1,
                "totals": {"in_use": 4096, "in_use_peak": 8192, "mapped": 4194304, "resident": 65536,
                           "peak_rss": 1048576, "metadata": 4096, "calls": {"calloc": 1, "realloc": 2, "aligned": 0}},
                "buddyinfo": [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                "slabinfo": [
                    {"name": "kmalloc-16", "active_objs": objs, "num_objs": 256, "objsize": 16, "objperslab": 256,
                     "pagesperslab": 1, "active_slabs": 1, "num_slabs": 1},
                    {"name": "kmalloc-32", "active_objs": 0, "num_objs": 0, "objsize": 32, "objperslab": 128,
                     "pagesperslab": 1, "active_slabs": 0, "num_slabs": 0}
                ],
                "faults": {"predicted": minflt / 2, "minflt": minflt}
            })
        };
        let at = Instant::now();
        let before = Sample { json: json(100, 10), at };
        let now = Sample { json: json(300, 20), at: at + Duration::from_secs(2) };
        let screen = render(7, &before, &now, Duration::from_secs(2));
        assert!(screen.contains(" Active / Total Objects (% used)    : 20 / 256 (7.8%)"), "{screen}");
        assert!(screen.contains(" Active / Total Caches (% used)     : 1 / 2 (50.0%)"), "{screen}");
        assert!(screen.contains("Minor faults per s (predicted)     : 100.0 (50.0); 300 in all"), "{screen}");
        assert!(screen.contains("  OBJS ACTIVE  USE OBJ SIZE  SLABS OBJ/SLAB CACHE SIZE NAME\n"), "{screen}");
        assert!(screen.contains("kmalloc-16\n") && !screen.contains("kmalloc-32"), "{screen}");
        assert!(screen.contains("Node 0, zone buddyslab      1      0"), "{screen}");
    }
}
