//! Packs: many sealed chunks in one object, described by their own trailer.
//!
//! ```text
//! blob 0 | blob 1 | ... | sealed trailer | footer (16 bytes)
//!
//! blob    = nonce (24) || AEAD(payload) || tag (16), with the repository's
//!           cipher (crate::crypto)
//!           payload = zstd(plaintext) or plaintext, as the trailer says,
//!           followed in a padded blob by zero bytes and their count (u32
//!           LE), so that the sealed length is a Padmé length ([`padme`]);
//!           associated data = chunk id (32) || kind (1), so a blob cannot be
//!           passed off as another chunk.
//! trailer = nonce || AEAD(protobuf PackTrailer) || tag,
//!           associated data = "CAIRNPAK trailer v1"
//! footer  = magic "CAIRNPAK" (8) || version u16 LE || reserved u16
//!           || trailer length u32 LE
//! ```
//!
//! A pack describes itself, so the index can always be rebuilt from the
//! packs alone. Data chunks and tree chunks go to separate packs: trees are
//! read on every restore and listing, and keeping them apart keeps those
//! reads small.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;

use crate::crypto::{RepoKeys, SEAL_OVERHEAD};
use crate::envelope::PACK_MAGIC;
use crate::error::FormatError;
use crate::fingerprint::Fingerprinter;
use crate::id::{ChunkId, PackId};
use crate::store::{ObjectWriter, StoreError};

/// Current pack format version.
pub const PACK_VERSION: u16 = 1;
/// Footer length.
pub const FOOTER_LEN: usize = 16;
/// Associated data of a pack's sealed trailer (frozen).
pub const TRAILER_AAD: &[u8] = b"CAIRNPAK trailer v1";

/// What a chunk holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlobKind {
    /// File content.
    Data = 0,
    /// An encoded directory tree.
    Tree = 1,
}

impl BlobKind {
    /// Decodes the stored discriminant.
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::Data),
            1 => Some(Self::Tree),
            _ => None,
        }
    }
}

/// How a blob's payload is compressed, and whether it is padded.
///
/// A padded payload is `body || zero bytes || n u32 LE`, where `n` is the
/// number of zero bytes and `body` is the plaintext or its zstd frame: the
/// true length stays inside the AEAD, and the sealed blob is as long as
/// [`Padding::Padme`] makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Stored as is (incompressible data).
    None = 0,
    /// zstd frame.
    Zstd = 1,
    /// Stored as is, padded.
    NonePadded = 2,
    /// zstd frame, padded.
    ZstdPadded = 3,
}

impl Compression {
    /// Decodes the stored discriminant.
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::None),
            1 => Some(Self::Zstd),
            2 => Some(Self::NonePadded),
            3 => Some(Self::ZstdPadded),
            _ => None,
        }
    }

    /// The body is a zstd frame.
    pub fn is_zstd(self) -> bool {
        matches!(self, Self::Zstd | Self::ZstdPadded)
    }

    /// The payload ends with padding.
    pub fn is_padded(self) -> bool {
        matches!(self, Self::NonePadded | Self::ZstdPadded)
    }

    fn padded(self) -> Self {
        match self {
            Self::None | Self::NonePadded => Self::NonePadded,
            Self::Zstd | Self::ZstdPadded => Self::ZstdPadded,
        }
    }
}

/// How the sealed chunks of a repository are padded (recorded in its
/// config; the choice of each blob is in its [`Compression`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Padding {
    /// Sealed chunks are as long as their payload: the store and the index
    /// see each chunk's compressed length to the byte.
    #[default]
    None = 0,
    /// Padmé (Nikitin et al., "Reducing Metadata Leakage from Encrypted
    /// Files and Communication with PURBs", PETS 2019): a sealed length of
    /// `L` bytes is rounded up so that only its top `floor(log2 log2 L) + 1`
    /// bits after the leading one may differ from zero, which reveals
    /// O(log log L) bits of the length and costs at most 11 % (under 3 %
    /// above 1 KiB, measured in `docs/SECURITY.md`).
    Padme = 1,
}

impl Padding {
    /// The name `cairn init --padding` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Padme => "padme",
        }
    }

    /// Decodes the stored discriminant.
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::None),
            1 => Some(Self::Padme),
            _ => None,
        }
    }
}

/// The Padmé length of `len`: the smallest length at least `len` whose
/// lowest `E - S` bits are zero, where `E = floor(log2 len)` and
/// `S = floor(log2 E) + 1`.
pub fn padme(len: u64) -> u64 {
    if len < 2 {
        return len;
    }
    let e = u64::from(63 - len.leading_zeros());
    let s = u64::from(64 - e.leading_zeros());
    let mask = (1u64 << (e - s)) - 1;
    (len + mask) & !mask
}

/// Length of the tail of a padded payload (the count of zero bytes).
const PAD_TAIL: usize = 4;

/// Where a chunk lives: everything needed to read it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlobLocation {
    /// The pack.
    pub pack: PackId,
    /// Offset of the sealed blob in the pack.
    pub offset: u64,
    /// Length of the sealed blob.
    pub stored_len: u32,
    /// Length of the plaintext.
    pub raw_len: u32,
    /// Data or tree.
    pub kind: BlobKind,
    /// Compression of the payload.
    pub compression: Compression,
}

/// One entry of a pack trailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PackEntry {
    /// Chunk id.
    pub id: ChunkId,
    /// Its location.
    pub location: BlobLocation,
}

/// A chunk compressed (when that helps) and not yet sealed: the packer seals
/// it straight into the pack ([`PackWriter::seal`]), so its bytes are
/// copied once on the way to the store.
#[derive(Debug, Clone)]
pub struct PreparedBlob {
    /// Chunk id.
    pub id: ChunkId,
    /// Data or tree.
    pub kind: BlobKind,
    /// The payload to seal: the plaintext itself, or its zstd frame.
    pub payload: Bytes,
    /// Plaintext length.
    pub raw_len: u32,
    /// Payload compression.
    pub compression: Compression,
}

