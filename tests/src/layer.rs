//! Hand-made layer tars and the compression helpers.
//!
//! The `tar` crate's `Builder` refuses exactly the entries a hostile image
//! contains (`..`, absolute paths, a symlink named `./`), so headers are
//! written here byte by byte: every field is whatever the test asks for.
//!
//! ```
//! use exploder_tests::layer::{Entry, LayerBuilder};
//! let tar = LayerBuilder::new()
//!     .dir("etc", 0o755)
//!     .file("etc/hostname", b"box\n", 0o644)
//!     .symlink("etc/mtab", "/proc/self/mounts")
//!     .entry(Entry::file("usr/bin/su", b"#!", 0o4755).owner(0, 0).xattr("user.k", b"v"))
//!     .whiteout("var/old")
//!     .build();
//! assert_eq!(tar.len() % 512, 0);
//! ```

use std::io::Write;

/// Tar block size; every header and every content run is padded to it.
const BLOCK: usize = 512;

/// Default mtime of every entry (2020-09-13T12:26:40Z): fixed so layers, and
/// so digests, are the same on every run.
pub const DEFAULT_MTIME: u64 = 1_600_000_000;

/// Tar type flags.
pub mod typeflag {
    pub const REGULAR: u8 = b'0';
    pub const HARDLINK: u8 = b'1';
    pub const SYMLINK: u8 = b'2';
    pub const CHAR_DEVICE: u8 = b'3';
    pub const BLOCK_DEVICE: u8 = b'4';
    pub const DIRECTORY: u8 = b'5';
    pub const FIFO: u8 = b'6';
    /// PAX extended header for the next entry.
    pub const PAX: u8 = b'x';
    /// PAX global header.
    pub const PAX_GLOBAL: u8 = b'g';
    /// GNU long name for the next entry.
    pub const GNU_LONGNAME: u8 = b'L';
    /// GNU long link name for the next entry.
    pub const GNU_LONGLINK: u8 = b'K';
}

/// Modification time, with the sub-second part that only PAX can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mtime {
    pub secs: u64,
    /// When non-zero, a PAX `mtime=secs.nanos` record is written too.
    pub nanos: u32,
}

impl Mtime {
    pub fn secs(secs: u64) -> Self {
        Mtime { secs, nanos: 0 }
    }
}

impl Default for Mtime {
    fn default() -> Self {
        Mtime::secs(DEFAULT_MTIME)
    }
}

/// How a path (and a link name) is put in the archive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LongName {
    /// The 100-byte header field when it fits, else a GNU `L`/`K` record:
    /// what GNU tar does by default.
    #[default]
    Auto,
    /// Always a GNU `././@LongLink` record (type `L`/`K`), even for a short
    /// name; the header field then holds the name cut to 100 bytes.
    Gnu,
    /// Always a PAX `path`/`linkpath` record, as Go and Docker write them;
    /// the header field holds the name cut to 100 bytes.
    Pax,
    /// The ustar `prefix` + `name` split (paths up to 255 bytes). Panics when
    /// the path has no `/` at which it splits into 155 + 100 bytes. The link
    /// name has no prefix field: it goes in a GNU record if too long.
    UstarPrefix,
}

/// Ownership, times, xattrs and encoding of one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryOptions {
    pub uid: u64,
    pub gid: u64,
    /// Written as is (`""` by default); umoci and exploder go by the numbers.
    pub uname: Vec<u8>,
    pub gname: Vec<u8>,
    pub mtime: Mtime,
    /// Written as PAX `SCHILY.xattr.<name>` records, in this order.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Extra PAX records, written after the ones the harness computes, so a
    /// test can override `uid`, `size`, `path`... with inconsistent values.
    pub pax: Vec<(String, Vec<u8>)>,
    pub long_names: LongName,
}

impl Default for EntryOptions {
    fn default() -> Self {
        EntryOptions {
            uid: 0,
            gid: 0,
            uname: Vec::new(),
            gname: Vec::new(),
            mtime: Mtime::default(),
            xattrs: Vec::new(),
            pax: Vec::new(),
            long_names: LongName::Auto,
        }
    }
}

