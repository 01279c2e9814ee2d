// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {Fixture} from "./utils/Fixture.sol";
import {PaymentChannels} from "../src/PaymentChannels.sol";

contract PaymentChannelsTest is Fixture {
    address internal payer;
    uint256 internal payerKey;
    address internal node = address(0xD0DE);
    uint256 internal id;

    function setUp() public override {
        super.setUp();
        (payer, payerKey) = makeAccount("payer");
        fund(payer, 1_000 ether);
        vm.prank(payer);
        id = channels.open(node, 100 ether);
    }

    function _redeem(uint256 cumulative) internal {
        bytes memory sig = signVoucher(payerKey, id, cumulative);
        vm.prank(node);
        channels.redeem(id, cumulative, sig);
    }

    function _assertChannel(uint256 deposit, uint256 paid, uint64 closesAt) internal view {
        PaymentChannels.Channel memory channel = channels.getChannel(id);
        vm.assertEq(uint256(channel.deposit), deposit, "deposit");
        vm.assertEq(uint256(channel.paid), paid, "paid");
        vm.assertEq(uint256(channel.closesAt), closesAt, "closesAt");
    }

    // ---------------------------------------------------------------- open / topUp

    function test_constructorAndDomain() public view {
        vm.assertEq(address(channels.token()), address(btt), "token");
        vm.assertEq(uint256(channels.closeWindow()), CLOSE_WINDOW, "closeWindow");
        (, string memory name, string memory version, uint256 chainId, address verifying,,) = channels.eip712Domain();
        vm.assertEq(name, "InferGrid PaymentChannels", "name");
        vm.assertEq(version, "1", "version");
        vm.assertEq(chainId, block.chainid, "chainId");
        vm.assertEq(verifying, address(channels), "verifyingContract");
        vm.assertEq(
            channels.VOUCHER_TYPEHASH(), keccak256("Voucher(uint256 channelId,uint256 cumulativeAmount)"), "typehash"
        );
    }

    function test_open() public {
        vm.expectEmit(address(channels));
        emit PaymentChannels.ChannelOpened(2, payer, node, 5 ether);
        vm.prank(payer);
        uint256 second = channels.open(node, 5 ether);
        vm.assertEq(second, 2, "ids count up from 1");
        vm.assertEq(channels.channelCount(), 2, "count");
        PaymentChannels.Channel memory channel = channels.getChannel(second);
        vm.assertEq(channel.payer, payer, "payer");
        vm.assertEq(channel.node, node, "node");
        vm.assertEq(uint256(channel.deposit), 5 ether, "deposit");
        vm.assertEq(btt.balanceOf(address(channels)), 105 ether, "held");
    }

    function test_open_revertsOnZeroAmount() public {
        vm.prank(payer);
        vm.expectRevert(PaymentChannels.ZeroAmount.selector);
        channels.open(node, 0);
    }

    function test_open_revertsOnZeroNode() public {
        vm.prank(payer);
        vm.expectRevert(PaymentChannels.ZeroAddress.selector);
        channels.open(address(0), 1);
    }

    function test_topUp() public {
        vm.expectEmit(address(channels));
        emit PaymentChannels.ChannelToppedUp(id, 7 ether, 107 ether);
        vm.prank(payer);
        channels.topUp(id, 7 ether);
        _assertChannel(107 ether, 0, 0);
    }

    function test_topUp_cancelsPendingClose() public {
        vm.prank(payer);
        channels.requestClose(id);
        vm.expectEmit(address(channels));
        emit PaymentChannels.CloseCancelled(id);
        vm.prank(payer);
        channels.topUp(id, 1 ether);
        _assertChannel(101 ether, 0, 0);
    }

    function test_topUp_revertsAfterCloseWindow() public {
        vm.prank(payer);
        channels.requestClose(id);
        vm.warp(vm.getBlockTimestamp() + CLOSE_WINDOW);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(PaymentChannels.ChannelExpired.selector, id));
        channels.topUp(id, 1 ether);
    }

    function test_topUp_reverts() public {
        vm.prank(payer);
        vm.expectRevert(PaymentChannels.ZeroAmount.selector);
        channels.topUp(id, 0);

        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(PaymentChannels.UnknownChannel.selector, 99));
        channels.topUp(99, 1);

        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(PaymentChannels.NotChannelPayer.selector, id));
        channels.topUp(id, 1);
    }

    // ---------------------------------------------------------------- redeem

    function test_redeem_paysIncreaseOnly() public {
        vm.expectEmit(address(channels));
        emit PaymentChannels.VoucherRedeemed(id, node, 10 ether, 10 ether);
        _redeem(10 ether);
        vm.expectEmit(address(channels));
        emit PaymentChannels.VoucherRedeemed(id, node, 15 ether, 25 ether);
        _redeem(25 ether);
        vm.assertEq(btt.balanceOf(node), 25 ether, "node paid the cumulative amount once");
        _assertChannel(100 ether, 25 ether, 0);
    }

    function test_redeem_capsAtDepositAndPaysRestAfterTopUp() public {
        _redeem(150 ether);
        vm.assertEq(btt.balanceOf(node), 100 ether, "capped at deposit");
        vm.prank(payer);
        channels.topUp(id, 100 ether);
        _redeem(150 ether);
        vm.assertEq(btt.balanceOf(node), 150 ether, "rest after top-up");
        _assertChannel(200 ether, 150 ether, 0);
    }

    function test_redeem_revertsOnReplay() public {
        _redeem(10 ether);
        bytes memory sig = signVoucher(payerKey, id, 10 ether);
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(PaymentChannels.VoucherAlreadyRedeemed.selector, id, 10 ether));
        channels.redeem(id, 10 ether, sig);
    }

    function test_redeem_revertsOnStaleVoucher() public {
        _redeem(10 ether);
        bytes memory sig = signVoucher(payerKey, id, 5 ether);
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(PaymentChannels.VoucherAlreadyRedeemed.selector, id, 5 ether));
        channels.redeem(id, 5 ether, sig);
    }

    function test_redeem_revertsOnWrongSigner() public {
        (, uint256 otherKey) = makeAccount("mallory");
        bytes memory sig = signVoucher(otherKey, id, 1 ether);
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(PaymentChannels.InvalidSignature.selector, id));
        channels.redeem(id, 1 ether, sig);
    }

    function test_redeem_revertsOnVoucherForOtherAmount() public {
        bytes memory sig = signVoucher(payerKey, id, 1 ether);
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(PaymentChannels.InvalidSignature.selector, id));
        channels.redeem(id, 2 ether, sig);
    }

    function test_redeem_revertsOnMalformedSignature() public {
        bytes memory sig = signVoucher(payerKey, id, 1 ether);
        assembly ("memory-safe") {
            mstore(sig, 64) // truncate to 64 bytes
        }
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(PaymentChannels.InvalidSignature.selector, id));
        channels.redeem(id, 1 ether, sig);
    }

    function test_redeem_revertsOnHighS() public {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(payerKey, channels.voucherDigest(id, 1 ether));
        // The malleable twin (n - s, flipped v) recovers the same signer; OpenZeppelin ECDSA rejects it.
        uint256 n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;
        bytes memory sig = abi.encodePacked(r, bytes32(n - uint256(s)), v == 27 ? uint8(28) : uint8(27));
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(PaymentChannels.InvalidSignature.selector, id));
        channels.redeem(id, 1 ether, sig);
    }

    function test_redeem_revertsForWrongCaller() public {
        bytes memory sig = signVoucher(payerKey, id, 1 ether);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(PaymentChannels.NotChannelNode.selector, id));
        channels.redeem(id, 1 ether, sig);
    }

    function test_redeem_revertsOnUnknownChannel() public {
        bytes memory sig = signVoucher(payerKey, 42, 1 ether);
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(PaymentChannels.UnknownChannel.selector, 42));
        channels.redeem(42, 1 ether, sig);
    }

    function test_redeem_revertsOnZeroAmount() public {
        bytes memory sig = signVoucher(payerKey, id, 0);
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(PaymentChannels.VoucherAlreadyRedeemed.selector, id, 0));
        channels.redeem(id, 0, sig);
    }

    function test_redeem_allowedDuringCloseWindowRevertsAfter() public {
        vm.prank(payer);
        channels.requestClose(id);
        vm.warp(vm.getBlockTimestamp() + CLOSE_WINDOW - 1);
        _redeem(10 ether);
        vm.warp(vm.getBlockTimestamp() + 1);
        bytes memory sig = signVoucher(payerKey, id, 20 ether);
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(PaymentChannels.ChannelExpired.selector, id));
        channels.redeem(id, 20 ether, sig);
    }

    function testFuzz_redeem_neverPaysTwiceNorAboveDeposit(uint256 first, uint256 second) public {
        first = bound(first, 1, 300 ether);
        second = bound(second, 1, 300 ether);
        _redeem(first);
        uint256 afterFirst = first < 100 ether ? first : 100 ether;
        vm.assertEq(btt.balanceOf(node), afterFirst, "first");
        bytes memory sig = signVoucher(payerKey, id, second);
        uint256 target = second < 100 ether ? second : 100 ether;
        if (target <= afterFirst) {
            vm.expectRevert(abi.encodeWithSelector(PaymentChannels.VoucherAlreadyRedeemed.selector, id, second));
        }
        vm.prank(node);
        channels.redeem(id, second, sig);
        uint256 expected = target > afterFirst ? target : afterFirst;
        vm.assertEq(btt.balanceOf(node), expected, "paid = max redeemed, capped");
    }

    // ---------------------------------------------------------------- redeemBatch

    function test_redeemBatch_oneTransferForSeveralChannels() public {
        vm.prank(payer);
        uint256 id2 = channels.open(node, 50 ether);
        PaymentChannels.SignedVoucher[] memory vouchers = new PaymentChannels.SignedVoucher[](3);
        vouchers[0] = PaymentChannels.SignedVoucher(id, 10 ether, signVoucher(payerKey, id, 10 ether));
        vouchers[1] = PaymentChannels.SignedVoucher(id2, 70 ether, signVoucher(payerKey, id2, 70 ether));
        vouchers[2] = PaymentChannels.SignedVoucher(id, 30 ether, signVoucher(payerKey, id, 30 ether));
        vm.prank(node);
        channels.redeemBatch(vouchers);
        vm.assertEq(btt.balanceOf(node), 80 ether, "30 + 50 (capped)");
        vm.assertEq(uint256(channels.getChannel(id2).paid), 50 ether, "capped");
    }

    function test_redeemBatch_revertsOnEmpty() public {
        vm.prank(node);
        vm.expectRevert(PaymentChannels.EmptyBatch.selector);
        channels.redeemBatch(new PaymentChannels.SignedVoucher[](0));
    }

    function test_redeemBatch_skipsVouchersThatCannotPay() public {
        vm.prank(payer);
        uint256 foreign = channels.open(address(0xBEEF), 50 ether);
        (, uint256 strangerKey) = makeAccount("stranger");
        PaymentChannels.SignedVoucher[] memory vouchers = new PaymentChannels.SignedVoucher[](5);
        vouchers[0] = PaymentChannels.SignedVoucher(id, 10 ether, signVoucher(payerKey, id, 10 ether));
        vouchers[1] = PaymentChannels.SignedVoucher(foreign, 1 ether, signVoucher(payerKey, foreign, 1 ether));
        vouchers[2] = vouchers[0];
        vouchers[3] = PaymentChannels.SignedVoucher(99, 1 ether, signVoucher(payerKey, 99, 1 ether));
        vouchers[4] = PaymentChannels.SignedVoucher(id, 20 ether, signVoucher(strangerKey, id, 20 ether));
        vm.expectEmit(address(channels));
        emit PaymentChannels.VoucherRedeemed(id, node, 10 ether, 10 ether);
        vm.expectEmit(address(channels));
        emit PaymentChannels.VoucherSkipped(foreign, 1 ether, PaymentChannels.SkipReason.NotChannelNode);
        vm.expectEmit(address(channels));
        emit PaymentChannels.VoucherSkipped(id, 10 ether, PaymentChannels.SkipReason.AlreadyRedeemed);
        vm.expectEmit(address(channels));
        emit PaymentChannels.VoucherSkipped(99, 1 ether, PaymentChannels.SkipReason.UnknownChannel);
        vm.expectEmit(address(channels));
        emit PaymentChannels.VoucherSkipped(id, 20 ether, PaymentChannels.SkipReason.InvalidSignature);
        vm.prank(node);
        uint256 total = channels.redeemBatch(vouchers);
        vm.assertEq(total, 10 ether, "only the valid voucher paid");
        vm.assertEq(btt.balanceOf(node), 10 ether, "node paid once");
        vm.assertEq(uint256(channels.getChannel(foreign).paid), 0, "foreign channel untouched");
    }

    function test_redeemBatch_nothingPayableTransfersNothing() public {
        PaymentChannels.SignedVoucher[] memory vouchers = new PaymentChannels.SignedVoucher[](1);
        vouchers[0] = PaymentChannels.SignedVoucher(id, 0, signVoucher(payerKey, id, 0));
        vm.prank(node);
        vm.assertEq(channels.redeemBatch(vouchers), 0, "nothing paid");
        vm.assertEq(btt.balanceOf(node), 0, "no transfer");
    }

    function test_constructor_revertsOnZeroCloseWindow() public {
        vm.expectRevert(PaymentChannels.ZeroCloseWindow.selector);
        new PaymentChannels(btt, 0);
    }

    // ---------------------------------------------------------------- close

    function test_closeLifecycle_refundsUnpaid() public {
        _redeem(30 ether);
        uint64 closesAt = uint64(vm.getBlockTimestamp()) + CLOSE_WINDOW;
        vm.expectEmit(address(channels));
        emit PaymentChannels.CloseRequested(id, closesAt);
        vm.prank(payer);
        channels.requestClose(id);

        vm.expectRevert(abi.encodeWithSelector(PaymentChannels.CloseWindowOpen.selector, id, closesAt));
        channels.finalizeClose(id);

        vm.warp(closesAt);
        uint256 before = btt.balanceOf(payer);
        vm.expectEmit(address(channels));
        emit PaymentChannels.ChannelClosed(id, 70 ether, 30 ether);
        channels.finalizeClose(id); // anyone may finalize; the refund goes to the payer
        vm.assertEq(btt.balanceOf(payer) - before, 70 ether, "refund");
        vm.assertTrue(channels.isClosed(id), "closed");
        _assertChannel(30 ether, 30 ether, closesAt);
        vm.assertEq(btt.balanceOf(address(channels)), 0, "nothing left");

        vm.expectRevert(abi.encodeWithSelector(PaymentChannels.ChannelAlreadyClosed.selector, id));
        channels.finalizeClose(id);

        bytes memory sig = signVoucher(payerKey, id, 40 ether);
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(PaymentChannels.ChannelExpired.selector, id));
        channels.redeem(id, 40 ether, sig);
    }

    function test_requestClose_reverts() public {
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(PaymentChannels.NotChannelPayer.selector, id));
        channels.requestClose(id);

        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(PaymentChannels.UnknownChannel.selector, 7));
        channels.requestClose(7);

        vm.prank(payer);
        channels.requestClose(id);
        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(
                PaymentChannels.CloseAlreadyRequested.selector, id, uint64(vm.getBlockTimestamp()) + CLOSE_WINDOW
            )
        );
        channels.requestClose(id);
    }

    function test_finalizeClose_reverts() public {
        vm.expectRevert(abi.encodeWithSelector(PaymentChannels.UnknownChannel.selector, 7));
        channels.finalizeClose(7);
        vm.expectRevert(abi.encodeWithSelector(PaymentChannels.CloseNotRequested.selector, id));
        channels.finalizeClose(id);
    }
}
