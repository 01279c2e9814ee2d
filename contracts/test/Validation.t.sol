// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {Fixture} from "./utils/Fixture.sol";
import {console} from "./utils/Test.sol";
import {NodeRegistry} from "../src/NodeRegistry.sol";
import {Validation} from "../src/Validation.sol";
import {BTT} from "../src/BTT.sol";

contract ValidationTest is Fixture {
    bytes32 internal constant REQUEST = keccak256("challenge request");
    bytes32 internal constant EXPECTED = keccak256("expected output");
    bytes32 internal constant WRONG = keccak256("wrong output");
    bytes32 internal constant SALT = keccak256("salt");
    uint256 internal constant NODE_STAKE = 1_000 ether;
    /// @dev Roots are committed in setUp, during epoch 0, for epoch E, which the tests then run in.
    uint64 internal constant E = 1;

    address internal node;
    uint256 internal nodeKey;
    address[3] internal validators = [address(0x7A1), address(0x7A2), address(0x7A3)];
    bytes32 internal root;
    bytes32[] internal proof;
    /// @dev The epoch the result helpers work on.
    uint64 internal round = E;

    function setUp() public override {
        super.setUp();
        (node, nodeKey) = makeAccount("node");
        registerNode(node, NODE_STAKE);
        (root, proof) = twoLeafTree(challengeLeaf(REQUEST, EXPECTED), keccak256("another leaf"));
        for (uint256 i; i < 3; ++i) {
            registerValidator(validators[i], MIN_VALIDATOR_STAKE);
            vm.prank(validators[i]);
            validation.commitChallengeRoot(E, root);
        }
        vm.warp(validation.epochEnd(0));
    }

    // ---------------------------------------------------------------- helpers

    function _commit(address validator, uint32 passed, uint32 failed) internal {
        bytes32 commitment = validation.resultCommitment(node, round, passed, failed, SALT, validator);
        vm.prank(validator);
        validation.commitResult(node, round, commitment);
    }

    function _reveal(address validator, uint32 passed, uint32 failed) internal {
        vm.prank(validator);
        validation.revealResult(node, round, passed, failed, SALT);
    }

    function _toCommitWindow() internal {
        vm.warp(validation.epochEnd(round));
    }

    function _toRevealWindow() internal {
        vm.warp(validation.epochEnd(round) + COMMIT_WINDOW);
    }

    function _evidence(bytes32 output) internal view returns (Validation.Evidence memory) {
        return Validation.Evidence({
            requestHash: REQUEST,
            outputHash: output,
            nodeSignature: signature(nodeKey, validation.responseDigest(REQUEST, output, E)),
            expectedOutputHash: EXPECTED,
            proof: proof
        });
    }

    function _report() internal returns (uint256) {
        Validation.Evidence memory evidence = _evidence(WRONG);
        vm.prank(validators[0]);
        return validation.reportFault(node, E, evidence);
    }

    // ---------------------------------------------------------------- parameters and epochs

    function test_paramsAndEpochs() public {
        Validation.Params memory p = validation.params();
        vm.assertEq(p.minValidatorStake, MIN_VALIDATOR_STAKE, "minValidatorStake");
        vm.assertEq(uint256(p.quorumBps), 6667, "quorum");
        vm.assertEq(p.treasury, treasury, "treasury");
        vm.assertEq(address(validation.registry()), address(registry), "registry");
        vm.assertEq(address(validation.token()), address(btt), "token");
        uint256 genesis = validation.genesis();
        vm.assertEq(uint256(validation.currentEpoch()), E, "setUp moved into epoch E");
        vm.assertEq(uint256(validation.epochEnd(0)), genesis + EPOCH, "end 0");
        vm.warp(genesis + 5 * EPOCH + 1);
        vm.assertEq(uint256(validation.currentEpoch()), 5, "epoch 5");
    }

    function test_constructor_revertsOnInvalidParams() public {
        Validation.Params memory p = defaultParams();
        p.quorumBps = 10_001;
        vm.expectRevert(Validation.InvalidParams.selector);
        new Validation(btt, registry, p);
        p = defaultParams();
        p.treasury = address(0);
        vm.expectRevert(Validation.InvalidParams.selector);
        new Validation(btt, registry, p);
        p = defaultParams();
        p.quorumBps = 5_000; // two opposite halves could both be a "quorum"
        vm.expectRevert(Validation.InvalidParams.selector);
        new Validation(btt, registry, p);
        p = defaultParams();
        p.epochDuration = 0;
        vm.expectRevert(Validation.InvalidParams.selector);
        new Validation(btt, registry, p);
    }

    function test_constructor_revertsOnUnbondingWithinExposureOrForeignToken() public {
        Validation.Params memory p = defaultParams();
        uint64 exposure = EPOCH + COMMIT_WINDOW + REVEAL_WINDOW + VOTE_WINDOW;
        vm.assertEq(uint256(validation.faultExposure()), exposure, "exposure");
        p.unbondingPeriod = VOTE_WINDOW; // vote, withdraw, vote again from a new address
        vm.expectRevert(abi.encodeWithSelector(Validation.UnbondingTooShort.selector, VOTE_WINDOW, exposure));
        new Validation(btt, registry, p);
        p.unbondingPeriod = exposure;
        vm.expectRevert(abi.encodeWithSelector(Validation.UnbondingTooShort.selector, exposure, exposure));
        new Validation(btt, registry, p);
        BTT other = new BTT(address(this));
        vm.expectRevert(Validation.TokenMismatch.selector);
        new Validation(other, registry, defaultParams());
    }

    // ---------------------------------------------------------------- validator stake

    function test_registerValidator() public {
        address v = address(0x7A4);
        fund(v, 2_000 ether);
        vm.expectEmit(address(validation));
        emit Validation.ValidatorRegistered(v, 1_500 ether);
        vm.prank(v);
        validation.registerValidator(1_500 ether);
        vm.assertTrue(validation.isValidator(v), "active");
        vm.assertEq(validation.validatorStake(v), 1_500 ether, "stake");
        vm.assertEq(validation.totalValidatorStake(), 4_500 ether, "total");
    }

    function test_registerValidator_reverts() public {
        address v = address(0x7A4);
        fund(v, 2_000 ether);
        vm.startPrank(v);
        vm.expectRevert(Validation.ZeroAmount.selector);
        validation.registerValidator(0);
        vm.expectRevert(abi.encodeWithSelector(Validation.StakeBelowMinimum.selector, 1 ether, MIN_VALIDATOR_STAKE));
        validation.registerValidator(1 ether);
        vm.stopPrank();
        vm.prank(validators[0]);
        vm.expectRevert(Validation.AlreadyRegistered.selector);
        validation.registerValidator(MIN_VALIDATOR_STAKE);
    }

    function test_addValidatorStake() public {
        vm.expectEmit(address(validation));
        emit Validation.ValidatorStakeAdded(validators[0], 5 ether, MIN_VALIDATOR_STAKE + 5 ether);
        vm.prank(validators[0]);
        validation.addValidatorStake(5 ether);
        vm.assertEq(validation.totalValidatorStake(), 3_005 ether, "total");
    }

    function test_addValidatorStake_reverts() public {
        vm.prank(validators[0]);
        vm.expectRevert(Validation.ZeroAmount.selector);
        validation.addValidatorStake(0);
        vm.prank(address(0xBAD));
        vm.expectRevert(Validation.NotRegistered.selector);
        validation.addValidatorStake(1);
    }

    function testFuzz_validatorUnbondAndWithdraw(uint256 amount, uint256 wait) public {
        amount = bound(amount, 1, MIN_VALIDATOR_STAKE);
        wait = bound(wait, 0, 2 * UNBONDING_PERIOD);
        address v = validators[0];
        uint64 endsAt = uint64(vm.getBlockTimestamp()) + UNBONDING_PERIOD;
        vm.expectEmit(address(validation));
        emit Validation.ValidatorUnbondRequested(v, amount, endsAt);
        vm.prank(v);
        validation.requestValidatorUnbond(amount);
        // Any unbond drops this validator below the minimum: all of its stake leaves the total.
        vm.assertFalse(validation.isValidator(v), "inactive below minimum");
        vm.assertEq(validation.totalValidatorStake(), 2 * MIN_VALIDATOR_STAKE, "total counts active stake only");
        (uint256 unbonding, uint64 until) = validation.validatorUnbonding(v);
        vm.assertEq(unbonding, amount, "unbonding");
        vm.assertEq(uint256(until), endsAt, "endsAt");

        vm.warp(vm.getBlockTimestamp() + wait);
        if (wait < UNBONDING_PERIOD) {
            vm.expectRevert(abi.encodeWithSelector(Validation.UnbondingNotElapsed.selector, endsAt));
            vm.prank(v);
            validation.withdrawValidatorStake();
        } else {
            uint256 before = btt.balanceOf(v);
            vm.prank(v);
            validation.withdrawValidatorStake();
            vm.assertEq(btt.balanceOf(v) - before, amount, "paid out");
        }
    }

    function test_requestValidatorUnbond_reverts() public {
        vm.startPrank(validators[0]);
        vm.expectRevert(Validation.ZeroAmount.selector);
        validation.requestValidatorUnbond(0);
        vm.expectRevert(
            abi.encodeWithSelector(Validation.InsufficientStake.selector, MIN_VALIDATOR_STAKE + 1, MIN_VALIDATOR_STAKE)
        );
        validation.requestValidatorUnbond(MIN_VALIDATOR_STAKE + 1);
        vm.expectRevert(Validation.NothingToWithdraw.selector);
        validation.withdrawValidatorStake();
        vm.stopPrank();
        vm.prank(address(0xBAD));
        vm.expectRevert(Validation.NotRegistered.selector);
        validation.requestValidatorUnbond(1);
    }

    // ---------------------------------------------------------------- challenge roots

    function test_commitChallengeRoot() public {
        vm.expectEmit(address(validation));
        emit Validation.ChallengeRootCommitted(validators[0], 3, root);
        vm.prank(validators[0]);
        validation.commitChallengeRoot(3, root);
        vm.assertEq(validation.challengeRoot(validators[0], 3), root, "stored");
    }

    function test_commitChallengeRoot_reverts() public {
        vm.startPrank(validators[0]);
        validation.commitChallengeRoot(E + 1, root);
        vm.expectRevert(Validation.RootAlreadyCommitted.selector);
        validation.commitChallengeRoot(E + 1, root);
        vm.expectRevert(Validation.ZeroRoot.selector);
        validation.commitChallengeRoot(E + 2, bytes32(0));
        // The current epoch has begun: a root for it could be built from answers already seen.
        vm.expectRevert(abi.encodeWithSelector(Validation.EpochStarted.selector, E, E));
        validation.commitChallengeRoot(E, root);
        vm.expectRevert(abi.encodeWithSelector(Validation.EpochStarted.selector, 0, E));
        validation.commitChallengeRoot(0, root);
        vm.stopPrank();
        vm.prank(address(0xBAD));
        vm.expectRevert(Validation.NotValidator.selector);
        validation.commitChallengeRoot(E + 1, root);
    }

    // ---------------------------------------------------------------- results

    function test_results_quorumFinalizesReputation() public {
        _toCommitWindow();
        _commit(validators[0], 9, 1);
        _commit(validators[1], 8, 2);
        _commit(validators[2], 10, 0);
        _toRevealWindow();
        vm.expectEmit(address(validation));
        emit Validation.ResultRevealed(validators[0], node, E, 9, 1);
        _reveal(validators[0], 9, 1);
        _reveal(validators[1], 8, 2);
        vm.assertEq(validation.reputationOf(node), 5_000, "neutral before quorum");
        // Equal stakes: score = (9000 + 8000 + 10000) / 3 = 9000; first scored epoch takes it as is.
        vm.expectEmit(address(validation));
        emit Validation.ResultFinalized(node, E, 9_000, 9_000, 27, 3);
        _reveal(validators[2], 10, 0);

        Validation.NodeRecord memory record = validation.getNodeRecord(node);
        vm.assertEq(uint256(record.reputationBps), 9_000, "reputation");
        vm.assertEq(uint256(record.epochsScored), 1, "epochs");
        vm.assertEq(uint256(record.challengesPassed), 27, "passed");
        vm.assertEq(uint256(record.challengesFailed), 3, "failed");
        vm.assertTrue(validation.getEpochResult(node, E).finalized, "finalized");
    }

    function test_results_emaOnSecondEpoch() public {
        for (uint256 i; i < 3; ++i) {
            vm.prank(validators[i]);
            validation.commitChallengeRoot(E + 1, root);
        }
        _scoreEpoch(E, 10, 0); // reputation 10000
        _scoreEpoch(E + 1, 0, 4);
        // (10000 * (10000 - 3000) + 0 * 3000) / 10000 = 7000
        vm.assertEq(validation.reputationOf(node), 7_000, "ema");
    }

    function _scoreEpoch(uint64 epoch, uint32 passed, uint32 failed) internal {
        vm.warp(validation.epochEnd(epoch));
        for (uint256 i; i < 3; ++i) {
            bytes32 commitment = validation.resultCommitment(node, epoch, passed, failed, SALT, validators[i]);
            vm.prank(validators[i]);
            validation.commitResult(node, epoch, commitment);
        }
        vm.warp(validation.epochEnd(epoch) + COMMIT_WINDOW);
        for (uint256 i; i < 3; ++i) {
            vm.prank(validators[i]);
            validation.revealResult(node, epoch, passed, failed, SALT);
        }
    }

    function testFuzz_reveal_scoreIsStakeWeighted(uint32 p0, uint32 f0, uint32 p1, uint32 f1, uint256 extra) public {
        p0 = uint32(bound(p0, 0, 1_000_000));
        f0 = uint32(bound(f0, p0 == 0 ? 1 : 0, 1_000_000));
        p1 = uint32(bound(p1, 0, 1_000_000));
        f1 = uint32(bound(f1, p1 == 0 ? 1 : 0, 1_000_000));
        extra = bound(extra, 0, 1_000_000 ether);
        if (extra != 0) {
            fund(validators[0], extra);
            vm.prank(validators[0]);
            validation.addValidatorStake(extra);
        }
        uint256 s0 = MIN_VALIDATOR_STAKE + extra;
        _toCommitWindow();
        _commit(validators[0], p0, f0);
        _commit(validators[1], p1, f1);
        _commit(validators[2], p1, f1);
        _toRevealWindow();
        _reveal(validators[0], p0, f0);
        if (!validation.getEpochResult(node, E).finalized) _reveal(validators[1], p1, f1);
        if (!validation.getEpochResult(node, E).finalized) _reveal(validators[2], p1, f1);

        Validation.EpochResult memory result = validation.getEpochResult(node, E);
        uint256 score0 = uint256(p0) * 10_000 / (uint256(p0) + f0);
        uint256 score1 = uint256(p1) * 10_000 / (uint256(p1) + f1);
        uint256 revealedOthers = result.revealedStake - s0;
        uint256 expected = (s0 * score0 + revealedOthers * score1) / result.revealedStake;
        vm.assertEq(uint256(validation.reputationOf(node)), expected, "stake-weighted mean");
        vm.assertLe(expected, 10_000, "bounded");
    }

    function test_commitResult_reverts() public {
        bytes32 c = validation.resultCommitment(node, E, 1, 0, SALT, validators[0]);
        uint64 end = validation.epochEnd(E);
        vm.prank(validators[0]);
        vm.expectRevert(abi.encodeWithSelector(Validation.EpochNotEnded.selector, end));
        validation.commitResult(node, E, c);

        _toCommitWindow();
        vm.prank(address(0xBAD));
        vm.expectRevert(Validation.NoChallengeRoot.selector);
        validation.commitResult(node, E, c);

        address v4 = address(0x7A4);
        registerValidator(v4, MIN_VALIDATOR_STAKE);
        vm.prank(v4);
        vm.expectRevert(Validation.NoChallengeRoot.selector);
        validation.commitResult(node, E, c);

        vm.prank(validators[0]);
        vm.expectRevert(Validation.ZeroCommitment.selector);
        validation.commitResult(node, E, bytes32(0));

        vm.prank(validators[0]);
        validation.commitResult(node, E, c);
        vm.prank(validators[0]);
        vm.expectRevert(Validation.AlreadyCommitted.selector);
        validation.commitResult(node, E, c);

        _toRevealWindow();
        vm.prank(validators[1]);
        vm.expectRevert(abi.encodeWithSelector(Validation.CommitWindowClosed.selector, end + COMMIT_WINDOW));
        validation.commitResult(node, E, c);
    }

    function test_revealResult_reverts() public {
        _toCommitWindow();
        _commit(validators[0], 5, 5);
        _commit(validators[1], 5, 5);
        _commit(validators[2], 0, 0);
        uint64 opensAt = validation.epochEnd(E) + COMMIT_WINDOW;

        vm.prank(validators[0]);
        vm.expectRevert(abi.encodeWithSelector(Validation.RevealWindowNotOpen.selector, opensAt));
        validation.revealResult(node, E, 5, 5, SALT);

        _toRevealWindow();
        vm.prank(address(0xBAD));
        vm.expectRevert(Validation.NoCommitment.selector);
        validation.revealResult(node, E, 5, 5, SALT);

        address v4 = address(0x7A4);
        registerValidator(v4, MIN_VALIDATOR_STAKE);
        vm.prank(v4);
        vm.expectRevert(Validation.NoCommitment.selector);
        validation.revealResult(node, E, 5, 5, SALT);

        vm.prank(validators[0]);
        vm.expectRevert(Validation.CommitmentMismatch.selector);
        validation.revealResult(node, E, 6, 4, SALT);

        vm.prank(validators[2]);
        vm.expectRevert(Validation.EmptyResult.selector);
        validation.revealResult(node, E, 0, 0, SALT);

        _reveal(validators[0], 5, 5);
        vm.prank(validators[0]);
        vm.expectRevert(Validation.AlreadyRevealed.selector);
        validation.revealResult(node, E, 5, 5, SALT);

        vm.warp(opensAt + REVEAL_WINDOW);
        vm.prank(validators[1]);
        vm.expectRevert(abi.encodeWithSelector(Validation.RevealWindowClosed.selector, opensAt + REVEAL_WINDOW));
        validation.revealResult(node, E, 5, 5, SALT);
    }

    function test_revealResult_revertsAfterFinalization() public {
        // A fourth validator makes three of four a quorum; the fourth reveal comes too late.
        address v4 = address(0x7A4);
        registerValidator(v4, MIN_VALIDATOR_STAKE);
        round = E + 1;
        vm.prank(v4);
        validation.commitChallengeRoot(round, root);
        for (uint256 i; i < 3; ++i) {
            vm.prank(validators[i]);
            validation.commitChallengeRoot(round, root);
        }
        _toCommitWindow();
        for (uint256 i; i < 3; ++i) {
            _commit(validators[i], 1, 0);
        }
        _commit(v4, 1, 0);
        _toRevealWindow();
        for (uint256 i; i < 3; ++i) {
            _reveal(validators[i], 1, 0);
        }
        vm.prank(v4);
        vm.expectRevert(Validation.ResultAlreadyFinalized.selector);
        validation.revealResult(node, round, 1, 0, SALT);
    }

    function test_gas_quorumCompletingReveal() public {
        _toCommitWindow();
        for (uint256 i; i < 3; ++i) {
            _commit(validators[i], 9, 1);
        }
        _toRevealWindow();
        _reveal(validators[0], 9, 1);
        _reveal(validators[1], 9, 1);
        bytes memory data = abi.encodeCall(Validation.revealResult, (node, E, 9, 1, SALT));
        vm.cool(address(validation));
        vm.prank(validators[2]);
        vm.startSnapshotGas("revealCompletingQuorum");
        (bool ok,) = address(validation).call(data);
        uint256 gasUsed = vm.stopSnapshotGas();
        vm.assertTrue(ok, "reveal succeeded");
        vm.assertTrue(validation.getEpochResult(node, E).finalized, "finalized");
        console.log("reveal completing a quorum of 3 (gas)", gasUsed);
        vm.assertLe(gasUsed, 100_000, "reveal target");
    }

    // ---------------------------------------------------------------- faults

    function test_fault_guiltyQuorumSlashesJailsAndRewards() public {
        uint256 reporterBefore = btt.balanceOf(validators[0]);
        vm.expectEmit(address(validation));
        emit Validation.FaultReported(1, node, validators[0], E, REQUEST, WRONG, EXPECTED);
        uint256 id = _report();
        vm.assertEq(id, 1, "first id");
        vm.assertEq(validation.faultReportCount(), 1, "count");
        vm.assertTrue(validation.hasVoted(id, validators[0]), "reporter voted");
        vm.assertEq(btt.balanceOf(validators[0]), reporterBefore - REPORT_BOND, "bond pulled");

        vm.prank(validators[1]);
        validation.voteOnFault(id, true);
        vm.assertEq(uint256(validation.getFaultReport(id).status), 0, "2/3 of stake is below 66.67%");

        uint256 slash = NODE_STAKE / 10; // slashBps 1000
        vm.expectEmit(address(validation));
        emit Validation.FaultFinalized(id, true, slash, slash / 2);
        vm.prank(validators[2]);
        validation.voteOnFault(id, true);

        Validation.FaultReport memory report = validation.getFaultReport(id);
        vm.assertEq(uint256(report.status), 1, "guilty");
        vm.assertEq(report.guiltyStake, 3 * MIN_VALIDATOR_STAKE, "guilty stake");
        vm.assertEq(registry.stakeOf(node), NODE_STAKE - slash, "slashed");
        vm.assertFalse(registry.isActive(node), "jailed");
        vm.assertEq(btt.balanceOf(validators[0]), reporterBefore + slash / 2, "reward + bond back");
        vm.assertEq(btt.balanceOf(treasury), slash - slash / 2, "treasury share");
        Validation.NodeRecord memory record = validation.getNodeRecord(node);
        vm.assertEq(uint256(record.faults), 1, "faults");
        vm.assertEq(record.totalSlashed, slash, "totalSlashed");
        vm.assertEq(validation.reputationOf(node), 0, "reputation zeroed");
    }

    function test_fault_rejectedAtOnceByAnInnocentQuorum() public {
        address v4 = address(0x7A4);
        registerValidator(v4, MIN_VALIDATOR_STAKE);
        vm.warp(vm.getBlockTimestamp() + 1);
        uint256 id = _report();
        vm.prank(validators[1]);
        validation.voteOnFault(id, false);
        vm.prank(validators[2]);
        validation.voteOnFault(id, false);
        vm.assertEq(uint256(validation.getFaultReport(id).status), 0, "2 of 4 is no quorum");
        vm.prank(v4);
        vm.expectEmit(address(validation));
        emit Validation.FaultFinalized(id, false, 0, 0);
        validation.voteOnFault(id, false);
        vm.assertEq(uint256(validation.getFaultReport(id).status), 2, "rejected by 3 of 4");
        vm.assertEq(btt.balanceOf(treasury), REPORT_BOND, "bond forfeited");
        vm.assertEq(registry.stakeOf(node), NODE_STAKE, "not slashed");
        vm.expectRevert(Validation.NotPenalizable.selector);
        validation.penalizeDissent(id, validators[0]); // the reporter: its bond answers for it
    }

    function test_fault_withoutQuorumStaysPendingUntilTheWindowEnds() public {
        uint256 id = _report();
        vm.prank(validators[1]);
        validation.voteOnFault(id, false);
        vm.prank(validators[2]);
        validation.voteOnFault(id, false);
        vm.assertEq(uint256(validation.getFaultReport(id).status), 0, "2 of 3 innocent is below 66.67%");
        vm.warp(vm.getBlockTimestamp() + VOTE_WINDOW);
        validation.finalizeFault(id);
        vm.assertEq(uint256(validation.getFaultReport(id).status), 2, "not proven");
        vm.expectRevert(Validation.NotPenalizable.selector);
        validation.penalizeDissent(id, validators[1]); // voted with the outcome, but no quorum backed either side
    }

    function test_fault_singleReporterQuorumFinalizesImmediately() public {
        fund(validators[0], 10_000 ether);
        vm.prank(validators[0]);
        validation.addValidatorStake(10_000 ether);
        // Weights are read at the second before the report: stake added in the report's own second does not count.
        vm.warp(vm.getBlockTimestamp() + 1);
        uint256 id = _report();
        vm.assertEq(uint256(validation.getFaultReport(id).status), 1, "guilty at once");
    }

    function test_finalizeFault_afterWindowRejectsPending() public {
        uint256 id = _report();
        vm.expectRevert(abi.encodeWithSelector(Validation.VotingOpen.selector, id));
        validation.finalizeFault(id);
        vm.warp(vm.getBlockTimestamp() + VOTE_WINDOW);
        vm.prank(validators[1]);
        vm.expectRevert(abi.encodeWithSelector(Validation.VotingClosed.selector, id));
        validation.voteOnFault(id, true);
        validation.finalizeFault(id);
        vm.assertEq(uint256(validation.getFaultReport(id).status), 2, "rejected");
        vm.expectRevert(abi.encodeWithSelector(Validation.FaultAlreadyFinalized.selector, id));
        validation.finalizeFault(id);
    }

    function test_finalizeFault_revertsOnUnknown() public {
        vm.expectRevert(abi.encodeWithSelector(Validation.UnknownReport.selector, 9));
        validation.finalizeFault(9);
    }

    function test_voteOnFault_reverts() public {
        vm.prank(validators[1]);
        vm.expectRevert(abi.encodeWithSelector(Validation.UnknownReport.selector, 1));
        validation.voteOnFault(1, true);
        uint256 id = _report();
        vm.prank(validators[0]);
        vm.expectRevert(Validation.AlreadyVoted.selector);
        validation.voteOnFault(id, true);
        uint48 snapshot = uint48(vm.getBlockTimestamp() - 1);
        vm.prank(address(0xBAD));
        vm.expectRevert(abi.encodeWithSelector(Validation.NoStakeAtSnapshot.selector, snapshot));
        validation.voteOnFault(id, true);
        vm.prank(validators[1]);
        validation.voteOnFault(id, true);
        vm.prank(validators[2]);
        validation.voteOnFault(id, true); // convicts
        vm.prank(validators[1]);
        vm.expectRevert(abi.encodeWithSelector(Validation.FaultAlreadyFinalized.selector, id));
        validation.voteOnFault(id, true);
    }

    function test_reportFault_revertsOnBadProof() public {
        Validation.Evidence memory evidence = _evidence(WRONG);
        evidence.expectedOutputHash = keccak256("not in the set");
        vm.prank(validators[0]);
        vm.expectRevert(Validation.InvalidProof.selector);
        validation.reportFault(node, E, evidence);
    }

    function test_reportFault_revertsOnBadNodeSignature() public {
        Validation.Evidence memory evidence = _evidence(WRONG);
        (, uint256 otherKey) = makeAccount("impostor");
        evidence.nodeSignature = signature(otherKey, validation.responseDigest(REQUEST, WRONG, E));
        vm.prank(validators[0]);
        vm.expectRevert(Validation.InvalidNodeSignature.selector);
        validation.reportFault(node, E, evidence);

        evidence.nodeSignature = hex"1234";
        vm.prank(validators[0]);
        vm.expectRevert(Validation.InvalidNodeSignature.selector);
        validation.reportFault(node, E, evidence);
    }

    function test_reportFault_revertsOnEqualHashes() public {
        Validation.Evidence memory evidence = _evidence(EXPECTED);
        vm.prank(validators[0]);
        vm.expectRevert(Validation.OutputMatchesExpected.selector);
        validation.reportFault(node, E, evidence);
    }

    function test_reportFault_revertsOnDuplicateByTheSameReporter() public {
        uint256 id = _report();
        Validation.Evidence memory evidence = _evidence(WRONG);
        vm.prank(validators[0]);
        vm.expectRevert(abi.encodeWithSelector(Validation.FaultAlreadyReported.selector, id));
        validation.reportFault(node, E, evidence);
        vm.assertEq(validation.reportIdOf(node, REQUEST, validators[0]), id, "keyed by reporter");
    }

    function test_reportFault_revertsWithoutRootOrStakeOrNode() public {
        Validation.Evidence memory evidence = _evidence(WRONG);
        vm.prank(validators[0]);
        vm.expectRevert(Validation.NoChallengeRoot.selector);
        validation.reportFault(node, 0, evidence);

        vm.prank(validators[0]);
        vm.expectRevert(abi.encodeWithSelector(Validation.EpochNotStarted.selector, E + 1, E));
        validation.reportFault(node, E + 1, evidence);

        vm.prank(address(0xBAD));
        vm.expectRevert(abi.encodeWithSelector(Validation.NoStakeAtSnapshot.selector, vm.getBlockTimestamp() - 1));
        validation.reportFault(node, E, evidence);

        uint64 closesAt = validation.epochEnd(E) + COMMIT_WINDOW + REVEAL_WINDOW;
        vm.warp(closesAt);
        vm.prank(validators[0]);
        vm.expectRevert(abi.encodeWithSelector(Validation.ReportWindowClosed.selector, closesAt));
        validation.reportFault(node, E, evidence);
        vm.warp(closesAt - 1);

        vm.prank(validators[0]);
        vm.expectRevert(abi.encodeWithSelector(Validation.NodeNotRegistered.selector, address(0xABC)));
        validation.reportFault(address(0xABC), E, evidence);
    }

    function test_responseDigest_matchesEip712() public view {
        bytes32 domain = keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("InferGrid Validation"),
                keccak256("1"),
                block.chainid,
                address(validation)
            )
        );
        bytes32 structHash = keccak256(
            abi.encode(keccak256("Response(bytes32 requestHash,bytes32 outputHash,uint64 epoch)"), REQUEST, WRONG, E)
        );
        vm.assertEq(
            validation.responseDigest(REQUEST, WRONG, E),
            keccak256(abi.encodePacked("\x19\x01", domain, structHash)),
            "digest"
        );
    }

    function test_slashedUnbondingStakeToo() public {
        vm.prank(node);
        registry.requestUnbond(NODE_STAKE);
        uint256 id = _report();
        vm.prank(validators[1]);
        validation.voteOnFault(id, true);
        vm.prank(validators[2]);
        validation.voteOnFault(id, true);
        NodeRegistry.Node memory n = registry.getNode(node);
        vm.assertEq(n.unbonding, NODE_STAKE - NODE_STAKE / 10, "unbonding stake slashed");
    }
}