/// One tar entry, every field raw. Build one with the constructors and refine
/// it with the chained setters; add it with [`LayerBuilder::entry`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Path bytes exactly as stored: `../x`, `/etc/x`, `./`, non-UTF-8...
    pub path: Vec<u8>,
    pub typeflag: u8,
    /// Header mode field, including setuid/setgid/sticky (`0o4755`); a test
    /// may add file-type bits (`0o100644`) as some writers do.
    pub mode: u32,
    /// Content after the header; its length is the header size field.
    pub content: Vec<u8>,
    /// Symlink target or hardlink target, raw.
    pub link_name: Vec<u8>,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub opts: EntryOptions,
}

impl Entry {
    /// An entry of any type flag, mode 0o644, no content.
    pub fn new(path: impl AsRef<[u8]>, typeflag: u8) -> Self {
        Entry {
            path: path.as_ref().to_vec(),
            typeflag,
            mode: 0o644,
            content: Vec::new(),
            link_name: Vec::new(),
            dev_major: 0,
            dev_minor: 0,
            opts: EntryOptions::default(),
        }
    }

    pub fn file(path: impl AsRef<[u8]>, content: impl AsRef<[u8]>, mode: u32) -> Self {
        let mut e = Entry::new(path, typeflag::REGULAR).mode(mode);
        e.content = content.as_ref().to_vec();
        e
    }

    pub fn dir(path: impl AsRef<[u8]>, mode: u32) -> Self {
        Entry::new(path, typeflag::DIRECTORY).mode(mode)
    }