/// A chunk compressed and sealed, ready to append to a pack.
#[derive(Debug, Clone)]
pub struct SealedBlob {
    /// Chunk id.
    pub id: ChunkId,
    /// Data or tree.
    pub kind: BlobKind,
    /// Sealed bytes.
    pub bytes: Vec<u8>,
    /// Plaintext length.
    pub raw_len: u32,
    /// Payload compression.
    pub compression: Compression,
}

/// Associated data of a sealed chunk: its id and kind (frozen), so a
/// chunk cannot be passed off as another or as another kind.
pub fn blob_aad(id: &ChunkId, kind: BlobKind) -> [u8; 33] {
    let mut aad = [0u8; 33];
    aad[..32].copy_from_slice(id.as_bytes());
    aad[32] = kind as u8;
    aad
}

thread_local! {
    /// One zstd context per thread and level: creating a context costs more
    /// than compressing a small chunk, and the output is the same.
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

fn compress(data: &[u8], level: i32) -> Option<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.as_ref().map(|(l, _)| *l) != Some(level) {
            *cell = zstd::bulk::Compressor::new(level).ok().map(|c| (level, c));
        }
        cell.as_mut()?.1.compress(data).ok()
    })
}

fn decompress(data: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = Some(zstd::bulk::Decompressor::new()?);
        }
        match cell.as_mut() {
            Some(d) => d.decompress(data, capacity),
            None => zstd::bulk::decompress(data, capacity),
        }
    })
}

/// The longest a data chunk can be: FastCDC's largest maximum (16 MiB).
pub const MAX_DATA_CHUNK: u32 = fastcdc::v2020::MAXIMUM_MAX as u32;

/// The longest a tree chunk may be (1 GiB: millions of entries in one
/// directory). Longer recorded lengths are refused unread.
pub const MAX_TREE_CHUNK: u32 = 1 << 30;

/// Decompresses a chunk recorded as `location.raw_len` bytes long without
/// trusting that length (it comes from a trailer or the index, which a
/// hostile writer or node chooses) for more than a bound: a chunk is
/// decompressed in one call only when its zstd frame declares the same
/// length and that is at most [`MAX_DATA_CHUNK`]; anything else is
/// streamed, so the
/// memory used follows what the frame really holds, cut off one byte past
/// the recorded length.
fn decompress_recorded(payload: &[u8], location: &BlobLocation) -> Result<Vec<u8>, FormatError> {
    let corrupt = |detail: String| FormatError::Corrupt {
        what: "chunk",
        detail,
    };
    let raw_len = location.raw_len;
    let declared = zstd::zstd_safe::get_frame_content_size(payload)
        .ok()
        .flatten();
    if let Some(n) = declared
        && n != u64::from(raw_len)
    {
        return Err(corrupt(format!(
            "its zstd frame holds {n} bytes where {raw_len} were recorded"
        )));
    }
    // One call, with this thread's context, when the frame declares the
    // recorded length and that length is one a data chunk may have (so a
    // lying length costs at most 16 MiB): every data chunk and nearly every
    // tree. Creating a streaming context per tree cost 5 % of an unchanged
    // re-backup of a kernel tree.
    if declared.is_some() && raw_len <= MAX_DATA_CHUNK {
        return decompress(payload, raw_len as usize).map_err(|e| corrupt(format!("zstd: {e}")));
    }
    use std::io::Read;
    let mut out = Vec::with_capacity((raw_len as usize).min(1 << 20));
    zstd::stream::read::Decoder::with_buffer(payload)
        .and_then(|d| d.take(u64::from(raw_len) + 1).read_to_end(&mut out))
        .map_err(|e| corrupt(format!("zstd: {e}")))?;
    Ok(out)
}

/// Chunks at least this large are probed before being compressed whole.
const PROBE_FROM: usize = 256 * 1024;
/// The probe compresses four slices of this size, spread over the chunk.
const PROBE_SLICE: usize = 16 * 1024;

/// False when a sample of a large chunk does not shrink by at least 3 %:
/// already-compressed or encrypted data then costs 6 % of a full
/// compression attempt instead of all of it (zstd at level 3 runs at about
/// 0.5 GB/s on data it cannot compress).
fn worth_compressing(data: &[u8], level: i32) -> bool {
    if data.len() < PROBE_FROM {
        return true;
    }
    let mut sample = Vec::with_capacity(4 * PROBE_SLICE);
    for k in 0..4 {
        let at = (data.len() - PROBE_SLICE) * k / 3;
        sample.extend_from_slice(&data[at..at + PROBE_SLICE]);
    }
    compress(&sample, level).is_some_and(|z| z.len() + sample.len() / 32 < sample.len())
}

/// Compresses one chunk when that helps; the plaintext is not copied when
/// it is stored as is.
pub fn prepare_blob(
    id: ChunkId,
    kind: BlobKind,
    plaintext: Bytes,
    zstd_level: i32,
    padding: Padding,
) -> PreparedBlob {
    let compressed = worth_compressing(&plaintext, zstd_level)
        .then(|| compress(&plaintext, zstd_level))
        .flatten()
        .filter(|z| z.len() + 16 < plaintext.len());
    let raw_len = plaintext.len() as u32;
    let (payload, compression) = match compressed {
        Some(z) => (Bytes::from(z), Compression::Zstd),
        None => (plaintext, Compression::None),
    };
    let compression = match padding {
        Padding::None => compression,
        Padding::Padme => compression.padded(),
    };
    PreparedBlob {
        id,
        kind,
        payload,
        raw_len,
        compression,
    }
}

/// Compresses (when it helps) and seals one chunk.
pub fn seal_blob(
    keys: &RepoKeys,
    id: ChunkId,
    kind: BlobKind,
    plaintext: &[u8],
    zstd_level: i32,
    padding: Padding,
) -> SealedBlob {
    let blob = prepare_blob(
        id,
        kind,
        Bytes::copy_from_slice(plaintext),
        zstd_level,
        padding,
    );
    let mut bytes = Vec::new();
    seal_prepared(keys, &blob, &mut bytes);
    SealedBlob {
        id,
        kind,
        bytes,
        raw_len: blob.raw_len,
        compression: blob.compression,
    }
}

