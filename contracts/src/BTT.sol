// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title BitTorrent Test Token
/// @notice Mintable stand-in for BTT on local chains and devnets. Every other InferGrid contract takes the
///         token address as a constructor parameter, so on a real chain the configured (wrapped) BTT is used instead.
contract BTT is ERC20, ERC20Permit, Ownable {
    /// @notice A mint of zero tokens was requested.
    error ZeroAmount();

    /// @param initialOwner The only account allowed to mint.
    constructor(address initialOwner)
        ERC20("BitTorrent Test Token", "BTT")
        ERC20Permit("BitTorrent Test Token")
        Ownable(initialOwner)
    {}

    /// @notice Mints `amount` tokens to `to`.
    /// @dev A zero `to` reverts with OpenZeppelin's `ERC20InvalidReceiver`.
    /// @param to Receiver of the new tokens.
    /// @param amount Amount in token wei; must be non-zero.
    function mint(address to, uint256 amount) external onlyOwner {
        if (amount == 0) revert ZeroAmount();
        _mint(to, amount);
    }
}