    /// Mode 0o777, as symlinks are.
    pub fn symlink(path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Self {
        Entry::new(path, typeflag::SYMLINK)
            .mode(0o777)
            .link_name(target)
    }

    /// `target` is the path of an earlier entry of the archive, raw.
    pub fn hardlink(path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Self {
        Entry::new(path, typeflag::HARDLINK).link_name(target)
    }

    pub fn fifo(path: impl AsRef<[u8]>) -> Self {
        Entry::new(path, typeflag::FIFO)
    }

    pub fn char_device(path: impl AsRef<[u8]>, major: u32, minor: u32) -> Self {
        Entry::new(path, typeflag::CHAR_DEVICE)
            .mode(0o666)
            .device(major, minor)
    }

    pub fn block_device(path: impl AsRef<[u8]>, major: u32, minor: u32) -> Self {
        Entry::new(path, typeflag::BLOCK_DEVICE)
            .mode(0o660)
            .device(major, minor)
    }

    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    pub fn content(mut self, content: impl AsRef<[u8]>) -> Self {
        self.content = content.as_ref().to_vec();
        self
    }

    pub fn link_name(mut self, target: impl AsRef<[u8]>) -> Self {
        self.link_name = target.as_ref().to_vec();
        self
    }

    pub fn device(mut self, major: u32, minor: u32) -> Self {
        self.dev_major = major;
        self.dev_minor = minor;
        self
    }

    pub fn owner(mut self, uid: u64, gid: u64) -> Self {
        self.opts.uid = uid;
        self.opts.gid = gid;
        self
    }

    pub fn names(mut self, uname: impl AsRef<[u8]>, gname: impl AsRef<[u8]>) -> Self {
        self.opts.uname = uname.as_ref().to_vec();
        self.opts.gname = gname.as_ref().to_vec();
        self
    }

    pub fn mtime(mut self, secs: u64) -> Self {
        self.opts.mtime = Mtime::secs(secs);
        self
    }

    /// Sub-second mtime, carried by a PAX `mtime` record.
    pub fn mtime_nanos(mut self, secs: u64, nanos: u32) -> Self {
        assert!(nanos < 1_000_000_000, "nanos out of range");
        self.opts.mtime = Mtime { secs, nanos };
        self
    }

    pub fn xattr(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.opts
            .xattrs
            .push((name.to_string(), value.as_ref().to_vec()));
        self
    }

    pub fn pax(mut self, key: &str, value: impl AsRef<[u8]>) -> Self {
        self.opts
            .pax
            .push((key.to_string(), value.as_ref().to_vec()));
        self
    }

    pub fn long_names(mut self, how: LongName) -> Self {
        self.opts.long_names = how;
        self
    }

    /// Replaces all options (owner, mtime, xattrs, PAX, name encoding).
    pub fn opts(mut self, opts: EntryOptions) -> Self {
        self.opts = opts;
        self
    }
}

/// Builds an uncompressed layer tar entry by entry.
///
/// The helpers use [`EntryOptions`] from [`LayerBuilder::defaults`] (owner
/// 0:0, mtime [`DEFAULT_MTIME`]); [`LayerBuilder::entry`] takes an [`Entry`]
/// with full control. Methods chain on `&mut Self`, so a builder can be
/// filled in a loop too.
#[derive(Clone, Debug, Default)]
pub struct LayerBuilder {
    buf: Vec<u8>,
    defaults: EntryOptions,
}

impl LayerBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Options for the entries the helpers (`dir`, `file`...) add from now on.
    pub fn defaults(&mut self, opts: EntryOptions) -> &mut Self {
        self.defaults = opts;
        self
    }

    fn helper(&mut self, entry: Entry) -> &mut Self {
        let entry = entry.opts(self.defaults.clone());
        self.entry(entry)
    }

    pub fn dir(&mut self, path: impl AsRef<[u8]>, mode: u32) -> &mut Self {
        self.helper(Entry::dir(path, mode))
    }

    pub fn file(
        &mut self,
        path: impl AsRef<[u8]>,
        content: impl AsRef<[u8]>,
        mode: u32,
    ) -> &mut Self {
        self.helper(Entry::file(path, content, mode))
    }

    pub fn symlink(&mut self, path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> &mut Self {
        self.helper(Entry::symlink(path, target))
    }

    pub fn hardlink(&mut self, path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> &mut Self {
        self.helper(Entry::hardlink(path, target))
    }

    pub fn fifo(&mut self, path: impl AsRef<[u8]>) -> &mut Self {
        self.helper(Entry::fifo(path))
    }

    pub fn char_device(&mut self, path: impl AsRef<[u8]>, major: u32, minor: u32) -> &mut Self {
        self.helper(Entry::char_device(path, major, minor))
    }

    pub fn block_device(&mut self, path: impl AsRef<[u8]>, major: u32, minor: u32) -> &mut Self {
        self.helper(Entry::block_device(path, major, minor))
    }

    /// `dir/.wh.name` for `path` = `dir/name`: deletes `name` of lower layers.
    pub fn whiteout(&mut self, path: impl AsRef<[u8]>) -> &mut Self {
        let path = path.as_ref();
        let (dir, name) = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => (&path[..=i], &path[i + 1..]),
            None => (&b""[..], path),
        };
        let mut wh = dir.to_vec();
        wh.extend_from_slice(b".wh.");
        wh.extend_from_slice(name);
        self.helper(Entry::file(wh, b"", 0o644))
    }

    /// `dir/.wh..wh..opq`: hides every lower-layer child of `dir`. An empty
    /// `dir` means the root.
    pub fn opaque(&mut self, dir: impl AsRef<[u8]>) -> &mut Self {
        let mut p = dir.as_ref().to_vec();
        if !p.is_empty() && !p.ends_with(b"/") {
            p.push(b'/');
        }
        p.extend_from_slice(b".wh..wh..opq");
        self.helper(Entry::file(p, b"", 0o644))
    }

    /// Appends `entry` exactly as given (its own options, not the defaults),
    /// preceded by the GNU/PAX records its names, mtime and xattrs need.
    pub fn entry(&mut self, entry: Entry) -> &mut Self {
        write_entry(&mut self.buf, &entry);
        self
    }

    /// Same as [`LayerBuilder::entry`]: the name hostile tests read best with.
    pub fn raw_entry(&mut self, entry: Entry) -> &mut Self {
        self.entry(entry)
    }

    /// Appends bytes verbatim (a truncated header, junk between entries...).
    pub fn raw_bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self
    }

    /// The archive with its end marker (two zero blocks).
    pub fn build(&self) -> Vec<u8> {
        let mut out = self.buf.clone();
        out.resize(out.len() + 2 * BLOCK, 0);
        out
    }

    /// The archive without an end marker: some real layers end that way.
    pub fn build_without_trailer(&self) -> Vec<u8> {
        self.buf.clone()
    }
}

/// Writes the extension records (GNU long names, PAX) and then the entry.
fn write_entry(out: &mut Vec<u8>, e: &Entry) {
    let o = &e.opts;
    let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
    // GNU records carry GNU magic on both headers, as GNU tar writes them.
    let mut gnu = false;

    let mut name_field = e.path.clone();
    let mut prefix_field = Vec::new();
    let path_too_long = e.path.len() > 100;
    match o.long_names {
        LongName::Auto if !path_too_long => {}
        LongName::Auto | LongName::Gnu => {
            write_gnu_record(out, typeflag::GNU_LONGNAME, &e.path);
            gnu = true;
            name_field.truncate(100);
        }
        LongName::Pax => {
            pax.push(("path".into(), e.path.clone()));
            name_field.truncate(100);
        }
        LongName::UstarPrefix => {
            let (prefix, name) = split_ustar(&e.path)
                .unwrap_or_else(|| panic!("{:?} has no ustar prefix split", bstr(&e.path)));
            prefix_field = prefix.to_vec();
            name_field = name.to_vec();
        }
    }

    let mut link_field = e.link_name.clone();
    let link_too_long = e.link_name.len() > 100;
    match o.long_names {
        LongName::Auto | LongName::UstarPrefix if !link_too_long => {}
        LongName::Pax => {
            if !e.link_name.is_empty() {
                pax.push(("linkpath".into(), e.link_name.clone()));
            }
            link_field.truncate(100);
        }
        _ => {
            if !e.link_name.is_empty() {
                write_gnu_record(out, typeflag::GNU_LONGLINK, &e.link_name);
                gnu = true;
            }
            link_field.truncate(100);
        }
    }

    if o.mtime.nanos != 0 {
        let value = format!("{}.{:09}", o.mtime.secs, o.mtime.nanos);
        pax.push(("mtime".into(), value.into_bytes()));
    }
    for (name, value) in &o.xattrs {
        pax.push((format!("SCHILY.xattr.{name}"), value.clone()));
    }
    pax.extend(o.pax.iter().cloned());

    if !pax.is_empty() {
        let body = pax_records(&pax);
        let mut hname = b"PaxHeaders/".to_vec();
        hname.extend_from_slice(basename(&e.path));
        hname.truncate(100);
        let h = Header {
            name: hname,
            mode: 0o644,
            size: body.len() as u64,
            mtime: o.mtime.secs,
            typeflag: typeflag::PAX,
            ..Header::default()
        };
        out.extend_from_slice(&h.encode());
        push_padded(out, &body);
    }

    let h = Header {
        name: name_field,
        mode: e.mode as u64,
        uid: o.uid,
        gid: o.gid,
        size: e.content.len() as u64,
        mtime: o.mtime.secs,
        typeflag: e.typeflag,
        link_name: link_field,
        gnu,
        uname: o.uname.clone(),
        gname: o.gname.clone(),
        dev_major: e.dev_major as u64,
        dev_minor: e.dev_minor as u64,
        prefix: prefix_field,
    };
    out.extend_from_slice(&h.encode());
    push_padded(out, &e.content);
}

/// A GNU `././@LongLink` record: the name, NUL-terminated, as content.
fn write_gnu_record(out: &mut Vec<u8>, flag: u8, name: &[u8]) {
    let mut body = name.to_vec();
    body.push(0);
    let h = Header {
        name: b"././@LongLink".to_vec(),
        mode: 0o644,
        size: body.len() as u64,
        typeflag: flag,
        gnu: true,
        ..Header::default()
    };
    out.extend_from_slice(&h.encode());
    push_padded(out, &body);
}

/// PAX records: `"<len> <key>=<value>\n"`, where `<len>` counts itself.
fn pax_records(records: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in records {
        let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        out.extend_from_slice(format!("{len} {key}=").as_bytes());
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out
}

fn push_padded(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(data);
    let rem = data.len() % BLOCK;
    if rem != 0 {
        out.resize(out.len() + BLOCK - rem, 0);
    }
}

fn basename(path: &[u8]) -> &[u8] {
    let trimmed = path.strip_suffix(b"/").unwrap_or(path);
    match trimmed.iter().rposition(|&b| b == b'/') {
        Some(i) => &trimmed[i + 1..],
        None => trimmed,
    }
}

/// Splits at the last `/` that leaves a prefix <= 155 and a name <= 100.
fn split_ustar(path: &[u8]) -> Option<(&[u8], &[u8])> {
    (0..path.len())
        .rev()
        .filter(|&i| path[i] == b'/')
        .map(|i| (&path[..i], &path[i + 1..]))
        .find(|(p, n)| p.len() <= 155 && n.len() <= 100 && !n.is_empty())
}

fn bstr(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The fields of one 512-byte header. Everything too long is cut by the
/// caller; numbers that do not fit in octal are written in base-256.
#[derive(Default)]
struct Header {
    name: Vec<u8>,
    mode: u64,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: u64,
    typeflag: u8,
    link_name: Vec<u8>,
    /// GNU magic (`"ustar  \0"`) instead of POSIX ustar (`"ustar\0" "00"`).
    gnu: bool,
    uname: Vec<u8>,
    gname: Vec<u8>,
    dev_major: u64,
    dev_minor: u64,
    prefix: Vec<u8>,
}

impl Header {
    fn encode(&self) -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        put_bytes(&mut b[0..100], &self.name);
        put_number(&mut b[100..108], self.mode);
        put_number(&mut b[108..116], self.uid);
        put_number(&mut b[116..124], self.gid);
        put_number(&mut b[124..136], self.size);
        put_number(&mut b[136..148], self.mtime);
        b[156] = self.typeflag;
        put_bytes(&mut b[157..257], &self.link_name);
        if self.gnu {
            b[257..265].copy_from_slice(b"ustar  \0");
        } else {
            b[257..263].copy_from_slice(b"ustar\0");
            b[263..265].copy_from_slice(b"00");
        }
        put_bytes(&mut b[265..297], &self.uname);
        put_bytes(&mut b[297..329], &self.gname);
        // Devices numbers only for devices, as GNU tar and Go do: zeros
        // elsewhere would be equally valid but differ from real layers.
        if matches!(
            self.typeflag,
            typeflag::CHAR_DEVICE | typeflag::BLOCK_DEVICE
        ) {
            put_number(&mut b[329..337], self.dev_major);
            put_number(&mut b[337..345], self.dev_minor);
        }
        put_bytes(&mut b[345..500], &self.prefix);
        // Checksum: byte sum with the checksum field counted as spaces,
        // written as six octal digits, NUL, space.
        b[148..156].fill(b' ');
        let sum: u64 = b.iter().map(|&x| x as u64).sum();
        let digits = format!("{sum:06o}");
        b[148..154].copy_from_slice(digits.as_bytes());
        b[154] = 0;
        b[155] = b' ';
        b
    }
}

fn put_bytes(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// Octal, zero-padded, NUL-terminated; base-256 (GNU) when it does not fit.
fn put_number(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let octal = format!("{value:0digits$o}");
    if octal.len() <= digits {
        field[..digits].copy_from_slice(octal.as_bytes());
        field[digits] = 0;
    } else {
        field.fill(0);
        let be = value.to_be_bytes();
        let n = be.len().min(field.len() - 1);
        let start = field.len() - n;
        field[start..].copy_from_slice(&be[be.len() - n..]);
        field[0] |= 0x80;
    }
}

/// Gzip in one member (flate2, default level, header mtime 0: deterministic).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).expect("gzip");
    enc.finish().expect("gzip")
}

/// Gzip in three concatenated members (the data cut in thirds; a member may
/// be empty for tiny data). Valid gzip that a decoder reading only the first
/// member gets wrong; pigz and some registries produce such streams.
pub fn gzip_multi_member(data: &[u8]) -> Vec<u8> {
    let (a, rest) = data.split_at(data.len() / 3);
    let (b, c) = rest.split_at(rest.len() / 2);
    [gzip(a), gzip(b), gzip(c)].concat()
}

/// Zstd in one frame (level 3).
pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).expect("zstd")
}

