// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

/// @title InferGrid payment channels
/// @notice One-way payer→node channels. The payer deposits tokens and signs EIP-712 vouchers for the cumulative
///         amount owed; the node redeems the latest voucher (alone or batched across channels) and is paid only the
///         increase over what the channel already paid. The payer can close with a window during which the node can
///         still redeem, then takes back the rest.
contract PaymentChannels is EIP712, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;
    using SafeCast for uint256;

    /// @notice A channel; packed into three storage slots. `closesAt` is 0 while no close is pending.
    struct Channel {
        address payer;
        uint64 closesAt;
        address node;
        uint128 deposit;
        uint128 paid;
    }

    /// @notice A voucher as passed to `redeemBatch`.
    struct SignedVoucher {
        uint256 channelId;
        uint256 cumulativeAmount;
        bytes signature;
    }

    /// @notice Why `redeemBatch` skipped a voucher.
    enum SkipReason {
        None,
        UnknownChannel,
        NotChannelNode,
        ChannelExpired,
        AlreadyRedeemed,
        InvalidSignature
    }

    /// @notice EIP-712 type hash of `Voucher(uint256 channelId,uint256 cumulativeAmount)`.
    bytes32 public constant VOUCHER_TYPEHASH = keccak256("Voucher(uint256 channelId,uint256 cumulativeAmount)");

    /// @notice The payment token.
    IERC20 public immutable token;
    /// @notice Seconds between `requestClose` and the earliest `finalizeClose`.
    uint64 public immutable closeWindow;

    uint256 private _channelCount;
    mapping(uint256 channelId => Channel) private _channels;
    mapping(uint256 channelId => bool) private _closed;

    event ChannelOpened(uint256 indexed channelId, address indexed payer, address indexed node, uint256 deposit);
    event ChannelToppedUp(uint256 indexed channelId, uint256 amount, uint256 newDeposit);
    event VoucherRedeemed(uint256 indexed channelId, address indexed node, uint256 amount, uint256 cumulativePaid);
    /// @notice `redeemBatch` left a voucher out because it can no longer be redeemed (or never could).
    event VoucherSkipped(uint256 indexed channelId, uint256 cumulativeAmount, SkipReason reason);
    event CloseRequested(uint256 indexed channelId, uint64 closesAt);
    event CloseCancelled(uint256 indexed channelId);
    event ChannelClosed(uint256 indexed channelId, uint256 refund, uint256 totalPaid);

    error ZeroAmount();
    error ZeroAddress();
    error UnknownChannel(uint256 channelId);
    error NotChannelPayer(uint256 channelId);
    error NotChannelNode(uint256 channelId);
    error ChannelExpired(uint256 channelId);
    error InvalidSignature(uint256 channelId);
    error VoucherAlreadyRedeemed(uint256 channelId, uint256 cumulativeAmount);
    error EmptyBatch();
    error CloseAlreadyRequested(uint256 channelId, uint64 closesAt);
    error CloseNotRequested(uint256 channelId);
    error CloseWindowOpen(uint256 channelId, uint64 closesAt);
    error ChannelAlreadyClosed(uint256 channelId);
    error ZeroCloseWindow();

    /// @param token_ The payment token (BTT).
    /// @param closeWindow_ Seconds the node has to redeem after the payer requests a close; non-zero, or a payer
    ///        could close and refund in one block, ahead of any redemption.
    constructor(IERC20 token_, uint64 closeWindow_) EIP712("InferGrid PaymentChannels", "1") {
        if (closeWindow_ == 0) revert ZeroCloseWindow();
        token = token_;
        closeWindow = closeWindow_;
    }

    /// @notice Opens a channel from the caller to `node`, funded with `amount` pulled from the caller.
    /// @param node The node's operator address; it redeems the vouchers.
    /// @param amount Initial deposit; non-zero.
    /// @return channelId The new channel's id (ids start at 1).
    function open(address node, uint256 amount) external nonReentrant returns (uint256 channelId) {
        if (node == address(0)) revert ZeroAddress();
        if (amount == 0) revert ZeroAmount();
        channelId = ++_channelCount;
        _channels[channelId] =
            Channel({payer: msg.sender, closesAt: 0, node: node, deposit: amount.toUint128(), paid: 0});
        emit ChannelOpened(channelId, msg.sender, node, amount);

        token.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Adds `amount` to the channel's deposit. A top-up during a pending close cancels the close.
    /// @param channelId The channel.
    /// @param amount Amount pulled from the caller; non-zero.
    function topUp(uint256 channelId, uint256 amount) external nonReentrant {
        if (amount == 0) revert ZeroAmount();
        Channel storage channel = _payerChannel(channelId);
        uint64 closesAt = channel.closesAt;
        if (closesAt != 0) {
            if (block.timestamp >= closesAt) revert ChannelExpired(channelId);
            channel.closesAt = 0;
            emit CloseCancelled(channelId);
        }
        uint256 newDeposit = channel.deposit + amount;
        channel.deposit = newDeposit.toUint128();
        emit ChannelToppedUp(channelId, amount, newDeposit);

        token.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Redeems the payer's voucher for `cumulativeAmount` and pays the caller (the channel's node) the
    ///         increase over what the channel has already paid, capped at the deposit.
    /// @param channelId The channel.
    /// @param cumulativeAmount Total amount the payer owes on this channel so far.
    /// @param signature The payer's 65-byte r||s||v signature over `voucherDigest(channelId, cumulativeAmount)`.
    function redeem(uint256 channelId, uint256 cumulativeAmount, bytes calldata signature) external nonReentrant {
        (uint256 increase, SkipReason failure) = _redeem(channelId, cumulativeAmount, signature);
        if (failure != SkipReason.None) _revertWith(failure, channelId, cumulativeAmount);
        token.safeTransfer(msg.sender, increase);
    }

    /// @notice Redeems vouchers of several channels with one transfer. A voucher that cannot pay (unknown channel,
    ///         not the caller's, expired, already redeemed, bad signature) is skipped with a `VoucherSkipped` event,
    ///         so that a payer timing its close cannot make a whole batch revert.
    /// @param vouchers The vouchers; a channel may appear more than once with rising amounts.
    /// @return total The amount paid to the caller.
    function redeemBatch(SignedVoucher[] calldata vouchers) external nonReentrant returns (uint256 total) {
        if (vouchers.length == 0) revert EmptyBatch();
        for (uint256 i; i < vouchers.length; ++i) {
            SignedVoucher calldata voucher = vouchers[i];
            (uint256 increase, SkipReason failure) =
                _redeem(voucher.channelId, voucher.cumulativeAmount, voucher.signature);
            if (failure != SkipReason.None) emit VoucherSkipped(voucher.channelId, voucher.cumulativeAmount, failure);
            total += increase;
        }
        if (total != 0) token.safeTransfer(msg.sender, total);
    }

    /// @notice Starts the close window; after it `finalizeClose` refunds the unpaid deposit.
    /// @param channelId The channel; the caller must be its payer.
    function requestClose(uint256 channelId) external {
        Channel storage channel = _payerChannel(channelId);
        if (channel.closesAt != 0) revert CloseAlreadyRequested(channelId, channel.closesAt);
        uint64 closesAt = uint64(block.timestamp) + closeWindow;
        channel.closesAt = closesAt;
        emit CloseRequested(channelId, closesAt);
    }

    /// @notice Finishes a channel whose close window has passed and refunds `deposit - paid` to the payer.
    ///         Anyone may call it; afterwards `deposit == paid` and the channel accepts nothing more.
    /// @param channelId The channel.
    function finalizeClose(uint256 channelId) external nonReentrant {
        Channel storage channel = _existingChannel(channelId);
        uint64 closesAt = channel.closesAt;
        if (closesAt == 0) revert CloseNotRequested(channelId);
        if (block.timestamp < closesAt) revert CloseWindowOpen(channelId, closesAt);
        if (_closed[channelId]) revert ChannelAlreadyClosed(channelId);
        uint128 paid = channel.paid;
        uint256 refund = channel.deposit - paid;
        channel.deposit = paid;
        _closed[channelId] = true;
        emit ChannelClosed(channelId, refund, paid);

        if (refund != 0) token.safeTransfer(channel.payer, refund);
    }

    /// @notice The EIP-712 digest a payer signs for a voucher.
    /// @param channelId The channel.
    /// @param cumulativeAmount Total amount owed on the channel so far.
    /// @return The digest.
    function voucherDigest(uint256 channelId, uint256 cumulativeAmount) public view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(VOUCHER_TYPEHASH, channelId, cumulativeAmount)));
    }

    /// @notice A channel's state (all zero for an unknown id).
    /// @param channelId The channel.
    /// @return The channel.
    function getChannel(uint256 channelId) external view returns (Channel memory) {
        return _channels[channelId];
    }

    /// @notice Whether `finalizeClose` has run for the channel.
    /// @param channelId The channel.
    /// @return True once finalized.
    function isClosed(uint256 channelId) external view returns (bool) {
        return _closed[channelId];
    }

    /// @notice Number of channels opened; also the highest channel id.
    /// @return The count.
    function channelCount() external view returns (uint256) {
        return _channelCount;
    }

    /// @dev Checks a voucher, books the increase and returns it; the caller transfers it. A voucher that cannot pay
    ///      returns why and changes nothing. Cheap checks run before the signature recovery.
    function _redeem(uint256 channelId, uint256 cumulativeAmount, bytes calldata signature)
        private
        returns (uint256 increase, SkipReason failure)
    {
        Channel storage channel = _channels[channelId];
        address payer = channel.payer;
        if (payer == address(0)) return (0, SkipReason.UnknownChannel);
        if (channel.node != msg.sender) return (0, SkipReason.NotChannelNode);
        uint64 closesAt = channel.closesAt;
        // A finalized channel keeps its past `closesAt`, so this also rejects redeems after `finalizeClose`.
        if (closesAt != 0 && block.timestamp >= closesAt) return (0, SkipReason.ChannelExpired);

        uint256 deposit = channel.deposit;
        uint256 paid = channel.paid;
        uint256 payable_ = cumulativeAmount < deposit ? cumulativeAmount : deposit;
        if (payable_ <= paid) return (0, SkipReason.AlreadyRedeemed);

        (address signer, ECDSA.RecoverError error,) =
            ECDSA.tryRecover(voucherDigest(channelId, cumulativeAmount), signature);
        if (error != ECDSA.RecoverError.NoError || signer != payer) return (0, SkipReason.InvalidSignature);

        // payable_ <= deposit, which is a uint128.
        // forge-lint: disable-next-line(unsafe-typecast)
        channel.paid = uint128(payable_);
        increase = payable_ - paid;
        emit VoucherRedeemed(channelId, msg.sender, increase, payable_);
    }

    /// @dev `redeem` reports a voucher that cannot pay with the custom error of its reason.
    function _revertWith(SkipReason failure, uint256 channelId, uint256 cumulativeAmount) private pure {
        if (failure == SkipReason.UnknownChannel) revert UnknownChannel(channelId);
        if (failure == SkipReason.NotChannelNode) revert NotChannelNode(channelId);
        if (failure == SkipReason.ChannelExpired) revert ChannelExpired(channelId);
        if (failure == SkipReason.AlreadyRedeemed) revert VoucherAlreadyRedeemed(channelId, cumulativeAmount);
        revert InvalidSignature(channelId);
    }

    function _existingChannel(uint256 channelId) private view returns (Channel storage channel) {
        channel = _channels[channelId];
        if (channel.payer == address(0)) revert UnknownChannel(channelId);
    }

    function _payerChannel(uint256 channelId) private view returns (Channel storage channel) {
        channel = _existingChannel(channelId);
        if (channel.payer != msg.sender) revert NotChannelPayer(channelId);
    }
}
