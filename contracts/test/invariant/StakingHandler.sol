// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {Test} from "../utils/Test.sol";
import {Hashes} from "@openzeppelin/contracts/utils/cryptography/Hashes.sol";
import {BTT} from "../../src/BTT.sol";
import {NodeRegistry} from "../../src/NodeRegistry.sol";
import {Validation} from "../../src/Validation.sol";

/// @notice Drives NodeRegistry and Validation: node and validator staking, challenge roots, fault reports and votes.
///         Ghosts record every token movement the handler caused and flag any slash or early withdrawal.
contract StakingHandler is Test {
    BTT public immutable btt;
    NodeRegistry public immutable registry;
    Validation public immutable validation;
    address[] public operators;
    uint256[] internal operatorKeys;
    address[] public validators;

    /// @dev Tokens that entered or left the registry through stake, withdrawals and slashes.
    uint256 public nodeDeposited;
    uint256 public nodeWithdrawn;
    uint256 public slashedViaQuorum;
    /// @dev Last unbond request per account; a withdrawal earlier than it + the period is a violation.
    mapping(address account => uint256) public lastUnbondAt;
    bool public slashWithoutQuorum;
    bool public earlyWithdrawal;

    /// @dev Active validator stakes after each call, by time: an independent record of what the contract's
    ///      checkpoints must say at any past second.
    struct StakeSnapshot {
        uint256 time;
        uint256[] stakes;
    }

    StakeSnapshot[] internal _stakeHistory;
    /// @dev When each report left the pending state.
    mapping(uint256 reportId => uint256) public decidedAt;

    constructor(
        BTT btt_,
        NodeRegistry registry_,
        Validation validation_,
        address[] memory operators_,
        uint256[] memory keys_,
        address[] memory validators_
    ) {
        btt = btt_;
        registry = registry_;
        validation = validation_;
        operators = operators_;
        operatorKeys = keys_;
        validators = validators_;
    }

    function operatorCount() external view returns (uint256) {
        return operators.length;
    }

    function validatorCount() external view returns (uint256) {
        return validators.length;
    }

    // ---------------------------------------------------------------- nodes

    function register(uint256 seed, uint256 stake) external {
        address op = operators[seed % operators.length];
        stake = bound(stake, registry.minStake(), btt.balanceOf(op) / 2 + registry.minStake());
        (bytes memory peerId, bytes memory proof) = _peerId(seed % operators.length + 1, op);
        _call(
            op,
            address(registry),
            abi.encodeCall(NodeRegistry.register, (peerId, proof, 0, 0, 0, 1, new string[](0), stake))
        );
    }

    function addStake(uint256 seed, uint256 amount) external {
        address op = operators[seed % operators.length];
        _call(op, address(registry), abi.encodeCall(NodeRegistry.addStake, (bound(amount, 1, 100 ether))));
    }

    function requestUnbond(uint256 seed, uint256 amount) external {
        address op = operators[seed % operators.length];
        amount = bound(amount, 1, registry.stakeOf(op) + 1);
        if (_call(op, address(registry), abi.encodeCall(NodeRegistry.requestUnbond, (amount)))) {
            lastUnbondAt[op] = vm.getBlockTimestamp();
        }
    }

    function withdraw(uint256 seed) external {
        address op = operators[seed % operators.length];
        if (_call(op, address(registry), abi.encodeCall(NodeRegistry.withdraw, ()))) {
            if (vm.getBlockTimestamp() < lastUnbondAt[op] + registry.unbondingPeriod()) earlyWithdrawal = true;
        }
    }

    // ---------------------------------------------------------------- validators

    function registerValidator(uint256 seed, uint256 amount) external {
        address v = validators[seed % validators.length];
        amount = bound(amount, validation.minValidatorStake(), validation.minValidatorStake() * 3);
        _call(v, address(validation), abi.encodeCall(Validation.registerValidator, (amount)));
    }

    function addValidatorStake(uint256 seed, uint256 amount) external {
        address v = validators[seed % validators.length];
        _call(v, address(validation), abi.encodeCall(Validation.addValidatorStake, (bound(amount, 1, 500 ether))));
    }

    function requestValidatorUnbond(uint256 seed, uint256 amount) external {
        address v = validators[seed % validators.length];
        amount = bound(amount, 1, validation.validatorStake(v) + 1);
        if (_call(v, address(validation), abi.encodeCall(Validation.requestValidatorUnbond, (amount)))) {
            lastUnbondAt[v] = vm.getBlockTimestamp();
        }
    }

    function withdrawValidatorStake(uint256 seed) external {
        address v = validators[seed % validators.length];
        if (_call(v, address(validation), abi.encodeCall(Validation.withdrawValidatorStake, ()))) {
            if (vm.getBlockTimestamp() < lastUnbondAt[v] + validation.unbondingPeriod()) earlyWithdrawal = true;
        }
    }

    // ---------------------------------------------------------------- faults

    /// @dev Commits the validator's root for the next epoch (roots can only be committed before their epoch).
    function commitChallengeRoot(uint256 validatorSeed) external {
        address v = validators[validatorSeed % validators.length];
        uint64 next = validation.currentEpoch() + 1;
        _call(v, address(validation), abi.encodeCall(Validation.commitChallengeRoot, (next, _root(next))));
    }

    /// @dev Reports the chosen node with a wrong answer it signed for the current epoch to that node's challenge of
    ///      the epoch (fails without a root committed in advance). With `advance`, first commits the validator's
    ///      root for the next epoch and moves into it, so that reports, votes and convictions happen often.
    function reportFault(uint256 validatorSeed, uint256 nodeSeed, bool advance) external {
        address v = validators[validatorSeed % validators.length];
        uint256 n = nodeSeed % operators.length;
        if (advance) {
            uint64 next = validation.currentEpoch() + 1;
            _call(v, address(validation), abi.encodeCall(Validation.commitChallengeRoot, (next, _root(next))));
            vm.warp(validation.epochEnd(next - 1));
        }
        uint64 epoch = validation.currentEpoch();
        (bytes32 request, bytes32 expected) = _challenge(epoch, n);
        bytes32 output = keccak256(abi.encode(expected));
        Validation.Evidence memory evidence = Validation.Evidence({
            requestHash: request,
            outputHash: output,
            nodeSignature: signature(operatorKeys[n], validation.responseDigest(request, output, epoch)),
            answerProof: new bytes32[](0),
            expectedOutputHash: expected,
            proof: _proof(epoch, n)
        });
        _call(v, address(validation), abi.encodeCall(Validation.reportFault, (operators[n], epoch, evidence)));
    }

    function voteOnFault(uint256 validatorSeed, uint256 reportSeed, bool guilty) external {
        uint256 count = validation.faultReportCount();
        if (count == 0) return;
        address v = validators[validatorSeed % validators.length];
        _call(v, address(validation), abi.encodeCall(Validation.voteOnFault, (reportSeed % count + 1, guilty)));
    }

    function finalizeFault(uint256 reportSeed) external {
        uint256 count = validation.faultReportCount();
        if (count == 0) return;
        _call(address(this), address(validation), abi.encodeCall(Validation.finalizeFault, (reportSeed % count + 1)));
    }

    function penalizeDissent(uint256 validatorSeed, uint256 reportSeed) external {
        uint256 count = validation.faultReportCount();
        if (count == 0) return;
        address v = validators[validatorSeed % validators.length];
        _call(
            address(this), address(validation), abi.encodeCall(Validation.penalizeDissent, (reportSeed % count + 1, v))
        );
    }

    function warp(uint256 seconds_) external {
        // Mostly steps within an epoch's windows, so that roots, reports and votes meet; sometimes past unbonding.
        uint256 longest = seconds_ % 4 == 0 ? 8 days : 2 hours;
        vm.warp(vm.getBlockTimestamp() + bound(seconds_ / 4, 1, longest));
    }

    // ---------------------------------------------------------------- ghosts

    /// @notice Σ stake + unbonding over all operators.
    function nodeHoldings() public view returns (uint256 total) {
        for (uint256 i; i < operators.length; ++i) {
            NodeRegistry.Node memory node = registry.getNode(operators[i]);
            total += node.stake + node.unbonding;
        }
    }

    function guiltyCount() public view returns (uint256 count) {
        for (uint256 id = 1; id <= validation.faultReportCount(); ++id) {
            if (validation.getFaultReport(id).status == validation.FAULT_GUILTY()) ++count;
        }
    }

    /// @dev Calls as `sender` and books every change of the node holdings: stake in, withdrawals out, and any
    ///      other decrease as a slash, which is only legitimate when a report turned guilty in the same call.
    function _call(address sender, address target, bytes memory data) internal returns (bool ok) {
        uint256 holdingsBefore = nodeHoldings();
        uint256 guiltyBefore = guiltyCount();
        uint256 balanceBefore = btt.balanceOf(sender);
        vm.prank(sender);
        (ok,) = target.call(data);
        if (!ok) return false;
        _recordStakes();
        _recordDecisions();
        uint256 holdingsAfter = nodeHoldings();
        if (target == address(registry)) {
            if (holdingsAfter > holdingsBefore) nodeDeposited += holdingsAfter - holdingsBefore;
            else nodeWithdrawn += btt.balanceOf(sender) - balanceBefore;
        } else if (holdingsAfter < holdingsBefore) {
            slashedViaQuorum += holdingsBefore - holdingsAfter;
            if (guiltyCount() != guiltyBefore + 1) slashWithoutQuorum = true;
        }
    }

    /// @notice Active stake of validator `index` at the end of second `time`, from the handler's own record.
    function activeStakeAt(uint256 index, uint256 time) public view returns (uint256) {
        for (uint256 i = _stakeHistory.length; i > 0; --i) {
            if (_stakeHistory[i - 1].time <= time) return _stakeHistory[i - 1].stakes[index];
        }
        return 0;
    }

    /// @notice Total active validator stake at the end of second `time`, from the handler's own record.
    function totalActiveStakeAt(uint256 time) external view returns (uint256 total) {
        for (uint256 i; i < validators.length; ++i) {
            total += activeStakeAt(i, time);
        }
    }

    function _recordStakes() internal {
        uint256[] memory stakes = new uint256[](validators.length);
        for (uint256 i; i < validators.length; ++i) {
            uint256 stake = validation.validatorStake(validators[i]);
            stakes[i] = stake >= validation.minValidatorStake() ? stake : 0;
        }
        uint256 time = vm.getBlockTimestamp();
        uint256 length = _stakeHistory.length;
        if (length != 0 && _stakeHistory[length - 1].time == time) _stakeHistory[length - 1].stakes = stakes;
        else _stakeHistory.push(StakeSnapshot(time, stakes));
    }

    function _recordDecisions() internal {
        for (uint256 id = 1; id <= validation.faultReportCount(); ++id) {
            if (decidedAt[id] == 0 && validation.getFaultReport(id).status != validation.FAULT_PENDING()) {
                decidedAt[id] = vm.getBlockTimestamp();
            }
        }
    }

    /// @dev The secp256k1 peer id of `key` and its signature letting `operator` register it.
    function _peerId(uint256 key, address operator) internal returns (bytes memory peerId, bytes memory proof) {
        peerId = peerIdOf(key);
        proof = signature(key, registry.peerIdOwnershipDigest(operator));
    }

    /// @dev Challenge of node `n` in `epoch`: leaf n of a four-leaf tree (the fourth leaf is padding).
    function _challenge(uint64 epoch, uint256 n) internal pure returns (bytes32 request, bytes32 expected) {
        request = keccak256(abi.encode("request", epoch, n));
        expected = keccak256(abi.encode("expected", epoch, n));
    }

    function _leaves(uint64 epoch) internal pure returns (bytes32[4] memory leaves) {
        for (uint256 i; i < 4; ++i) {
            (bytes32 request, bytes32 expected) = _challenge(epoch, i);
            leaves[i] = keccak256(bytes.concat(keccak256(abi.encode(request, expected))));
        }
    }

    function _root(uint64 epoch) internal pure returns (bytes32) {
        bytes32[4] memory l = _leaves(epoch);
        return
            Hashes.commutativeKeccak256(
                Hashes.commutativeKeccak256(l[0], l[1]), Hashes.commutativeKeccak256(l[2], l[3])
            );
    }

    function _proof(uint64 epoch, uint256 n) internal pure returns (bytes32[] memory proof) {
        bytes32[4] memory l = _leaves(epoch);
        proof = new bytes32[](2);
        proof[0] = l[n ^ 1];
        proof[1] = n < 2 ? Hashes.commutativeKeccak256(l[2], l[3]) : Hashes.commutativeKeccak256(l[0], l[1]);
    }
}