/// A skippable frame, then the data in two zstd frames: valid zstd that a
/// decoder stopping after the first frame, or choking on a skippable frame,
/// gets wrong.
pub fn zstd_multi_frame(data: &[u8]) -> Vec<u8> {
    let (a, b) = data.split_at(data.len() / 2);
    let payload = b"exploder-tests skippable frame";
    let mut out = Vec::new();
    out.extend_from_slice(&0x184D_2A50u32.to_le_bytes()); // skippable magic 0
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&zstd(a));
    out.extend_from_slice(&zstd(b));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// (path, link name, type flag, content length, mtime) of one entry.
    type ReadBack = (Vec<u8>, Option<Vec<u8>>, u8, u64, u64);

    /// Reads back the entries with the tar crate.
    fn entries(tar_bytes: &[u8]) -> Vec<ReadBack> {
        let mut ar = tar::Archive::new(tar_bytes);
        ar.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = e.path_bytes().into_owned();
                let link = e.link_name_bytes().map(|l| l.into_owned());
                let h = e.header();
                let (t, mtime) = (h.entry_type().as_byte(), h.mtime().unwrap());
                let mut content = Vec::new();
                e.read_to_end(&mut content).unwrap();
                (path, link, t, content.len() as u64, mtime)
            })
            .collect()
    }

    #[test]
    fn tar_crate_reads_long_and_raw_names() {
        let long = "d/".repeat(80) + "file";
        let tar = LayerBuilder::new()
            .file("../x", b"abc", 0o644)
            .file(&long, b"long", 0o644)
            .entry(Entry::file(&long, b"pax", 0o644).long_names(LongName::Pax))
            .entry(Entry::symlink("s", long.as_bytes()).long_names(LongName::Pax))
            .hardlink("h", &long)
            .entry(Entry::file("a/".repeat(60) + "f", b"", 0o644).long_names(LongName::UstarPrefix))
            .build();
        let got = entries(&tar);
        assert_eq!(got[0].0, b"../x");
        assert_eq!(got[0].3, 3);
        assert_eq!(got[1].0, long.as_bytes());
        assert_eq!(got[2].0, long.as_bytes());
        assert_eq!(got[3].1.as_deref(), Some(long.as_bytes()));
        assert_eq!(got[4].1.as_deref(), Some(long.as_bytes()));
        assert_eq!(got[5].0, ("a/".repeat(60) + "f").as_bytes());
        assert!(got.iter().all(|e| e.4 == DEFAULT_MTIME));
    }

    #[test]
    fn pax_record_length_counts_itself() {
        // "k=v" + ' ' + '\n' is 5 bytes, plus the one digit of the length.
        assert_eq!(pax_records(&[("k".into(), b"v".to_vec())]), b"6 k=v\n");
        // 10 bytes without the length, whose two digits make it 12.
        let r = pax_records(&[("key".into(), b"valu".to_vec())]);
        assert_eq!(r, b"12 key=valu\n");
        // 98 + 2 digits = 100: the length grows to three digits.
        let r = pax_records(&[("k".into(), vec![b'v'; 94])]);
        assert_eq!(&r[..4], b"101 ");
        assert_eq!(r.len(), 101);
    }

    #[test]
    fn whiteout_names() {
        let tar = LayerBuilder::new()
            .whiteout("a/b")
            .whiteout("top")
            .opaque("a")
            .opaque("")
            .build();
        let names: Vec<_> = entries(&tar).into_iter().map(|e| e.0).collect();
        assert_eq!(
            names,
            vec![
                b"a/.wh.b".to_vec(),
                b".wh.top".to_vec(),
                b"a/.wh..wh..opq".to_vec(),
                b".wh..wh..opq".to_vec()
            ]
        );
    }

    #[test]
    fn big_uid_uses_base256() {
        let tar = LayerBuilder::new()
            .entry(Entry::file("f", b"", 0o644).owner(1 << 40, 5))
            .build();
        let ar_entries = {
            let mut ar = tar::Archive::new(&tar[..]);
            ar.entries()
                .unwrap()
                .map(|e| e.unwrap().header().uid().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(ar_entries, vec![1 << 40]);
    }

    #[test]
    fn zstd_multi_frame_decodes() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let out = zstd::decode_all(&zstd_multi_frame(&data)[..]).unwrap();
        assert_eq!(out, data);
    }
}