/// Appends the sealed form of `blob` to `out`, padded when its
/// [`Compression`] says so.
fn seal_prepared(keys: &RepoKeys, blob: &PreparedBlob, out: &mut Vec<u8>) {
    let aad = blob_aad(&blob.id, blob.kind);
    if !blob.compression.is_padded() {
        keys.seal_into(&aad, &blob.payload, out);
        return;
    }
    let bare = (blob.payload.len() + PAD_TAIL + SEAL_OVERHEAD) as u64;
    let zeros = (padme(bare) - bare) as usize;
    keys.seal_padded_into(
        &aad,
        &blob.payload,
        zeros,
        &(zeros as u32).to_le_bytes(),
        out,
    );
}

/// The body of a padded payload (see [`Compression`]).
fn unpad(mut payload: Vec<u8>) -> Result<Vec<u8>, FormatError> {
    let corrupt = |detail: String| FormatError::Corrupt {
        what: "chunk",
        detail,
    };
    let Some(tail_at) = payload.len().checked_sub(PAD_TAIL) else {
        return Err(corrupt(format!(
            "padded payload of {} bytes has no padding length",
            payload.len()
        )));
    };
    let mut tail = [0u8; PAD_TAIL];
    tail.copy_from_slice(&payload[tail_at..]);
    let zeros = u32::from_le_bytes(tail) as usize;
    let Some(body_len) = tail_at.checked_sub(zeros) else {
        return Err(corrupt(format!(
            "{zeros} bytes of padding in a payload of {} bytes",
            payload.len()
        )));
    };
    payload.truncate(body_len);
    Ok(payload)
}

/// Opens a sealed blob and verifies it against its id.
pub fn open_blob(
    keys: &RepoKeys,
    fingerprinter: &Fingerprinter,
    id: &ChunkId,
    location: &BlobLocation,
    sealed: &[u8],
) -> Result<Vec<u8>, FormatError> {
    let what = "chunk";
    let payload = keys
        .open(&blob_aad(id, location.kind), sealed)
        .map_err(|_| FormatError::Auth { what })?;
    let limit = match location.kind {
        BlobKind::Data => MAX_DATA_CHUNK,
        BlobKind::Tree => MAX_TREE_CHUNK,
    };
    if location.raw_len > limit {
        return Err(FormatError::Corrupt {
            what,
            detail: format!(
                "recorded length {} is beyond the longest {:?} chunk ({limit} bytes)",
                location.raw_len, location.kind
            ),
        });
    }
    let payload = if location.compression.is_padded() {
        unpad(payload)?
    } else {
        payload
    };
    let plain = if location.compression.is_zstd() {
        decompress_recorded(&payload, location)?
    } else {
        payload
    };
    if plain.len() != location.raw_len as usize {
        return Err(FormatError::Corrupt {
            what,
            detail: format!(
                "length {} where {} was recorded",
                plain.len(),
                location.raw_len
            ),
        });
    }
    if fingerprinter.chunk_id(&plain) != *id {
        return Err(FormatError::Corrupt {
            what,
            detail: "content does not match its fingerprint".into(),
        });
    }
    Ok(plain)
}

/// The trailer as stored (protobuf).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TrailerRecord {
    /// Entries in pack order.
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<TrailerEntryRecord>,
}

/// One trailer entry as stored.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TrailerEntryRecord {
    /// Chunk id (32 bytes).
    #[prost(bytes = "vec", tag = "1")]
    pub id: Vec<u8>,
    /// Offset of the sealed blob.
    #[prost(uint64, tag = "2")]
    pub offset: u64,
    /// Sealed length.
    #[prost(uint32, tag = "3")]
    pub stored_len: u32,
    /// Plaintext length.
    #[prost(uint32, tag = "4")]
    pub raw_len: u32,
    /// [`BlobKind`].
    #[prost(uint32, tag = "5")]
    pub kind: u32,
    /// [`Compression`].
    #[prost(uint32, tag = "6")]
    pub compression: u32,
}

/// Alignment of a pack's first byte in its buffer: the local store writes
/// packs with `O_DIRECT`, which needs aligned memory, and an aligned buffer
/// goes to the disk without being copied again.
pub const PACK_BUFFER_ALIGN: usize = 4096;

/// Recycled pack buffers. A pack's bytes return here when the last
/// reference to them drops (after the upload), so a backup faults in the
/// memory of a few packs once instead of fresh pages for every pack.
#[derive(Debug, Clone)]
pub struct PackBuffers {
    free: Arc<Mutex<Vec<Vec<u8>>>>,
    keep: usize,
}

impl PackBuffers {
    /// A pool that keeps at most `keep` idle buffers.
    pub fn new(keep: usize) -> Self {
        Self {
            free: Arc::new(Mutex::new(Vec::new())),
            keep,
        }
    }

    fn take(&self) -> Vec<u8> {
        self.free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_default()
    }

    fn give(&self, mut buf: Vec<u8>) {
        buf.clear();
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < self.keep {
            free.push(buf);
        }
    }
}

/// The bytes of a finished pack, owned until the last [`Bytes`] drops.
struct FinishedPack {
    buf: Vec<u8>,
    start: usize,
    pool: PackBuffers,
}

