// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title RenderTrust rollup anchor
/// @notice Ledger peers anchor each epoch's Merkle root of receipt ids here.
///
/// Who may anchor: anyone, but every root is kept under the address that sent
/// it (`msg.sender`). A verifier asks for the root that a *known* anchorer
/// address anchored for an epoch; roots anchored by other addresses are
/// simply other namespaces and cannot shadow it.
///
/// A second anchor of the same epoch by the same anchorer:
/// - with the same root and count: a no-op (no event), so a retried
///   transaction is harmless;
/// - with a different root or count: reverts with `AlreadyAnchored`, so an
///   anchorer cannot rewrite its history.
///
/// The zero root is refused (`ZeroRoot`): it marks "nothing anchored", and a
/// real root never is zero (the empty tree's root is BLAKE3("")).
contract Anchor {
    struct Entry {
        bytes32 root;
        uint64 count;
        uint64 anchoredAt; // block number
    }

    /// anchorer => epoch => entry
    mapping(address => mapping(uint64 => Entry)) private entries;

    /// An epoch's root was anchored.
    event Anchored(address indexed anchorer, uint64 indexed epoch, bytes32 root, uint64 count);

    /// The anchorer already anchored another root (or count) for this epoch.
    error AlreadyAnchored(address anchorer, uint64 epoch, bytes32 root, uint64 count);

    /// The zero root cannot be anchored.
    error ZeroRoot();

    /// Anchors `root` (of `count` receipts) for `epoch` under `msg.sender`.
    function anchor(uint64 epoch, bytes32 root, uint64 count) external {
        if (root == bytes32(0)) revert ZeroRoot();
        Entry storage e = entries[msg.sender][epoch];
        if (e.root != bytes32(0)) {
            if (e.root == root && e.count == count) return;
            revert AlreadyAnchored(msg.sender, epoch, e.root, e.count);
        }
        e.root = root;
        e.count = count;
        e.anchoredAt = uint64(block.number);
        emit Anchored(msg.sender, epoch, root, count);
    }

    /// The root `anchorer` anchored for `epoch`; all zero when none.
    function rootOf(address anchorer, uint64 epoch)
        external
        view
        returns (bytes32 root, uint64 count, uint64 anchoredAt)
    {
        Entry storage e = entries[anchorer][epoch];
        return (e.root, e.count, e.anchoredAt);
    }
}
