//! Domain-separated binary Merkle trees (RFC 6962 shape) over 32-byte leaves.
//!
//! Ledger peers put an epoch's sorted, unique receipt ids in a tree and anchor
//! its root; anyone holding a receipt id, an [`InclusionProof`] and the
//! anchored root can check inclusion. This module owns the tree shape, the
//! hashing and proof verification; it does not decide which receipts belong to
//! an epoch (the ledger machine does).
//!
//! * leaf hash = BLAKE3(`0x00` | leaf), node hash = BLAKE3(`0x01` | left | right),
//!   empty tree = BLAKE3(""): the RFC 6962 `MTH` with BLAKE3 for SHA-256. The
//!   prefixes keep a leaf from ever being passed off as an interior node.
//! * Proofs are verified as in RFC 9162 §2.1.3.2; a path whose length does not
//!   match its index and tree size is an error, never silently accepted.
//! * A proof does not authenticate the tree size on its own (leaf 4 of a
//!   9-leaf and of a 10-leaf tree have the same path): verifiers must take the
//!   size from the signed, anchored rollup header (`count`), never from the
//!   proof's sender.
//!
//! Why a small implementation here rather than a crate: `rs_merkle` is not RFC
//! 6962 domain-separated (it duplicates or promotes without prefixes), and
//! `ct-merkle` fixes its own hash and proof encodings; we want BLAKE3 speed
//! (a 1M-leaf root in a fraction of a second), our own bounded proof type in
//! our codec, and a hundred lines we can test against the RFC definition.

use serde::{Deserialize, Serialize};

/// A 32-byte hash.
pub type Hash32 = [u8; 32];

/// Longest accepted proof path (trees up to 2^64 leaves).
pub const MAX_PATH: usize = 64;

/// Why a tree could not be built or a proof failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MerkleError {
    /// Leaves were expected sorted and unique.
    #[error("leaves must be sorted and unique: leaf {index} is not greater than the one before it")]
    NotSortedUnique {
        /// Index of the offending leaf.
        index: usize,
    },
    /// Leaf index outside the tree.
    #[error("leaf index {index} out of range for a tree of {size} leaves")]
    IndexOutOfRange {
        /// Index asked for.
        index: u64,
        /// Tree size.
        size: u64,
    },
    /// The proof path has the wrong length for its index and tree size.
    #[error("proof path has {found} hashes; a proof for leaf {index} of {size} needs {expected}")]
    WrongPathLength {
        /// Leaf index.
        index: u64,
        /// Tree size.
        size: u64,
        /// Expected path length.
        expected: usize,
        /// Found path length.
        found: usize,
    },
    /// The proof path is longer than any tree allows.
    #[error("proof path too long: at most {MAX_PATH} hashes, found {0}")]
    PathTooLong(usize),
    /// The proof leads to another root.
    #[error("proof leads to root {computed}, expected {expected}")]
    RootMismatch {
        /// Root the proof computes (hex).
        computed: String,
        /// Root expected (hex).
        expected: String,
    },
}

/// Hash of a leaf.
pub fn leaf_hash(leaf: &Hash32) -> Hash32 {
    let mut h = blake3::Hasher::new();
    h.update(&[0x00]);
    h.update(leaf);
    *h.finalize().as_bytes()
}

/// Hash of an interior node.
pub fn node_hash(left: &Hash32, right: &Hash32) -> Hash32 {
    let mut buf = [0u8; 65];
    buf[0] = 0x01;
    buf[1..33].copy_from_slice(left);
    buf[33..].copy_from_slice(right);
    *blake3::hash(&buf).as_bytes()
}

/// Root of the empty tree.
pub fn empty_root() -> Hash32 {
    *blake3::hash(&[]).as_bytes()
}

/// A Merkle tree with every level kept, for proofs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerkleTree {
    leaves: Vec<Hash32>,
    /// levels[0] = leaf hashes; the last level has one hash (the root).
    levels: Vec<Vec<Hash32>>,
}

impl MerkleTree {
    /// Builds the tree over `leaves` in the given order.
    pub fn from_leaves(leaves: Vec<Hash32>) -> Self {
        let mut levels = Vec::new();
        if !leaves.is_empty() {
            let mut level: Vec<Hash32> = leaves.iter().map(leaf_hash).collect();
            while level.len() > 1 {
                let mut next = Vec::with_capacity(level.len().div_ceil(2));
                for pair in level.chunks(2) {
                    match pair {
                        [l, r] => next.push(node_hash(l, r)),
                        // A lone last node is promoted unchanged: this yields
                        // exactly the RFC 6962 split at the largest power of two.
                        [l] => next.push(*l),
                        _ => {}
                    }
                }
                levels.push(level);
                level = next;
            }
            levels.push(level);
        }
        MerkleTree { leaves, levels }
    }

    /// Builds the tree, requiring strictly increasing leaves (an epoch's
    /// sorted, unique receipt ids).
    pub fn from_sorted_unique(leaves: Vec<Hash32>) -> Result<Self, MerkleError> {
        if let Some(i) = leaves.windows(2).position(|w| w[0] >= w[1]) {
            return Err(MerkleError::NotSortedUnique { index: i + 1 });
        }
        Ok(Self::from_leaves(leaves))
    }

