// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Fixture} from "./utils/Fixture.sol";
import {PeerIds} from "../src/PeerIds.sol";
import {NodeRegistry} from "../src/NodeRegistry.sol";
import {Validation} from "../src/Validation.sol";

contract NodeRegistryTest is Fixture {
    address internal op = address(0x0A1);
    address internal other = address(0x0A2);

    function setUp() public override {
        super.setUp();
        fund(op, 1_000 ether);
        fund(other, 1_000 ether);
    }

    /// @dev Registers `operator` with the peer id of secp256k1 key `key`, blocks [2, 5] of MODEL.
    function _register(address operator, uint256 key, uint256 stake) internal {
        _register(operator, key, MODEL, 2, 5, stake);
    }

    function _register(address operator, uint256 key, bytes32 model, uint32 first, uint32 last, uint256 stake)
        internal
    {
        bytes memory peerId = peerIdOf(key);
        bytes memory proof = peerIdProof(key, operator);
        vm.prank(operator);
        registry.register(peerId, proof, model, first, last, 3 gwei, multiaddrs(), stake);
    }

    /// @dev Sets up `operator`'s registration with key `key` and expects it to revert with `error_`.
    function _expectRegisterRevert(address operator, uint256 key, uint32 first, uint256 stake, bytes memory error_)
        internal
    {
        bytes memory peerId = peerIdOf(key);
        bytes memory proof = peerIdProof(key, operator);
        vm.prank(operator);
        vm.expectRevert(error_);
        registry.register(peerId, proof, MODEL, first, 5, 3 gwei, multiaddrs(), stake);
    }

    // ---------------------------------------------------------------- setValidation

    function test_setValidation_onlyOnceAndOnlyOwner() public {
        NodeRegistry fresh = new NodeRegistry(btt, MIN_STAKE, UNBONDING_PERIOD, JAIL_PERIOD);
        Validation wired = new Validation(btt, fresh, defaultParams());
        vm.prank(other);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, other));
        fresh.setValidation(address(wired));

        vm.expectRevert(NodeRegistry.ZeroAddress.selector);
        fresh.setValidation(address(0));

        vm.expectEmit(address(fresh));
        emit NodeRegistry.ValidationSet(address(wired));
        fresh.setValidation(address(wired));
        vm.assertEq(fresh.validation(), address(wired), "validation");

        vm.expectRevert(NodeRegistry.ValidationAlreadySet.selector);
        fresh.setValidation(address(validation));
    }

    function test_constructor_setsParameters() public view {
        vm.assertEq(address(registry.token()), address(btt), "token");
        vm.assertEq(registry.minStake(), MIN_STAKE, "minStake");
        vm.assertEq(registry.unbondingPeriod(), UNBONDING_PERIOD, "unbondingPeriod");
        vm.assertEq(registry.jailPeriod(), JAIL_PERIOD, "jailPeriod");
        vm.assertEq(registry.validation(), address(validation), "validation");
    }

    // ---------------------------------------------------------------- register

    function test_register_storesNodeAndPullsStake() public {
        bytes memory peerId = peerIdOf(0xAA);
        vm.expectEmit(address(registry));
        emit NodeRegistry.NodeRegistered(op, peerId, MODEL, 2, 5, 3 gwei, 150 ether);
        _register(op, 0xAA, 150 ether);

        NodeRegistry.Node memory node = registry.getNode(op);
        vm.assertEq(node.peerId, peerId, "peerId");
        vm.assertEq(node.modelId, MODEL, "modelId");
        vm.assertEq(uint256(node.firstBlock), 2, "firstBlock");
        vm.assertEq(uint256(node.lastBlock), 5, "lastBlock");
        vm.assertEq(node.pricePerToken, 3 gwei, "price");
        vm.assertEq(node.multiaddrs.length, 1, "multiaddrs");
        vm.assertEq(node.multiaddrs[0], "/ip4/127.0.0.1/tcp/4001", "multiaddr");
        vm.assertEq(node.stake, 150 ether, "stake");
        vm.assertEq(uint256(node.registeredAt), vm.getBlockTimestamp(), "registeredAt");
        vm.assertEq(btt.balanceOf(address(registry)), 150 ether, "held");
        vm.assertEq(registry.operatorOf(peerId), op, "operatorOf");
        vm.assertEq(registry.operatorOf(peerIdOf(0xBB)), address(0), "unknown peer");
        vm.assertEq(registry.operatorCount(), 1, "operators");
        vm.assertEq(registry.slashableStake(op), 150 ether, "slashable");
        vm.assertTrue(registry.isRegistered(op), "registered");
        vm.assertTrue(registry.isActive(op), "active");
        vm.assertEq(registry.stakeOf(op), 150 ether, "stakeOf");
    }

    function test_register_revertsWhenAlreadyRegistered() public {
        _register(op, 1, MIN_STAKE);
        _expectRegisterRevert(op, 2, 2, MIN_STAKE, abi.encodeWithSelector(NodeRegistry.AlreadyRegistered.selector));
    }

    function test_register_revertsOnPeerIdsOfOtherKeyTypes() public {
        bytes memory proof = peerIdProof(1, op);
        bytes[] memory bad = new bytes[](4);
        bad[0] = "";
        // An ed25519 peer id: identity multihash of PublicKey{Type: Ed25519 (1), 32 bytes}.
        bad[1] = abi.encodePacked(hex"002408011220", bytes32(uint256(1)));
        // A secp256k1 peer id with a bad compressed-key prefix, and one cut short.
        bytes memory peerId = peerIdOf(1);
        peerId[6] = 0x04;
        bad[2] = peerId;
        bad[3] = hex"0025080212210211";
        vm.startPrank(op);
        for (uint256 i; i < bad.length; ++i) {
            vm.expectRevert(PeerIds.UnsupportedPeerId.selector);
            registry.register(bad[i], proof, MODEL, 0, 1, 1, multiaddrs(), MIN_STAKE);
        }
        // x = 5 is not the x of any secp256k1 point (5^3 + 7 is not a square mod p).
        vm.expectRevert(PeerIds.InvalidPeerIdKey.selector);
        registry.register(
            abi.encodePacked(hex"00250802122102", bytes32(uint256(5))), proof, MODEL, 0, 1, 1, multiaddrs(), MIN_STAKE
        );
        vm.stopPrank();
    }

    function test_register_revertsOnDuplicatePeerId() public {
        _register(op, 1, MIN_STAKE);
        _expectRegisterRevert(other, 1, 2, MIN_STAKE, abi.encodeWithSelector(NodeRegistry.PeerIdTaken.selector, op));
    }

    function test_register_revertsOnZeroStake() public {
        _expectRegisterRevert(op, 1, 2, 0, abi.encodeWithSelector(NodeRegistry.ZeroAmount.selector));
    }

    function test_register_revertsBelowMinStake() public {
        _expectRegisterRevert(
            op,
            1,
            2,
            MIN_STAKE - 1,
            abi.encodeWithSelector(NodeRegistry.StakeBelowMinimum.selector, MIN_STAKE - 1, MIN_STAKE)
        );
    }

    function test_register_revertsOnInvertedBlockRange() public {
        _expectRegisterRevert(
            op, 1, 6, MIN_STAKE, abi.encodeWithSelector(NodeRegistry.InvalidBlockRange.selector, 6, 5)
        );
    }

    // ---------------------------------------------------------------- updateService

    function test_updateService_replacesService() public {
        _register(op, 1, MIN_STAKE);
        string[] memory addrs = new string[](2);
        addrs[0] = "/ip4/10.0.0.1/tcp/1";
        addrs[1] = "/ip4/10.0.0.1/udp/1/quic-v1";
        vm.expectEmit(address(registry));
        emit NodeRegistry.ServiceUpdated(op, bytes32(uint256(7)), 4, 4, 9);
        vm.prank(op);
        registry.updateService(bytes32(uint256(7)), 4, 4, 9, addrs);

        NodeRegistry.Node memory node = registry.getNode(op);
        vm.assertEq(node.modelId, bytes32(uint256(7)), "modelId");
        vm.assertEq(uint256(node.firstBlock), 4, "first");
        vm.assertEq(uint256(node.lastBlock), 4, "last");
        vm.assertEq(node.pricePerToken, 9, "price");
        vm.assertEq(node.multiaddrs.length, 2, "multiaddrs replaced");
        vm.assertEq(node.multiaddrs[1], addrs[1], "multiaddr");
        vm.assertEq(node.peerId, peerIdOf(1), "peerId kept");
    }

    function test_updateService_revertsWhenNotRegistered() public {
        vm.prank(op);
        vm.expectRevert(NodeRegistry.NotRegistered.selector);
        registry.updateService(MODEL, 0, 1, 1, multiaddrs());
    }

    function test_updateService_revertsOnInvertedBlockRange() public {
        _register(op, 1, MIN_STAKE);
        vm.prank(op);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.InvalidBlockRange.selector, 2, 1));
        registry.updateService(MODEL, 2, 1, 1, multiaddrs());
    }

    // ---------------------------------------------------------------- stake

    function test_addStake() public {
        _register(op, 1, MIN_STAKE);
        vm.expectEmit(address(registry));
        emit NodeRegistry.StakeAdded(op, 5 ether, MIN_STAKE + 5 ether);
        vm.prank(op);
        registry.addStake(5 ether);
        vm.assertEq(registry.stakeOf(op), MIN_STAKE + 5 ether, "stake");
        vm.assertEq(btt.balanceOf(address(registry)), MIN_STAKE + 5 ether, "held");
    }

    function test_addStake_revertsOnZero() public {
        _register(op, 1, MIN_STAKE);
        vm.prank(op);
        vm.expectRevert(NodeRegistry.ZeroAmount.selector);
        registry.addStake(0);
    }

    function test_addStake_revertsWhenNotRegistered() public {
        vm.prank(op);
        vm.expectRevert(NodeRegistry.NotRegistered.selector);
        registry.addStake(1);
    }

    function testFuzz_unbondAndWithdraw(uint256 stake, uint256 unbond, uint256 wait) public {
        stake = bound(stake, MIN_STAKE, 1_000 ether);
        unbond = bound(unbond, 1, stake);
        wait = bound(wait, 0, 2 * UNBONDING_PERIOD);
        _register(op, 1, stake);

        uint64 endsAt = uint64(vm.getBlockTimestamp()) + UNBONDING_PERIOD;
        vm.expectEmit(address(registry));
        emit NodeRegistry.UnbondRequested(op, unbond, endsAt);
        vm.prank(op);
        registry.requestUnbond(unbond);
        vm.assertEq(registry.stakeOf(op), stake - unbond, "stake");
        vm.assertEq(registry.getNode(op).unbonding, unbond, "unbonding");
        vm.assertEq(registry.isActive(op), stake - unbond >= MIN_STAKE, "active iff min stake bonded");

        vm.warp(vm.getBlockTimestamp() + wait);
        if (wait < UNBONDING_PERIOD) {
            vm.prank(op);
            vm.expectRevert(abi.encodeWithSelector(NodeRegistry.UnbondingNotElapsed.selector, endsAt));
            registry.withdraw();
        } else {
            uint256 before = btt.balanceOf(op);
            vm.expectEmit(address(registry));
            emit NodeRegistry.Withdrawn(op, unbond);
            vm.prank(op);
            registry.withdraw();
            vm.assertEq(btt.balanceOf(op) - before, unbond, "paid out");
            vm.assertEq(registry.getNode(op).unbonding, 0, "nothing left");
        }
    }

    function test_requestUnbond_restartsTimer() public {
        _register(op, 1, 200 ether);
        vm.prank(op);
        registry.requestUnbond(10 ether);
        vm.warp(vm.getBlockTimestamp() + UNBONDING_PERIOD - 1);
        vm.prank(op);
        registry.requestUnbond(10 ether);
        vm.assertEq(
            uint256(registry.getNode(op).unbondingEndsAt), vm.getBlockTimestamp() + UNBONDING_PERIOD, "restarted"
        );
        vm.assertEq(registry.getNode(op).unbonding, 20 ether, "accumulated");
    }

    function test_requestUnbond_revertsOnZero() public {
        _register(op, 1, MIN_STAKE);
        vm.prank(op);
        vm.expectRevert(NodeRegistry.ZeroAmount.selector);
        registry.requestUnbond(0);
    }

    function test_requestUnbond_revertsAboveStake() public {
        _register(op, 1, MIN_STAKE);
        vm.prank(op);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.InsufficientStake.selector, MIN_STAKE + 1, MIN_STAKE));
        registry.requestUnbond(MIN_STAKE + 1);
    }

    function test_requestUnbond_revertsWhenNotRegistered() public {
        vm.prank(op);
        vm.expectRevert(NodeRegistry.NotRegistered.selector);
        registry.requestUnbond(1);
    }

    function test_withdraw_revertsWithNothingPending() public {
        _register(op, 1, MIN_STAKE);
        vm.prank(op);
        vm.expectRevert(NodeRegistry.NothingToWithdraw.selector);
        registry.withdraw();
    }

    // ---------------------------------------------------------------- slash and jail

    function test_slash_takesStakeThenUnbonding() public {
        _register(op, 1, 200 ether);
        vm.prank(op);
        registry.requestUnbond(50 ether);

        vm.expectEmit(address(registry));
        emit NodeRegistry.Slashed(op, 170 ether, treasury);
        vm.prank(address(validation));
        uint256 slashed = registry.slash(op, 170 ether, treasury);
        vm.assertEq(slashed, 170 ether, "slashed");
        vm.assertEq(registry.stakeOf(op), 0, "stake emptied first");
        vm.assertEq(registry.getNode(op).unbonding, 30 ether, "rest from unbonding");
        vm.assertEq(btt.balanceOf(treasury), 170 ether, "sent");
    }

    function testFuzz_slash_cappedAtHoldings(uint256 amount) public {
        amount = bound(amount, 1, type(uint128).max);
        _register(op, 1, 200 ether);
        vm.prank(address(validation));
        uint256 slashed = registry.slash(op, amount, treasury);
        vm.assertEq(slashed, amount < 200 ether ? amount : 200 ether, "capped");
        vm.assertEq(registry.stakeOf(op), 200 ether - slashed, "stake");
        vm.assertEq(btt.balanceOf(treasury), slashed, "sent");
    }

    function test_slash_revertsForNonValidation() public {
        _register(op, 1, MIN_STAKE);
        vm.expectRevert(NodeRegistry.NotValidation.selector);
        registry.slash(op, 1, treasury);
    }

    function test_slash_revertsOnZero() public {
        vm.prank(address(validation));
        vm.expectRevert(NodeRegistry.ZeroAmount.selector);
        registry.slash(op, 0, treasury);
    }

    function test_jailAndUnjail() public {
        _register(op, 1, MIN_STAKE);
        uint64 until = uint64(vm.getBlockTimestamp()) + JAIL_PERIOD;
        vm.expectEmit(address(registry));
        emit NodeRegistry.Jailed(op, until);
        vm.prank(address(validation));
        registry.jail(op);
        vm.assertFalse(registry.isActive(op), "jailed is inactive");
        vm.assertEq(registry.activeNodes(MODEL, 2, 0, 10).length, 0, "not listed");

        vm.prank(op);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.StillJailed.selector, until));
        registry.unjail();

        vm.warp(until);
        vm.assertTrue(registry.isActive(op), "active once served");
        vm.expectEmit(address(registry));
        emit NodeRegistry.Unjailed(op);
        vm.prank(op);
        registry.unjail();
        vm.assertEq(uint256(registry.getNode(op).jailedUntil), 0, "cleared");
    }

    function test_jail_revertsForNonValidation() public {
        _register(op, 1, MIN_STAKE);
        vm.expectRevert(NodeRegistry.NotValidation.selector);
        registry.jail(op);
    }

    function test_jail_revertsForUnknownNode() public {
        vm.prank(address(validation));
        vm.expectRevert(NodeRegistry.NotRegistered.selector);
        registry.jail(op);
    }

    function test_unjail_revertsWhenNotJailed() public {
        _register(op, 1, MIN_STAKE);
        vm.prank(op);
        vm.expectRevert(NodeRegistry.NotJailed.selector);
        registry.unjail();
    }

    function test_unjail_revertsWhenNotRegistered() public {
        vm.prank(op);
        vm.expectRevert(NodeRegistry.NotRegistered.selector);
        registry.unjail();
    }

    // ---------------------------------------------------------------- discovery

    function test_activeNodes_filtersByModelRangeAndActivity() public {
        _register(op, 1, MIN_STAKE); // blocks [2, 5]
        _register(other, 2, MODEL, 0, 2, MIN_STAKE);
        address third = address(0x0A3);
        fund(third, MIN_STAKE);
        _register(third, 3, keccak256("other model"), 0, 9, MIN_STAKE);

        vm.assertEq(registry.activeNodes(MODEL, 2, 0, 10).length, 2, "both cover block 2");
        address[] memory onlyOp = registry.activeNodes(MODEL, 5, 0, 10);
        vm.assertEq(onlyOp.length, 1, "one covers block 5");
        vm.assertEq(onlyOp[0], op, "op");
        vm.assertEq(registry.activeNodes(MODEL, 6, 0, 10).length, 0, "none cover block 6");
        // Pages scan positions: [0, 1) holds op, [1, 3) holds other and third.
        vm.assertEq(registry.activeNodes(MODEL, 2, 0, 1)[0], op, "page 1");
        vm.assertEq(registry.activeNodes(MODEL, 2, 1, 2)[0], other, "page 2");
        vm.assertEq(registry.activeNodes(MODEL, 2, 3, 5).length, 0, "past the end");

        vm.prank(op);
        registry.requestUnbond(1);
        vm.assertEq(registry.activeNodes(MODEL, 2, 0, 10).length, 1, "below min stake drops out");
        vm.assertEq(registry.operatorCount(), 3, "operators keeps everyone registered");
        address[] memory page = registry.operators(1, 5);
        vm.assertEq(page.length, 2, "clipped page");
        vm.assertEq(page[0], other, "second");
        vm.assertEq(page[1], third, "third");
    }

    function test_isActive_falseForUnknown() public view {
        vm.assertFalse(registry.isActive(op), "unknown");
        vm.assertFalse(registry.isRegistered(op), "unregistered");
    }
}
