// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {Test} from "./utils/Test.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";
import {BTT} from "../src/BTT.sol";

contract BTTTest is Test {
    BTT internal btt;
    address internal owner = address(0xA11CE);

    function setUp() public {
        btt = new BTT(owner);
    }

    function test_metadata() public view {
        vm.assertEq(btt.name(), "BitTorrent Test Token", "name");
        vm.assertEq(btt.symbol(), "BTT", "symbol");
        vm.assertEq(uint256(btt.decimals()), 18, "decimals");
        vm.assertEq(btt.owner(), owner, "owner");
    }

    function testFuzz_mint(address to, uint256 amount) public {
        vm.assume(to != address(0));
        amount = bound(amount, 1, type(uint128).max);
        vm.prank(owner);
        btt.mint(to, amount);
        vm.assertEq(btt.balanceOf(to), amount, "balance");
        vm.assertEq(btt.totalSupply(), amount, "supply");
    }

    function test_mint_revertsOnZeroAmount() public {
        vm.prank(owner);
        vm.expectRevert(BTT.ZeroAmount.selector);
        btt.mint(address(1), 0);
    }

    function test_mint_revertsOnZeroAddress() public {
        vm.prank(owner);
        vm.expectRevert(abi.encodeWithSelector(IERC20Errors.ERC20InvalidReceiver.selector, address(0)));
        btt.mint(address(0), 1);
    }

    function test_mint_revertsForNonOwner() public {
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, address(this)));
        btt.mint(address(1), 1);
    }

    function test_permit() public {
        (address holder, uint256 key) = makeAccount("holder");
        address spender = address(0xB0B);
        uint256 deadline = vm.getBlockTimestamp() + 1 hours;
        bytes32 structHash = keccak256(
            abi.encode(
                keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)"),
                holder,
                spender,
                5 ether,
                btt.nonces(holder),
                deadline
            )
        );
        bytes32 digest = keccak256(abi.encodePacked("\x19\x01", btt.DOMAIN_SEPARATOR(), structHash));
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        btt.permit(holder, spender, 5 ether, deadline, v, r, s);
        vm.assertEq(btt.allowance(holder, spender), 5 ether, "allowance");
        vm.assertEq(btt.nonces(holder), 1, "nonce");
    }
}
