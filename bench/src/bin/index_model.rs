//! A model of the embedded log index's SQLite writes, to compare schemas
//! before changing the store: the `events` and `attempts` tables and their
//! indexes as the embedded store declares them (copied here, so a variant
//! can leave one out), one event and one attempt per delivery, written in
//! transactions of `batch` deliveries on one connection, with a second one
//! checkpointing every 200 ms as the store does (WAL, synchronous NORMAL,
//! no rollups). It prints CPU and bytes written per delivery for the
//! deliveries written after `pre` were already stored.
//!
//! cargo run --release -p outrider-bench --bin index_model -- <variant> [pre] [n] [batch] [dir]
//!
//! `variant` is `base` or any of these joined by `-`: `noevid` (no unique
//! index on event ids), `noatid` (none on attempt ids), `noevdest` (no
//! attempts-by-event index), `notime` (no cross-tenant time indexes),
//! `v7` (time-ordered UUIDv7 ids instead of UUIDv4), `evseq` (attempts by
//! event through the event's row number, looked up at insert, as the store
//! now does, instead of by event id).

use std::time::{Duration, Instant};

use outrider_engine::ids::{IdGen, IdGenerator};
use rusqlite::{params, Connection};

fn schema(v: &str) -> String {
    let unique = |off: &str| if v.contains(off) { "" } else { " UNIQUE" };
    let mut s = format!(
        "CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL{}, tenant_id TEXT NOT NULL,
           destination_id TEXT, topic TEXT NOT NULL, eligible_for_retry INTEGER NOT NULL, time INTEGER NOT NULL,
           metadata TEXT NOT NULL, data TEXT NOT NULL, matched TEXT NOT NULL, accepted_at INTEGER NOT NULL);
         CREATE INDEX events_tenant_time ON events (tenant_id, time, id);
         CREATE TABLE attempts (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL{}, tenant_id TEXT NOT NULL,
           event_id TEXT NOT NULL, destination_id TEXT NOT NULL, destination_type TEXT NOT NULL, topic TEXT NOT NULL,
           attempt_number INTEGER NOT NULL, manual INTEGER NOT NULL, status TEXT NOT NULL, time INTEGER NOT NULL,
           code TEXT, response_data TEXT, event_seq INTEGER);
         CREATE INDEX attempts_tenant_time ON attempts (tenant_id, time, id);
         CREATE INDEX attempts_dest_time ON attempts (destination_id, time, id);
         CREATE INDEX attempts_dest_failed ON attempts (destination_id, time, id) WHERE status = 'failed';",
        unique("noevid"),
        unique("noatid")
    );
    if !v.contains("notime") {
        s.push_str("CREATE INDEX events_time ON events (time, id); CREATE INDEX attempts_time ON attempts (time, id);");
    }
    if v.contains("evseq") {
        s.push_str("CREATE INDEX attempts_event_seq ON attempts (event_seq, destination_id, attempt_number);");
    } else if !v.contains("noevdest") {
        s.push_str("CREATE INDEX attempts_event_dest ON attempts (event_id, destination_id, attempt_number);");
    }
    s
}

/// This process's CPU seconds (user + system).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = &stat[stat.rfind(") ").expect("stat format") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// Bytes this process passed to write(2) and caused to be written to storage.
fn written() -> (u64, u64) {
    let io = std::fs::read_to_string("/proc/self/io").expect("/proc/self/io");
    let get = |k: &str| {
        io.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (get("wchar:"), get("write_bytes:"))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let v = args.first().cloned().unwrap_or_else(|| "base".into());
    let arg = |i: usize, d: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let (pre, n, batch) = (arg(1, 300_000), arg(2, 100_000), arg(3, 400));
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = args
        .get(4)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().into());
    let path = dir.join(format!("model-{v}.db"));
    let _ = std::fs::remove_file(&path);
    let mut c = Connection::open(&path).expect("open");
    // The embedded store's settings (`store::embedded::open`).
    c.execute_batch(
        "PRAGMA cache_size = -8192; PRAGMA mmap_size = 268435456; PRAGMA temp_store = MEMORY;
         PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 262144;",
    )
    .expect("pragmas");
    c.execute_batch(&schema(&v)).expect("schema");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checkpointer = {
        let (stop, path) = (stop.clone(), path.clone());
        std::thread::spawn(move || {
            let c = Connection::open(&path).expect("open");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let _ = c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
            }
        })
    };
    let ids = IdGenerator::new(if v.contains("v7") { IdGen::UuidV7 } else { IdGen::UuidV4 });
    let data = format!(r#"{{"d":"{}"}}"#, "x".repeat(1000));
    let evseq = v.contains("evseq");
    let mut k = 0u64;
    let mut write = |c: &mut Connection, count: usize| {
        let mut done = 0;
        while done < count {
            let tx = c.transaction().expect("begin");
            {
                let mut ev = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO events (id, tenant_id, destination_id, topic, eligible_for_retry, time,
                         metadata, data, matched, accepted_at) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)",
                    )
                    .expect("prepare");
                let mut at = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO attempts (id, tenant_id, event_id, destination_id, destination_type,
                         topic, attempt_number, manual, status, time, code, response_data, event_seq)
                         VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,
                                 CASE WHEN ?13 THEN (SELECT seq FROM events WHERE id = ?3) END)",
                    )
                    .expect("prepare");
                for _ in 0..batch {
                    k += 1;
                    // 64 tenants with one destination each, 20 deliveries per millisecond.
                    let (tenant, dest) = (format!("tenant_{}", k % 64), format!("des_{}", k % 64));
                    let t = 1_780_000_000_000 + (k / 20) as i64;
                    let event_id = ids.generate("");
                    ev.execute(params![
                        event_id,
                        tenant,
                        None::<String>,
                        "user.created",
                        true,
                        t,
                        "{}",
                        data,
                        format!(r#"["{dest}"]"#),
                        t
                    ])
                    .expect("insert event");
                    at.execute(params![
                        ids.generate(""),
                        tenant,
                        event_id,
                        dest,
                        "webhook",
                        "user.created",
                        1,
                        false,
                        "success",
                        t + 3,
                        "200",
                        r#"{"status":200,"body":""}"#,
                        evseq
                    ])
                    .expect("insert attempt");
                }
            }
            tx.commit().expect("commit");
            done += batch;
        }
    };
    write(&mut c, pre);
    std::thread::sleep(Duration::from_millis(500));
    let (cpu0, (w0, d0), started) = (cpu_seconds(), written(), Instant::now());
    write(&mut c, n);
    let wall = started.elapsed();
    // The checkpoint that copies the last transactions is part of their cost.
    std::thread::sleep(Duration::from_millis(400));
    let (cpu1, (w1, d1)) = (cpu_seconds(), written());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = checkpointer.join();
    let per = |x: f64| x / n as f64;
    println!(
        "{v:<24} pre {pre} n {n} batch {batch}: {:.1} µs CPU, {:.1} µs wall, {:.1} KiB written (write(2)), {:.1} KiB to storage per delivery",
        per((cpu1 - cpu0) * 1e6),
        per(wall.as_secs_f64() * 1e6),
        per((w1 - w0) as f64 / 1024.0),
        per((d1 - d0) as f64 / 1024.0)
    );
}