    /// The root hash.
    pub fn root(&self) -> Hash32 {
        self.levels
            .last()
            .and_then(|l| l.first())
            .copied()
            .unwrap_or_else(empty_root)
    }

    /// Number of leaves.
    pub fn len(&self) -> usize {
        self.leaves.len()
    }

    /// Whether the tree has no leaves.
    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty()
    }

    /// The leaves.
    pub fn leaves(&self) -> &[Hash32] {
        &self.leaves
    }

    /// Index of `leaf` by binary search (for trees built from sorted leaves).
    pub fn leaf_index(&self, leaf: &Hash32) -> Option<usize> {
        self.leaves.binary_search(leaf).ok()
    }

    /// The inclusion proof of leaf `index`.
    pub fn proof(&self, index: usize) -> Result<InclusionProof, MerkleError> {
        let size = self.leaves.len();
        if index >= size {
            return Err(MerkleError::IndexOutOfRange {
                index: index as u64,
                size: size as u64,
            });
        }
        let mut path = Vec::new();
        let mut i = index;
        for level in &self.levels[..self.levels.len().saturating_sub(1)] {
            let sibling = i ^ 1;
            if sibling < level.len() {
                path.push(level[sibling]);
            }
            i /= 2;
        }
        Ok(InclusionProof {
            leaf_index: index as u64,
            tree_size: size as u64,
            path,
        })
    }
}

/// Root of `leaves` with O(log n) extra memory (a stack of subtree roots).
pub fn root_of(leaves: &[Hash32]) -> Hash32 {
    if leaves.is_empty() {
        return empty_root();
    }
    // stack[k] holds (height, hash) of complete subtrees, heights decreasing.
    let mut stack: Vec<(u32, Hash32)> = Vec::with_capacity(65);
    for leaf in leaves {
        let mut node = (0u32, leaf_hash(leaf));
        while let Some(&(h, left)) = stack.last() {
            if h != node.0 {
                break;
            }
            stack.pop();
            node = (h + 1, node_hash(&left, &node.1));
        }
        stack.push(node);
    }
    // Fold the remaining (right-most, smaller) subtrees from the right.
    let mut acc = match stack.pop() {
        Some((_, h)) => h,
        None => return empty_root(),
    };
    while let Some((_, left)) = stack.pop() {
        acc = node_hash(&left, &acc);
    }
    acc
}

/// Proof that a leaf is in a tree of a given size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    /// Leaf index.
    pub leaf_index: u64,
    /// Number of leaves in the tree.
    pub tree_size: u64,
    /// Sibling hashes from the leaf up.
    pub path: Vec<Hash32>,
}

impl InclusionProof {
    /// Checks that `leaf` at this proof's index leads to `root` (RFC 9162 §2.1.3.2).
    pub fn verify(&self, leaf: &Hash32, root: &Hash32) -> Result<(), MerkleError> {
        let (index, size) = (self.leaf_index, self.tree_size);
        if self.path.len() > MAX_PATH {
            return Err(MerkleError::PathTooLong(self.path.len()));
        }
        if index >= size {
            return Err(MerkleError::IndexOutOfRange { index, size });
        }
        let expected = expected_path_len(index, size);
        if self.path.len() != expected {
            return Err(MerkleError::WrongPathLength {
                index,
                size,
                expected,
                found: self.path.len(),
            });
        }
        let (mut fn_, mut sn) = (index, size - 1);
        let mut r = leaf_hash(leaf);
        for p in &self.path {
            if sn == 0 {
                return Err(MerkleError::WrongPathLength {
                    index,
                    size,
                    expected,
                    found: self.path.len(),
                });
            }
            if fn_ & 1 == 1 || fn_ == sn {
                r = node_hash(p, &r);
                if fn_ & 1 == 0 {
                    while fn_ & 1 == 0 && fn_ != 0 {
                        fn_ >>= 1;
                        sn >>= 1;
                    }
                }
            } else {
                r = node_hash(&r, p);
            }
            fn_ >>= 1;
            sn >>= 1;
        }
        if sn != 0 || &r != root {
            return Err(MerkleError::RootMismatch {
                computed: hex::encode(r),
                expected: hex::encode(root),
            });
        }
        Ok(())
    }
}

