// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {Fixture} from "./utils/Fixture.sol";
import {ChannelsHandler} from "./invariant/ChannelsHandler.sol";
import {StakingHandler} from "./invariant/StakingHandler.sol";
import {PaymentChannels} from "../src/PaymentChannels.sol";
import {NodeRegistry} from "../src/NodeRegistry.sol";
import {Validation} from "../src/Validation.sol";

/// @notice Protocol-wide invariants under random sequences of payments, staking, reports and votes.
contract InvariantsTest is Fixture {
    ChannelsHandler internal payments;
    StakingHandler internal staking;
    address[] internal actors;

    function setUp() public override {
        super.setUp();
        address[] memory payers = new address[](3);
        uint256[] memory payerKeys = new uint256[](3);
        address[] memory nodes = new address[](3);
        uint256[] memory nodeKeys = new uint256[](3);
        address[] memory vals = new address[](3);
        for (uint256 i; i < 3; ++i) {
            string memory suffix = vm.toString(i);
            (payers[i], payerKeys[i]) = makeAccount(string.concat("payer", suffix));
            (nodes[i], nodeKeys[i]) = makeAccount(string.concat("node", suffix));
            (vals[i],) = makeAccount(string.concat("validator", suffix));
            fund(payers[i], 1_000 ether);
            fund(nodes[i], 1_000 ether);
            fund(vals[i], 10_000 ether);
            actors.push(payers[i]);
            actors.push(nodes[i]);
            actors.push(vals[i]);
        }
        payments = new ChannelsHandler(btt, channels, payers, payerKeys, nodes);
        staking = new StakingHandler(btt, registry, validation, nodes, nodeKeys, vals);
        targetContract(address(payments));
        targetContract(address(staking));
    }

    /// @notice (1) Every token is held by an actor, the treasury or a contract, and each contract holds exactly
    ///         what its books say.
    function invariant_tokenConservation() public view {
        uint256 sum = btt.balanceOf(treasury) + btt.balanceOf(address(registry)) + btt.balanceOf(address(channels))
            + btt.balanceOf(address(validation)) + btt.balanceOf(address(staking));
        for (uint256 i; i < actors.length; ++i) {
            sum += btt.balanceOf(actors[i]);
        }
        vm.assertEq(sum, btt.totalSupply(), "supply == sum of holders");

        vm.assertEq(btt.balanceOf(address(registry)), staking.nodeHoldings(), "registry == stakes + unbonding");

        uint256 open;
        for (uint256 id = 1; id <= channels.channelCount(); ++id) {
            PaymentChannels.Channel memory channel = channels.getChannel(id);
            open += channel.deposit - channel.paid;
        }
        vm.assertEq(btt.balanceOf(address(channels)), open, "channels == deposits - paid");

        uint256 bonded;
        for (uint256 i; i < staking.validatorCount(); ++i) {
            address v = staking.validators(i);
            (uint256 unbonding,) = validation.validatorUnbonding(v);
            bonded += validation.validatorStake(v) + unbonding;
        }
        uint256 pending;
        for (uint256 id = 1; id <= validation.faultReportCount(); ++id) {
            if (validation.getFaultReport(id).status == validation.FAULT_PENDING()) ++pending;
        }
        vm.assertEq(
            btt.balanceOf(address(validation)), bonded + pending * REPORT_BOND, "validation == stakes + pending bonds"
        );
    }

    /// @notice (2) A channel never pays out more than was deposited into it.
    function invariant_channelPaysAtMostDeposit() public view {
        for (uint256 id = 1; id <= channels.channelCount(); ++id) {
            PaymentChannels.Channel memory channel = channels.getChannel(id);
            vm.assertLe(channel.paid, channel.deposit, "paid <= deposit");
        }
    }

    /// @notice (3) No voucher amount pays twice: per channel `paid` only grows and never passes the highest signed
    ///         amount, each redeem paid exactly the growth of `paid`, and each node holds its initial balance plus
    ///         the sum of `paid` over its channels.
    function invariant_voucherNeverPaysTwice() public view {
        vm.assertFalse(payments.violated(), "a redeem paid more than the growth of paid");
        for (uint256 id = 1; id <= channels.channelCount(); ++id) {
            vm.assertLe(channels.getChannel(id).paid, payments.maxSigned(id), "paid <= max signed");
        }
        for (uint256 i; i < payments.nodeCount(); ++i) {
            address node = payments.nodes(i);
            uint256 paidToNode;
            for (uint256 id = 1; id <= channels.channelCount(); ++id) {
                PaymentChannels.Channel memory channel = channels.getChannel(id);
                if (channel.node == node) paidToNode += channel.paid;
            }
            vm.assertEq(payments.received(node), paidToNode, "node received == sum of paid");
        }
    }

    /// @notice (4) Node stake leaves the registry only by withdrawal or by a slash in a call that finalized a guilty
    ///         report, and the slashes add up to the nodes' recorded totals.
    function invariant_slashOnlyThroughQuorum() public view {
        vm.assertFalse(staking.slashWithoutQuorum(), "slash without a guilty quorum");
        vm.assertEq(
            staking.nodeHoldings(),
            staking.nodeDeposited() - staking.nodeWithdrawn() - staking.slashedViaQuorum(),
            "holdings == deposited - withdrawn - slashed"
        );
        uint256 recorded;
        for (uint256 i; i < staking.operatorCount(); ++i) {
            recorded += validation.getNodeRecord(staking.operators(i)).totalSlashed;
        }
        vm.assertEq(recorded, staking.slashedViaQuorum(), "recorded slashes");
    }

    /// @notice (6) A slash needs guilty stake >= quorum of the snapshot total: for every guilty report, the
    ///         stake of the validators that voted guilty, and the total, both taken from the handler's own record of
    ///         stakes at the second before the report, reach the quorum; the contract's snapshot total agrees.
    function invariant_slashNeedsSnapshotQuorum() public view {
        for (uint256 id = 1; id <= validation.faultReportCount(); ++id) {
            Validation.FaultReport memory report = validation.getFaultReport(id);
            uint256 snapshot = report.reportedAt - 1;
            uint256 total = staking.totalActiveStakeAt(snapshot);
            vm.assertEq(report.snapshotTotal, total, "snapshot total");
            if (report.status != validation.FAULT_GUILTY()) continue;
            uint256 guilty;
            for (uint256 i; i < staking.validatorCount(); ++i) {
                if (validation.voteOf(id, staking.validators(i)) == validation.VOTE_GUILTY()) {
                    guilty += staking.activeStakeAt(i, snapshot);
                }
            }
            vm.assertGe(guilty * 10_000, total * validation.quorumBps(), "guilty quorum of the snapshot total");
            vm.assertTrue(total != 0, "non-empty snapshot");
        }
    }

    /// @notice (7) No report is decided outside its window: a guilty verdict falls within
    ///         [reportedAt, reportedAt + voteWindow); after the window a report can only be rejected, or superseded
    ///         when another report proved the same answer.
    function invariant_noReportDecidedOutsideItsWindow() public view {
        for (uint256 id = 1; id <= validation.faultReportCount(); ++id) {
            Validation.FaultReport memory report = validation.getFaultReport(id);
            uint256 decided = staking.decidedAt(id);
            if (report.status == validation.FAULT_PENDING()) {
                vm.assertEq(decided, 0, "pending is undecided");
                continue;
            }
            vm.assertGe(decided, report.reportedAt, "not before the report");
            if (report.status == validation.FAULT_GUILTY()) {
                vm.assertLe(decided + 1, report.reportedAt + validation.voteWindow(), "guilty within the window");
            }
            if (report.status == validation.FAULT_SUPERSEDED()) {
                uint256 proof = validation.provenBy(report.node, report.requestHash);
                vm.assertTrue(proof != 0 && proof != id, "superseded by another guilty report");
            }
        }
    }

    /// @notice (5) No withdrawal, of node or validator stake, happened before its unbonding period ended.
    function invariant_withdrawalsRespectUnbonding() public view {
        vm.assertFalse(staking.earlyWithdrawal(), "early withdrawal");
    }
}
