// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {Fixture} from "./utils/Fixture.sol";
import {console} from "./utils/Test.sol";
import {BTT} from "../src/BTT.sol";
import {NodeRegistry} from "../src/NodeRegistry.sol";
import {PaymentChannels} from "../src/PaymentChannels.sol";
import {Validation} from "../src/Validation.sol";

/// @notice Each test performs one attack found in review against the contracts as they were, step by step, and
///         shows that it now fails for the attacker. Stakes are chosen so that the attack succeeded with live stake
///         weights (the arithmetic is in each test's comment).
contract AttacksTest is Fixture {
    bytes32 internal constant REQUEST = keccak256("challenge request");
    bytes32 internal constant EXPECTED = keccak256("expected output");
    bytes32 internal constant MADE_UP = keccak256("made-up expected output");
    bytes32 internal constant ANSWER = keccak256("the node's answer");
    bytes32 internal constant SALT = keccak256("salt");
    uint256 internal constant NODE_STAKE = 1_000 ether;
    /// @dev Roots are committed during epoch 0 for epoch E; the node answers during E.
    uint64 internal constant E = 1;

    address internal node;
    uint256 internal nodeKey;

    function setUp() public override {
        super.setUp();
        (node, nodeKey) = makeAccount("node");
        registerNode(node, NODE_STAKE);
    }

    // ---------------------------------------------------------------- helpers

    /// @dev Registers a validator with `stake` and commits a root for epoch E holding (REQUEST, expected).
    function _validator(string memory name, uint256 stake, bytes32 expected) internal returns (address v) {
        (v,) = makeAccount(name);
        registerValidator(v, stake);
        (bytes32 root,) = twoLeafTree(challengeLeaf(REQUEST, expected), keccak256(bytes(name)));
        vm.prank(v);
        validation.commitChallengeRoot(E, root);
    }

    function _honestValidators(uint256 count, uint256 stake) internal returns (address[] memory honest) {
        honest = new address[](count);
        for (uint256 i; i < count; ++i) {
            honest[i] = _validator(string.concat("honest", vm.toString(i)), stake, EXPECTED);
        }
    }

    /// @dev The node's signed answer to REQUEST in epoch E, with a proof against `reporter`'s root.
    function _evidence(string memory reporterName, bytes32 expected, bytes32 output)
        internal
        view
        returns (Validation.Evidence memory evidence)
    {
        (, bytes32[] memory proof) = twoLeafTree(challengeLeaf(REQUEST, expected), keccak256(bytes(reporterName)));
        evidence = Validation.Evidence({
            requestHash: REQUEST,
            outputHash: output,
            nodeSignature: signature(nodeKey, validation.responseDigest(REQUEST, output, E)),
            answerProof: new bytes32[](0),
            expectedOutputHash: expected,
            proof: proof
        });
    }

    function _report(address reporter, string memory name, bytes32 expected) internal returns (uint256) {
        Validation.Evidence memory evidence = _evidence(name, expected, ANSWER);
        vm.prank(reporter);
        return validation.reportFault(node, E, evidence);
    }

    function _vote(address voter, uint256 id, bool guilty) internal {
        vm.prank(voter);
        validation.voteOnFault(id, guilty);
    }

    function _unbondAll(address v) internal {
        uint256 stake = validation.validatorStake(v);
        vm.prank(v);
        validation.requestValidatorUnbond(stake);
    }

    function _intoEpochE() internal {
        vm.warp(validation.epochEnd(0));
    }

    function _assertNotSlashed() internal view {
        vm.assertEq(registry.stakeOf(node), NODE_STAKE, "node keeps its stake");
        vm.assertTrue(registry.isActive(node), "node not jailed");
        vm.assertEq(uint256(validation.getNodeRecord(node).faults), 0, "no fault on record");
    }

    // ---------------------------------------------------------------- 1. votes outlive the stake behind them

    /// @notice A 45% coalition reports an honest node with a made-up expected answer, unbonds the reporter and votes
    ///         guilty from a second account. Live weights: guilty 3,500 + 1,000 = 4,500 against a total that dropped
    ///         from 10,000 to 6,500 (quorum 4,334): convicted. Snapshot weights: 4,500 of 10,000: no conviction; the
    ///         report expires unproven and the reporter's bond goes to the treasury.
    function test_attack_votesOutliveTheStakeBehindThem() public {
        address reporter = _validator("coalition-reporter", 3_500 ether, MADE_UP);
        address accomplice = _validator("coalition-voter", 1_000 ether, EXPECTED);
        address[] memory honest = _honestValidators(5, 1_100 ether);
        _intoEpochE();

        uint256 id = _report(reporter, "coalition-reporter", MADE_UP);
        _unbondAll(reporter);
        vm.assertEq(validation.totalValidatorStake(), 6_500 ether, "live total dropped");
        _vote(accomplice, id, true);

        Validation.FaultReport memory report = validation.getFaultReport(id);
        vm.assertEq(uint256(report.status), validation.FAULT_PENDING(), "not convicted");
        vm.assertEq(report.snapshotTotal, 10_000 ether, "judged against the total at the report");
        vm.assertEq(report.guiltyStake, 4_500 ether, "guilty stake");
        _assertNotSlashed();

        for (uint256 i; i < honest.length; ++i) {
            _vote(honest[i], id, false);
        }
        vm.warp(vm.getBlockTimestamp() + VOTE_WINDOW);
        validation.finalizeFault(id);
        vm.assertEq(uint256(validation.getFaultReport(id).status), validation.FAULT_REJECTED(), "rejected");
        _assertNotSlashed();
        vm.assertEq(btt.balanceOf(treasury), REPORT_BOND, "reporter's bond forfeited");
    }

    /// @notice A 30% coalition votes innocent on a genuine report and unbonds. Live weights: reachable guilty stake
    ///         10,000 - 3,000 - 3,000 = 4,000 < 2/3 of 7,000: rejected at once. Snapshot weights: 7,000 of 10,000
    ///         can still vote guilty, and does: the cheat is convicted.
    function test_attack_minorityCannotRejectAGenuineReportByUnbonding() public {
        address reporter = _validator("reporter", 1_000 ether, EXPECTED);
        address shield = _validator("shield", 3_000 ether, EXPECTED);
        address[] memory honest = _honestValidators(6, 1_000 ether);
        _intoEpochE();

        uint256 id = _report(reporter, "reporter", EXPECTED);
        _vote(shield, id, false);
        _unbondAll(shield);
        vm.assertEq(uint256(validation.getFaultReport(id).status), validation.FAULT_PENDING(), "still open");
        for (uint256 i; i < 6; ++i) {
            if (validation.getFaultReport(id).status != validation.FAULT_PENDING()) break;
            _vote(honest[i], id, true);
        }
        vm.assertEq(uint256(validation.getFaultReport(id).status), validation.FAULT_GUILTY(), "convicted");
        vm.assertEq(registry.stakeOf(node), NODE_STAKE - NODE_STAKE / 10, "slashed");
        // The shield voted against the verdict; its unbonding stake still answers for it.
        validation.penalizeDissent(id, shield);
        (uint256 unbonding,) = validation.validatorUnbonding(shield);
        vm.assertEq(unbonding, 3_000 ether - VALIDATOR_PENALTY, "penalty taken from unbonding stake");
    }

    /// @notice A 45% coalition reveals a result, the first revealer unbonds, the second reveals. Live weights:
    ///         3,500 + 1,000 revealed against a total of 6,500: finalized, a minority sets the reputation.
    ///         Snapshot weights (the epoch's last second): 4,500 of 10,000: not finalized.
    function test_attack_minorityCannotFinalizeAResultByUnbonding() public {
        address first = _validator("coalition-reporter", 3_500 ether, EXPECTED);
        address second = _validator("coalition-voter", 1_000 ether, EXPECTED);
        _honestValidators(5, 1_100 ether);
        vm.warp(validation.epochEnd(E));
        for (uint256 i; i < 2; ++i) {
            address v = i == 0 ? first : second;
            bytes32 commitment = validation.resultCommitment(node, E, 0, 10, SALT, v);
            vm.prank(v);
            validation.commitResult(node, E, commitment);
        }
        vm.warp(validation.epochEnd(E) + COMMIT_WINDOW);
        vm.prank(first);
        validation.revealResult(node, E, 0, 10, SALT);
        _unbondAll(first);
        vm.prank(second);
        validation.revealResult(node, E, 0, 10, SALT);

        vm.assertFalse(validation.getEpochResult(node, E).finalized, "no quorum");
        vm.assertEq(uint256(validation.reputationOf(node)), 5_000, "reputation untouched");
        vm.assertEq(validation.totalValidatorStakeAt(uint48(validation.epochEnd(E) - 1)), 10_000 ether, "snapshot");
    }

    // ---------------------------------------------------------------- 2. reports never expire

    /// @notice A 41% validator files a fake report nobody votes on; a month later the honest validators have left
    ///         and anyone finalizes it. Then: guilty against the live total. Now: a report not convicted within its
    ///         vote window can only be rejected.
    function test_attack_expiredReportCannotBeFinalizedGuilty() public {
        address faker = _validator("faker", 4_100 ether, MADE_UP);
        address[] memory honest = _honestValidators(5, 1_180 ether);
        _intoEpochE();
        uint256 id = _report(faker, "faker", MADE_UP);

        for (uint256 i; i < honest.length; ++i) {
            _unbondAll(honest[i]);
        }
        vm.warp(vm.getBlockTimestamp() + 30 days);
        for (uint256 i; i < honest.length; ++i) {
            vm.prank(honest[i]);
            validation.withdrawValidatorStake();
        }
        vm.assertEq(validation.totalValidatorStake(), 4_100 ether, "only the faker is left");
        vm.prank(faker);
        vm.expectRevert(abi.encodeWithSelector(Validation.VotingClosed.selector, id));
        validation.voteOnFault(id, true);

        validation.finalizeFault(id);
        vm.assertEq(uint256(validation.getFaultReport(id).status), validation.FAULT_REJECTED(), "expired = rejected");
        _assertNotSlashed();
    }

    // ---------------------------------------------------------------- 3. front-running a fault report

    /// @notice A copycat sees a genuine report in the mempool and races it with a root equal to the single evidence
    ///         leaf, for a far epoch or the answer's own epoch. The signed answer binds epoch E, roots for E closed
    ///         when E began, and no far epoch has begun: every variant reverts and the genuine reporter is paid.
    function test_attack_copycatCannotFrontRunAReport() public {
        address reporter = _validator("reporter", 1_000 ether, EXPECTED);
        (address copycat,) = makeAccount("copycat");
        registerValidator(copycat, 5_000 ether);
        _intoEpochE();
        Validation.Evidence memory seen = _evidence("reporter", EXPECTED, ANSWER);
        bytes32 leafRoot = challengeLeaf(REQUEST, EXPECTED);
        // The copycat's evidence: the same signed answer, proven against a root made of its single leaf.
        Validation.Evidence memory copied = _evidence("reporter", EXPECTED, ANSWER);
        copied.proof = new bytes32[](0);

        vm.startPrank(copycat);
        vm.expectRevert(abi.encodeWithSelector(Validation.EpochStarted.selector, E, E));
        validation.commitChallengeRoot(E, leafRoot);
        vm.expectRevert(Validation.NoChallengeRoot.selector);
        validation.reportFault(node, E, copied);
        validation.commitChallengeRoot(999_999, leafRoot);
        vm.expectRevert(abi.encodeWithSelector(Validation.EpochNotStarted.selector, 999_999, E));
        validation.reportFault(node, 999_999, copied);
        vm.stopPrank();

        uint256 before = btt.balanceOf(reporter);
        vm.prank(reporter);
        uint256 id = validation.reportFault(node, E, seen);
        _vote(copycat, id, true);
        vm.assertEq(uint256(validation.getFaultReport(id).status), validation.FAULT_GUILTY(), "convicted");
        vm.assertEq(btt.balanceOf(reporter) - before, NODE_STAKE / 10 / 2, "reward to the committed reporter");

        // Even once epoch 999,999 comes, the node's signature is over epoch E, not 999,999.
        vm.warp(validation.epochEnd(999_998));
        vm.prank(copycat);
        vm.expectRevert(Validation.InvalidNodeSignature.selector);
        validation.reportFault(node, 999_999, copied);
    }

    // ---------------------------------------------------------------- 4. decoy reports

    /// @notice An ally of the node files a bogus report on the same request; it is rightly rejected. Then the one
    ///         report per (node, request) rule blocked the genuine report for good; now reports are keyed by
    ///         reporter and the genuine one convicts.
    function test_attack_decoyReportDoesNotShieldAGuiltyNode() public {
        address ally = _validator("ally", 1_000 ether, MADE_UP);
        address reporter = _validator("reporter", 1_000 ether, EXPECTED);
        address[] memory honest = _honestValidators(3, 1_000 ether);
        _intoEpochE();

        uint256 decoy = _report(ally, "ally", MADE_UP);
        _vote(reporter, decoy, false);
        for (uint256 i; i < 3; ++i) {
            _vote(honest[i], decoy, false);
        }
        vm.assertEq(uint256(validation.getFaultReport(decoy).status), validation.FAULT_REJECTED(), "decoy rejected");

        uint256 genuine = _report(reporter, "reporter", EXPECTED);
        vm.assertTrue(genuine != decoy, "a second report");
        for (uint256 i; i < 3; ++i) {
            _vote(honest[i], genuine, true);
        }
        vm.assertEq(uint256(validation.getFaultReport(genuine).status), validation.FAULT_GUILTY(), "convicted");
        vm.assertEq(validation.provenBy(node, REQUEST), genuine, "proven");
        // The same answer is never slashed twice.
        Validation.Evidence memory again = _evidence("ally", MADE_UP, ANSWER);
        vm.prank(ally);
        vm.expectRevert(abi.encodeWithSelector(Validation.FaultAlreadyReported.selector, decoy));
        validation.reportFault(node, E, again);
    }

    /// @notice Two genuine reports race on the same answer: the second to convict is superseded, slashes nothing
    ///         more and gets its bond back.
    function test_attack_secondConvictionOfTheSameAnswerSlashesNothing() public {
        address first = _validator("first", 1_000 ether, EXPECTED);
        address second = _validator("second", 1_000 ether, EXPECTED);
        address[] memory honest = _honestValidators(2, 1_000 ether);
        _intoEpochE();
        uint256 a = _report(first, "first", EXPECTED);
        uint256 b = _report(second, "second", EXPECTED);
        _vote(second, a, true);
        _vote(honest[0], a, true);
        vm.assertEq(uint256(validation.getFaultReport(a).status), validation.FAULT_GUILTY(), "first convicts");
        uint256 slashedOnce = registry.slashableStake(node);
        uint256 before = btt.balanceOf(second);
        _vote(first, b, true);
        _vote(honest[0], b, true);
        vm.assertEq(uint256(validation.getFaultReport(b).status), validation.FAULT_SUPERSEDED(), "superseded");
        vm.assertEq(registry.slashableStake(node), slashedOnce, "no second slash");
        vm.assertEq(btt.balanceOf(second) - before, REPORT_BOND, "bond back, no reward");
        vm.assertEq(uint256(validation.getNodeRecord(node).faults), 1, "one fault");
    }

    /// @notice A blocking minority (over a third) votes innocent on genuine reports and lets them expire, hoping to
    ///         fine the honest guilty voters with dissent penalties until they drop below the minimum stake. A vote
    ///         is only penalized when a quorum voted the other way, so nobody is fined.
    function test_attack_blockingMinorityCannotFineTheMajority() public {
        address reporter = _validator("reporter", 1_090 ether, EXPECTED);
        address blocker = _validator("blocker", 3_500 ether, EXPECTED);
        address[] memory honest = _honestValidators(5, 1_090 ether);
        _intoEpochE();
        uint256 id = _report(reporter, "reporter", EXPECTED);
        for (uint256 i; i < honest.length; ++i) {
            _vote(honest[i], id, true);
        }
        _vote(blocker, id, false);
        vm.warp(vm.getBlockTimestamp() + VOTE_WINDOW);
        validation.finalizeFault(id);
        vm.assertEq(uint256(validation.getFaultReport(id).status), validation.FAULT_REJECTED(), "not proven");
        for (uint256 i; i < honest.length; ++i) {
            vm.expectRevert(Validation.NotPenalizable.selector);
            validation.penalizeDissent(id, honest[i]);
            vm.assertTrue(validation.isValidator(honest[i]), "still active");
        }
    }

    /// @notice A second genuine report on an answer another report proves wrong ends superseded, not rejected: its
    ///         reporter keeps its bond and its guilty voters are not fined.
    function test_attack_duplicateOfAProvenFaultIsNotRejected() public {
        address first = _validator("first", 1_000 ether, EXPECTED);
        address second = _validator("second", 1_000 ether, EXPECTED);
        address[] memory honest = _honestValidators(2, 1_000 ether);
        _intoEpochE();
        uint256 a = _report(first, "first", EXPECTED);
        uint256 b = _report(second, "second", EXPECTED);
        _vote(honest[0], b, true);
        _vote(second, a, true);
        _vote(honest[1], a, true);
        vm.assertEq(uint256(validation.getFaultReport(a).status), validation.FAULT_GUILTY(), "first convicts");
        uint256 before = btt.balanceOf(second);
        vm.warp(vm.getBlockTimestamp() + VOTE_WINDOW);
        validation.finalizeFault(b);
        vm.assertEq(uint256(validation.getFaultReport(b).status), validation.FAULT_SUPERSEDED(), "superseded");
        vm.assertEq(btt.balanceOf(second) - before, REPORT_BOND, "bond back");
        vm.expectRevert(Validation.NotPenalizable.selector);
        validation.penalizeDissent(b, honest[0]);
    }

    // ---------------------------------------------------------------- 5. peer-id squatting

    /// @notice An attacker registers a victim's peer id so the victim can never register it. Now registration needs
    ///         the peer key's signature over (registry, chain id, operator): the attacker's own signature, the
    ///         victim's signature replayed for another operator, and one made for another registry all fail. The
    ///         victim registers, and after withdrawing everything can deregister and free the peer id.
    function test_attack_peerIdSquattingFails() public {
        (address victim,) = makeAccount("victim");
        (address squatter, uint256 squatterKey) = makeAccount("squatter");
        fund(victim, MIN_STAKE);
        fund(squatter, MIN_STAKE);
        uint256 victimPeerKey = peerKey(victim);
        bytes memory victimPeerId = peerIdOf(victimPeerKey);
        bytes memory victimProof = peerIdProof(victimPeerKey, victim);
        NodeRegistry other = new NodeRegistry(btt, MIN_STAKE, UNBONDING_PERIOD, JAIL_PERIOD);
        bytes[] memory forged = new bytes[](3);
        forged[0] = signature(squatterKey, registry.peerIdOwnershipDigest(squatter));
        forged[1] = victimProof;
        forged[2] = signature(victimPeerKey, other.peerIdOwnershipDigest(squatter));

        vm.startPrank(squatter);
        for (uint256 i; i < forged.length; ++i) {
            vm.expectRevert(NodeRegistry.InvalidPeerIdSignature.selector);
            registry.register(victimPeerId, forged[i], MODEL, 0, 3, 1, multiaddrs(), MIN_STAKE);
        }
        vm.stopPrank();
        vm.assertEq(registry.operatorOf(victimPeerId), address(0), "nobody holds it");

        vm.prank(victim);
        registry.register(victimPeerId, victimProof, MODEL, 0, 3, 1, multiaddrs(), MIN_STAKE);
        vm.assertEq(registry.operatorOf(victimPeerId), victim, "victim holds it");

        // Deregistration frees the id, once the stake has waited out the unbonding period.
        vm.startPrank(victim);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.StakeNotWithdrawn.selector, MIN_STAKE, 0));
        registry.deregister();
        registry.requestUnbond(MIN_STAKE);
        vm.warp(vm.getBlockTimestamp() + UNBONDING_PERIOD);
        registry.withdraw();
        vm.expectEmit(address(registry));
        emit NodeRegistry.NodeDeregistered(victim, victimPeerId);
        registry.deregister();
        vm.stopPrank();
        vm.assertEq(registry.operatorOf(victimPeerId), address(0), "freed");
        vm.assertFalse(registry.isRegistered(victim), "gone");
        vm.assertEq(registry.operatorCount(), 1, "list shrank");
        vm.assertEq(registry.operators(0, 10)[0], node, "the other operator kept");
        bytes memory proof = peerIdProof(victimPeerKey, squatter);
        vm.prank(squatter);
        registry.register(victimPeerId, proof, MODEL, 0, 3, 1, multiaddrs(), MIN_STAKE);
        vm.assertEq(
            registry.operatorOf(victimPeerId), squatter, "re-registered by a new operator with the key's consent"
        );
    }

    /// @notice A jailed node cannot deregister to shed its jail term.
    function test_attack_jailedNodeCannotDeregister() public {
        vm.startPrank(node);
        registry.requestUnbond(NODE_STAKE);
        vm.warp(vm.getBlockTimestamp() + UNBONDING_PERIOD);
        registry.withdraw();
        vm.stopPrank();
        vm.prank(address(validation));
        registry.jail(node);
        uint64 until = registry.getNode(node).jailedUntil;
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.StillJailed.selector, until));
        registry.deregister();
    }

    // ---------------------------------------------------------------- 6. expensive convictions

    /// @notice A node registers hundreds of multiaddrs so that the `getNode` copy in its conviction costs millions of
    ///         gas. Now the record is capped, and conviction reads `slashableStake`, whose cost does not depend on
    ///         the record: a node with the largest allowed record costs the same to convict as one with none.
    function test_attack_bloatedRecordDoesNotRaiseConvictionCost() public {
        (address bloated, uint256 bloatedKey) = makeAccount("bloated");
        fund(bloated, 2 * MIN_STAKE);
        string[] memory tooMany = new string[](400);
        string[] memory largest = new string[](8);
        bytes memory longest = new bytes(256);
        for (uint256 i; i < 400; ++i) {
            tooMany[i] = "/ip4/1.2.3.4/tcp/1";
        }
        for (uint256 i; i < 8; ++i) {
            largest[i] = string(longest);
        }
        string[] memory tooLong = new string[](1);
        tooLong[0] = string(new bytes(257));
        bytes memory peerId = peerIdOf(bloatedKey);
        bytes memory proof = peerIdProof(bloatedKey, bloated);
        vm.startPrank(bloated);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.TooManyMultiaddrs.selector, 400, 8));
        registry.register(peerId, proof, MODEL, 0, 3, 1, tooMany, MIN_STAKE);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.MultiaddrTooLong.selector, 0, 257, 256));
        registry.register(peerId, proof, MODEL, 0, 3, 1, tooLong, MIN_STAKE);
        registry.register(peerId, proof, MODEL, 0, 3, 1, largest, MIN_STAKE);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.TooManyMultiaddrs.selector, 400, 8));
        registry.updateService(MODEL, 0, 3, 1, tooMany);
        vm.stopPrank();

        (address reporter,) = makeAccount("reporter");
        registerValidator(reporter, 100_000 ether);
        uint64 epoch = validation.currentEpoch() + 1;
        (bytes32 root,) = twoLeafTree(challengeLeaf(REQUEST, EXPECTED), bytes32(0));
        vm.prank(reporter);
        validation.commitChallengeRoot(epoch, root);
        vm.warp(validation.epochEnd(epoch - 1));
        // Both convictions run from the same chain state.
        uint256 state = vm.snapshotState();
        uint256 bloatedGas = _convictionGas(bloated, bloatedKey, reporter, epoch);
        vm.revertToState(state);
        uint256 plainGas = _convictionGas(node, nodeKey, reporter, epoch);
        console.log("conviction, largest record (gas)", bloatedGas);
        console.log("conviction, one multiaddr (gas)", plainGas);
        vm.assertLe(bloatedGas, plainGas + 200, "record size does not change conviction cost");
        vm.assertLe(bloatedGas, 450_000, "a whole convicting report stays cheap");
    }

    /// @dev Gas of the report that convicts `target` at once: `reporter` holds every validator stake.
    function _convictionGas(address target, uint256 targetKey, address reporter, uint64 epoch)
        internal
        returns (uint256 gasUsed)
    {
        (, bytes32[] memory proof) = twoLeafTree(challengeLeaf(REQUEST, EXPECTED), bytes32(0));
        Validation.Evidence memory evidence = Validation.Evidence({
            requestHash: REQUEST,
            outputHash: ANSWER,
            nodeSignature: signature(targetKey, validation.responseDigest(REQUEST, ANSWER, epoch)),
            answerProof: new bytes32[](0),
            expectedOutputHash: EXPECTED,
            proof: proof
        });
        bytes memory data = abi.encodeCall(Validation.reportFault, (target, epoch, evidence));
        vm.cool(address(validation));
        vm.cool(address(registry));
        vm.cool(address(btt));
        vm.prank(reporter);
        uint256 left = gasleft();
        (bool ok,) = address(validation).call(data);
        gasUsed = left - gasleft();
        vm.assertTrue(ok, "report convicted");
        vm.assertEq(uint256(validation.getNodeRecord(target).faults), 1, "convicted");
    }

    // ---------------------------------------------------------------- 7. one stale voucher reverts a batch

    /// @notice A payer times its close so that the node's batch lands after `closesAt`: the stale voucher used to
    ///         revert the whole batch, so the node's other channels went unpaid. Now it is skipped and reported.
    function test_attack_staleVoucherDoesNotRevertABatch() public {
        (address payer, uint256 payerKey) = makeAccount("payer");
        (address other, uint256 otherKey) = makeAccount("other payer");
        fund(payer, 100 ether);
        fund(other, 100 ether);
        vm.prank(payer);
        uint256 timed = channels.open(node, 10 ether);
        vm.prank(other);
        uint256 honest = channels.open(node, 10 ether);
        PaymentChannels.SignedVoucher[] memory batch = new PaymentChannels.SignedVoucher[](2);
        batch[0] = PaymentChannels.SignedVoucher(timed, 4 ether, signVoucher(payerKey, timed, 4 ether));
        batch[1] = PaymentChannels.SignedVoucher(honest, 3 ether, signVoucher(otherKey, honest, 3 ether));

        vm.prank(payer);
        channels.requestClose(timed);
        vm.warp(vm.getBlockTimestamp() + CLOSE_WINDOW);
        vm.expectEmit(address(channels));
        emit PaymentChannels.VoucherSkipped(timed, 4 ether, PaymentChannels.SkipReason.ChannelExpired);
        vm.prank(node);
        uint256 paid = channels.redeemBatch(batch);
        vm.assertEq(paid, 3 ether, "the other channel paid");
        vm.assertEq(btt.balanceOf(node), 3 ether, "node received it");
        vm.assertEq(uint256(channels.getChannel(timed).paid), 0, "expired channel untouched");
    }

    // ---------------------------------------------------------------- 8. unchecked parameters

    /// @notice With a validator unbonding period within the vote window a validator could vote, withdraw and vote
    ///         again from a new address; the other windows had similar gaps. Every such deployment now reverts, and
    ///         a fresh address never weighs on a report filed before it staked.
    function test_attack_uncheckedParametersAreRefused() public {
        Validation.Params memory p = defaultParams();
        uint64 exposure = validation.faultExposure();
        p.unbondingPeriod = VOTE_WINDOW;
        vm.expectRevert(abi.encodeWithSelector(Validation.UnbondingTooShort.selector, VOTE_WINDOW, exposure));
        new Validation(btt, registry, p);

        BTT otherToken = new BTT(address(this));
        vm.expectRevert(Validation.TokenMismatch.selector);
        new Validation(otherToken, registry, defaultParams());

        vm.expectRevert(PaymentChannels.ZeroCloseWindow.selector);
        new PaymentChannels(btt, 0);

        NodeRegistry hasty = new NodeRegistry(btt, MIN_STAKE, VOTE_WINDOW, JAIL_PERIOD);
        Validation wired = new Validation(btt, hasty, defaultParams());
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.UnbondingTooShort.selector, VOTE_WINDOW, exposure));
        hasty.setValidation(address(wired));
        NodeRegistry unrelated = new NodeRegistry(btt, MIN_STAKE, UNBONDING_PERIOD, JAIL_PERIOD);
        vm.expectRevert(NodeRegistry.ValidationMismatch.selector);
        unrelated.setValidation(address(validation));

        // Vote, unbond, and vote again from a new address: the new stake did not exist at the report's snapshot.
        address voter = _validator("voter", 1_000 ether, EXPECTED);
        address reporter = _validator("reporter", 1_000 ether, EXPECTED);
        _honestValidators(2, 1_000 ether);
        _intoEpochE();
        uint256 id = _report(reporter, "reporter", EXPECTED);
        _vote(voter, id, false);
        _unbondAll(voter);
        vm.prank(voter);
        vm.expectRevert(
            abi.encodeWithSelector(Validation.UnbondingNotElapsed.selector, block.timestamp + UNBONDING_PERIOD)
        );
        validation.withdrawValidatorStake();
        (address fresh,) = makeAccount("fresh address");
        registerValidator(fresh, 1_000 ether);
        vm.prank(fresh);
        vm.expectRevert(
            abi.encodeWithSelector(
                Validation.NoStakeAtSnapshot.selector, uint48(validation.getFaultReport(id).reportedAt - 1)
            )
        );
        validation.voteOnFault(id, false);
    }

    /// @notice Operator lists grow without bound; the views page through them so every call stays small.
    function test_attack_unboundedOperatorListIsPaged() public {
        for (uint256 i; i < 30; ++i) {
            (address op,) = makeAccount(string.concat("operator", vm.toString(i)));
            registerNode(op, MIN_STAKE);
        }
        vm.assertEq(registry.operatorCount(), 31, "count");
        uint256 seen;
        for (uint256 start; start < registry.operatorCount(); start += 8) {
            address[] memory page = registry.activeNodes(MODEL, 1, start, 8);
            vm.assertLe(page.length, 8, "page bounded");
            seen += page.length;
        }
        vm.assertEq(seen, 31, "paging covers every active node once");
        vm.assertEq(registry.operators(24, 8).length, 7, "last page clipped");
        vm.assertEq(registry.operators(40, 8).length, 0, "past the end");
    }

    /// @notice A node answers wrongly at the very start of an epoch and unbonds at once, hoping to withdraw before
    ///         a report filed at the last moment is decided. Its unbonding outlasts `faultExposure()`: the conviction
    ///         at the end of the vote window still finds the stake and slashes it.
    function test_attack_nodeCannotWithdrawAheadOfAReport() public {
        address reporter = _validator("reporter", 1_000 ether, EXPECTED);
        address[] memory honest = _honestValidators(2, 1_000 ether);
        _intoEpochE();
        Validation.Evidence memory evidence = _evidence("reporter", EXPECTED, ANSWER);
        vm.prank(node);
        registry.requestUnbond(NODE_STAKE);

        vm.warp(validation.epochEnd(E) + COMMIT_WINDOW + REVEAL_WINDOW - 1);
        vm.prank(reporter);
        uint256 id = validation.reportFault(node, E, evidence);
        vm.warp(vm.getBlockTimestamp() + VOTE_WINDOW - 1);
        uint64 endsAt = registry.getNode(node).unbondingEndsAt;
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.UnbondingNotElapsed.selector, endsAt));
        registry.withdraw();
        _vote(honest[0], id, true);
        _vote(honest[1], id, true);
        vm.assertEq(uint256(validation.getFaultReport(id).status), validation.FAULT_GUILTY(), "convicted in time");
        vm.assertEq(registry.getNode(node).unbonding, NODE_STAKE - NODE_STAKE / 10, "slashed from unbonding stake");
    }

    // ---------------------------------------------------------------- 9. validators that do not follow through

    /// @notice A validator commits a result and withholds the reveal to stall the round: the round does not
    ///         finalize and anyone can penalize the withholder once the reveal window closes.
    function test_attack_withheldRevealIsPenalized() public {
        address withholder = _validator("withholder", 1_000 ether, EXPECTED);
        address[] memory honest = _honestValidators(2, 1_000 ether);
        vm.warp(validation.epochEnd(E));
        address[3] memory all = [withholder, honest[0], honest[1]];
        for (uint256 i; i < 3; ++i) {
            bytes32 commitment = validation.resultCommitment(node, E, 10, 0, SALT, all[i]);
            vm.prank(all[i]);
            validation.commitResult(node, E, commitment);
        }
        vm.warp(validation.epochEnd(E) + COMMIT_WINDOW);
        for (uint256 i = 1; i < 3; ++i) {
            vm.prank(all[i]);
            validation.revealResult(node, E, 10, 0, SALT);
        }
        vm.assertFalse(validation.getEpochResult(node, E).finalized, "2 of 3 is below 66.67%");
        uint64 closesAt = validation.epochEnd(E) + COMMIT_WINDOW + REVEAL_WINDOW;
        vm.expectRevert(abi.encodeWithSelector(Validation.RevealWindowOpen.selector, closesAt));
        validation.penalizeMissedReveal(withholder, node, E);
        vm.warp(closesAt);
        vm.expectRevert(Validation.NotPenalizable.selector);
        validation.penalizeMissedReveal(honest[0], node, E);
        vm.expectEmit(address(validation));
        emit Validation.MissedRevealPenalized(withholder, node, E, VALIDATOR_PENALTY);
        validation.penalizeMissedReveal(withholder, node, E);
        vm.expectRevert(Validation.AlreadyPenalized.selector);
        validation.penalizeMissedReveal(withholder, node, E);
        vm.assertEq(validation.validatorStake(withholder), 1_000 ether - VALIDATOR_PENALTY, "penalized");
        vm.assertEq(btt.balanceOf(treasury), VALIDATOR_PENALTY, "to the treasury");
        vm.assertEq(uint256(validation.getValidatorRecord(withholder).missedReveals), 1, "on record");
    }
}
