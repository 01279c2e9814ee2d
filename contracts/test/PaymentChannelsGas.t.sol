// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {Fixture} from "./utils/Fixture.sol";
import {console} from "./utils/Test.sol";
import {PaymentChannels} from "../src/PaymentChannels.sol";

/// @notice Gas of redeeming, isolated with `startSnapshotGas`/`stopSnapshotGas` (written to `snapshots/`) and logged.
///         The figure is the gas of the call itself, without the 21,000 intrinsic and the calldata cost of a
///         transaction. Setting: each channel has its own payer and was redeemed once before (the steady state of a
///         node that settles periodically) and the node already holds tokens, so no slot goes from zero to non-zero;
///         `vm.cool` makes every slot cold again before a measurement, as in a fresh transaction. Each test takes
///         one measurement (a second one in the same test reads high), so the marginal cost per extra channel is
///         (redeemBatch10 - redeemBatch1) / 9 from the snapshot file.
contract PaymentChannelsGasTest is Fixture {
    uint256 internal constant CHANNELS = 10;
    /// @dev Acceptance budgets: a batch of n channels may cost BATCH_BASE + (n - 1) * BATCH_MARGINAL. A batch of one
    ///      measures about 36,500 gas, so passing the 10-channel budget bounds the marginal cost near 20,000.
    uint256 internal constant BATCH_BASE = 40_000;
    uint256 internal constant BATCH_MARGINAL = 20_000;
    address internal node = address(0xD0DE);
    PaymentChannels.SignedVoucher[] internal second; // cumulative 2 ether on every channel

    function setUp() public override {
        super.setUp();
        for (uint256 i; i < CHANNELS; ++i) {
            (address payer, uint256 key) = makeAccount(string.concat("payer", vm.toString(i)));
            fund(payer, 100 ether);
            vm.prank(payer);
            uint256 id = channels.open(node, 100 ether);
            bytes memory sig = signVoucher(key, id, 1 ether);
            vm.prank(node);
            channels.redeem(id, 1 ether, sig);
            second.push(PaymentChannels.SignedVoucher(id, 2 ether, signVoucher(key, id, 2 ether)));
        }
    }

    function _batch(PaymentChannels.SignedVoucher[] storage source, uint256 count, string memory name)
        internal
        returns (uint256 gasUsed)
    {
        PaymentChannels.SignedVoucher[] memory vouchers = new PaymentChannels.SignedVoucher[](count);
        for (uint256 i; i < count; ++i) {
            vouchers[i] = source[i];
        }
        gasUsed = _measure(abi.encodeCall(PaymentChannels.redeemBatch, (vouchers)), name);
        vm.assertLe(gasUsed, BATCH_BASE + (count - 1) * BATCH_MARGINAL, "batch budget");
        vm.assertEq(btt.balanceOf(node), CHANNELS * 1 ether + count * 1 ether, "every voucher paid its increase");
    }

    /// @dev Calls the channels contract with pre-encoded calldata, so only the call itself is measured.
    function _measure(bytes memory data, string memory name) internal returns (uint256 gasUsed) {
        vm.cool(address(channels));
        vm.cool(address(btt));
        vm.prank(node);
        vm.startSnapshotGas(name);
        (bool ok,) = address(channels).call(data);
        gasUsed = vm.stopSnapshotGas();
        vm.assertTrue(ok, "redeem succeeded");
    }

    function test_gas_redeemOne() public {
        PaymentChannels.SignedVoucher memory v = second[0];
        uint256 gasUsed = _measure(
            abi.encodeCall(PaymentChannels.redeem, (v.channelId, v.cumulativeAmount, v.signature)), "redeemOne"
        );
        console.log("redeem, one voucher (gas)", gasUsed);
        vm.assertLe(gasUsed, 60_000, "redeem target");
    }

    function test_gas_redeemBatch1() public {
        console.log("redeemBatch, 1 channel (gas)", _batch(second, 1, "redeemBatch1"));
    }

    function test_gas_redeemBatch2() public {
        console.log("redeemBatch, 2 channels (gas)", _batch(second, 2, "redeemBatch2"));
    }

    function test_gas_redeemBatch10() public {
        console.log("redeemBatch, 10 channels (gas)", _batch(second, 10, "redeemBatch10"));
    }
}
