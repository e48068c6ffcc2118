//! The embedded file sink: one directory per LogProjectName/LogTopicName holding an active
//! file and rotated files, as JSON Lines (the default) or AWS space-separated text, each
//! record holding the fields of the flow log's `LogFormat`.
//!
//! Guarantees: a batch is written with one `write_all` and made durable with one
//! `fdatasync`; a batch that fails (disk full, I/O error) is cut back off the file so that
//! the file never holds half a line and a retry writes the batch exactly once.

use std::{
    fs::{self, DirBuilder, File, OpenOptions},
    io::{self, Read, Seek, SeekFrom, Write},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use time::{OffsetDateTime, PrimitiveDateTime, macros::format_description};
use tracing::warn;

use super::{
    format::{LogFormat, NodeMeta},
    record::FlowRecord,
};

pub const DEFAULT_MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
pub const DEFAULT_MAX_FILE_AGE: Duration = Duration::from_secs(3600);
pub const DEFAULT_RETAIN_FILES: usize = 24;
pub const DEFAULT_RETAIN_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

const ROTATED_PREFIX: &str = "flowlog-";
const TIMESTAMP: &[time::format_description::FormatItem<'static>] =
    format_description!("[year][month][day]T[hour][minute][second]Z");
/// Flow-log lines are a few hundred bytes; a tail this long holds at least one line end.
const TAIL_SCAN: u64 = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileFormat {
    JsonLines,
    AwsText,
}

impl FileFormat {
    pub fn extension(self) -> &'static str {
        match self {
            FileFormat::JsonLines => "jsonl",
            FileFormat::AwsText => "log",
        }
    }

    fn other(self) -> FileFormat {
        match self {
            FileFormat::JsonLines => FileFormat::AwsText,
            FileFormat::AwsText => FileFormat::JsonLines,
        }
    }

    fn current_name(self) -> String {
        format!("current.{}", self.extension())
    }
}

#[derive(Clone, Debug)]
pub struct FileSinkConfig {
    /// `<state_dir>/flowlogs/<project>/<topic>`.
    pub dir: PathBuf,
    pub format: FileFormat,
    /// The fields of each record, in order (text files start with their names).
    pub log_format: LogFormat,
    /// The node's own values for account-id, vpc-id and the like.
    pub meta: NodeMeta,
    /// Rotate before a batch that would take the active file past this size.
    pub max_file_bytes: u64,
    /// Rotate once the active file's first record is this old.
    pub max_file_age: Duration,
    /// Keep at most this many rotated files.
    pub retain_files: usize,
    /// Delete rotated files rotated longer ago than this.
    pub retain_age: Duration,
}

impl FileSinkConfig {
    /// JSON Lines with the default rotation and retention.
    pub fn new(dir: impl Into<PathBuf>) -> FileSinkConfig {
        FileSinkConfig {
            dir: dir.into(),
            format: FileFormat::JsonLines,
            log_format: LogFormat::default(),
            meta: NodeMeta::default(),
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            max_file_age: DEFAULT_MAX_FILE_AGE,
            retain_files: DEFAULT_RETAIN_FILES,
            retain_age: DEFAULT_RETAIN_AGE,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("flow-log file sink: {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("flow-log file sink: encode record: {0}")]
    Encode(#[from] serde_json::Error),
}

impl SinkError {
    fn io(op: &'static str, path: &Path, source: io::Error) -> SinkError {
        SinkError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// The OS error number, when the failure came from the OS.
    pub fn errno(&self) -> Option<i32> {
        match self {
            SinkError::Io { source, .. } => source.raw_os_error(),
            SinkError::Encode(_) => None,
        }
    }

    pub fn path(&self) -> Option<&Path> {
        match self {
            SinkError::Io { path, .. } => Some(path),
            SinkError::Encode(_) => None,
        }
    }

    /// The file system (or the quota) is full: the operator must free space; retrying
    /// sooner is pointless.
    pub fn is_disk_full(&self) -> bool {
        matches!(self.errno(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
    }
}

/// The time source; tests move it to exercise rotation and retention.
pub type Clock = Box<dyn Fn() -> SystemTime + Send + Sync>;

pub struct FileSink {
    cfg: FileSinkConfig,
    now: Clock,
    current_path: PathBuf,
    file: File,
    /// Bytes of whole lines in the active file; the next batch goes here.
    len: u64,
    /// When the active file got its first record; `None` while it is empty.
    started: Option<SystemTime>,
    next_seq: u64,
}

impl FileSink {
    /// Creates the directory if needed and adopts an active file left by an earlier run.
    pub fn open(cfg: FileSinkConfig) -> Result<FileSink, SinkError> {
        FileSink::open_with_clock(cfg, Box::new(SystemTime::now))
    }

    pub fn open_with_clock(cfg: FileSinkConfig, now: Clock) -> Result<FileSink, SinkError> {
        // Flow logs describe who talks to whom: not for every local user.
        DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(&cfg.dir)
            .map_err(|e| SinkError::io("create directory", &cfg.dir, e))?;
        let next_seq = list_rotated(&cfg.dir)?
            .last()
            .map_or(1, |r| r.seq.saturating_add(1));
        let current_path = cfg.dir.join(cfg.format.current_name());
        let file = open_current(&current_path)?;
        let mut sink = FileSink {
            now,
            current_path,
            file,
            len: 0,
            started: None,
            next_seq,
            cfg,
        };
        sink.adopt_current()?;
        sink.rotate_other_format()?;
        if sink.header_differs()? {
            sink.rotate((sink.now)())?;
        }
        Ok(sink)
    }

    /// A new `LogFormat` (ModifyFlowLogAttribute) starts a new text file, so that every text
    /// file's header names the columns of every line in it.
    pub fn set_log_format(&mut self, log_format: LogFormat) -> Result<(), SinkError> {
        if log_format == self.cfg.log_format {
            return Ok(());
        }
        self.cfg.log_format = log_format;
        if self.header_differs()? {
            self.rotate((self.now)())?;
        }
        Ok(())
    }

    /// Whether the active text file was written with another header (another format, or an
    /// agent before this one).
    fn header_differs(&mut self) -> Result<bool, SinkError> {
        if self.cfg.format != FileFormat::AwsText || self.len == 0 {
            return Ok(false);
        }
        let header = self.cfg.log_format.header();
        let mut first = vec![0u8; header.len() + 1];
        // Shorter than the header line: not written with this header.
        if self.len < first.len() as u64 {
            return Ok(true);
        }
        self.file
            .seek(SeekFrom::Start(0))
            .and_then(|_| self.file.read_exact(&mut first))
            .map_err(|e| SinkError::io("read", &self.current_path, e))?;
        Ok(first[..header.len()] != *header.as_bytes() || first[header.len()] != b'\n')
    }

    /// Appends the records (one line each; AWS text files start with the format's header)
    /// and fdatasyncs once. Rotation by size or age happens
    /// before the batch is written, retention right after a rotation.
    pub fn write(&mut self, records: &[FlowRecord]) -> Result<(), SinkError> {
        let mut body = Vec::with_capacity(records.len() * 256);
        for r in records {
            let (layout, meta) = (&self.cfg.log_format, &self.cfg.meta);
            match self.cfg.format {
                FileFormat::JsonLines => layout.write_json_line(r, meta, &mut body)?,
                FileFormat::AwsText => {
                    body.extend_from_slice(layout.text_line(r, meta).as_bytes());
                    body.push(b'\n');
                }
            }
        }
        let now = (self.now)();
        if self.rotation_due(now, body.len() as u64) {
            self.rotate(now)?;
        }
        if body.is_empty() {
            return Ok(());
        }
        let buf = if self.len == 0 && self.cfg.format == FileFormat::AwsText {
            let header = self.cfg.log_format.header();
            let mut b = Vec::with_capacity(header.len() + 1 + body.len());
            b.extend_from_slice(header.as_bytes());
            b.push(b'\n');
            b.extend_from_slice(&body);
            b
        } else {
            body
        };
        append_batch(&mut self.file, self.len, &buf)
            .map_err(|e| SinkError::io("write", &self.current_path, e))?;
        self.len += buf.len() as u64;
        self.started.get_or_insert(now);
        Ok(())
    }

    /// Rotated files oldest first, then the active file.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = match list_rotated(&self.cfg.dir) {
            Ok(r) => r.into_iter().map(|r| r.path).collect(),
            Err(e) => {
                warn!(error = %e, "cannot list rotated flow-log files");
                Vec::new()
            }
        };
        if self.current_path.exists() {
            out.push(self.current_path.clone());
        }
        out
    }

    fn rotation_due(&self, now: SystemTime, batch: u64) -> bool {
        let Some(started) = self.started else {
            return false;
        };
        if self.len == 0 {
            return false;
        }
        let age = now.duration_since(started).unwrap_or(Duration::ZERO);
        self.len.saturating_add(batch) > self.cfg.max_file_bytes || age >= self.cfg.max_file_age
    }

    fn rotate(&mut self, now: SystemTime) -> Result<(), SinkError> {
        let rotated = self.rotated_path(now, self.cfg.format);
        fs::rename(&self.current_path, &rotated)
            .map_err(|e| SinkError::io("rotate", &self.current_path, e))?;
        self.next_seq += 1;
        self.file = open_current(&self.current_path)?;
        self.len = 0;
        self.started = None;
        sync_dir(&self.cfg.dir);
        self.apply_retention(now);
        Ok(())
    }

    fn rotated_path(&self, now: SystemTime, format: FileFormat) -> PathBuf {
        let stamp = OffsetDateTime::from(now)
            .format(TIMESTAMP)
            .unwrap_or_else(|_| "00000000T000000Z".to_string());
        self.cfg.dir.join(format!(
            "{ROTATED_PREFIX}{stamp}-{:06}.{}",
            self.next_seq,
            format.extension()
        ))
    }

    /// Retention failures are logged, not returned: the batch they follow is safe on disk.
    fn apply_retention(&self, now: SystemTime) {
        let rotated = match list_rotated(&self.cfg.dir) {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "flow-log retention: cannot list files");
                return;
            }
        };
        let excess = rotated.len().saturating_sub(self.cfg.retain_files);
        for (i, r) in rotated.iter().enumerate() {
            let too_old = now
                .duration_since(r.rotated_at)
                .is_ok_and(|age| age > self.cfg.retain_age);
            if i >= excess && !too_old {
                continue;
            }
            if let Err(e) = fs::remove_file(&r.path) {
                warn!(path = %r.path.display(), error = %e, "flow-log retention: cannot delete");
            }
        }
    }

    /// Picks up an active file from an earlier run, cutting off a torn last line (a crash
    /// between write and fdatasync).
    fn adopt_current(&mut self) -> Result<(), SinkError> {
        let path = self.current_path.clone();
        let meta = self
            .file
            .metadata()
            .map_err(|e| SinkError::io("stat", &path, e))?;
        let len = meta.len();
        if len == 0 {
            return Ok(());
        }
        let whole =
            whole_lines_len(&mut self.file, len).map_err(|e| SinkError::io("read", &path, e))?;
        if whole != len {
            warn!(path = %path.display(), dropped = len - whole, "flow-log file ended in a partial line; cut it off");
            self.file
                .set_len(whole)
                .map_err(|e| SinkError::io("truncate", &path, e))?;
        }
        self.len = whole;
        if whole > 0 {
            // The file's first record is about as old as the file.
            self.started = Some(
                meta.created()
                    .or_else(|_| meta.modified())
                    .unwrap_or_else(|_| (self.now)()),
            );
        }
        Ok(())
    }

    /// An active file of the other format (the topic's format changed) is rotated as is so
    /// that retention takes care of it.
    fn rotate_other_format(&mut self) -> Result<(), SinkError> {
        let other = self.cfg.format.other();
        let path = self.cfg.dir.join(other.current_name());
        match fs::metadata(&path) {
            Ok(m) if m.len() > 0 => {
                let now = (self.now)();
                let rotated = self.rotated_path(now, other);
                fs::rename(&path, &rotated).map_err(|e| SinkError::io("rotate", &path, e))?;
                self.next_seq += 1;
                sync_dir(&self.cfg.dir);
                self.apply_retention(now);
            }
            Ok(_) => {
                if let Err(e) = fs::remove_file(&path) {
                    warn!(path = %path.display(), error = %e, "cannot remove empty flow-log file");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(SinkError::io("stat", &path, e)),
        }
        Ok(())
    }
}

fn open_current(path: &Path) -> Result<File, SinkError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o640)
        .open(path)
        .map_err(|e| SinkError::io("open", path, e))
}

/// Makes a rename durable; best effort because the data itself is already synced.
fn sync_dir(dir: &Path) {
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        warn!(dir = %dir.display(), error = %e, "cannot fsync flow-log directory");
    }
}

/// Length of the file up to and including its last newline.
fn whole_lines_len(file: &mut File, len: u64) -> io::Result<u64> {
    let from = len.saturating_sub(TAIL_SCAN);
    file.seek(SeekFrom::Start(from))?;
    let mut tail = Vec::with_capacity((len - from) as usize);
    file.take(len - from).read_to_end(&mut tail)?;
    Ok(match tail.iter().rposition(|&b| b == b'\n') {
        Some(i) => from + i as u64 + 1,
        // No line end in the whole file: nothing in it is a complete line.
        None if from == 0 => 0,
        // Cannot happen with flow-log lines; leave such a file alone rather than guess.
        None => len,
    })
}

/// What `append_batch` needs besides writing and seeking: cutting the file back.
trait SetLen {
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    fn sync_data(&mut self) -> io::Result<()>;
}

impl SetLen for File {
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }
}

/// Writes `buf` at `at` with one `write_all` and syncs it. On failure the file is cut back
/// to `at`: a partial batch left behind would be written a second time by the retry.
fn append_batch<W: Write + Seek + SetLen>(w: &mut W, at: u64, buf: &[u8]) -> io::Result<()> {
    let result = w
        .seek(SeekFrom::Start(at))
        .and_then(|_| w.write_all(buf))
        .and_then(|()| w.sync_data());
    if let Err(e) = result {
        if let Err(te) = w.set_len(at) {
            warn!(error = %te, "cannot cut a failed flow-log batch off the file");
        }
        return Err(e);
    }
    Ok(())
}

struct Rotated {
    path: PathBuf,
    seq: u64,
    rotated_at: SystemTime,
}

/// Rotated files of either format, oldest (lowest sequence) first. The sequence, not the
/// name's time, orders them: it keeps counting when the clock steps back.
fn list_rotated(dir: &Path) -> Result<Vec<Rotated>, SinkError> {
    let entries = fs::read_dir(dir).map_err(|e| SinkError::io("list", dir, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| SinkError::io("list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some((seq, rotated_at)) = parse_rotated_name(name) {
            out.push(Rotated {
                path: entry.path(),
                seq,
                rotated_at,
            });
        }
    }
    out.sort_by_key(|r| r.seq);
    Ok(out)
}

/// `flowlog-<yyyymmddThhmmssZ>-<seq>.<jsonl|log>` → (seq, time).
fn parse_rotated_name(name: &str) -> Option<(u64, SystemTime)> {
    let rest = name.strip_prefix(ROTATED_PREFIX)?;
    let (stem, ext) = rest.rsplit_once('.')?;
    if ext != FileFormat::JsonLines.extension() && ext != FileFormat::AwsText.extension() {
        return None;
    }
    let (stamp, seq) = stem.split_once('-')?;
    let seq = seq.parse().ok()?;
    let at = PrimitiveDateTime::parse(stamp, TIMESTAMP)
        .ok()?
        .assume_utc();
    Some((seq, SystemTime::from(at)))
}

#[cfg(test)]
mod tests {
    use std::{
        io::Cursor,
        net::{IpAddr, Ipv4Addr},
        sync::{
            Arc,
            atomic::{AtomicU64, Ordering},
        },
    };

    use super::*;
    use crate::flowlog::record::{FlowAction, FlowDirection, FlowFields, LogStatus};

    const T0: u64 = 1_700_000_000;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let p = std::env::temp_dir().join(format!(
                "flowlog-files-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = fs::remove_dir_all(&p);
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A clock the test moves: Unix seconds in a shared atomic.
    fn clock() -> (Arc<AtomicU64>, Clock) {
        let t = Arc::new(AtomicU64::new(T0));
        let t2 = t.clone();
        (
            t,
            Box::new(move || {
                SystemTime::UNIX_EPOCH + Duration::from_secs(t2.load(Ordering::SeqCst))
            }),
        )
    }

    fn rec(i: u16) -> FlowRecord {
        FlowRecord {
            flow_log_id: "fl-1".into(),
            interface_id: "eth0".into(),
            ifindex: 2,
            flow: Some(FlowFields {
                srcaddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                dstaddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
                srcport: 1000 + i,
                dstport: 80,
                protocol: 6,
                packets: 1,
                bytes: 60,
                action: FlowAction::Accept,
                tcp_flags: 2,
                direction: FlowDirection::Ingress,
                drop_reason: None,
            }),
            start: T0,
            end: T0 + 60,
            log_status: LogStatus::Ok,
            skipped_packets: 0,
        }
    }

    fn header() -> String {
        LogFormat::default().header()
    }

    fn text(i: u16) -> String {
        LogFormat::default().text_line(&rec(i), &NodeMeta::default())
    }

    fn cfg(dir: &Path, format: FileFormat) -> FileSinkConfig {
        FileSinkConfig {
            format,
            ..FileSinkConfig::new(dir)
        }
    }

    fn names(sink: &FileSink) -> Vec<String> {
        sink.files()
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn json_lines_one_line_per_record() {
        let d = TempDir::new("json");
        let mut sink = FileSink::open(cfg(&d.0, FileFormat::JsonLines)).unwrap();
        sink.write(&[rec(1), rec(2)]).unwrap();
        sink.write(&[rec(3)]).unwrap();
        assert_eq!(names(&sink), ["current.jsonl"]);
        let text = fs::read_to_string(d.0.join("current.jsonl")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        for (line, i) in lines.iter().zip([1u16, 2, 3]) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let mut want = Vec::new();
            LogFormat::default()
                .write_json_line(&rec(i), &NodeMeta::default(), &mut want)
                .unwrap();
            let want: serde_json::Value = serde_json::from_slice(&want).unwrap();
            assert_eq!(v, want);
        }
    }

    #[test]
    fn aws_text_has_header_in_every_file() {
        let d = TempDir::new("aws");
        let (t, now) = clock();
        let mut c = cfg(&d.0, FileFormat::AwsText);
        c.max_file_age = Duration::from_secs(60);
        let mut sink = FileSink::open_with_clock(c, now).unwrap();
        sink.write(&[rec(1)]).unwrap();
        sink.write(&[rec(2)]).unwrap();
        t.fetch_add(60, Ordering::SeqCst);
        sink.write(&[rec(3)]).unwrap();
        let files = sink.files();
        assert_eq!(files.len(), 2);
        assert!(files[1].ends_with("current.log"));
        let first = fs::read_to_string(&files[0]).unwrap();
        assert_eq!(first, format!("{}\n{}\n{}\n", header(), text(1), text(2)));
        let second = fs::read_to_string(&files[1]).unwrap();
        assert_eq!(second, format!("{}\n{}\n", header(), text(3)));
    }

    #[test]
    fn a_new_log_format_starts_a_new_text_file() {
        let d = TempDir::new("fmtchange");
        let (_, now) = clock();
        let mut sink = FileSink::open_with_clock(cfg(&d.0, FileFormat::AwsText), now).unwrap();
        sink.write(&[rec(1)]).unwrap();
        let custom = LogFormat::parse("${srcport} ${flow-direction}").unwrap();
        sink.set_log_format(custom.clone()).unwrap();
        sink.write(&[rec(2)]).unwrap();
        let files = sink.files();
        assert_eq!(files.len(), 2);
        assert_eq!(
            fs::read_to_string(&files[0]).unwrap(),
            format!("{}\n{}\n", header(), text(1))
        );
        assert_eq!(
            fs::read_to_string(&files[1]).unwrap(),
            "srcport flow-direction\n1002 ingress\n"
        );
        // Reopened with the same format (a restart): the file is adopted, not rotated.
        drop(sink);
        let mut c = cfg(&d.0, FileFormat::AwsText);
        c.log_format = custom;
        let (_, now) = clock();
        let mut sink = FileSink::open_with_clock(c, now).unwrap();
        sink.write(&[rec(3)]).unwrap();
        assert_eq!(sink.files().len(), 2);
        // Reopened with another format: the old file is rotated first.
        drop(sink);
        let (_, now) = clock();
        let mut sink = FileSink::open_with_clock(cfg(&d.0, FileFormat::AwsText), now).unwrap();
        sink.write(&[rec(4)]).unwrap();
        let files = sink.files();
        assert_eq!(files.len(), 3);
        assert_eq!(
            fs::read_to_string(&files[1]).unwrap(),
            "srcport flow-direction\n1002 ingress\n1003 ingress\n"
        );
        assert_eq!(
            fs::read_to_string(&files[2]).unwrap(),
            format!("{}\n{}\n", header(), text(4))
        );
    }

    #[test]
    fn rotates_by_size_before_the_batch() {
        let d = TempDir::new("size");
        let (_, now) = clock();
        let line = {
            let mut b = Vec::new();
            LogFormat::default()
                .write_json_line(&rec(1), &NodeMeta::default(), &mut b)
                .unwrap();
            b.len() as u64
        };
        let mut c = cfg(&d.0, FileFormat::JsonLines);
        c.max_file_bytes = 3 * line;
        let mut sink = FileSink::open_with_clock(c, now).unwrap();
        sink.write(&[rec(1), rec(2)]).unwrap();
        sink.write(&[rec(3)]).unwrap(); // exactly at the limit: no rotation
        assert_eq!(sink.files().len(), 1);
        sink.write(&[rec(4)]).unwrap(); // would exceed: rotate first
        let n = names(&sink);
        assert_eq!(n.len(), 2);
        assert_eq!(n[0], "flowlog-20231114T221320Z-000001.jsonl");
        assert_eq!(n[1], "current.jsonl");
        assert_eq!(fs::metadata(&sink.files()[0]).unwrap().len(), 3 * line);
        assert_eq!(fs::metadata(d.0.join("current.jsonl")).unwrap().len(), line);
        // A batch larger than the limit still goes into one (fresh) file, whole.
        sink.write(&[rec(5), rec(6), rec(7), rec(8)]).unwrap();
        assert_eq!(sink.files().len(), 3);
        assert_eq!(
            fs::metadata(d.0.join("current.jsonl")).unwrap().len(),
            4 * line
        );
    }

    #[test]
    fn rotates_by_age_and_not_when_empty() {
        let d = TempDir::new("age");
        let (t, now) = clock();
        let mut c = cfg(&d.0, FileFormat::JsonLines);
        c.max_file_age = Duration::from_secs(3600);
        let mut sink = FileSink::open_with_clock(c, now).unwrap();
        // An empty file is never rotated, however old.
        t.fetch_add(10_000, Ordering::SeqCst);
        sink.write(&[]).unwrap();
        sink.write(&[rec(1)]).unwrap();
        assert_eq!(sink.files().len(), 1);
        t.fetch_add(3599, Ordering::SeqCst);
        sink.write(&[rec(2)]).unwrap();
        assert_eq!(sink.files().len(), 1);
        t.fetch_add(1, Ordering::SeqCst);
        // An idle call still closes an old file on time.
        sink.write(&[]).unwrap();
        assert_eq!(sink.files().len(), 2);
        let n = names(&sink);
        let rotated = n[0].as_str();
        assert!(
            rotated.starts_with("flowlog-") && rotated.ends_with("-000001.jsonl"),
            "{rotated}"
        );
        assert_eq!(fs::metadata(d.0.join("current.jsonl")).unwrap().len(), 0);
        sink.write(&[rec(3)]).unwrap();
        assert_eq!(sink.files().len(), 2);
    }

    #[test]
    fn retention_by_count() {
        let d = TempDir::new("count");
        let (_, now) = clock();
        let mut c = cfg(&d.0, FileFormat::JsonLines);
        c.max_file_bytes = 1; // every batch rotates the previous one
        c.retain_files = 3;
        let mut sink = FileSink::open_with_clock(c, now).unwrap();
        for i in 0..8 {
            sink.write(&[rec(i)]).unwrap();
        }
        let n = names(&sink);
        assert_eq!(
            n,
            [
                "flowlog-20231114T221320Z-000005.jsonl",
                "flowlog-20231114T221320Z-000006.jsonl",
                "flowlog-20231114T221320Z-000007.jsonl",
                "current.jsonl"
            ]
        );
        // The newest rotated file holds record 6, the current one record 7.
        let v: serde_json::Value =
            serde_json::from_str(fs::read_to_string(&sink.files()[2]).unwrap().trim()).unwrap();
        assert_eq!(v["srcport"], 1006);
    }

    #[test]
    fn retention_by_age() {
        let d = TempDir::new("retage");
        let (t, now) = clock();
        let mut c = cfg(&d.0, FileFormat::JsonLines);
        c.max_file_bytes = 1;
        c.retain_age = Duration::from_secs(7 * 86400);
        let mut sink = FileSink::open_with_clock(c, now).unwrap();
        sink.write(&[rec(0)]).unwrap();
        sink.write(&[rec(1)]).unwrap(); // rotates file 1 at T0
        t.fetch_add(86400, Ordering::SeqCst);
        sink.write(&[rec(2)]).unwrap(); // rotates file 2 at T0 + 1 day
        assert_eq!(sink.files().len(), 3);
        t.fetch_add(6 * 86400 + 1, Ordering::SeqCst);
        sink.write(&[rec(3)]).unwrap(); // file 1 is now older than 7 days
        let n = names(&sink);
        assert_eq!(n.len(), 3, "{n:?}");
        assert!(n[0].ends_with("-000002.jsonl"), "{n:?}");
        assert!(n[1].ends_with("-000003.jsonl"), "{n:?}");
    }

    #[test]
    fn reopen_continues_sequence_and_cuts_torn_line() {
        let d = TempDir::new("reopen");
        let (_, now) = clock();
        let mut c = cfg(&d.0, FileFormat::JsonLines);
        c.max_file_bytes = 1;
        {
            let mut sink = FileSink::open_with_clock(c.clone(), now).unwrap();
            sink.write(&[rec(0)]).unwrap();
            sink.write(&[rec(1)]).unwrap();
        }
        let cur = d.0.join("current.jsonl");
        let whole = fs::metadata(&cur).unwrap().len();
        let mut f = OpenOptions::new().append(true).open(&cur).unwrap();
        f.write_all(b"{\"version\":5,\"interf").unwrap();
        drop(f);
        let (_, now) = clock();
        let mut c2 = c.clone();
        c2.max_file_bytes = u64::MAX;
        let mut sink = FileSink::open_with_clock(c2, now).unwrap();
        assert_eq!(fs::metadata(&cur).unwrap().len(), whole);
        sink.write(&[rec(2)]).unwrap();
        let text = fs::read_to_string(&cur).unwrap();
        assert_eq!(text.lines().count(), 2);
        for l in text.lines() {
            serde_json::from_str::<serde_json::Value>(l).unwrap();
        }
        // Size rotation continues the sequence after the existing rotated file.
        let mut c3 = c;
        c3.max_file_bytes = 1;
        drop(sink);
        let (_, now) = clock();
        let mut sink = FileSink::open_with_clock(c3, now).unwrap();
        sink.write(&[rec(3)]).unwrap();
        let n = names(&sink);
        assert!(
            n[0].ends_with("-000001.jsonl") && n[1].ends_with("-000002.jsonl"),
            "{n:?}"
        );
    }

    #[test]
    fn format_change_rotates_the_other_active_file() {
        let d = TempDir::new("fmt");
        let (_, now) = clock();
        {
            let mut sink =
                FileSink::open_with_clock(cfg(&d.0, FileFormat::JsonLines), now).unwrap();
            sink.write(&[rec(0)]).unwrap();
        }
        let (_, now) = clock();
        let mut sink = FileSink::open_with_clock(cfg(&d.0, FileFormat::AwsText), now).unwrap();
        sink.write(&[rec(1)]).unwrap();
        let n = names(&sink);
        assert_eq!(n, ["flowlog-20231114T221320Z-000001.jsonl", "current.log"]);
    }

    /// A file that accepts `room` more bytes, then fails like a full disk.
    struct FailingFile {
        data: Cursor<Vec<u8>>,
        room: usize,
        fail_sync: bool,
    }

    impl Write for FailingFile {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            let n = buf.len().min(self.room).min(7); // short writes, too
            self.room -= n;
            self.data.write(&buf[..n])
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Seek for FailingFile {
        fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
            self.data.seek(pos)
        }
    }

    impl SetLen for FailingFile {
        fn set_len(&mut self, len: u64) -> io::Result<()> {
            self.data.get_mut().truncate(len as usize);
            Ok(())
        }
        fn sync_data(&mut self) -> io::Result<()> {
            if self.fail_sync {
                Err(io::Error::from_raw_os_error(libc::EIO))
            } else {
                Ok(())
            }
        }
    }

    #[test]
    fn failed_batch_is_cut_back_and_retry_writes_it_once() {
        let mut f = FailingFile {
            data: Cursor::new(b"line1\n".to_vec()),
            room: 10,
            fail_sync: false,
        };
        let err = append_batch(&mut f, 6, b"line2\nline3\n").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(f.data.get_ref(), b"line1\n");
        let sink_err = SinkError::io("write", Path::new("/x/current.jsonl"), err);
        assert!(sink_err.is_disk_full());
        assert_eq!(sink_err.path(), Some(Path::new("/x/current.jsonl")));
        assert!(
            sink_err.to_string().contains("/x/current.jsonl"),
            "{sink_err}"
        );

        // Space freed: the retry leaves the batch in the file exactly once.
        f.room = usize::MAX;
        append_batch(&mut f, 6, b"line2\nline3\n").unwrap();
        assert_eq!(f.data.get_ref(), b"line1\nline2\nline3\n");

        // A failed sync is a failed batch too.
        f.fail_sync = true;
        let err = append_batch(&mut f, 18, b"line4\n").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO));
        assert_eq!(f.data.get_ref(), b"line1\nline2\nline3\n");
        assert!(!SinkError::io("write", Path::new("/x"), err).is_disk_full());
    }

    #[test]
    fn write_error_names_path_and_keeps_file_whole() {
        let d = TempDir::new("err");
        let mut sink = FileSink::open(cfg(&d.0, FileFormat::JsonLines)).unwrap();
        sink.write(&[rec(0)]).unwrap();
        let before = fs::read(d.0.join("current.jsonl")).unwrap();
        // Swap in a read-only handle: every write fails with EBADF, even as root.
        sink.file = File::open(d.0.join("current.jsonl")).unwrap();
        let err = sink.write(&[rec(1)]).unwrap_err();
        assert_eq!(err.errno(), Some(libc::EBADF));
        assert!(!err.is_disk_full());
        assert_eq!(err.path(), Some(d.0.join("current.jsonl").as_path()));
        assert_eq!(fs::read(d.0.join("current.jsonl")).unwrap(), before);
        sink.file = open_current(&d.0.join("current.jsonl")).unwrap();
        sink.write(&[rec(1)]).unwrap();
        assert_eq!(
            fs::read_to_string(d.0.join("current.jsonl"))
                .unwrap()
                .lines()
                .count(),
            2
        );
    }

    #[test]
    fn rotated_names_parse() {
        let (seq, at) = parse_rotated_name("flowlog-20231114T221320Z-000042.log").unwrap();
        assert_eq!(seq, 42);
        assert_eq!(at, SystemTime::UNIX_EPOCH + Duration::from_secs(T0));
        assert!(parse_rotated_name("flowlog-20231114T221320Z-000042.txt").is_none());
        assert!(parse_rotated_name("current.jsonl").is_none());
        assert!(parse_rotated_name("flowlog-garbage-1.jsonl").is_none());
    }
}
