// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {Test} from "./Test.sol";
import {Hashes} from "@openzeppelin/contracts/utils/cryptography/Hashes.sol";
import {BTT} from "../../src/BTT.sol";
import {NodeRegistry} from "../../src/NodeRegistry.sol";
import {PaymentChannels} from "../../src/PaymentChannels.sol";
import {Validation} from "../../src/Validation.sol";

/// @notice Deploys the whole protocol in the documented order with the devnet parameters.
abstract contract Fixture is Test {
    uint256 internal constant MIN_STAKE = 100 ether;
    uint64 internal constant UNBONDING_PERIOD = 7 days;
    uint64 internal constant JAIL_PERIOD = 1 days;
    uint64 internal constant CLOSE_WINDOW = 1 hours;
    uint256 internal constant MIN_VALIDATOR_STAKE = 1_000 ether;
    uint64 internal constant EPOCH = 1 hours;
    uint64 internal constant COMMIT_WINDOW = 10 minutes;
    uint64 internal constant REVEAL_WINDOW = 10 minutes;
    uint64 internal constant VOTE_WINDOW = 1 hours;
    uint256 internal constant REPORT_BOND = 10 ether;
    uint256 internal constant VALIDATOR_PENALTY = 50 ether;
    bytes32 internal constant MODEL = keccak256("model");

    BTT internal btt;
    NodeRegistry internal registry;
    PaymentChannels internal channels;
    Validation internal validation;
    address internal treasury = address(0x7EA5);

    function setUp() public virtual {
        vm.warp(1_700_000_000);
        btt = new BTT(address(this));
        registry = new NodeRegistry(btt, MIN_STAKE, UNBONDING_PERIOD, JAIL_PERIOD);
        channels = new PaymentChannels(btt, CLOSE_WINDOW);
        validation = new Validation(btt, registry, defaultParams());
        registry.setValidation(address(validation));
    }

    function defaultParams() internal view returns (Validation.Params memory) {
        return Validation.Params({
            minValidatorStake: MIN_VALIDATOR_STAKE,
            epochDuration: EPOCH,
            commitWindow: COMMIT_WINDOW,
            revealWindow: REVEAL_WINDOW,
            voteWindow: VOTE_WINDOW,
            unbondingPeriod: UNBONDING_PERIOD,
            quorumBps: 6667,
            slashBps: 1000,
            reporterRewardBps: 5000,
            reputationAlphaBps: 3000,
            reportBond: REPORT_BOND,
            validatorPenalty: VALIDATOR_PENALTY,
            treasury: treasury
        });
    }

    /// @dev Mints `amount` to `account` and approves every protocol contract to pull it.
    function fund(address account, uint256 amount) internal {
        btt.mint(account, amount);
        vm.startPrank(account);
        btt.approve(address(registry), type(uint256).max);
        btt.approve(address(channels), type(uint256).max);
        btt.approve(address(validation), type(uint256).max);
        vm.stopPrank();
    }

    function multiaddrs() internal pure returns (string[] memory addrs) {
        addrs = new string[](1);
        addrs[0] = "/ip4/127.0.0.1/tcp/4001";
    }

    /// @dev The libp2p secp256k1 key of `operator`'s node.
    function peerKey(address operator) internal pure returns (uint256) {
        return uint256(keccak256(abi.encode("peer key", operator)));
    }

    /// @dev The peer key's signature letting `operator` register it.
    function peerIdProof(uint256 key, address operator) internal view returns (bytes memory) {
        return signature(key, registry.peerIdOwnershipDigest(operator));
    }

    /// @dev Funds and registers `operator` serving blocks [0, 3] of MODEL with `stake`.
    function registerNode(address operator, uint256 stake) internal {
        fund(operator, stake);
        uint256 key = peerKey(operator);
        bytes memory peerId = peerIdOf(key);
        bytes memory proof = peerIdProof(key, operator);
        vm.prank(operator);
        registry.register(peerId, proof, MODEL, 0, 3, 1 gwei, multiaddrs(), stake);
    }

    function registerValidator(address validator, uint256 stake) internal {
        fund(validator, stake + 10 * REPORT_BOND);
        vm.prank(validator);
        validation.registerValidator(stake);
    }

    function signVoucher(uint256 payerKey, uint256 channelId, uint256 cumulativeAmount)
        internal
        view
        returns (bytes memory)
    {
        return signature(payerKey, channels.voucherDigest(channelId, cumulativeAmount));
    }

    /// @dev The challenge-set leaf: OpenZeppelin's double-hashed standard leaf.
    function challengeLeaf(bytes32 requestHash, bytes32 expectedOutputHash) internal pure returns (bytes32) {
        return keccak256(bytes.concat(keccak256(abi.encode(requestHash, expectedOutputHash))));
    }

    /// @dev Root of a two-leaf tree and the proof of the first leaf.
    function twoLeafTree(bytes32 leaf, bytes32 sibling) internal pure returns (bytes32 root, bytes32[] memory proof) {
        root = Hashes.commutativeKeccak256(leaf, sibling);
        proof = new bytes32[](1);
        proof[0] = sibling;
    }
}