impl AsRef<[u8]> for FinishedPack {
    fn as_ref(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

impl Drop for FinishedPack {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

/// `buf`, emptied, with room for `capacity` bytes from an offset (returned)
/// aligned to [`PACK_BUFFER_ALIGN`]; zeros up to that offset.
fn aligned(mut buf: Vec<u8>, capacity: usize) -> (Vec<u8>, usize) {
    buf.clear();
    buf.reserve(capacity + PACK_BUFFER_ALIGN);
    let start = buf.as_ptr().align_offset(PACK_BUFFER_ALIGN);
    let start = if start < PACK_BUFFER_ALIGN { start } else { 0 };
    buf.resize(start, 0);
    (buf, start)
}

/// Bytes a spooled pack holds before [`PackWriter::spill`] hands them on.
pub const SPILL_PIECE: usize = 2 << 20;

/// A finished pack's bytes.
#[derive(Debug)]
pub enum PackBody {
    /// Held whole, for [`crate::store::ObjectStore::put`].
    Memory(Bytes),
    /// Written out as the pack filled ([`PackWriter::spooled_in`]);
    /// [`WrittenPack::commit`] makes them the object.
    Written {
        /// Where they were written.
        out: WrittenPack,
        /// The pack's length.
        len: u64,
    },
}

impl PackBody {
    /// The pack's length in bytes.
    pub fn size(&self) -> u64 {
        match self {
            PackBody::Memory(bytes) => bytes.len() as u64,
            PackBody::Written { len, .. } => *len,
        }
    }
}

/// A spooled pack's writing: the pieces go to a thread of the pack's own,
/// which writes them while the packer seals the next chunks into another
/// buffer. The hand-over waits for the previous piece to be taken, so a
/// pack holds at most two pieces (the one being written and the one
/// filling).
#[derive(Debug)]
struct Spool {
    pieces: Option<SyncSender<(Vec<u8>, Range<usize>)>>,
    writer: Option<JoinHandle<Result<Box<dyn ObjectWriter>, StoreError>>>,
    id: PackId,
}

impl Spool {
    fn start(
        id: PackId,
        mut out: Box<dyn ObjectWriter>,
        pool: Option<PackBuffers>,
    ) -> std::io::Result<Self> {
        let (pieces, received) = sync_channel::<(Vec<u8>, Range<usize>)>(0);
        let writer = std::thread::Builder::new()
            .name("pack-writer".into())
            .spawn(move || {
                for (buf, range) in received {
                    // A failure ends the thread, and the next hand-over
                    // finds it gone.
                    out.write(&buf[range])?;
                    if let Some(pool) = &pool {
                        pool.give(buf);
                    }
                }
                Ok(out)
            })?;
        Ok(Self {
            pieces: Some(pieces),
            writer: Some(writer),
            id,
        })
    }

    /// Hands `buf[range]` to the writing thread; fails with the error that
    /// ended it.
    fn send(&mut self, buf: Vec<u8>, range: Range<usize>) -> Result<(), StoreError> {
        let sent = self.pieces.as_ref().map(|p| p.send((buf, range)));
        match sent {
            Some(Ok(())) => Ok(()),
            _ => self.join().map(drop),
        }
    }

    /// Waits until every piece is written; returns the writer.
    fn join(&mut self) -> Result<Box<dyn ObjectWriter>, StoreError> {
        self.pieces = None;
        let gone = || StoreError::Io {
            location: "pack writer".into(),
            key: pack_key(&self.id),
            source: std::io::Error::other("the pack's writing thread stopped"),
        };
        match self.writer.take().map(JoinHandle::join) {
            Some(Ok(written)) => written,
            _ => Err(gone()),
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        // Abandoned: what was written goes with the writer, before the
        // process can end (the temporary file must not outlive it).
        let _ = self.join();
    }
}

/// A spooled pack whose every byte was handed to its writer.
#[derive(Debug)]
pub struct WrittenPack(Spool);

impl WrittenPack {
    /// Waits for the last pieces to be written, then commits the object
    /// ([`ObjectWriter::commit`]). Blocking.
    pub fn commit(mut self) -> Result<(), StoreError> {
        self.0.join()?.commit()
    }
}

/// Accumulates sealed blobs into one pack.
#[derive(Debug)]
pub struct PackWriter {
    id: PackId,
    kind: BlobKind,
    /// The pack's bytes not yet written out are `buf[start..]`; `start` puts
    /// the first at an address aligned to [`PACK_BUFFER_ALIGN`] (kept while
    /// `buf` does not grow past its capacity; a pack that does is merely
    /// written through a copy).
    buf: Vec<u8>,
    start: usize,
    /// The room `buf` was made with.
    capacity: usize,
    /// Where a spooled pack's bytes go ([`PackWriter::spooled_in`]), and how
    /// many went there already (always a multiple of the alignment).
    spool: Option<Spool>,
    spilled: u64,
    entries: Vec<PackEntry>,
    pool: Option<PackBuffers>,
}

impl PackWriter {
    /// An empty pack for chunks of `kind`, with a fresh random id, that
    /// expects to hold about `capacity` bytes.
    pub fn new(kind: BlobKind, capacity: usize) -> Self {
        Self::with_buffer(PackId::random(), kind, Vec::new(), capacity, None)
    }

    /// Like [`PackWriter::new`], with its buffer from (and, once the pack is
    /// stored, back to) `pool`.
    pub fn new_in(kind: BlobKind, capacity: usize, pool: &PackBuffers) -> Self {
        Self::with_buffer(
            PackId::random(),
            kind,
            pool.take(),
            capacity,
            Some(pool.clone()),
        )
    }

    /// A pack `id` that writes its bytes to `out` (the object store's
    /// writer for `id`) as it fills, on a thread of its own, so that it
    /// holds at most two pieces of [`SPILL_PIECE`] and one blob (expect
    /// `capacity` to be that) instead of the whole pack. Its owner calls
    /// [`PackWriter::spill`] after each blob; [`PackWriter::finish`] hands
    /// over the rest. Buffers come from and go back to `pool`. Fails only
    /// when the thread cannot be started.
    pub fn spooled_in(
        id: PackId,
        kind: BlobKind,
        capacity: usize,
        pool: &PackBuffers,
        out: Box<dyn ObjectWriter>,
    ) -> std::io::Result<Self> {
        let mut pack = Self::with_buffer(id, kind, pool.take(), capacity, Some(pool.clone()));
        pack.spool = Some(Spool::start(id, out, Some(pool.clone()))?);
        Ok(pack)
    }

    fn with_buffer(
        id: PackId,
        kind: BlobKind,
        buf: Vec<u8>,
        capacity: usize,
        pool: Option<PackBuffers>,
    ) -> Self {
        let (buf, start) = aligned(buf, capacity);
        Self {
            id,
            kind,
            buf,
            start,
            capacity,
            spool: None,
            spilled: 0,
            entries: Vec::new(),
            pool,
        }
    }

    /// For a spooled pack holding [`SPILL_PIECE`] or more, hands every
    /// whole aligned page it holds to its writer (`O_DIRECT` takes them
    /// without a copy) and goes on in another buffer, which starts with
    /// the rest. Does nothing otherwise. Fails with the error of an
    /// earlier piece's write.
    pub fn spill(&mut self) -> Result<(), StoreError> {
        let Some(spool) = self.spool.as_mut() else {
            return Ok(());
        };
        let held = self.buf.len() - self.start;
        if held < SPILL_PIECE {
            return Ok(());
        }
        let n = held / PACK_BUFFER_ALIGN * PACK_BUFFER_ALIGN;
        let fresh = self
            .pool
            .as_ref()
            .map(PackBuffers::take)
            .unwrap_or_default();
        let (mut next, next_start) = aligned(fresh, self.capacity);
        next.extend_from_slice(&self.buf[self.start + n..]);
        let full = std::mem::replace(&mut self.buf, next);
        let piece = self.start..self.start + n;
        self.start = next_start;
        self.spilled += n as u64;
        spool.send(full, piece)
    }

    /// The pack's id.
    pub fn id(&self) -> PackId {
        self.id
    }

    /// Kind of chunks in this pack.
    pub fn kind(&self) -> BlobKind {
        self.kind
    }

    /// Bytes so far (without trailer).
    pub fn len(&self) -> usize {
        self.spilled as usize + self.buf.len() - self.start
    }

    /// True if no blob was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of blobs.
    pub fn count(&self) -> usize {
        self.entries.len()
    }

    fn push_entry(&mut self, id: ChunkId, offset: usize, blob: (BlobKind, u32, Compression)) {
        let (kind, raw_len, compression) = blob;
        let location = BlobLocation {
            pack: self.id,
            offset: offset as u64,
            stored_len: (self.len() - offset) as u32,
            raw_len,
            kind,
            compression,
        };
        self.entries.push(PackEntry { id, location });
    }

    /// Appends a blob sealed elsewhere (a repack moves sealed bytes as they are).
    pub fn add(&mut self, blob: SealedBlob) {
        let offset = self.len();
        self.buf.extend_from_slice(&blob.bytes);
        self.push_entry(blob.id, offset, (blob.kind, blob.raw_len, blob.compression));
    }

    /// Seals a blob into the pack.
    pub fn seal(&mut self, keys: &RepoKeys, blob: &PreparedBlob) {
        let offset = self.len();
        seal_prepared(keys, blob, &mut self.buf);
        self.push_entry(blob.id, offset, (blob.kind, blob.raw_len, blob.compression));
    }

    /// Seals the trailer and footer; returns the pack's bytes (for a
    /// spooled pack, written out to the end) and its entries.
    pub fn finish(
        mut self,
        keys: &RepoKeys,
    ) -> Result<(PackId, PackBody, Vec<PackEntry>), StoreError> {
        use prost::Message;
        let record = TrailerRecord {
            entries: self
                .entries
                .iter()
                .map(|e| TrailerEntryRecord {
                    id: e.id.as_bytes().to_vec(),
                    offset: e.location.offset,
                    stored_len: e.location.stored_len,
                    raw_len: e.location.raw_len,
                    kind: e.location.kind as u32,
                    compression: e.location.compression as u32,
                })
                .collect(),
        };
        let trailer = keys.seal(TRAILER_AAD, &record.encode_to_vec());
        self.buf.extend_from_slice(&trailer);
        self.buf.extend_from_slice(&footer(trailer.len() as u32));
        let len = self.len() as u64;
        let buf = std::mem::take(&mut self.buf);
        if let Some(mut spool) = self.spool.take() {
            let rest = self.start..buf.len();
            spool.send(buf, rest)?;
            let out = WrittenPack(spool);
            return Ok((self.id, PackBody::Written { out, len }, self.entries));
        }
        let bytes = match self.pool.take() {
            Some(pool) => Bytes::from_owner(FinishedPack {
                buf,
                start: self.start,
                pool,
            }),
            None => Bytes::from(buf).slice(self.start..),
        };
        Ok((self.id, PackBody::Memory(bytes), self.entries))
    }
}

fn footer(trailer_len: u32) -> [u8; FOOTER_LEN] {
    let mut f = [0u8; FOOTER_LEN];
    f[..8].copy_from_slice(&PACK_MAGIC);
    f[8..10].copy_from_slice(&PACK_VERSION.to_le_bytes());
    f[12..16].copy_from_slice(&trailer_len.to_le_bytes());
    f
}

/// Parses a footer; returns the trailer length.
pub fn parse_footer(footer: &[u8], pack_size: u64) -> Result<u32, FormatError> {
    let what = "pack";
    if footer.len() != FOOTER_LEN || footer[..8] != PACK_MAGIC {
        return Err(FormatError::BadMagic { what });
    }
    let version = u16::from_le_bytes([footer[8], footer[9]]);
    if version == 0 || version > PACK_VERSION {
        return Err(FormatError::UnsupportedVersion { what, version });
    }
    let trailer_len = u32::from_le_bytes([footer[12], footer[13], footer[14], footer[15]]);
    if u64::from(trailer_len) + FOOTER_LEN as u64 > pack_size {
        return Err(FormatError::Corrupt {
            what,
            detail: format!("trailer of {trailer_len} bytes does not fit in {pack_size} bytes"),
        });
    }
    Ok(trailer_len)
}

/// Decodes a sealed trailer of pack `id` whose blobs end at `data_len`.
pub fn parse_trailer(
    keys: &RepoKeys,
    id: PackId,
    sealed: &[u8],
    data_len: u64,
) -> Result<Vec<PackEntry>, FormatError> {
    use prost::Message;
    let what = "pack trailer";
    let plain = keys
        .open(TRAILER_AAD, sealed)
        .map_err(|_| FormatError::Auth { what })?;
    let record = TrailerRecord::decode(&plain[..]).map_err(|e| FormatError::from((what, e)))?;
    let mut out = Vec::with_capacity(record.entries.len());
    for e in record.entries {
        let corrupt = |detail: String| FormatError::Corrupt { what, detail };
        let chunk = ChunkId::from_slice(&e.id).map_err(|err| corrupt(err.to_string()))?;
        let kind = BlobKind::from_u32(e.kind)
            .ok_or_else(|| corrupt(format!("unknown kind {}", e.kind)))?;
        let compression = Compression::from_u32(e.compression)
            .ok_or_else(|| corrupt(format!("unknown compression {}", e.compression)))?;
        if e.offset + u64::from(e.stored_len) > data_len {
            return Err(corrupt(format!(
                "entry at {}+{} runs past the data ({data_len} bytes)",
                e.offset, e.stored_len
            )));
        }
        out.push(PackEntry {
            id: chunk,
            location: BlobLocation {
                pack: id,
                offset: e.offset,
                stored_len: e.stored_len,
                raw_len: e.raw_len,
                kind,
                compression,
            },
        });
    }
    Ok(out)
}

/// Decodes the trailer of a whole pack held in memory.
pub fn read_trailer(
    keys: &RepoKeys,
    id: PackId,
    pack: &[u8],
) -> Result<Vec<PackEntry>, FormatError> {
    if pack.len() < FOOTER_LEN {
        return Err(FormatError::BadMagic { what: "pack" });
    }
    let size = pack.len() as u64;
    let trailer_len = parse_footer(&pack[pack.len() - FOOTER_LEN..], size)? as usize;
    let data_len = pack.len() - FOOTER_LEN - trailer_len;
    parse_trailer(
        keys,
        id,
        &pack[data_len..pack.len() - FOOTER_LEN],
        data_len as u64,
    )
}

/// Object key of a pack: `packs/<first 2 hex>/<id>`.
pub fn pack_key(id: &PackId) -> String {
    let hex = id.to_hex();
    format!("packs/{}/{}", &hex[..2], hex)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Cipher, MasterKey};
    use crate::fingerprint::HashAlgo;

    fn finish_in_memory(w: PackWriter, keys: &RepoKeys) -> (PackId, Bytes, Vec<PackEntry>) {
        match w.finish(keys).unwrap() {
            (id, PackBody::Memory(bytes), entries) => (id, bytes, entries),
            (_, body, _) => panic!("a pack without a spool came back as {body:?}"),
        }
    }

    /// `len` bytes that do not compress, the same for the same `seed`.
    fn random_bytes(seed: u8, len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        blake3::Hasher::new_keyed(&[seed; 32])
            .finalize_xof()
            .fill(&mut bytes);
        bytes
    }

    /// `chunk` prepared as a data chunk: zstd level 3, no padding.
    fn data_blob(fp: &Fingerprinter, chunk: &[u8]) -> PreparedBlob {
        let bytes = Bytes::copy_from_slice(chunk);
        prepare_blob(fp.chunk_id(chunk), BlobKind::Data, bytes, 3, Padding::None)
    }

    /// An object writer that keeps what it is given, piece by piece.
    #[derive(Debug, Default, Clone)]
    struct Pieces(Arc<Mutex<Vec<Vec<u8>>>>);

    impl ObjectWriter for Pieces {
        fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
            self.0.lock().unwrap().push(bytes.to_vec());
            Ok(())
        }

        fn commit(self: Box<Self>) -> Result<(), StoreError> {
            Ok(())
        }
    }

    #[test]
    fn a_spooled_pack_holds_a_piece_and_a_blob_and_writes_the_same_pack() {
        let keys = RepoKeys::derive(&MasterKey::from_bytes([1; 32]), Cipher::DEFAULT);
        let fp = Fingerprinter::new(HashAlgo::Blake3, *keys.fingerprint_key());
        let pool = PackBuffers::new(1);
        let pieces = Pieces::default();
        let mut w = PackWriter::spooled_in(
            PackId::random(),
            BlobKind::Data,
            SPILL_PIECE + (1 << 20),
            &pool,
            Box::new(pieces.clone()),
        )
        .unwrap();
        // Random chunks of 700,000 bytes: incompressible, so each seals to
        // a little more, and 12 of them pass the spill size four times.
        let chunks: Vec<Vec<u8>> = (0..12u8).map(|i| random_bytes(i, 700_000)).collect();
        for c in &chunks {
            w.seal(&keys, &data_blob(&fp, c));
            w.spill().unwrap();
            let held = w.buf.len() - w.start;
            assert!(held < SPILL_PIECE, "{held} bytes held after a spill");
            // Within its capacity a buffer never moves (so stays aligned).
            assert_eq!(w.buf[w.start..].as_ptr().align_offset(PACK_BUFFER_ALIGN), 0);
            assert!(w.buf.capacity() >= w.capacity);
        }
        let total = w.len();
        let (id, body, entries) = w.finish(&keys).unwrap();
        let PackBody::Written { len, out } = body else {
            panic!("a spooled pack came back in memory");
        };
        out.commit().unwrap();
        let pieces = pieces.0.lock().unwrap().clone();
        // Every piece but the last is whole aligned pages of at least the
        // spill size; together they are the pack.
        let (last, whole) = pieces.split_last().unwrap();
        assert_eq!(whole.len(), 4);
        for p in whole {
            assert!(p.len() >= SPILL_PIECE && p.len().is_multiple_of(PACK_BUFFER_ALIGN));
        }
        let bytes: Vec<u8> = pieces.concat();
        assert_eq!(bytes.len() as u64, len);
        assert!(last.len() > FOOTER_LEN && bytes.len() > total);
        let parsed = read_trailer(&keys, id, &bytes).unwrap();
        assert_eq!(parsed, entries);
        for (e, c) in parsed.iter().zip(&chunks) {
            let l = &e.location;
            let sealed = &bytes[l.offset as usize..(l.offset + u64::from(l.stored_len)) as usize];
            assert_eq!(&open_blob(&keys, &fp, &e.id, l, sealed).unwrap(), c);
        }
    }

    /// An object writer that fails from its `fails_at`-th piece on, and
    /// says when it is dropped.
    #[derive(Debug)]
    struct Failing {
        fails_at: usize,
        written: usize,
        dropped: Arc<Mutex<bool>>,
    }

    impl ObjectWriter for Failing {
        fn write(&mut self, _: &[u8]) -> Result<(), StoreError> {
            self.written += 1;
            if self.written < self.fails_at {
                return Ok(());
            }
            Err(StoreError::Io {
                location: "test".into(),
                key: "packs/x".into(),
                source: std::io::Error::from_raw_os_error(libc::ENOSPC),
            })
        }

        fn commit(self: Box<Self>) -> Result<(), StoreError> {
            Ok(())
        }
    }

    impl Drop for Failing {
        fn drop(&mut self) {
            *self.dropped.lock().unwrap() = true;
        }
    }

    #[test]
    fn a_spooled_pack_reports_a_failed_write_and_lets_go_of_its_writer() {
        let keys = RepoKeys::derive(&MasterKey::from_bytes([1; 32]), Cipher::DEFAULT);
        let fp = Fingerprinter::new(HashAlgo::Blake3, *keys.fingerprint_key());
        let pool = PackBuffers::new(2);
        let blob = |i: u8| data_blob(&fp, &random_bytes(i, 1_500_000));
        let spooled = |fails_at: usize, dropped: &Arc<Mutex<bool>>| {
            let out = Failing {
                fails_at,
                written: 0,
                dropped: dropped.clone(),
            };
            PackWriter::spooled_in(
                PackId::random(),
                BlobKind::Data,
                4 << 20,
                &pool,
                Box::new(out),
            )
            .unwrap()
        };

        // The first piece fails: a later hand-over says why.
        let dropped = Arc::new(Mutex::new(false));
        let mut w = spooled(1, &dropped);
        let mut failure = None;
        for i in 0..8 {
            w.seal(&keys, &blob(i));
            if let Err(e) = w.spill() {
                failure = Some(e);
                break;
            }
        }
        let failure = failure.expect("a failed write goes unreported");
        assert!(
            failure.to_string().contains("No space left on device"),
            "{failure}"
        );
        drop(w);
        assert!(*dropped.lock().unwrap(), "the writer outlived its pack");

        // The last piece fails: committing says why.
        let dropped = Arc::new(Mutex::new(false));
        let mut w = spooled(2, &dropped);
        w.seal(&keys, &blob(0));
        w.seal(&keys, &blob(1));
        w.spill().unwrap();
        let (_, body, _) = w.finish(&keys).unwrap();
        let PackBody::Written { out, .. } = body else {
            panic!("a spooled pack came back in memory");
        };
        let e = out.commit().unwrap_err();
        assert!(e.to_string().contains("No space left on device"), "{e}");
        assert!(*dropped.lock().unwrap());

        // Abandoned half-written, the pack drops its writer before the drop
        // returns (a local store's temporary file goes with it).
        let dropped = Arc::new(Mutex::new(false));
        let mut w = spooled(usize::MAX, &dropped);
        w.seal(&keys, &blob(0));
        w.seal(&keys, &blob(1));
        w.spill().unwrap();
        drop(w);
        assert!(*dropped.lock().unwrap());
    }

    #[test]
    fn pack_round_trip_and_damage() {
        let keys = RepoKeys::derive(&MasterKey::from_bytes([1; 32]), Cipher::DEFAULT);
        let fp = Fingerprinter::new(HashAlgo::Blake3, *keys.fingerprint_key());
        let chunks: Vec<Vec<u8>> = vec![vec![0u8; 10_000], b"incompressible?".to_vec(), Vec::new()];
        let mut w = PackWriter::new(BlobKind::Data, 0);
        for c in &chunks {
            w.add(seal_blob(
                &keys,
                fp.chunk_id(c),
                BlobKind::Data,
                c,
                3,
                Padding::None,
            ));
        }
        let (id, bytes, entries) = finish_in_memory(w, &keys);
        assert_eq!(&bytes[bytes.len() - 16..bytes.len() - 8], b"CAIRNPAK");
        let parsed = read_trailer(&keys, id, &bytes).unwrap();
        assert_eq!(parsed, entries);
        assert_eq!(parsed[0].location.compression, Compression::Zstd);
        assert_eq!(parsed[1].location.compression, Compression::None);
        for (e, c) in parsed.iter().zip(&chunks) {
            let l = &e.location;
            let sealed = &bytes[l.offset as usize..(l.offset + u64::from(l.stored_len)) as usize];
            assert_eq!(&open_blob(&keys, &fp, &e.id, l, sealed).unwrap(), c);
        }
        // A flipped byte in a blob fails authentication.
        let l = parsed[0].location;
        let mut bad =
            bytes[l.offset as usize..(l.offset + u64::from(l.stored_len)) as usize].to_vec();
        bad[40] ^= 0x01;
        assert!(open_blob(&keys, &fp, &parsed[0].id, &l, &bad).is_err());
        // A blob presented under another id fails.
        let sealed = &bytes[l.offset as usize..(l.offset + u64::from(l.stored_len)) as usize];
        assert!(open_blob(&keys, &fp, &parsed[1].id, &l, sealed).is_err());
        // Truncation is detected.
        assert!(read_trailer(&keys, id, &bytes[..bytes.len() - 1]).is_err());
        assert!(read_trailer(&keys, id, &bytes[..5]).is_err());
    }

    #[test]
    fn prepared_blobs_seal_into_aligned_recycled_buffers() {
        let keys = RepoKeys::derive(&MasterKey::from_bytes([1; 32]), Cipher::DEFAULT);
        let fp = Fingerprinter::new(HashAlgo::Blake3, *keys.fingerprint_key());
        let pool = PackBuffers::new(2);
        let mut first = None;
        for round in 0..3u8 {
            let chunks = [vec![round; 5000], random_bytes(round, 300_000), Vec::new()];
            let mut w = PackWriter::new_in(BlobKind::Data, 1 << 20, &pool);
            for c in &chunks {
                w.seal(&keys, &data_blob(&fp, c));
            }
            let (id, bytes, entries) = finish_in_memory(w, &keys);
            assert_eq!(bytes.as_ptr() as usize % PACK_BUFFER_ALIGN, 0);
            // The second and third packs reuse the first one's memory.
            let at = bytes.as_ptr() as usize;
            assert_eq!(*first.get_or_insert(at), at, "round {round}");
            let parsed = read_trailer(&keys, id, &bytes).unwrap();
            assert_eq!(parsed, entries);
            let kinds: Vec<Compression> = parsed.iter().map(|e| e.location.compression).collect();
            assert_eq!(
                kinds,
                [Compression::Zstd, Compression::None, Compression::None]
            );
            for (e, c) in parsed.iter().zip(&chunks) {
                let l = &e.location;
                let sealed =
                    &bytes[l.offset as usize..(l.offset + u64::from(l.stored_len)) as usize];
                assert_eq!(&open_blob(&keys, &fp, &e.id, l, sealed).unwrap(), c);
            }
        }
    }

    #[test]
    fn large_chunks_are_compressed_only_when_a_sample_shrinks() {
        let keys = RepoKeys::derive(&MasterKey::from_bytes([1; 32]), Cipher::DEFAULT);
        let fp = Fingerprinter::new(HashAlgo::Blake3, *keys.fingerprint_key());
        // Random bytes (incompressible), text, and random bytes with a long
        // compressible middle that the probe's middle slices see.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let random: Vec<u8> = (0..1 << 20)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let text = b"restore every byte as it was\n".repeat(40_000);
        let mut mixed = random.clone();
        mixed[300_000..800_000].fill(b'x');
        for (data, expected) in [
            (&random, Compression::None),
            (&text, Compression::Zstd),
            (&mixed, Compression::Zstd),
        ] {
            let blob = seal_blob(
                &keys,
                fp.chunk_id(data),
                BlobKind::Data,
                data,
                3,
                Padding::None,
            );
            assert_eq!(blob.compression, expected, "{} bytes", data.len());
        }
    }

    /// Frozen: Padmé lengths (the values of the PURBs paper's definition).
    #[test]
    fn padme_lengths_are_pinned() {
        let cases = [
            (0, 0),
            (1, 1),
            (2, 2),
            (9, 10),
            (10, 10),
            (100, 104),
            (1000, 1024),
            (1025, 1088),
            (65_537, 67_584),
            (1_000_000, 1_015_808),
            (1 << 20, 1 << 20),
            ((1 << 20) + 1, (1 << 20) + 32_768),
        ];
        for (len, padded) in cases {
            assert_eq!(padme(len), padded, "padme({len})");
        }
        // Never shorter, at most 12 % longer, idempotent.
        for len in (1..5_000_000u64).step_by(997) {
            let p = padme(len);
            assert!(p >= len && p * 100 <= len * 112, "padme({len}) = {p}");
            assert_eq!(padme(p), p);
        }
    }

    #[test]
    fn padded_blobs_have_padme_lengths_and_open_to_their_plaintext() {
        let keys = RepoKeys::derive(&MasterKey::from_bytes([1; 32]), Cipher::DEFAULT);
        let fp = Fingerprinter::new(HashAlgo::Blake3, *keys.fingerprint_key());
        let chunks = [
            b"tiny".to_vec(),
            b"text ".repeat(9_999),
            random_bytes(5, 300_001),
            Vec::new(),
        ];
        let mut w = PackWriter::new(BlobKind::Data, 1 << 20);
        for c in &chunks {
            let blob = prepare_blob(
                fp.chunk_id(c),
                BlobKind::Data,
                Bytes::from(c.clone()),
                3,
                Padding::Padme,
            );
            w.seal(&keys, &blob);
        }
        let (id, bytes, entries) = finish_in_memory(w, &keys);
        let parsed = read_trailer(&keys, id, &bytes).unwrap();
        assert_eq!(parsed, entries);
        let kinds: Vec<Compression> = parsed.iter().map(|e| e.location.compression).collect();
        assert_eq!(
            kinds,
            [
                Compression::NonePadded,
                Compression::ZstdPadded,
                Compression::NonePadded,
                Compression::NonePadded
            ]
        );
        for (e, c) in parsed.iter().zip(&chunks) {
            let l = &e.location;
            assert_eq!(
                u64::from(l.stored_len),
                padme(u64::from(l.stored_len)),
                "{l:?}"
            );
            assert!(l.stored_len as usize >= SEAL_OVERHEAD + PAD_TAIL);
            let sealed = &bytes[l.offset as usize..(l.offset + u64::from(l.stored_len)) as usize];
            assert_eq!(&open_blob(&keys, &fp, &e.id, l, sealed).unwrap(), c);
        }
        // The random chunk is padded to the next Padmé length.
        assert_eq!(parsed[2].location.stored_len, 303_104);
    }

    #[test]
    fn a_padding_count_beyond_the_payload_is_refused() {
        let keys = RepoKeys::derive(&MasterKey::from_bytes([1; 32]), Cipher::DEFAULT);
        let fp = Fingerprinter::new(HashAlgo::Blake3, *keys.fingerprint_key());
        let id = fp.chunk_id(b"abc");
        for payload in [vec![1, 2], b"abc\x05\x00\x00\x00".to_vec()] {
            let sealed = keys.seal(&blob_aad(&id, BlobKind::Data), &payload);
            let location = BlobLocation {
                pack: PackId::from_slice(&[0; 32]).unwrap(),
                offset: 0,
                stored_len: sealed.len() as u32,
                raw_len: 3,
                kind: BlobKind::Data,
                compression: Compression::NonePadded,
            };
            let err = open_blob(&keys, &fp, &id, &location, &sealed).unwrap_err();
            assert!(err.to_string().contains("padding"), "{err}");
        }
    }

    #[test]
    fn footer_bytes_are_pinned() {
        assert_eq!(
            hex::encode(footer(0x0102_0304)),
            "434149524e50414b0100000004030201"
        );
    }
}
