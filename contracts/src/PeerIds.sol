// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

/// @title libp2p peer ids of secp256k1 identities
/// @notice A libp2p peer id of a secp256k1 key is the identity multihash of the protobuf-encoded compressed public
///         key: `0x00 0x25 | 0x08 0x02 0x12 0x21 | (0x02|0x03) x`, 39 bytes. This library checks that form and turns
///         the key into the Ethereum address of the same key, so that a contract can `ecrecover` a signature by the
///         peer's key and compare.
library PeerIds {
    /// @notice Length of a secp256k1 peer id.
    uint256 internal constant LENGTH = 39;

    /// @dev identity multihash (0x00, length 37) + protobuf PublicKey{Type: Secp256k1 (2), Data: 33 bytes}.
    bytes6 private constant HEADER = 0x002508021221;
    uint256 private constant P = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFC2F;
    /// @dev (P + 1) / 4: P = 3 mod 4, so y = (y²)^((P+1)/4) is a square root of y² when one exists.
    uint256 private constant SQRT_EXPONENT = 0x3FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFBFFFFF0C;
    address private constant MODEXP = address(0x05);

    /// @notice The peer id is not a secp256k1 libp2p peer id.
    error UnsupportedPeerId();
    /// @notice The peer id's key is not a point of secp256k1.
    error InvalidPeerIdKey();

    /// @notice The Ethereum address of the secp256k1 key inside `peerId`.
    /// @param peerId A 39-byte secp256k1 libp2p peer id.
    /// @return The address `ecrecover` returns for signatures by that key.
    function keyAddress(bytes calldata peerId) internal view returns (address) {
        if (peerId.length != LENGTH || bytes6(peerId[:6]) != HEADER) revert UnsupportedPeerId();
        uint8 prefix = uint8(peerId[6]);
        if (prefix != 0x02 && prefix != 0x03) revert UnsupportedPeerId();
        uint256 x = uint256(bytes32(peerId[7:39]));
        if (x >= P) revert InvalidPeerIdKey();
        uint256 ySquared = addmod(mulmod(mulmod(x, x, P), x, P), 7, P);
        uint256 y = _modexp(ySquared, SQRT_EXPONENT);
        if (mulmod(y, y, P) != ySquared) revert InvalidPeerIdKey();
        if (y & 1 != prefix & 1) y = P - y;
        return address(uint160(uint256(keccak256(abi.encode(x, y)))));
    }

    /// @dev base^exponent mod P through the modexp precompile (EIP-198).
    function _modexp(uint256 base, uint256 exponent) private view returns (uint256 result) {
        (bool ok, bytes memory out) = MODEXP.staticcall(abi.encode(32, 32, 32, base, exponent, P));
        if (!ok || out.length != 32) revert InvalidPeerIdKey();
        result = abi.decode(out, (uint256));
    }
}
