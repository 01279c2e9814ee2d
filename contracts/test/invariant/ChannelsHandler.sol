// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {Test} from "../utils/Test.sol";
import {BTT} from "../../src/BTT.sol";
import {PaymentChannels} from "../../src/PaymentChannels.sol";

/// @notice Drives PaymentChannels with funded payers and nodes, keeping ghost records of what was signed and paid.
contract ChannelsHandler is Test {
    BTT public immutable btt;
    PaymentChannels public immutable channels;
    address[] public payers;
    uint256[] internal payerKeys;
    address[] public nodes;

    /// @dev Highest cumulative amount the payer ever signed per channel, and the paid amount last seen.
    mapping(uint256 channelId => uint256) public maxSigned;
    mapping(uint256 channelId => uint256) public lastPaid;
    /// @dev Tokens each node received from redeems, measured as balance deltas.
    mapping(address node => uint256) public received;
    /// @dev Set when a redeem paid more than the increase of `paid`, or `paid` went down.
    bool public violated;

    constructor(
        BTT btt_,
        PaymentChannels channels_,
        address[] memory payers_,
        uint256[] memory keys_,
        address[] memory nodes_
    ) {
        btt = btt_;
        channels = channels_;
        payers = payers_;
        payerKeys = keys_;
        nodes = nodes_;
    }

    function nodeCount() external view returns (uint256) {
        return nodes.length;
    }

    function open(uint256 payerSeed, uint256 nodeSeed, uint256 amount) external {
        uint256 p = payerSeed % payers.length;
        amount = bound(amount, 1, btt.balanceOf(payers[p]) / 4 + 1);
        vm.prank(payers[p]);
        channels.open(nodes[nodeSeed % nodes.length], amount);
    }

    function topUp(uint256 channelSeed, uint256 amount) external {
        (uint256 id, PaymentChannels.Channel memory channel) = _channel(channelSeed);
        amount = bound(amount, 1, 10 ether);
        vm.prank(channel.payer);
        channels.topUp(id, amount);
    }

    /// @dev The payer signs a voucher `extra` above the highest it signed (possibly beyond the deposit); the node
    ///      redeems either that one or a stale one for `stale` below it.
    function redeem(uint256 channelSeed, uint256 extra, uint256 stale) external {
        (uint256 id, PaymentChannels.Channel memory channel) = _channel(channelSeed);
        uint256 amount = maxSigned[id] + bound(extra, 1, 50 ether);
        maxSigned[id] = amount;
        // One time in three the node replays an older voucher instead, which must pay nothing.
        if (stale % 3 == 0) amount = bound(stale, 0, lastPaid[id]);
        bytes memory sig = _sign(channel.payer, id, amount);
        _redeemAs(channel.node, abi.encodeCall(PaymentChannels.redeem, (id, amount, sig)));
    }

    function redeemBatch(uint256 channelSeed, uint256 count, uint256 extra) external {
        (, PaymentChannels.Channel memory first) = _channel(channelSeed);
        count = bound(count, 1, 4);
        PaymentChannels.SignedVoucher[] memory vouchers = new PaymentChannels.SignedVoucher[](count);
        uint256 found;
        for (uint256 id = 1; id <= channels.channelCount() && found < count; ++id) {
            PaymentChannels.Channel memory channel = channels.getChannel(id);
            if (channel.node != first.node) continue;
            uint256 amount = maxSigned[id] + bound(extra, 1, 50 ether);
            maxSigned[id] = amount;
            vouchers[found++] = PaymentChannels.SignedVoucher(id, amount, _sign(channel.payer, id, amount));
        }
        assembly ("memory-safe") {
            mstore(vouchers, found)
        }
        _redeemAs(first.node, abi.encodeCall(PaymentChannels.redeemBatch, (vouchers)));
    }

    function requestClose(uint256 channelSeed) external {
        (uint256 id, PaymentChannels.Channel memory channel) = _channel(channelSeed);
        vm.prank(channel.payer);
        channels.requestClose(id);
    }

    function finalizeClose(uint256 channelSeed) external {
        (uint256 id,) = _channel(channelSeed);
        channels.finalizeClose(id);
    }

    function warp(uint256 seconds_) external {
        vm.warp(vm.getBlockTimestamp() + bound(seconds_, 1, 2 hours));
    }

    function _channel(uint256 seed) internal view returns (uint256 id, PaymentChannels.Channel memory channel) {
        uint256 count = channels.channelCount();
        id = count == 0 ? 1 : seed % count + 1;
        channel = channels.getChannel(id);
    }

    function _sign(address payer, uint256 id, uint256 amount) internal view returns (bytes memory) {
        uint256 key;
        for (uint256 i; i < payers.length; ++i) {
            if (payers[i] == payer) key = payerKeys[i];
        }
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, channels.voucherDigest(id, amount));
        return abi.encodePacked(r, s, v);
    }

    /// @dev Calls as `node` and checks that its balance grew by exactly the growth of `paid` on its channels.
    function _redeemAs(address node, bytes memory data) internal {
        uint256 before = btt.balanceOf(node);
        vm.prank(node);
        (bool ok,) = address(channels).call(data);
        if (!ok) return;
        uint256 gained = btt.balanceOf(node) - before;
        uint256 paidGrowth;
        for (uint256 id = 1; id <= channels.channelCount(); ++id) {
            uint256 paid = channels.getChannel(id).paid;
            if (paid < lastPaid[id]) violated = true;
            paidGrowth += paid - (paid < lastPaid[id] ? paid : lastPaid[id]);
            lastPaid[id] = paid;
        }
        if (gained != paidGrowth) violated = true;
        received[node] += gained;
    }
}
