//! Helpers shared by the content tests.

use std::path::{Path, PathBuf};

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng as _, SeedableRng};
use rendertrust_protocol::content::{ContentId, Manifest, ManifestBuilder};
use rendertrust_protocol::seal::JobKey;

use super::{ContentConfig, ContentStore, PipelineOptions};

pub(super) fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

pub(super) fn key(seed: u64) -> JobKey {
    JobKey::generate(&mut rng(seed))
}

/// Incompressible bytes.
pub(super) fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    rng(seed).fill_bytes(&mut out);
    out
}

pub(super) fn open_store(dir: &Path) -> ContentStore {
    ContentStore::open(dir, ContentConfig::default()).unwrap()
}

/// 4 KiB STREAM chunks and 4 KiB content chunks: many chunks, fast tests.
pub(super) fn small() -> PipelineOptions {
    PipelineOptions {
        seal_chunk_size: 4096,
        content_chunk_size: 4096,
        queue_depth: 2,
    }
}

pub(super) fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A manifest over `content` in 4 KiB chunks, and its chunks.
pub(super) fn manifest_of(content: &[u8]) -> (Manifest, Vec<Vec<u8>>) {
    let mut builder = ManifestBuilder::new(4096).unwrap();
    builder.update(content);
    (
        builder.finish(),
        content.chunks(4096).map(<[u8]>::to_vec).collect(),
    )
}

/// Stores `content` completely; returns its id.
pub(super) fn store_all(store: &ContentStore, content: &[u8]) -> ContentId {
    let (manifest, chunks) = manifest_of(content);
    let id = store.put_manifest(&manifest).unwrap();
    for (i, chunk) in chunks.iter().enumerate() {
        store.put_chunk(&id, i as u32, chunk).unwrap();
    }
    id
}

/// The sealed stream of `id`, reassembled from its (verified) chunks.
pub(super) fn sealed_bytes(store: &ContentStore, id: &ContentId) -> Vec<u8> {
    let manifest = store.get_manifest(id).unwrap();
    let mut out = Vec::new();
    for i in 0..manifest.chunks.len() {
        out.extend_from_slice(&store.get_chunk(id, i as u32).unwrap());
    }
    out
}

/// Regular files under `dir`, recursively.
pub(super) fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}