/// Path length of a proof for leaf `index` in a tree of `size` leaves.
fn expected_path_len(index: u64, size: u64) -> usize {
    let (mut fn_, mut sn) = (index, size - 1);
    let mut len = 0;
    while sn != 0 {
        if fn_ & 1 == 1 || fn_ != sn {
            len += 1;
        } else {
            // fn == sn and even: the node is promoted, no sibling at this level.
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 6962 MTH, recursively, straight from the definition.
    fn reference_root(leaves: &[Hash32]) -> Hash32 {
        match leaves.len() {
            0 => empty_root(),
            1 => leaf_hash(&leaves[0]),
            n => {
                let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
                node_hash(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
            }
        }
    }

    fn leaves(n: usize) -> Vec<Hash32> {
        (0..n as u32)
            .map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes())
            .collect()
    }

    #[test]
    fn matches_rfc6962_definition_for_all_small_sizes() {
        for n in 0..=70 {
            let l = leaves(n);
            let t = MerkleTree::from_leaves(l.clone());
            assert_eq!(t.root(), reference_root(&l), "size {n}");
            assert_eq!(root_of(&l), t.root(), "root_of size {n}");
            for (i, leaf) in l.iter().enumerate() {
                let p = t.proof(i).unwrap();
                assert_eq!(p.path.len(), expected_path_len(i as u64, n as u64));
                p.verify(leaf, &t.root()).unwrap();
            }
        }
    }

    #[test]
    fn known_shapes() {
        assert_eq!(
            MerkleTree::from_leaves(vec![]).root(),
            *blake3::hash(b"").as_bytes()
        );
        let l = leaves(3);
        let expect = node_hash(
            &node_hash(&leaf_hash(&l[0]), &leaf_hash(&l[1])),
            &leaf_hash(&l[2]),
        );
        assert_eq!(MerkleTree::from_leaves(l).root(), expect);
        for n in [1usize, 2, 4, 5, 7, 8, 9, 1000] {
            let l = leaves(n);
            assert_eq!(root_of(&l), reference_root(&l));
        }
    }

    #[test]
    fn leaf_and_node_domains_differ() {
        let a = [1u8; 32];
        // A 64-byte "leaf" made of two hashes never equals their node hash.
        assert_ne!(leaf_hash(&a), node_hash(&a, &a));
    }

    #[test]
    fn rejections() {
        let l = leaves(9);
        let t = MerkleTree::from_leaves(l.clone());
        let root = t.root();
        let p = t.proof(4).unwrap();
        assert!(matches!(
            t.proof(9),
            Err(MerkleError::IndexOutOfRange { .. })
        ));
        assert!(matches!(
            p.verify(&l[5], &root),
            Err(MerkleError::RootMismatch { .. })
        ));
        let mut q = p.clone();
        q.leaf_index = 5;
        assert!(q.verify(&l[4], &root).is_err());
        // A proof alone does not authenticate the tree size (leaf 4 of 9 and
        // of 10 have the same path); sizes that change the path shape fail.
        let mut q = p.clone();
        q.tree_size = 5;
        assert!(matches!(
            q.verify(&l[4], &root),
            Err(MerkleError::WrongPathLength { .. })
        ));
        let mut q = p.clone();
        q.path.pop();
        assert!(matches!(
            q.verify(&l[4], &root),
            Err(MerkleError::WrongPathLength { .. })
        ));
        let mut q = p.clone();
        q.path.push([0; 32]);
        assert!(matches!(
            q.verify(&l[4], &root),
            Err(MerkleError::WrongPathLength { .. })
        ));
        let mut q = p.clone();
        q.leaf_index = 9;
        assert!(matches!(
            q.verify(&l[4], &root),
            Err(MerkleError::IndexOutOfRange { .. })
        ));
        let mut q = p.clone();
        q.path = vec![[0; 32]; 65];
        assert!(matches!(
            q.verify(&l[4], &root),
            Err(MerkleError::PathTooLong(65))
        ));
        assert!(p.verify(&l[4], &[0; 32]).is_err());
    }

    #[test]
    fn sorted_unique() {
        let mut l = leaves(20);
        l.sort();
        let t = MerkleTree::from_sorted_unique(l.clone()).unwrap();
        assert_eq!(t.leaf_index(&l[7]), Some(7));
        let mut dup = l.clone();
        dup[5] = dup[4];
        assert_eq!(
            MerkleTree::from_sorted_unique(dup),
            Err(MerkleError::NotSortedUnique { index: 5 })
        );
        l.swap(2, 3);
        assert!(MerkleTree::from_sorted_unique(l).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn prop_every_proof_verifies_and_any_flip_fails(n in 1usize..300, pick in any::<prop::sample::Index>(), bit in 0usize..256) {
            let l = leaves(n);
            let t = MerkleTree::from_leaves(l.clone());
            let i = pick.index(n);
            let p = t.proof(i).unwrap();
            prop_assert!(p.verify(&l[i], &t.root()).is_ok());
            prop_assert_eq!(root_of(&l), t.root());
            if !p.path.is_empty() {
                let mut q = p.clone();
                let e = bit % q.path.len();
                q.path[e][bit / 8 % 32] ^= 1 << (bit % 8);
                prop_assert!(q.verify(&l[i], &t.root()).is_err());
            }
            let mut leaf = l[i];
            leaf[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(p.verify(&leaf, &t.root()).is_err());
            if n > 1 {
                let mut q = p.clone();
                q.leaf_index = ((i + 1) % n) as u64;
                prop_assert!(q.verify(&l[i], &t.root()).is_err());
            }
        }
    }
}
