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
    /// @dev Other answers of the message whose answer to REQUEST the node signed in one `Responses`.
    bytes32 internal constant STEP_REQUEST = keccak256("another step's request");
    bytes32 internal constant STEP_OUTPUT = keccak256("another step's output");
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
            answerProof: new bytes32[](0),
            expectedOutputHash: EXPECTED,
            proof: proof
        });
    }

    /// @dev Sorted-pair keccak, computed here rather than by OpenZeppelin's `Hashes`.
    function _pair(bytes32 a, bytes32 b) internal pure returns (bytes32) {
        return a < b ? keccak256(abi.encodePacked(a, b)) : keccak256(abi.encodePacked(b, a));
    }

    /// @dev The leaf of one answer, computed here rather than by `Validation.answerLeaf`.
    function _answerLeaf(bytes32 requestHash, bytes32 outputHash) internal pure returns (bytes32) {
        return keccak256(bytes.concat(keccak256(abi.encode(requestHash, outputHash))));
    }

    /// @dev The EIP-712 domain separator of `validation`, computed here.
    function _domainSeparator() internal view returns (bytes32) {
        return keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("InferGrid Validation"),
                keccak256("1"),
                block.chainid,
                address(validation)
            )
        );
    }

    /// @dev Leaves of a four-answer message: the node's WRONG answer to REQUEST first.
    function _fourLeaves() internal pure returns (bytes32[4] memory leaves) {
        leaves[0] = _answerLeaf(REQUEST, WRONG);
        leaves[1] = _answerLeaf(STEP_REQUEST, STEP_OUTPUT);
        leaves[2] = _answerLeaf(keccak256("step 3 request"), keccak256("step 3 output"));
        leaves[3] = _answerLeaf(keccak256("step 4 request"), keccak256("step 4 output"));
    }

    /// @dev Root of the four-leaf tree ((l0 l1) (l2 l3)) and the proof of leaf `index`.
    function _fourLeafTree(uint256 index) internal pure returns (bytes32 batchRoot, bytes32[] memory batchProof) {
        bytes32[4] memory l = _fourLeaves();
        bytes32 left = _pair(l[0], l[1]);
        bytes32 right = _pair(l[2], l[3]);
        batchRoot = _pair(left, right);
        batchProof = new bytes32[](2);
        batchProof[0] = l[index ^ 1];
        batchProof[1] = index < 2 ? right : left;
    }

    /// @dev The node's WRONG answer to REQUEST in a two-answer message: the root it signs and the answer's proof.
    function _twoAnswerTree() internal pure returns (bytes32 batchRoot, bytes32[] memory batchProof) {
        bytes32 sibling = _answerLeaf(STEP_REQUEST, STEP_OUTPUT);
        batchRoot = _pair(_answerLeaf(REQUEST, WRONG), sibling);
        batchProof = new bytes32[](1);
        batchProof[0] = sibling;
    }

    /// @dev Evidence of the WRONG answer to REQUEST, signed by `key` as `Responses(batchRoot, epoch)`.
    function _batchEvidence(uint256 key, bytes32 batchRoot, uint64 epoch, bytes32[] memory batchProof)
        internal
        view
        returns (Validation.Evidence memory evidence)
    {
        evidence = _evidence(WRONG);
        evidence.nodeSignature = signature(key, validation.responsesDigest(batchRoot, epoch));
        evidence.answerProof = batchProof;
    }

    function _expectRejectedSignature(Validation.Evidence memory evidence) internal {
        vm.prank(validators[0]);
        vm.expectRevert(Validation.InvalidNodeSignature.selector);
        validation.reportFault(node, E, evidence);
    }

    /// @dev Reports `evidence` from validators[0] and checks the report and its events, as for a lone `Response`.
    function _reportAndCheck(Validation.Evidence memory evidence) internal returns (uint256 id) {
        uint256 reporterBefore = btt.balanceOf(validators[0]);
        vm.expectEmit(address(validation));
        emit Validation.FaultReported(1, node, validators[0], E, REQUEST, WRONG, EXPECTED);
        vm.expectEmit(address(validation));
        emit Validation.FaultVoted(1, validators[0], true, MIN_VALIDATOR_STAKE);
        vm.prank(validators[0]);
        id = validation.reportFault(node, E, evidence);
        vm.assertEq(id, 1, "first id");
        vm.assertEq(validation.faultReportCount(), 1, "count");
        vm.assertEq(validation.reportIdOf(node, REQUEST, validators[0]), id, "keyed by reporter");
        vm.assertTrue(validation.hasVoted(id, validators[0]), "reporter voted");
        vm.assertEq(btt.balanceOf(validators[0]), reporterBefore - REPORT_BOND, "bond pulled");
        Validation.FaultReport memory report = validation.getFaultReport(id);
        vm.assertEq(report.node, node, "node");
        vm.assertEq(report.reporter, validators[0], "reporter");
        vm.assertEq(uint256(report.epoch), E, "epoch");
        vm.assertEq(uint256(report.reportedAt), vm.getBlockTimestamp(), "reportedAt");
        vm.assertEq(report.requestHash, REQUEST, "requestHash");
        vm.assertEq(report.snapshotTotal, 3 * MIN_VALIDATOR_STAKE, "snapshot total");
        vm.assertEq(report.guiltyStake, MIN_VALIDATOR_STAKE, "guilty stake");
        vm.assertEq(uint256(report.status), 0, "pending");
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
        bytes32 domain = _domainSeparator();
        bytes32 structHash = keccak256(
            abi.encode(keccak256("Response(bytes32 requestHash,bytes32 outputHash,uint64 epoch)"), REQUEST, WRONG, E)
        );
        vm.assertEq(
            validation.responseDigest(REQUEST, WRONG, E),
            keccak256(abi.encodePacked("\x19\x01", domain, structHash)),
            "digest"
        );
    }

    // ---------------------------------------------------------------- one signature over a message of answers

    function test_reportFault_batchSignatureOverTwoAnswers() public {
        (bytes32 batchRoot, bytes32[] memory batchProof) = _twoAnswerTree();
        uint256 id = _reportAndCheck(_batchEvidence(nodeKey, batchRoot, E, batchProof));
        uint256 reporterBefore = btt.balanceOf(validators[0]);
        vm.prank(validators[1]);
        validation.voteOnFault(id, true);
        uint256 slash = NODE_STAKE / 10; // slashBps 1000
        vm.expectEmit(address(validation));
        emit Validation.FaultFinalized(id, true, slash, slash / 2);
        vm.prank(validators[2]);
        validation.voteOnFault(id, true);
        vm.assertEq(uint256(validation.getFaultReport(id).status), 1, "guilty");
        vm.assertEq(validation.provenBy(node, REQUEST), id, "proven");
        vm.assertEq(registry.stakeOf(node), NODE_STAKE - slash, "slashed");
        vm.assertFalse(registry.isActive(node), "jailed");
        vm.assertEq(btt.balanceOf(validators[0]), reporterBefore + slash / 2 + REPORT_BOND, "reward + bond back");
        vm.assertEq(btt.balanceOf(treasury), slash - slash / 2, "treasury share");
        vm.assertEq(validation.reputationOf(node), 0, "reputation zeroed");
    }

    function test_reportFault_batchSignatureOverFourAnswers() public {
        (bytes32 batchRoot, bytes32[] memory batchProof) = _fourLeafTree(0);
        vm.assertEq(batchProof.length, 2, "proof of a four-leaf tree");
        _reportAndCheck(_batchEvidence(nodeKey, batchRoot, E, batchProof));
    }

    function test_reportFault_batchSignatureOverFourAnswers_lastLeaf() public {
        // The node's answer as the last of four leaves: the proof folds it from the other side of both pairs.
        bytes32[4] memory l = _fourLeaves();
        (l[0], l[3]) = (l[3], l[0]);
        bytes32 left = _pair(l[0], l[1]);
        bytes32 batchRoot = _pair(left, _pair(l[2], l[3]));
        bytes32[] memory batchProof = new bytes32[](2);
        batchProof[0] = l[2];
        batchProof[1] = left;
        _reportAndCheck(_batchEvidence(nodeKey, batchRoot, E, batchProof));
    }

    function test_reportFault_batchSignatureRevertsWithoutAnswerProof() public {
        (bytes32 batchRoot,) = _twoAnswerTree();
        _expectRejectedSignature(_batchEvidence(nodeKey, batchRoot, E, new bytes32[](0)));
        // Not even over a one-answer tree, whose root is the leaf: a lone answer is signed as a `Response`.
        _expectRejectedSignature(_batchEvidence(nodeKey, _answerLeaf(REQUEST, WRONG), E, new bytes32[](0)));
    }

    function test_reportFault_singleSignatureRevertsWithAnswerProof() public {
        (, bytes32[] memory batchProof) = _twoAnswerTree();
        Validation.Evidence memory evidence = _evidence(WRONG); // signed as Response(REQUEST, WRONG, E)
        evidence.answerProof = batchProof;
        _expectRejectedSignature(evidence);
        // Nor with any other proof: a non-empty proof always recovers from a Responses digest.
        evidence.answerProof = new bytes32[](1);
        _expectRejectedSignature(evidence);
    }

    function test_reportFault_batchSignatureRevertsOnGarbledProof() public {
        (bytes32 batchRoot, bytes32[] memory batchProof) = _fourLeafTree(0);
        Validation.Evidence memory evidence = _batchEvidence(nodeKey, batchRoot, E, batchProof);
        evidence.answerProof[1] ^= bytes32(uint256(1));
        _expectRejectedSignature(evidence);
        evidence.answerProof[1] ^= bytes32(uint256(1));
        evidence.answerProof[0] ^= bytes32(uint256(1) << 255);
        _expectRejectedSignature(evidence);
        // Dropping or adding a level changes the root too.
        bytes32[] memory shortProof = new bytes32[](1);
        shortProof[0] = batchProof[0];
        evidence.answerProof = shortProof;
        _expectRejectedSignature(evidence);
        bytes32[] memory longProof = new bytes32[](3);
        (longProof[0], longProof[1]) = (batchProof[0], batchProof[1]);
        evidence.answerProof = longProof;
        _expectRejectedSignature(evidence);
    }

    function test_reportFault_batchSignatureRevertsForAnotherAnswer() public {
        (bytes32 batchRoot, bytes32[] memory ownProof) = _fourLeafTree(0);
        (, bytes32[] memory otherProof) = _fourLeafTree(1);
        // The proof of another answer of the message, with that answer's output claimed for REQUEST.
        Validation.Evidence memory evidence = _batchEvidence(nodeKey, batchRoot, E, otherProof);
        evidence.outputHash = STEP_OUTPUT;
        evidence.nodeSignature = signature(nodeKey, validation.responsesDigest(batchRoot, E));
        _expectRejectedSignature(evidence);
        // The proof of the node's real answer, with another output claimed.
        evidence.answerProof = ownProof;
        evidence.outputHash = keccak256("an answer the node never gave");
        _expectRejectedSignature(evidence);
        // The other answer's own request and output verify, but its request is not the committed challenge.
        evidence.requestHash = STEP_REQUEST;
        evidence.outputHash = STEP_OUTPUT;
        evidence.answerProof = otherProof;
        vm.prank(validators[0]);
        vm.expectRevert(Validation.InvalidProof.selector);
        validation.reportFault(node, E, evidence);
    }

    function test_reportFault_batchSignatureRevertsForAnInnerNodeAsAnswer() public {
        // A reporter claims the children of an inner node of the node's tree as (requestHash, outputHash): their
        // `abi.encode` is that node's 64-byte preimage, so a single-hashed leaf would fold to the signed root.
        (bytes32 batchRoot, bytes32[] memory batchProof) = _fourLeafTree(0);
        bytes32[4] memory l = _fourLeaves();
        (bytes32 a, bytes32 b) = l[0] < l[1] ? (l[0], l[1]) : (l[1], l[0]);
        bytes32[] memory innerProof = new bytes32[](1);
        innerProof[0] = batchProof[1];
        vm.assertEq(_pair(keccak256(abi.encode(a, b)), innerProof[0]), batchRoot, "single hash would verify");
        // The reporter's root, committed for the next epoch, holds the made-up challenge (a, EXPECTED).
        uint64 next = E + 1;
        (bytes32 rigged, bytes32[] memory riggedProof) =
            twoLeafTree(challengeLeaf(a, EXPECTED), keccak256("another leaf"));
        vm.prank(validators[0]);
        validation.commitChallengeRoot(next, rigged);
        vm.warp(validation.epochEnd(E));
        Validation.Evidence memory evidence = Validation.Evidence({
            requestHash: a,
            outputHash: b,
            nodeSignature: signature(nodeKey, validation.responsesDigest(batchRoot, next)),
            answerProof: innerProof,
            expectedOutputHash: EXPECTED,
            proof: riggedProof
        });
        vm.prank(validators[0]);
        vm.expectRevert(Validation.InvalidNodeSignature.selector);
        validation.reportFault(node, next, evidence);
    }

    function test_reportFault_batchSignatureRevertsForAnotherKey() public {
        (bytes32 batchRoot, bytes32[] memory batchProof) = _twoAnswerTree();
        (, uint256 otherKey) = makeAccount("impostor");
        _expectRejectedSignature(_batchEvidence(otherKey, batchRoot, E, batchProof));
    }

    function test_reportFault_batchSignatureRevertsForAnotherEpoch() public {
        (bytes32 batchRoot, bytes32[] memory batchProof) = _twoAnswerTree();
        _expectRejectedSignature(_batchEvidence(nodeKey, batchRoot, E - 1, batchProof));
        _expectRejectedSignature(_batchEvidence(nodeKey, batchRoot, E + 1, batchProof));
    }

    function test_reportFault_batchChecksChallengeProofFirst() public {
        (bytes32 batchRoot, bytes32[] memory batchProof) = _twoAnswerTree();
        Validation.Evidence memory evidence = _batchEvidence(nodeKey, batchRoot, E, batchProof);
        evidence.proof[0] ^= bytes32(uint256(1));
        vm.prank(validators[0]);
        vm.expectRevert(Validation.InvalidProof.selector);
        validation.reportFault(node, E, evidence);
    }

    function test_answerLeafAndResponsesDigest_matchEip712() public view {
        vm.assertEq(
            validation.RESPONSES_TYPEHASH(),
            0x67be074bc5fdb701084c1278d27c029e8f57dfa107c723e1603de9110d596780,
            "type hash (cast keccak)"
        );
        vm.assertEq(
            validation.RESPONSES_TYPEHASH(), keccak256("Responses(bytes32 root,uint64 epoch)"), "type hash (keccak)"
        );
        vm.assertEq(
            validation.answerLeaf(REQUEST, WRONG),
            keccak256(bytes.concat(keccak256(abi.encodePacked(REQUEST, WRONG)))),
            "leaf: double-hashed abi.encode(bytes32, bytes32)"
        );
        (bytes32 batchRoot,) = _twoAnswerTree();
        bytes32 structHash = keccak256(abi.encode(keccak256("Responses(bytes32 root,uint64 epoch)"), batchRoot, E));
        vm.assertEq(
            validation.responsesDigest(batchRoot, E),
            keccak256(abi.encodePacked("\x19\x01", _domainSeparator(), structHash)),
            "digest"
        );
        vm.assertTrue(
            validation.responsesDigest(batchRoot, E) != validation.responseDigest(REQUEST, WRONG, E), "distinct types"
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
