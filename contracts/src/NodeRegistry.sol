// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {PeerIds} from "./PeerIds.sol";

/// @notice What the registry checks of the validation contract it is wired to.
interface IValidationTerms {
    /// @return The registry the validation contract slashes through.
    function registry() external view returns (address);
    /// @return The token its stakes and bonds are paid in.
    function token() external view returns (IERC20);
    /// @return The longest time from a node's answer to the end of the vote on a report about it.
    function faultExposure() external view returns (uint64);
}

/// @title InferGrid node registry
/// @notice Operators bond stake and register one inference node each: its libp2p peer id (proven theirs by a
///         signature of the peer's key), the model and layer blocks it serves, its price and its addresses. The
///         validation contract may slash and jail nodes. An operator that has withdrawn everything may deregister and
///         free its peer id.
contract NodeRegistry is Ownable, EIP712, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /// @notice Everything the chain knows about one operator's node.
    struct Node {
        bytes peerId; // libp2p peer id bytes of a secp256k1 key (39 bytes); unique across nodes
        bytes32 modelId; // model manifest id
        uint32 firstBlock; // first layer block served (inclusive)
        uint32 lastBlock; // last layer block served (inclusive), >= firstBlock
        uint256 pricePerToken; // token wei per token processed
        string[] multiaddrs; // where to dial it
        uint256 stake; // bonded stake
        uint256 unbonding; // amount waiting out the unbonding period
        uint64 unbondingEndsAt;
        uint64 jailedUntil; // 0 = not jailed
        uint64 registeredAt; // 0 = not registered
    }

    /// @notice EIP-712 type hash of `PeerIdOwnership(address operator)`, signed by the peer id's key.
    bytes32 public constant PEER_ID_OWNERSHIP_TYPEHASH = keccak256("PeerIdOwnership(address operator)");
    /// @notice Most multiaddrs a node may register: bounds what reading a node record costs.
    uint256 public constant MAX_MULTIADDRS = 8;
    /// @notice Longest multiaddr, in bytes.
    uint256 public constant MAX_MULTIADDR_LENGTH = 256;

    /// @notice The staking token.
    IERC20 public immutable token;
    /// @notice Bonded stake a node needs to be active.
    uint256 public immutable minStake;
    /// @notice Seconds between `requestUnbond` and the earliest `withdraw`.
    uint64 public immutable unbondingPeriod;
    /// @notice Seconds a jailed node stays inactive.
    uint64 public immutable jailPeriod;
    /// @notice The only contract allowed to slash and jail; set once by the owner.
    address public validation;

    mapping(address operator => Node) private _nodes;
    mapping(bytes32 peerIdHash => address operator) private _operatorByPeerId;
    /// @dev Registered operators, unordered once one deregisters (swap and pop).
    address[] private _operators;
    /// @dev 1 + the operator's index in `_operators`; 0 when not registered.
    mapping(address operator => uint256) private _operatorSlot;

    event ValidationSet(address validation);
    event NodeRegistered(
        address indexed operator,
        bytes peerId,
        bytes32 indexed modelId,
        uint32 firstBlock,
        uint32 lastBlock,
        uint256 pricePerToken,
        uint256 stake
    );
    event ServiceUpdated(
        address indexed operator, bytes32 indexed modelId, uint32 firstBlock, uint32 lastBlock, uint256 pricePerToken
    );
    event StakeAdded(address indexed operator, uint256 amount, uint256 newStake);
    event UnbondRequested(address indexed operator, uint256 amount, uint64 unbondingEndsAt);
    event Withdrawn(address indexed operator, uint256 amount);
    event Slashed(address indexed operator, uint256 amount, address to);
    event Jailed(address indexed operator, uint64 until);
    event Unjailed(address indexed operator);
    event NodeDeregistered(address indexed operator, bytes peerId);

    error ZeroAmount();
    error ZeroAddress();
    error PeerIdTaken(address operator);
    error AlreadyRegistered();
    error NotRegistered();
    error InvalidBlockRange(uint32 firstBlock, uint32 lastBlock);
    error StakeBelowMinimum(uint256 stake, uint256 minStake);
    error InsufficientStake(uint256 requested, uint256 stake);
    error NothingToWithdraw();
    error UnbondingNotElapsed(uint64 unbondingEndsAt);
    error NotValidation();
    error ValidationAlreadySet();
    error NotJailed();
    error StillJailed(uint64 jailedUntil);
    error InvalidPeerIdSignature();
    error TooManyMultiaddrs(uint256 count, uint256 max);
    error MultiaddrTooLong(uint256 index, uint256 length, uint256 max);
    error StakeNotWithdrawn(uint256 stake, uint256 unbonding);
    error ValidationMismatch();
    error UnbondingTooShort(uint64 unbondingPeriod, uint64 faultExposure);

    modifier onlyValidation() {
        if (msg.sender != validation) revert NotValidation();
        _;
    }

    modifier onlyRegistered() {
        if (_nodes[msg.sender].registeredAt == 0) revert NotRegistered();
        _;
    }

    /// @param token_ The staking token (BTT).
    /// @param minStake_ Bonded stake a node needs to be active.
    /// @param unbondingPeriod_ Unbonding delay in seconds; `setValidation` requires it to exceed the validation
    ///        contract's `faultExposure()`, so a node cannot withdraw ahead of a fault report about its answers.
    /// @param jailPeriod_ Seconds a jailed node stays inactive.
    constructor(IERC20 token_, uint256 minStake_, uint64 unbondingPeriod_, uint64 jailPeriod_)
        Ownable(msg.sender)
        EIP712("InferGrid NodeRegistry", "1")
    {
        token = token_;
        minStake = minStake_;
        unbondingPeriod = unbondingPeriod_;
        jailPeriod = jailPeriod_;
    }

    /// @notice Sets the validation contract. Callable once, by the deployer; fixed afterwards. It must slash through
    ///         this registry, in this token, and decide every fault report within this registry's unbonding period.
    /// @param validation_ The validation contract.
    function setValidation(address validation_) external onlyOwner {
        if (validation != address(0)) revert ValidationAlreadySet();
        if (validation_ == address(0)) revert ZeroAddress();
        IValidationTerms terms = IValidationTerms(validation_);
        if (terms.registry() != address(this) || address(terms.token()) != address(token)) revert ValidationMismatch();
        uint64 exposure = terms.faultExposure();
        if (unbondingPeriod <= exposure) revert UnbondingTooShort(unbondingPeriod, exposure);
        validation = validation_;
        emit ValidationSet(validation_);
    }

    /// @notice Registers the caller's node and bonds `stakeAmount`, pulled from the caller.
    /// @param peerId libp2p peer id of a secp256k1 key (39 bytes, see `PeerIds`); unique across nodes and fixed for
    ///        the node's lifetime.
    /// @param peerIdSignature 65-byte signature by the peer id's key over `peerIdOwnershipDigest(msg.sender)`.
    /// @param modelId Model manifest id.
    /// @param firstBlock First layer block served (inclusive).
    /// @param lastBlock Last layer block served (inclusive).
    /// @param pricePerToken Token wei per token processed.
    /// @param multiaddrs libp2p multiaddrs to dial.
    /// @param stakeAmount Initial stake; at least `minStake`.
    function register(
        bytes calldata peerId,
        bytes calldata peerIdSignature,
        bytes32 modelId,
        uint32 firstBlock,
        uint32 lastBlock,
        uint256 pricePerToken,
        string[] calldata multiaddrs,
        uint256 stakeAmount
    ) external nonReentrant {
        Node storage node = _nodes[msg.sender];
        if (node.registeredAt != 0) revert AlreadyRegistered();
        if (stakeAmount == 0) revert ZeroAmount();
        if (stakeAmount < minStake) revert StakeBelowMinimum(stakeAmount, minStake);
        _claimPeerId(peerId, peerIdSignature);

        node.peerId = peerId;
        node.stake = stakeAmount;
        node.registeredAt = uint64(block.timestamp);
        _setService(node, modelId, firstBlock, lastBlock, pricePerToken, multiaddrs);
        _operators.push(msg.sender);
        _operatorSlot[msg.sender] = _operators.length;
        emit NodeRegistered(msg.sender, peerId, modelId, firstBlock, lastBlock, pricePerToken, stakeAmount);

        token.safeTransferFrom(msg.sender, address(this), stakeAmount);
    }

    /// @notice Replaces the caller's service description (the peer id stays).
    /// @param modelId Model manifest id.
    /// @param firstBlock First layer block served (inclusive).
    /// @param lastBlock Last layer block served (inclusive).
    /// @param pricePerToken Token wei per token processed.
    /// @param multiaddrs libp2p multiaddrs to dial.
    function updateService(
        bytes32 modelId,
        uint32 firstBlock,
        uint32 lastBlock,
        uint256 pricePerToken,
        string[] calldata multiaddrs
    ) external onlyRegistered {
        _setService(_nodes[msg.sender], modelId, firstBlock, lastBlock, pricePerToken, multiaddrs);
        emit ServiceUpdated(msg.sender, modelId, firstBlock, lastBlock, pricePerToken);
    }

    /// @notice Bonds `amount` more stake, pulled from the caller.
    /// @param amount Amount in token wei; non-zero.
    function addStake(uint256 amount) external onlyRegistered nonReentrant {
        if (amount == 0) revert ZeroAmount();
        uint256 newStake = _nodes[msg.sender].stake + amount;
        _nodes[msg.sender].stake = newStake;
        emit StakeAdded(msg.sender, amount, newStake);

        token.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Moves `amount` of bonded stake into unbonding and (re)starts the unbonding timer for the whole
    ///         unbonding amount. Unbonding stake stays slashable until withdrawn.
    /// @param amount Amount in token wei; non-zero and at most the bonded stake.
    function requestUnbond(uint256 amount) external onlyRegistered {
        if (amount == 0) revert ZeroAmount();
        Node storage node = _nodes[msg.sender];
        if (amount > node.stake) revert InsufficientStake(amount, node.stake);
        node.stake -= amount;
        node.unbonding += amount;
        uint64 endsAt = uint64(block.timestamp) + unbondingPeriod;
        node.unbondingEndsAt = endsAt;
        emit UnbondRequested(msg.sender, amount, endsAt);
    }

    /// @notice Pays out the caller's whole unbonding amount once the unbonding period has passed.
    function withdraw() external nonReentrant {
        Node storage node = _nodes[msg.sender];
        uint256 amount = node.unbonding;
        if (amount == 0) revert NothingToWithdraw();
        if (block.timestamp < node.unbondingEndsAt) revert UnbondingNotElapsed(node.unbondingEndsAt);
        node.unbonding = 0;
        node.unbondingEndsAt = 0;
        emit Withdrawn(msg.sender, amount);

        token.safeTransfer(msg.sender, amount);
    }

    /// @notice Removes the caller's node and frees its peer id. Only once nothing is bonded or unbonding (so every
    ///         fault the node could still be convicted of was decided while its stake waited out the unbonding
    ///         period) and no jail term runs.
    function deregister() external onlyRegistered {
        Node storage node = _nodes[msg.sender];
        if (node.stake != 0 || node.unbonding != 0) revert StakeNotWithdrawn(node.stake, node.unbonding);
        if (block.timestamp < node.jailedUntil) revert StillJailed(node.jailedUntil);
        bytes memory peerId = node.peerId;
        delete _operatorByPeerId[keccak256(peerId)];
        uint256 index = _operatorSlot[msg.sender] - 1;
        address last = _operators[_operators.length - 1];
        _operators[index] = last;
        _operatorSlot[last] = index + 1;
        _operators.pop();
        delete _operatorSlot[msg.sender];
        delete node.multiaddrs;
        delete _nodes[msg.sender];
        emit NodeDeregistered(msg.sender, peerId);
    }

    /// @notice Slashes up to `amount` from `operator`, bonded stake first, then unbonding stake.
    /// @dev Only the validation contract, after a fault has been proven by a quorum.
    /// @param operator The node's operator.
    /// @param amount Requested amount; non-zero. The slash is capped at what the node holds.
    /// @param to Receiver of the slashed tokens.
    /// @return slashed The amount actually slashed and transferred.
    function slash(address operator, uint256 amount, address to)
        external
        onlyValidation
        nonReentrant
        returns (uint256 slashed)
    {
        if (amount == 0) revert ZeroAmount();
        Node storage node = _nodes[operator];
        uint256 fromStake = amount < node.stake ? amount : node.stake;
        uint256 fromUnbonding = amount - fromStake < node.unbonding ? amount - fromStake : node.unbonding;
        node.stake -= fromStake;
        node.unbonding -= fromUnbonding;
        slashed = fromStake + fromUnbonding;
        emit Slashed(operator, slashed, to);

        if (slashed != 0) token.safeTransfer(to, slashed);
    }

    /// @notice Jails `operator` for `jailPeriod` seconds from now (extending any running jail term).
    /// @dev Only the validation contract.
    /// @param operator The node's operator.
    function jail(address operator) external onlyValidation {
        if (_nodes[operator].registeredAt == 0) revert NotRegistered();
        uint64 until = uint64(block.timestamp) + jailPeriod;
        _nodes[operator].jailedUntil = until;
        emit Jailed(operator, until);
    }

    /// @notice Clears the caller's served jail term. Optional for activity (`isActive` only looks at the clock),
    ///         it puts the node's return on record.
    function unjail() external onlyRegistered {
        uint64 until = _nodes[msg.sender].jailedUntil;
        if (until == 0) revert NotJailed();
        if (block.timestamp < until) revert StillJailed(until);
        _nodes[msg.sender].jailedUntil = 0;
        emit Unjailed(msg.sender);
    }

    /// @notice The full record of `operator`'s node (all zero when not registered).
    /// @param operator The node's operator.
    /// @return The node record.
    function getNode(address operator) external view returns (Node memory) {
        return _nodes[operator];
    }

    /// @notice Bonded stake of `operator` (unbonding stake excluded).
    /// @param operator The node's operator.
    /// @return The bonded stake in token wei.
    function stakeOf(address operator) external view returns (uint256) {
        return _nodes[operator].stake;
    }

    /// @notice What a slash can take from `operator`: bonded plus unbonding stake. The validation contract reads
    ///         this rather than `getNode`, whose cost grows with the node's record.
    /// @param operator The node's operator.
    /// @return Bonded plus unbonding stake in token wei.
    function slashableStake(address operator) external view returns (uint256) {
        Node storage node = _nodes[operator];
        return node.stake + node.unbonding;
    }

    /// @notice The EIP-712 digest a peer id's key signs to let `operator` register it:
    ///         `PeerIdOwnership(address operator)` in this registry's domain (name "InferGrid NodeRegistry",
    ///         version "1", chain id, this contract).
    /// @param operator The operator that will register the peer id.
    /// @return The digest.
    function peerIdOwnershipDigest(address operator) public view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(PEER_ID_OWNERSHIP_TYPEHASH, operator)));
    }

    /// @notice Whether `operator` has registered a node.
    /// @param operator The node's operator.
    /// @return True from registration until deregistration.
    function isRegistered(address operator) external view returns (bool) {
        return _nodes[operator].registeredAt != 0;
    }

    /// @notice Whether `operator`'s node may receive traffic: registered, at least `minStake` bonded, not jailed.
    /// @param operator The node's operator.
    /// @return True when active.
    function isActive(address operator) public view returns (bool) {
        Node storage node = _nodes[operator];
        return node.registeredAt != 0 && node.stake >= minStake && block.timestamp >= node.jailedUntil;
    }

    /// @notice The operator that registered `peerId`.
    /// @param peerId libp2p peer id bytes.
    /// @return The operator, or address(0) when unknown.
    function operatorOf(bytes calldata peerId) external view returns (address) {
        return _operatorByPeerId[keccak256(peerId)];
    }

    /// @notice Number of registered operators: the length of the list `operators` and `activeNodes` page through.
    /// @return The count.
    function operatorCount() external view returns (uint256) {
        return _operators.length;
    }

    /// @notice One page of the registered operators: positions [start, start + limit) of the list (clipped at its
    ///         end). Registration appends; deregistration moves the last operator into the freed position.
    /// @param start First position.
    /// @param limit Most operators returned.
    /// @return page The operators.
    function operators(uint256 start, uint256 limit) external view returns (address[] memory page) {
        uint256 end = _pageEnd(start, limit);
        page = new address[](end > start ? end - start : 0);
        for (uint256 i = start; i < end; ++i) {
            page[i - start] = _operators[i];
        }
    }

    /// @notice Active nodes of `modelId` whose block range contains `blockIndex`, among the operators at positions
    ///         [start, start + limit) of the list (see `operators`). Page with the same `limit` until
    ///         `start >= operatorCount()`; each call stays linear in `limit`, under `eth_call` gas caps.
    /// @param modelId Model manifest id.
    /// @param blockIndex A layer block index.
    /// @param start First position scanned.
    /// @param limit Most positions scanned.
    /// @return result Their operators, in list order.
    function activeNodes(bytes32 modelId, uint32 blockIndex, uint256 start, uint256 limit)
        external
        view
        returns (address[] memory result)
    {
        uint256 end = _pageEnd(start, limit);
        result = new address[](end > start ? end - start : 0);
        uint256 count;
        for (uint256 i = start; i < end; ++i) {
            address operator = _operators[i];
            Node storage node = _nodes[operator];
            if (
                node.modelId == modelId && node.firstBlock <= blockIndex && blockIndex <= node.lastBlock
                    && isActive(operator)
            ) {
                result[count++] = operator;
            }
        }
        // Shrink the array to the entries written.
        assembly ("memory-safe") {
            mstore(result, count)
        }
    }

    /// @dev Checks that `peerId` is a free secp256k1 peer id whose key signed the caller's ownership, and binds it
    ///      to the caller.
    function _claimPeerId(bytes calldata peerId, bytes calldata signature) private {
        address peerKey = PeerIds.keyAddress(peerId);
        bytes32 peerIdHash = keccak256(peerId);
        address holder = _operatorByPeerId[peerIdHash];
        if (holder != address(0)) revert PeerIdTaken(holder);
        (address signer, ECDSA.RecoverError error,) = ECDSA.tryRecover(peerIdOwnershipDigest(msg.sender), signature);
        if (error != ECDSA.RecoverError.NoError || signer != peerKey) revert InvalidPeerIdSignature();
        _operatorByPeerId[peerIdHash] = msg.sender;
    }

    function _pageEnd(uint256 start, uint256 limit) private view returns (uint256) {
        uint256 length = _operators.length;
        return start >= length || limit >= length - start ? length : start + limit;
    }

    function _setService(
        Node storage node,
        bytes32 modelId,
        uint32 firstBlock,
        uint32 lastBlock,
        uint256 pricePerToken,
        string[] calldata multiaddrs
    ) private {
        if (lastBlock < firstBlock) revert InvalidBlockRange(firstBlock, lastBlock);
        if (multiaddrs.length > MAX_MULTIADDRS) revert TooManyMultiaddrs(multiaddrs.length, MAX_MULTIADDRS);
        node.modelId = modelId;
        node.firstBlock = firstBlock;
        node.lastBlock = lastBlock;
        node.pricePerToken = pricePerToken;
        // The legacy code generator cannot copy calldata string[] to storage in one assignment.
        delete node.multiaddrs;
        for (uint256 i; i < multiaddrs.length; ++i) {
            uint256 length = bytes(multiaddrs[i]).length;
            if (length > MAX_MULTIADDR_LENGTH) revert MultiaddrTooLong(i, length, MAX_MULTIADDR_LENGTH);
            node.multiaddrs.push(multiaddrs[i]);
        }
    }
}
