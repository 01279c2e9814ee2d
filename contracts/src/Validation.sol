// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {NodeRegistry} from "./NodeRegistry.sol";

/// @title InferGrid validation
/// @notice Staked validators commit a Merkle root of their secret challenge set per epoch, mix the challenges into
///         normal traffic, then commit and reveal per-node results. The reveal that brings a stake-weighted quorum
///         finalizes the node's epoch score into its reputation. A validator holding a node-signed answer that
///         differs from a committed expected answer reports a fault; a stake-weighted guilty quorum slashes and
///         jails the node and rewards the reporter, a rejected report forfeits the reporter's bond.
/// @dev All stake weights are the validators' current active stake, read when they reveal or vote; the quorum is
///      measured against the current total active stake.
contract Validation is EIP712, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /// @notice Deployment parameters; fixed for the contract's lifetime.
    struct Params {
        uint256 minValidatorStake;
        uint64 epochDuration; // epoch e = [genesis + e*epochDuration, genesis + (e+1)*epochDuration)
        uint64 commitWindow; // result commits for epoch e accepted until epochEnd(e) + commitWindow
        uint64 revealWindow; // reveals accepted in [epochEnd(e) + commitWindow, + revealWindow)
        uint64 voteWindow; // fault votes accepted until reportedAt + voteWindow
        uint64 unbondingPeriod; // validator unbonding
        uint16 quorumBps; // stake-weighted quorum of the total active validator stake
        uint16 slashBps; // share of the node's stake + unbonding slashed on a proven fault
        uint16 reporterRewardBps; // share of the slashed amount paid to the reporter; the rest goes to treasury
        uint16 reputationAlphaBps; // EMA weight of a new epoch score
        uint256 reportBond; // pulled from the reporter; returned if guilty, sent to treasury if rejected
        address treasury;
    }

    /// @notice Proof that a node answered a committed challenge wrongly.
    struct Evidence {
        bytes32 requestHash; // the challenge request
        bytes32 outputHash; // what the node answered
        bytes nodeSignature; // node operator's EIP-712 signature over Response(requestHash, outputHash)
        bytes32 expectedOutputHash; // the answer in the reporter's committed challenge set
        bytes32[] proof; // Merkle proof of leaf(requestHash, expectedOutputHash) against the reporter's root
    }

    /// @notice A node's validation history.
    struct NodeRecord {
        uint32 reputationBps;
        uint32 epochsScored;
        uint64 challengesPassed;
        uint64 challengesFailed;
        uint32 faults;
        uint256 totalSlashed;
    }

    /// @notice A fault report and its vote. `status`: 0 pending, 1 guilty, 2 rejected.
    struct FaultReport {
        address node;
        address reporter;
        uint64 epoch;
        uint64 reportedAt;
        bytes32 requestHash;
        uint256 guiltyStake;
        uint256 innocentStake;
        uint8 status;
    }

    /// @notice Revealed results of one (node, epoch).
    struct EpochResult {
        uint256 revealedStake; // Σ stake_i of the revealers
        uint256 weightedScore; // Σ stake_i * score_i
        uint64 passed; // Σ passed_i
        uint64 failed; // Σ failed_i
        bool finalized;
    }

    struct Validator {
        uint256 stake;
        uint256 unbonding;
        uint64 unbondingEndsAt;
        bool registered;
    }

    struct ResultCommit {
        bytes32 commitment;
        bool revealed;
    }

    uint8 public constant FAULT_PENDING = 0;
    uint8 public constant FAULT_GUILTY = 1;
    uint8 public constant FAULT_REJECTED = 2;
    /// @notice Reputation of a node that has never been scored.
    uint32 public constant NEUTRAL_REPUTATION_BPS = 5_000;
    /// @notice EIP-712 type hash of `Response(bytes32 requestHash,bytes32 outputHash)`.
    bytes32 public constant RESPONSE_TYPEHASH = keccak256("Response(bytes32 requestHash,bytes32 outputHash)");
    uint256 private constant BPS = 10_000;

    IERC20 public immutable token;
    NodeRegistry public immutable registry;
    /// @notice Start of epoch 0: the deployment timestamp.
    uint64 public immutable genesis;

    // Params live in immutables: the reveal that completes a quorum reads several of them.
    uint256 public immutable minValidatorStake;
    uint64 public immutable epochDuration;
    uint64 public immutable commitWindow;
    uint64 public immutable revealWindow;
    uint64 public immutable voteWindow;
    uint64 public immutable unbondingPeriod;
    uint16 public immutable quorumBps;
    uint16 public immutable slashBps;
    uint16 public immutable reporterRewardBps;
    uint16 public immutable reputationAlphaBps;
    uint256 public immutable reportBond;
    address public immutable treasury;

    /// @notice Σ stake of the validators that are active (stake >= minValidatorStake).
    uint256 public totalValidatorStake;
    uint256 private _faultReportCount;

    mapping(address validator => Validator) private _validators;
    mapping(address validator => mapping(uint64 epoch => bytes32 root)) private _challengeRoots;
    mapping(address validator => mapping(address node => mapping(uint64 epoch => ResultCommit))) private _commits;
    mapping(address node => mapping(uint64 epoch => EpochResult)) private _results;
    mapping(address node => NodeRecord) private _records;
    mapping(uint256 reportId => FaultReport) private _reports;
    mapping(uint256 reportId => mapping(address validator => bool)) private _voted;
    mapping(address node => mapping(bytes32 requestHash => uint256 reportId)) private _reportIds;

    event ValidatorRegistered(address indexed validator, uint256 stake);
    event ValidatorStakeAdded(address indexed validator, uint256 amount, uint256 newStake);
    event ValidatorUnbondRequested(address indexed validator, uint256 amount, uint64 unbondingEndsAt);
    event ValidatorWithdrawn(address indexed validator, uint256 amount);
    event ChallengeRootCommitted(address indexed validator, uint64 indexed epoch, bytes32 root);
    event ResultCommitted(address indexed validator, address indexed node, uint64 indexed epoch);
    event ResultRevealed(
        address indexed validator, address indexed node, uint64 indexed epoch, uint32 passed, uint32 failed
    );
    event ResultFinalized(
        address indexed node,
        uint64 indexed epoch,
        uint32 scoreBps,
        uint32 newReputationBps,
        uint64 passed,
        uint64 failed
    );
    event FaultReported(
        uint256 indexed reportId,
        address indexed node,
        address indexed reporter,
        uint64 epoch,
        bytes32 requestHash,
        bytes32 outputHash,
        bytes32 expectedOutputHash
    );
    event FaultVoted(uint256 indexed reportId, address indexed validator, bool guilty, uint256 stake);
    event FaultFinalized(uint256 indexed reportId, bool guilty, uint256 slashed, uint256 reporterReward);

    error InvalidParams();
    error ZeroAmount();
    error AlreadyRegistered();
    error NotRegistered();
    error StakeBelowMinimum(uint256 stake, uint256 minStake);
    error InsufficientStake(uint256 requested, uint256 stake);
    error NothingToWithdraw();
    error UnbondingNotElapsed(uint64 unbondingEndsAt);
    error NotValidator();
    error EpochPassed(uint64 epoch, uint64 currentEpoch);
    error ZeroRoot();
    error RootAlreadyCommitted();
    error NoChallengeRoot();
    error EpochNotEnded(uint64 endsAt);
    error CommitWindowClosed(uint64 closedAt);
    error ZeroCommitment();
    error AlreadyCommitted();
    error RevealWindowNotOpen(uint64 opensAt);
    error RevealWindowClosed(uint64 closedAt);
    error NoCommitment();
    error AlreadyRevealed();
    error CommitmentMismatch();
    error EmptyResult();
    error ResultAlreadyFinalized();
    error NodeNotRegistered(address node);
    error OutputMatchesExpected();
    error InvalidProof();
    error InvalidNodeSignature();
    error FaultAlreadyReported(uint256 reportId);
    error UnknownReport(uint256 reportId);
    error FaultAlreadyFinalized(uint256 reportId);
    error VotingClosed(uint256 reportId);
    error VotingOpen(uint256 reportId);
    error AlreadyVoted();

    modifier onlyActiveValidator() {
        if (!isValidator(msg.sender)) revert NotValidator();
        _;
    }

    /// @param token_ The staking token (BTT).
    /// @param registry_ The node registry; this contract must be set as its validation contract.
    /// @param params_ Parameters, see `Params`.
    constructor(IERC20 token_, NodeRegistry registry_, Params memory params_) EIP712("InferGrid Validation", "1") {
        if (
            params_.epochDuration == 0 || params_.commitWindow == 0 || params_.revealWindow == 0
                || params_.voteWindow == 0 || params_.quorumBps == 0 || params_.quorumBps > BPS
                || params_.slashBps > BPS || params_.reporterRewardBps > BPS || params_.reputationAlphaBps == 0
                || params_.reputationAlphaBps > BPS || params_.treasury == address(0)
        ) revert InvalidParams();
        token = token_;
        registry = registry_;
        genesis = uint64(block.timestamp);
        minValidatorStake = params_.minValidatorStake;
        epochDuration = params_.epochDuration;
        commitWindow = params_.commitWindow;
        revealWindow = params_.revealWindow;
        voteWindow = params_.voteWindow;
        unbondingPeriod = params_.unbondingPeriod;
        quorumBps = params_.quorumBps;
        slashBps = params_.slashBps;
        reporterRewardBps = params_.reporterRewardBps;
        reputationAlphaBps = params_.reputationAlphaBps;
        reportBond = params_.reportBond;
        treasury = params_.treasury;
    }

    // ---------------------------------------------------------------- validator stake

    /// @notice Registers the caller as a validator with `amount` stake, pulled from the caller.
    /// @param amount Initial stake; at least `minValidatorStake` and non-zero.
    function registerValidator(uint256 amount) external nonReentrant {
        Validator storage validator = _validators[msg.sender];
        if (validator.registered) revert AlreadyRegistered();
        if (amount == 0) revert ZeroAmount();
        if (amount < minValidatorStake) revert StakeBelowMinimum(amount, minValidatorStake);
        validator.registered = true;
        _setStake(validator, amount);
        emit ValidatorRegistered(msg.sender, amount);

        token.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Adds `amount` to the caller's validator stake, pulled from the caller.
    /// @param amount Amount in token wei; non-zero.
    function addValidatorStake(uint256 amount) external nonReentrant {
        Validator storage validator = _validators[msg.sender];
        if (!validator.registered) revert NotRegistered();
        if (amount == 0) revert ZeroAmount();
        uint256 newStake = validator.stake + amount;
        _setStake(validator, newStake);
        emit ValidatorStakeAdded(msg.sender, amount, newStake);

        token.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Moves `amount` of the caller's stake into unbonding and (re)starts the unbonding timer.
    ///         Stake dropping below `minValidatorStake` makes the validator inactive.
    /// @param amount Amount in token wei; non-zero and at most the stake.
    function requestValidatorUnbond(uint256 amount) external {
        Validator storage validator = _validators[msg.sender];
        if (!validator.registered) revert NotRegistered();
        if (amount == 0) revert ZeroAmount();
        if (amount > validator.stake) revert InsufficientStake(amount, validator.stake);
        _setStake(validator, validator.stake - amount);
        validator.unbonding += amount;
        uint64 endsAt = uint64(block.timestamp) + unbondingPeriod;
        validator.unbondingEndsAt = endsAt;
        emit ValidatorUnbondRequested(msg.sender, amount, endsAt);
    }

    /// @notice Pays out the caller's whole unbonding amount once the unbonding period has passed.
    function withdrawValidatorStake() external nonReentrant {
        Validator storage validator = _validators[msg.sender];
        uint256 amount = validator.unbonding;
        if (amount == 0) revert NothingToWithdraw();
        if (block.timestamp < validator.unbondingEndsAt) revert UnbondingNotElapsed(validator.unbondingEndsAt);
        validator.unbonding = 0;
        validator.unbondingEndsAt = 0;
        emit ValidatorWithdrawn(msg.sender, amount);

        token.safeTransfer(msg.sender, amount);
    }

    // ---------------------------------------------------------------- epochs and results

    /// @notice The epoch the chain is in now.
    /// @return The epoch number.
    function currentEpoch() public view returns (uint64) {
        return (uint64(block.timestamp) - genesis) / epochDuration;
    }

    /// @notice First timestamp after `epoch`.
    /// @param epoch The epoch.
    /// @return genesis + (epoch + 1) * epochDuration.
    function epochEnd(uint64 epoch) public view returns (uint64) {
        return genesis + (epoch + 1) * epochDuration;
    }

    /// @notice Commits the Merkle root of the caller's challenge set for `epoch` (the current or a later one).
    /// @param epoch The epoch.
    /// @param root OpenZeppelin MerkleProof root over leaves
    ///        keccak256(bytes.concat(keccak256(abi.encode(requestHash, expectedOutputHash)))).
    function commitChallengeRoot(uint64 epoch, bytes32 root) external onlyActiveValidator {
        uint64 current = currentEpoch();
        if (epoch < current) revert EpochPassed(epoch, current);
        if (root == bytes32(0)) revert ZeroRoot();
        if (_challengeRoots[msg.sender][epoch] != bytes32(0)) revert RootAlreadyCommitted();
        _challengeRoots[msg.sender][epoch] = root;
        emit ChallengeRootCommitted(msg.sender, epoch, root);
    }

    /// @notice The commitment a validator posts with `commitResult`. Binding the validator stops others from
    ///         copying a commitment they have seen.
    /// @param node The node the result is about.
    /// @param epoch The epoch.
    /// @param passed Challenges the node answered correctly.
    /// @param failed Challenges the node answered wrongly.
    /// @param salt Secret random salt.
    /// @param validator The committing validator.
    /// @return keccak256(abi.encode(node, epoch, passed, failed, salt, validator)).
    function resultCommitment(address node, uint64 epoch, uint32 passed, uint32 failed, bytes32 salt, address validator)
        public
        pure
        returns (bytes32)
    {
        return keccak256(abi.encode(node, epoch, passed, failed, salt, validator));
    }

    /// @notice Commits the caller's hidden result for `node` in `epoch`, between the epoch's end and the commit
    ///         deadline. The caller must have committed a challenge root for that epoch.
    /// @param node The node.
    /// @param epoch The finished epoch.
    /// @param commitment `resultCommitment(node, epoch, passed, failed, salt, msg.sender)`.
    function commitResult(address node, uint64 epoch, bytes32 commitment) external onlyActiveValidator {
        if (_challengeRoots[msg.sender][epoch] == bytes32(0)) revert NoChallengeRoot();
        uint64 endsAt = epochEnd(epoch);
        if (block.timestamp < endsAt) revert EpochNotEnded(endsAt);
        if (block.timestamp >= endsAt + commitWindow) revert CommitWindowClosed(endsAt + commitWindow);
        if (commitment == bytes32(0)) revert ZeroCommitment();
        ResultCommit storage commit = _commits[msg.sender][node][epoch];
        if (commit.commitment != bytes32(0)) revert AlreadyCommitted();
        commit.commitment = commitment;
        emit ResultCommitted(msg.sender, node, epoch);
    }

    /// @notice Reveals the caller's committed result and adds it, weighted by the caller's current stake. The
    ///         reveal that brings the revealed stake to quorum finalizes the node's epoch result.
    /// @param node The node.
    /// @param epoch The epoch.
    /// @param passed Challenges passed, as committed.
    /// @param failed Challenges failed, as committed; passed + failed > 0.
    /// @param salt The salt, as committed.
    function revealResult(address node, uint64 epoch, uint32 passed, uint32 failed, bytes32 salt)
        external
        onlyActiveValidator
    {
        uint64 opensAt = epochEnd(epoch) + commitWindow;
        if (block.timestamp < opensAt) revert RevealWindowNotOpen(opensAt);
        if (block.timestamp >= opensAt + revealWindow) revert RevealWindowClosed(opensAt + revealWindow);
        ResultCommit storage commit = _commits[msg.sender][node][epoch];
        if (commit.commitment == bytes32(0)) revert NoCommitment();
        if (commit.revealed) revert AlreadyRevealed();
        EpochResult storage result = _results[node][epoch];
        if (result.finalized) revert ResultAlreadyFinalized();
        if (commit.commitment != resultCommitment(node, epoch, passed, failed, salt, msg.sender)) {
            revert CommitmentMismatch();
        }
        uint256 count = uint256(passed) + failed;
        if (count == 0) revert EmptyResult();

        commit.revealed = true;
        uint256 stake = _validators[msg.sender].stake;
        uint256 revealedStake = result.revealedStake + stake;
        result.revealedStake = revealedStake;
        result.weightedScore += stake * (uint256(passed) * BPS / count);
        result.passed += passed;
        result.failed += failed;
        emit ResultRevealed(msg.sender, node, epoch, passed, failed);

        if (_reachesQuorum(revealedStake)) _finalizeResult(node, epoch, result);
    }

    // ---------------------------------------------------------------- faults

    /// @notice The EIP-712 digest a node's operator key signs for each answer it returns.
    /// @param requestHash Hash of the request.
    /// @param outputHash Hash of the node's output.
    /// @return The digest.
    function responseDigest(bytes32 requestHash, bytes32 outputHash) public view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(RESPONSE_TYPEHASH, requestHash, outputHash)));
    }

    /// @notice Reports a node that signed an answer differing from the expected answer in the caller's committed
    ///         challenge set for `epoch`. Pulls `reportBond`; the caller's stake counts as the first guilty vote.
    /// @param node The node's operator.
    /// @param epoch The epoch whose challenge root holds the challenge.
    /// @param evidence The challenge, the node's signed answer and the Merkle proof.
    /// @return reportId The new report's id (ids start at 1).
    function reportFault(address node, uint64 epoch, Evidence calldata evidence)
        external
        onlyActiveValidator
        nonReentrant
        returns (uint256 reportId)
    {
        bytes32 root = _challengeRoots[msg.sender][epoch];
        if (root == bytes32(0)) revert NoChallengeRoot();
        if (!registry.isRegistered(node)) revert NodeNotRegistered(node);
        if (evidence.outputHash == evidence.expectedOutputHash) revert OutputMatchesExpected();
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(evidence.requestHash, evidence.expectedOutputHash))));
        if (!MerkleProof.verifyCalldata(evidence.proof, root, leaf)) revert InvalidProof();
        (address signer, ECDSA.RecoverError error,) =
            ECDSA.tryRecover(responseDigest(evidence.requestHash, evidence.outputHash), evidence.nodeSignature);
        if (error != ECDSA.RecoverError.NoError || signer != node) revert InvalidNodeSignature();
        uint256 existing = _reportIds[node][evidence.requestHash];
        if (existing != 0) revert FaultAlreadyReported(existing);

        reportId = ++_faultReportCount;
        _reportIds[node][evidence.requestHash] = reportId;
        uint256 stake = _validators[msg.sender].stake;
        FaultReport storage report = _reports[reportId];
        report.node = node;
        report.reporter = msg.sender;
        report.epoch = epoch;
        report.reportedAt = uint64(block.timestamp);
        report.requestHash = evidence.requestHash;
        report.guiltyStake = stake;
        _voted[reportId][msg.sender] = true;
        emit FaultReported(
            reportId, node, msg.sender, epoch, evidence.requestHash, evidence.outputHash, evidence.expectedOutputHash
        );
        emit FaultVoted(reportId, msg.sender, true, stake);

        if (reportBond != 0) token.safeTransferFrom(msg.sender, address(this), reportBond);
        _resolve(reportId, report, false);
    }

    /// @notice Votes on a pending report with the caller's current stake. Finalizes guilty as soon as the guilty
    ///         stake reaches quorum and rejected as soon as quorum has become unreachable.
    /// @param reportId The report.
    /// @param guilty The caller's verdict.
    function voteOnFault(uint256 reportId, bool guilty) external onlyActiveValidator nonReentrant {
        FaultReport storage report = _pendingReport(reportId);
        if (block.timestamp >= report.reportedAt + voteWindow) revert VotingClosed(reportId);
        if (_voted[reportId][msg.sender]) revert AlreadyVoted();
        _voted[reportId][msg.sender] = true;
        uint256 stake = _validators[msg.sender].stake;
        if (guilty) report.guiltyStake += stake;
        else report.innocentStake += stake;
        emit FaultVoted(reportId, msg.sender, guilty, stake);

        _resolve(reportId, report, false);
    }

    /// @notice Settles a report whose vote window has passed: guilty if the guilty stake is a quorum of the current
    ///         total active stake, rejected otherwise. Anyone may call it.
    /// @param reportId The report.
    function finalizeFault(uint256 reportId) external nonReentrant {
        FaultReport storage report = _pendingReport(reportId);
        if (block.timestamp < report.reportedAt + voteWindow) revert VotingOpen(reportId);
        _resolve(reportId, report, true);
    }

    // ---------------------------------------------------------------- views

    /// @notice The deployment parameters.
    /// @return The parameters.
    function params() external view returns (Params memory) {
        return Params({
            minValidatorStake: minValidatorStake,
            epochDuration: epochDuration,
            commitWindow: commitWindow,
            revealWindow: revealWindow,
            voteWindow: voteWindow,
            unbondingPeriod: unbondingPeriod,
            quorumBps: quorumBps,
            slashBps: slashBps,
            reporterRewardBps: reporterRewardBps,
            reputationAlphaBps: reputationAlphaBps,
            reportBond: reportBond,
            treasury: treasury
        });
    }

    /// @notice A node's validation history.
    /// @param node The node's operator.
    /// @return The record (all zero when never scored nor faulted).
    function getNodeRecord(address node) external view returns (NodeRecord memory) {
        return _records[node];
    }

    /// @notice A node's reputation in basis points; `NEUTRAL_REPUTATION_BPS` until first scored or faulted.
    /// @param node The node's operator.
    /// @return The reputation.
    function reputationOf(address node) external view returns (uint32) {
        NodeRecord storage record = _records[node];
        return _hasReputation(record) ? record.reputationBps : NEUTRAL_REPUTATION_BPS;
    }

    /// @notice The revealed results of `node` in `epoch` so far.
    /// @param node The node's operator.
    /// @param epoch The epoch.
    /// @return The accumulated result.
    function getEpochResult(address node, uint64 epoch) external view returns (EpochResult memory) {
        return _results[node][epoch];
    }

    /// @notice A fault report.
    /// @param reportId The report.
    /// @return The report (all zero for an unknown id).
    function getFaultReport(uint256 reportId) external view returns (FaultReport memory) {
        return _reports[reportId];
    }

    /// @notice Number of fault reports; also the highest report id.
    /// @return The count.
    function faultReportCount() external view returns (uint256) {
        return _faultReportCount;
    }

    /// @notice Whether `validator` has voted on (or filed) `reportId`.
    /// @param reportId The report.
    /// @param validator The validator.
    /// @return True if it has.
    function hasVoted(uint256 reportId, address validator) external view returns (bool) {
        return _voted[reportId][validator];
    }

    /// @notice Bonded stake of `validator` (unbonding stake excluded).
    /// @param validator The validator.
    /// @return The stake.
    function validatorStake(address validator) external view returns (uint256) {
        return _validators[validator].stake;
    }

    /// @notice Unbonding stake of `validator` and when it can be withdrawn.
    /// @param validator The validator.
    /// @return amount The unbonding amount.
    /// @return endsAt The earliest withdrawal time.
    function validatorUnbonding(address validator) external view returns (uint256 amount, uint64 endsAt) {
        return (_validators[validator].unbonding, _validators[validator].unbondingEndsAt);
    }

    /// @notice Whether `validator` is active: its stake is non-zero and at least `minValidatorStake`.
    /// @param validator The validator.
    /// @return True when active.
    function isValidator(address validator) public view returns (bool) {
        return _isActiveStake(_validators[validator].stake);
    }

    /// @notice The challenge root `validator` committed for `epoch`.
    /// @param validator The validator.
    /// @param epoch The epoch.
    /// @return The root, or zero when none.
    function challengeRoot(address validator, uint64 epoch) external view returns (bytes32) {
        return _challengeRoots[validator][epoch];
    }

    // ---------------------------------------------------------------- internals

    /// @dev Sets a validator's stake and keeps `totalValidatorStake` equal to the sum of active stakes.
    function _setStake(Validator storage validator, uint256 newStake) private {
        uint256 oldStake = validator.stake;
        validator.stake = newStake;
        totalValidatorStake =
            totalValidatorStake - (_isActiveStake(oldStake) ? oldStake : 0) + (_isActiveStake(newStake) ? newStake : 0);
    }

    function _isActiveStake(uint256 stake) private view returns (bool) {
        return stake != 0 && stake >= minValidatorStake;
    }

    function _reachesQuorum(uint256 stake) private view returns (bool) {
        uint256 total = totalValidatorStake;
        return total != 0 && stake * BPS >= total * quorumBps;
    }

    /// @dev A node has a reputation once scored or faulted; before that it reads as neutral.
    function _hasReputation(NodeRecord storage record) private view returns (bool) {
        return record.epochsScored != 0 || record.faults != 0;
    }

    function _finalizeResult(address node, uint64 epoch, EpochResult storage result) private {
        result.finalized = true;
        // Each score_i <= BPS, so the stake-weighted mean fits in uint32.
        // forge-lint: disable-next-line(unsafe-typecast)
        uint32 score = uint32(result.weightedScore / result.revealedStake);
        NodeRecord storage record = _records[node];
        uint32 reputation = score;
        if (_hasReputation(record)) {
            uint256 blended =
                (uint256(record.reputationBps) * (BPS - reputationAlphaBps) + uint256(score) * reputationAlphaBps) / BPS;
            // A weighted mean of two values <= BPS stays <= BPS.
            // forge-lint: disable-next-line(unsafe-typecast)
            reputation = uint32(blended);
        }
        record.reputationBps = reputation;
        record.epochsScored += 1;
        uint64 passed = result.passed;
        uint64 failed = result.failed;
        record.challengesPassed += passed;
        record.challengesFailed += failed;
        emit ResultFinalized(node, epoch, score, reputation, passed, failed);
    }

    function _pendingReport(uint256 reportId) private view returns (FaultReport storage report) {
        report = _reports[reportId];
        if (report.node == address(0)) revert UnknownReport(reportId);
        if (report.status != FAULT_PENDING) revert FaultAlreadyFinalized(reportId);
    }

    /// @dev Convicts once the guilty stake is a quorum; rejects once a quorum is out of reach (the stake not yet
    ///      voted cannot lift it there) or, when `voteEnded`, whenever it is not guilty.
    function _resolve(uint256 reportId, FaultReport storage report, bool voteEnded) private {
        if (_reachesQuorum(report.guiltyStake)) {
            _convict(reportId, report);
        } else {
            uint256 total = totalValidatorStake;
            uint256 reachable = total > report.innocentStake ? total - report.innocentStake : 0;
            if (voteEnded || !_reachesQuorum(reachable)) _reject(reportId, report);
        }
    }

    function _convict(uint256 reportId, FaultReport storage report) private {
        report.status = FAULT_GUILTY;
        address node = report.node;
        NodeRegistry.Node memory bonded = registry.getNode(node);
        // The registry caps a slash at stake + unbonding, which `slashed` never exceeds, so it takes exactly this.
        uint256 slashed = (bonded.stake + bonded.unbonding) * slashBps / BPS;
        uint256 reward = slashed * reporterRewardBps / BPS;
        NodeRecord storage record = _records[node];
        record.reputationBps = 0;
        record.faults += 1;
        record.totalSlashed += slashed;
        emit FaultFinalized(reportId, true, slashed, reward);

        if (slashed != 0) registry.slash(node, slashed, address(this));
        registry.jail(node);
        if (reward + reportBond != 0) token.safeTransfer(report.reporter, reward + reportBond);
        if (slashed != reward) token.safeTransfer(treasury, slashed - reward);
    }

    function _reject(uint256 reportId, FaultReport storage report) private {
        report.status = FAULT_REJECTED;
        emit FaultFinalized(reportId, false, 0, 0);

        if (reportBond != 0) token.safeTransfer(treasury, reportBond);
    }
}
