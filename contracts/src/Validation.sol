// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {Checkpoints} from "@openzeppelin/contracts/utils/structs/Checkpoints.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {NodeRegistry} from "./NodeRegistry.sol";

/// @title InferGrid validation
/// @notice Staked validators commit a Merkle root of their secret challenge set before each epoch, mix the
///         challenges into normal traffic, then commit and reveal per-node results. The reveal that brings a
///         stake-weighted quorum finalizes the node's epoch score into its reputation. A validator holding a
///         node-signed answer that differs from a committed expected answer reports a fault; a stake-weighted guilty
///         quorum within the vote window slashes and jails the node and rewards the reporter, a rejected report
///         forfeits the reporter's bond. Validators that commit a result and never reveal it, or vote against a
///         quorum on a report, can be penalized by anyone.
/// @dev Every weight is a validator's active stake as of a fixed past point, kept in OpenZeppelin `Checkpoints`
///      (the `Votes` pattern, timestamps as keys): the last second of the epoch for results, the second before the
///      report for fault votes. Quorums compare against the total active stake at the same point, so stake that
///      moves afterwards changes neither the weights nor the threshold.
contract Validation is EIP712, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;
    using Checkpoints for Checkpoints.Trace208;

    /// @notice Deployment parameters; fixed for the contract's lifetime.
    struct Params {
        uint256 minValidatorStake;
        uint64 epochDuration; // epoch e = [genesis + e*epochDuration, genesis + (e+1)*epochDuration)
        uint64 commitWindow; // result commits for epoch e accepted until epochEnd(e) + commitWindow
        uint64 revealWindow; // reveals accepted in [epochEnd(e) + commitWindow, + revealWindow)
        uint64 voteWindow; // fault votes accepted until reportedAt + voteWindow
        uint64 unbondingPeriod; // validator unbonding; must exceed faultExposure()
        uint16 quorumBps; // stake-weighted quorum of the total active validator stake at the snapshot; > 5000
        uint16 slashBps; // share of the node's stake + unbonding slashed on a proven fault
        uint16 reporterRewardBps; // share of the slashed amount paid to the reporter; the rest goes to treasury
        uint16 reputationAlphaBps; // EMA weight of a new epoch score
        uint256 reportBond; // pulled from the reporter; returned if guilty, sent to treasury if rejected
        uint256 validatorPenalty; // taken from a validator's stake for a missed reveal or a vote against a verdict
        address treasury;
    }

    /// @notice Proof that a node answered a committed challenge wrongly.
    struct Evidence {
        bytes32 requestHash; // the challenge request
        bytes32 outputHash; // what the node answered
        // node operator's EIP-712 signature over Response(requestHash, outputHash, epoch) or, with an answerProof,
        // over Responses(root, epoch)
        bytes nodeSignature;
        // Merkle proof of answerLeaf(requestHash, outputHash) under the root the node signed as Responses(root, epoch)
        // for a message of several answers; empty when the node signed this answer alone as
        // Response(requestHash, outputHash, epoch)
        bytes32[] answerProof;
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

    /// @notice A validator's misconduct history.
    struct ValidatorRecord {
        uint32 missedReveals; // results committed and never revealed, in rounds that did not finalize
        uint32 dissents; // votes against a report's final verdict
        uint256 totalPenalized; // token wei taken as penalties
    }

    /// @notice A fault report and its vote. `status`: 0 pending, 1 guilty, 2 rejected (an innocent quorum, or no
    ///         quorum by the end of the window), 3 superseded (another report had already proven the same answer
    ///         wrong: nothing more is slashed, the bond is returned).
    struct FaultReport {
        address node;
        address reporter;
        uint64 epoch;
        uint64 reportedAt; // votes weigh stake as of reportedAt - 1 and end at reportedAt + voteWindow
        bytes32 requestHash;
        uint256 snapshotTotal; // total active validator stake as of reportedAt - 1
        uint256 guiltyStake;
        uint256 innocentStake;
        uint8 status;
    }

    /// @notice Revealed results of one (node, epoch).
    struct EpochResult {
        uint256 revealedStake; // Σ stake_i of the revealers, as of the epoch's last second
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
        bool penalized;
    }

    uint8 public constant FAULT_PENDING = 0;
    uint8 public constant FAULT_GUILTY = 1;
    uint8 public constant FAULT_REJECTED = 2;
    uint8 public constant FAULT_SUPERSEDED = 3;
    uint8 public constant VOTE_NONE = 0;
    uint8 public constant VOTE_GUILTY = 1;
    uint8 public constant VOTE_INNOCENT = 2;
    /// @notice Reputation of a node that has never been scored.
    uint32 public constant NEUTRAL_REPUTATION_BPS = 5_000;
    /// @notice EIP-712 type hash of `Response(bytes32 requestHash,bytes32 outputHash,uint64 epoch)`.
    bytes32 public constant RESPONSE_TYPEHASH =
        keccak256("Response(bytes32 requestHash,bytes32 outputHash,uint64 epoch)");
    /// @notice EIP-712 type hash of `Responses(bytes32 root,uint64 epoch)`: a node's one signature over the Merkle
    ///         root of the answers (`answerLeaf`) to a message of several steps.
    bytes32 public constant RESPONSES_TYPEHASH = keccak256("Responses(bytes32 root,uint64 epoch)");
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
    uint256 public immutable validatorPenalty;
    address public immutable treasury;

    uint256 private _faultReportCount;

    mapping(address validator => Validator) private _validators;
    /// @dev Active stake (0 below `minValidatorStake`) per validator and in total, by timestamp.
    mapping(address validator => Checkpoints.Trace208) private _activeStake;
    Checkpoints.Trace208 private _totalActiveStake;
    mapping(address validator => ValidatorRecord) private _validatorRecords;
    mapping(address validator => mapping(uint64 epoch => bytes32 root)) private _challengeRoots;
    mapping(address validator => mapping(address node => mapping(uint64 epoch => ResultCommit))) private _commits;
    mapping(address node => mapping(uint64 epoch => EpochResult)) private _results;
    mapping(address node => NodeRecord) private _records;
    mapping(uint256 reportId => FaultReport) private _reports;
    mapping(uint256 reportId => mapping(address validator => uint8 vote)) private _votes;
    mapping(uint256 reportId => mapping(address validator => bool)) private _dissentPenalized;
    mapping(address node => mapping(bytes32 requestHash => mapping(address reporter => uint256 reportId))) private
        _reportIds;
    /// @dev The guilty report that proved (node, requestHash); a fault is slashed once.
    mapping(address node => mapping(bytes32 requestHash => uint256 reportId)) private _provenBy;

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
    event MissedRevealPenalized(address indexed validator, address indexed node, uint64 indexed epoch, uint256 amount);
    event DissentPenalized(uint256 indexed reportId, address indexed validator, uint256 amount);

    error InvalidParams();
    error TokenMismatch();
    error UnbondingTooShort(uint64 unbondingPeriod, uint64 faultExposure);
    error ZeroAmount();
    error AlreadyRegistered();
    error NotRegistered();
    error StakeBelowMinimum(uint256 stake, uint256 minStake);
    error InsufficientStake(uint256 requested, uint256 stake);
    error NothingToWithdraw();
    error UnbondingNotElapsed(uint64 unbondingEndsAt);
    error NotValidator();
    error NoStakeAtSnapshot(uint48 snapshot);
    error FutureLookup(uint48 timepoint, uint48 now);
    error EpochStarted(uint64 epoch, uint64 currentEpoch);
    error EpochNotStarted(uint64 epoch, uint64 currentEpoch);
    error ZeroRoot();
    error RootAlreadyCommitted();
    error NoChallengeRoot();
    error EpochNotEnded(uint64 endsAt);
    error CommitWindowClosed(uint64 closedAt);
    error ZeroCommitment();
    error AlreadyCommitted();
    error RevealWindowNotOpen(uint64 opensAt);
    error RevealWindowClosed(uint64 closedAt);
    error RevealWindowOpen(uint64 closesAt);
    error ReportWindowClosed(uint64 closedAt);
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
    error FaultAlreadyProven(uint256 reportId);
    error UnknownReport(uint256 reportId);
    error FaultAlreadyFinalized(uint256 reportId);
    error VotingClosed(uint256 reportId);
    error VotingOpen(uint256 reportId);
    error AlreadyVoted();
    error NotPenalizable();
    error AlreadyPenalized();

    modifier onlyActiveValidator() {
        if (!isValidator(msg.sender)) revert NotValidator();
        _;
    }

    /// @param token_ The staking token (BTT); must be the registry's token.
    /// @param registry_ The node registry; this contract must be set as its validation contract.
    /// @param params_ Parameters, see `Params`.
    constructor(IERC20 token_, NodeRegistry registry_, Params memory params_) EIP712("InferGrid Validation", "1") {
        if (
            params_.epochDuration == 0 || params_.commitWindow == 0 || params_.revealWindow == 0
                || params_.voteWindow == 0 || params_.quorumBps <= BPS / 2 || params_.quorumBps > BPS
                || params_.slashBps > BPS || params_.reporterRewardBps > BPS || params_.reputationAlphaBps == 0
                || params_.reputationAlphaBps > BPS || params_.treasury == address(0)
        ) revert InvalidParams();
        if (address(registry_.token()) != address(token_)) revert TokenMismatch();
        uint64 exposure = params_.epochDuration + params_.commitWindow + params_.revealWindow + params_.voteWindow;
        // Votes and reveals must stay penalizable: the stake behind them cannot leave before they are settled.
        if (params_.unbondingPeriod <= exposure) revert UnbondingTooShort(params_.unbondingPeriod, exposure);
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
        validatorPenalty = params_.validatorPenalty;
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
        _setStake(msg.sender, validator, amount);
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
        _setStake(msg.sender, validator, newStake);
        emit ValidatorStakeAdded(msg.sender, amount, newStake);

        token.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Moves `amount` of the caller's stake into unbonding and (re)starts the unbonding timer. Stake
    ///         dropping below `minValidatorStake` makes the validator inactive. Weights already fixed at past
    ///         snapshots keep counting, and unbonding stake stays penalizable until withdrawn.
    /// @param amount Amount in token wei; non-zero and at most the stake.
    function requestValidatorUnbond(uint256 amount) external {
        Validator storage validator = _validators[msg.sender];
        if (!validator.registered) revert NotRegistered();
        if (amount == 0) revert ZeroAmount();
        if (amount > validator.stake) revert InsufficientStake(amount, validator.stake);
        _setStake(msg.sender, validator, validator.stake - amount);
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

    /// @notice The longest time from a node's answer to the end of the vote on a report about it: an answer early
    ///         in epoch e can be reported until the reveal window of e closes, and voted on for `voteWindow` more.
    ///         Node and validator unbonding periods must exceed it.
    /// @return epochDuration + commitWindow + revealWindow + voteWindow, in seconds.
    function faultExposure() public view returns (uint64) {
        return epochDuration + commitWindow + revealWindow + voteWindow;
    }

    /// @notice Commits the Merkle root of the caller's challenge set for a future `epoch`. A root is therefore
    ///         always fixed before any answer it can convict was given.
    /// @param epoch An epoch after the current one.
    /// @param root OpenZeppelin MerkleProof root over leaves
    ///        keccak256(bytes.concat(keccak256(abi.encode(requestHash, expectedOutputHash)))).
    function commitChallengeRoot(uint64 epoch, bytes32 root) external onlyActiveValidator {
        uint64 current = currentEpoch();
        if (epoch <= current) revert EpochStarted(epoch, current);
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
    ///         deadline. The caller must have committed a challenge root for that epoch and held active stake at the
    ///         epoch's last second, which is the weight its reveal will carry.
    /// @param node The node.
    /// @param epoch The finished epoch.
    /// @param commitment `resultCommitment(node, epoch, passed, failed, salt, msg.sender)`.
    function commitResult(address node, uint64 epoch, bytes32 commitment) external {
        if (_challengeRoots[msg.sender][epoch] == bytes32(0)) revert NoChallengeRoot();
        uint64 endsAt = epochEnd(epoch);
        if (block.timestamp < endsAt) revert EpochNotEnded(endsAt);
        if (block.timestamp >= endsAt + commitWindow) revert CommitWindowClosed(endsAt + commitWindow);
        if (commitment == bytes32(0)) revert ZeroCommitment();
        uint48 snapshot = _secondBefore(endsAt);
        if (_activeStake[msg.sender].upperLookupRecent(snapshot) == 0) revert NoStakeAtSnapshot(snapshot);
        ResultCommit storage commit = _commits[msg.sender][node][epoch];
        if (commit.commitment != bytes32(0)) revert AlreadyCommitted();
        commit.commitment = commitment;
        emit ResultCommitted(msg.sender, node, epoch);
    }

    /// @notice Reveals the caller's committed result and adds it, weighted by the caller's active stake at the
    ///         epoch's last second. The reveal that brings the revealed stake to a quorum of the total active stake
    ///         at that same second finalizes the node's epoch result.
    /// @param node The node.
    /// @param epoch The epoch.
    /// @param passed Challenges passed, as committed.
    /// @param failed Challenges failed, as committed; passed + failed > 0.
    /// @param salt The salt, as committed.
    function revealResult(address node, uint64 epoch, uint32 passed, uint32 failed, bytes32 salt) external {
        uint64 endsAt = epochEnd(epoch);
        uint64 opensAt = endsAt + commitWindow;
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
        // `commitResult` checked this weight is non-zero; a past checkpoint never changes.
        uint48 snapshot = _secondBefore(endsAt);
        uint256 stake = _activeStake[msg.sender].upperLookupRecent(snapshot);
        uint256 revealedStake = result.revealedStake + stake;
        result.revealedStake = revealedStake;
        result.weightedScore += stake * (uint256(passed) * BPS / count);
        result.passed += passed;
        result.failed += failed;
        emit ResultRevealed(msg.sender, node, epoch, passed, failed);

        if (_reachesQuorum(revealedStake, _totalActiveStake.upperLookupRecent(snapshot))) {
            _finalizeResult(node, epoch, result);
        }
    }

    /// @notice Penalizes `validator` for committing a result about (`node`, `epoch`) and never revealing it, when
    ///         the round did not finalize (withholding a reveal is how a minority would stall a quorum). Anyone may
    ///         call it once the reveal window has closed; `validatorPenalty` goes to the treasury.
    /// @param validator The validator.
    /// @param node The node of the result.
    /// @param epoch The epoch of the result.
    function penalizeMissedReveal(address validator, address node, uint64 epoch) external nonReentrant {
        uint64 closesAt = epochEnd(epoch) + commitWindow + revealWindow;
        if (block.timestamp < closesAt) revert RevealWindowOpen(closesAt);
        ResultCommit storage commit = _commits[validator][node][epoch];
        if (commit.commitment == bytes32(0) || commit.revealed || _results[node][epoch].finalized) {
            revert NotPenalizable();
        }
        if (commit.penalized) revert AlreadyPenalized();
        commit.penalized = true;
        _validatorRecords[validator].missedReveals += 1;
        emit MissedRevealPenalized(validator, node, epoch, _penalize(validator));
    }

    // ---------------------------------------------------------------- faults

    /// @notice The EIP-712 digest a node's operator key signs for an answer it returns alone.
    /// @param requestHash Hash of the request.
    /// @param outputHash Hash of the node's output.
    /// @param epoch The epoch in which the node answered.
    /// @return The digest.
    function responseDigest(bytes32 requestHash, bytes32 outputHash, uint64 epoch) public view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(RESPONSE_TYPEHASH, requestHash, outputHash, epoch)));
    }

    /// @notice The EIP-712 digest a node's operator key signs, once, for the answers to a message of several steps.
    /// @param root Root of the OpenZeppelin standard Merkle tree (sorted-pair keccak) over the answers' `answerLeaf`s.
    /// @param epoch The epoch in which the node answered.
    /// @return The digest.
    function responsesDigest(bytes32 root, uint64 epoch) public view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(RESPONSES_TYPEHASH, root, epoch)));
    }

    /// @notice The leaf of one answer in the tree a node signs over a message of answers: OpenZeppelin's
    ///         double-hashed standard leaf of `(requestHash, outputHash)`, like a challenge-set leaf.
    /// @param requestHash Hash of the request.
    /// @param outputHash Hash of the node's output.
    /// @return The leaf.
    function answerLeaf(bytes32 requestHash, bytes32 outputHash) public pure returns (bytes32) {
        return keccak256(bytes.concat(keccak256(abi.encode(requestHash, outputHash))));
    }

    /// @notice Reports a node that, during `epoch`, signed an answer differing from the expected answer in the
    ///         caller's challenge set for `epoch` (committed before the epoch began). Accepted until the epoch's
    ///         reveal window closes. Pulls `reportBond`; the caller's stake counts as the first guilty vote.
    /// @param node The node's operator.
    /// @param epoch The epoch the node signed into its answer, whose challenge root holds the challenge.
    /// @param evidence The challenge, the node's signed answer (signed alone as a `Response`, or with the proof of
    ///        its `answerLeaf` under the root of a `Responses` signed over a message of several answers) and the
    ///        Merkle proof of the expected answer against the caller's challenge root.
    /// @return reportId The new report's id (ids start at 1).
    function reportFault(address node, uint64 epoch, Evidence calldata evidence)
        external
        nonReentrant
        returns (uint256 reportId)
    {
        (uint48 snapshot, uint256 stake) = _checkReport(node, epoch, evidence);
        reportId = ++_faultReportCount;
        _reportIds[node][evidence.requestHash][msg.sender] = reportId;
        FaultReport storage report = _reports[reportId];
        report.node = node;
        report.reporter = msg.sender;
        report.epoch = epoch;
        report.reportedAt = uint64(block.timestamp);
        report.requestHash = evidence.requestHash;
        report.snapshotTotal = _totalActiveStake.upperLookupRecent(snapshot);
        report.guiltyStake = stake;
        _votes[reportId][msg.sender] = VOTE_GUILTY;
        emit FaultReported(
            reportId, node, msg.sender, epoch, evidence.requestHash, evidence.outputHash, evidence.expectedOutputHash
        );
        emit FaultVoted(reportId, msg.sender, true, stake);

        if (reportBond != 0) token.safeTransferFrom(msg.sender, address(this), reportBond);
        _resolve(reportId, report);
    }

    /// @notice Votes on a pending report with the caller's active stake as of the second before the report.
    ///         Convicts as soon as the guilty stake reaches a quorum of the total at that snapshot and rejects as
    ///         soon as the innocent stake does.
    /// @param reportId The report.
    /// @param guilty The caller's verdict.
    function voteOnFault(uint256 reportId, bool guilty) external nonReentrant {
        FaultReport storage report = _pendingReport(reportId);
        if (block.timestamp >= report.reportedAt + voteWindow) revert VotingClosed(reportId);
        if (_votes[reportId][msg.sender] != VOTE_NONE) revert AlreadyVoted();
        uint48 snapshot = _secondBefore(report.reportedAt);
        uint256 stake = _activeStake[msg.sender].upperLookupRecent(snapshot);
        if (stake == 0) revert NoStakeAtSnapshot(snapshot);
        _votes[reportId][msg.sender] = guilty ? VOTE_GUILTY : VOTE_INNOCENT;
        if (guilty) report.guiltyStake += stake;
        else report.innocentStake += stake;
        emit FaultVoted(reportId, msg.sender, guilty, stake);

        _resolve(reportId, report);
    }

    /// @notice Closes a report whose vote window has passed without a quorum either way. The weights and the total
    ///         are fixed at the report's snapshot, so nothing after the window can turn it guilty: it is rejected
    ///         (not proven; the bond goes to the treasury), or superseded with the bond returned when another report
    ///         has proven the same answer wrong. Anyone may call it.
    /// @param reportId The report.
    function finalizeFault(uint256 reportId) external nonReentrant {
        FaultReport storage report = _pendingReport(reportId);
        if (block.timestamp < report.reportedAt + voteWindow) revert VotingOpen(reportId);
        if (_provenBy[report.node][report.requestHash] != 0) _supersede(reportId, report);
        else _reject(reportId, report);
    }

    /// @notice Penalizes `validator` for a vote that a quorum of the report's snapshot stake voted against: innocent
    ///         when the guilty stake reached a quorum, guilty when the innocent stake did. A report that merely
    ///         lacked a quorum (blocked or expired) penalizes nobody, so a blocking minority cannot fine the voters
    ///         it outlasted. The reporter is exempt: its bond answers for its report. Anyone may call it;
    ///         `validatorPenalty` goes to the treasury.
    /// @param reportId The report.
    /// @param validator A validator that voted on it.
    function penalizeDissent(uint256 reportId, address validator) external nonReentrant {
        FaultReport storage report = _reports[reportId];
        if (report.node == address(0)) revert UnknownReport(reportId);
        uint8 vote = _votes[reportId][validator];
        if (vote == VOTE_NONE || validator == report.reporter) revert NotPenalizable();
        uint256 opposing = vote == VOTE_GUILTY ? report.innocentStake : report.guiltyStake;
        if (!_reachesQuorum(opposing, report.snapshotTotal)) revert NotPenalizable();
        if (_dissentPenalized[reportId][validator]) revert AlreadyPenalized();
        _dissentPenalized[reportId][validator] = true;
        _validatorRecords[validator].dissents += 1;
        emit DissentPenalized(reportId, validator, _penalize(validator));
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
            validatorPenalty: validatorPenalty,
            treasury: treasury
        });
    }

    /// @notice A node's validation history.
    /// @param node The node's operator.
    /// @return The record (all zero when never scored nor faulted).
    function getNodeRecord(address node) external view returns (NodeRecord memory) {
        return _records[node];
    }

    /// @notice A validator's missed reveals, dissents and penalties.
    /// @param validator The validator.
    /// @return The record.
    function getValidatorRecord(address validator) external view returns (ValidatorRecord memory) {
        return _validatorRecords[validator];
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

    /// @notice The report `reporter` filed about `node`'s answer to `requestHash`.
    /// @param node The node.
    /// @param requestHash The challenge request.
    /// @param reporter The reporter.
    /// @return The report id, 0 when none.
    function reportIdOf(address node, bytes32 requestHash, address reporter) external view returns (uint256) {
        return _reportIds[node][requestHash][reporter];
    }

    /// @notice The guilty report that proved `node`'s answer to `requestHash` wrong.
    /// @param node The node.
    /// @param requestHash The challenge request.
    /// @return The report id, 0 when not proven.
    function provenBy(address node, bytes32 requestHash) external view returns (uint256) {
        return _provenBy[node][requestHash];
    }

    /// @notice Whether `validator` has voted on (or filed) `reportId`.
    /// @param reportId The report.
    /// @param validator The validator.
    /// @return True if it has.
    function hasVoted(uint256 reportId, address validator) external view returns (bool) {
        return _votes[reportId][validator] != VOTE_NONE;
    }

    /// @notice How `validator` voted on `reportId`: `VOTE_NONE`, `VOTE_GUILTY` (also the reporter) or
    ///         `VOTE_INNOCENT`.
    /// @param reportId The report.
    /// @param validator The validator.
    /// @return The vote.
    function voteOf(uint256 reportId, address validator) external view returns (uint8) {
        return _votes[reportId][validator];
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

    /// @notice Σ stake of the validators that are active now (stake >= minValidatorStake).
    /// @return The total.
    function totalValidatorStake() external view returns (uint256) {
        return _totalActiveStake.latest();
    }

    /// @notice The active stake (0 when below `minValidatorStake`) `validator` held at the end of second
    ///         `timepoint`: its weight in rounds whose snapshot is `timepoint`.
    /// @param validator The validator.
    /// @param timepoint A past timestamp.
    /// @return The stake.
    function validatorStakeAt(address validator, uint48 timepoint) external view returns (uint256) {
        _requirePast(timepoint);
        return _activeStake[validator].upperLookupRecent(timepoint);
    }

    /// @notice The total active validator stake at the end of second `timepoint`.
    /// @param timepoint A past timestamp.
    /// @return The total.
    function totalValidatorStakeAt(uint48 timepoint) external view returns (uint256) {
        _requirePast(timepoint);
        return _totalActiveStake.upperLookupRecent(timepoint);
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

    /// @dev Sets a validator's stake and checkpoints its active stake and the total when they change.
    function _setStake(address account, Validator storage validator, uint256 newStake) private {
        uint256 oldActive = _activeOf(validator.stake);
        uint256 newActive = _activeOf(newStake);
        validator.stake = newStake;
        if (oldActive == newActive) return;
        uint48 now_ = SafeCast.toUint48(block.timestamp);
        _activeStake[account].push(now_, SafeCast.toUint208(newActive));
        _totalActiveStake.push(now_, SafeCast.toUint208(_totalActiveStake.latest() - oldActive + newActive));
    }

    /// @dev Takes up to `validatorPenalty` from `account`, bonded stake first, and sends it to the treasury.
    function _penalize(address account) private returns (uint256 amount) {
        Validator storage validator = _validators[account];
        uint256 stake = validator.stake;
        uint256 unbonding = validator.unbonding;
        amount = validatorPenalty;
        if (amount > stake + unbonding) amount = stake + unbonding;
        uint256 fromStake = amount < stake ? amount : stake;
        if (fromStake != 0) _setStake(account, validator, stake - fromStake);
        validator.unbonding = unbonding - (amount - fromStake);
        _validatorRecords[account].totalPenalized += amount;

        if (amount != 0) token.safeTransfer(treasury, amount);
    }

    function _activeOf(uint256 stake) private view returns (uint256) {
        return _isActiveStake(stake) ? stake : 0;
    }

    function _isActiveStake(uint256 stake) private view returns (bool) {
        return stake != 0 && stake >= minValidatorStake;
    }

    function _reachesQuorum(uint256 stake, uint256 total) private view returns (bool) {
        return total != 0 && stake * BPS >= total * quorumBps;
    }

    /// @dev The snapshot of a round starting or ending at `timestamp`: the end of the second before it, final
    ///      since no transaction can run at an earlier timestamp any more.
    function _secondBefore(uint64 timestamp) private pure returns (uint48) {
        return SafeCast.toUint48(timestamp - 1);
    }

    function _requirePast(uint48 timepoint) private view {
        uint48 now_ = SafeCast.toUint48(block.timestamp);
        if (timepoint >= now_) revert FutureLookup(timepoint, now_);
    }

    /// @dev A node has a reputation once scored or faulted; before that it reads as neutral.
    function _hasReputation(NodeRecord storage record) private view returns (bool) {
        return record.epochsScored != 0 || record.faults != 0;
    }

    /// @dev Checks everything `reportFault` requires of the caller's report and returns the snapshot and the
    ///      caller's weight at it.
    function _checkReport(address node, uint64 epoch, Evidence calldata evidence)
        private
        view
        returns (uint48 snapshot, uint256 stake)
    {
        uint64 current = currentEpoch();
        if (epoch > current) revert EpochNotStarted(epoch, current);
        uint64 closesAt = epochEnd(epoch) + commitWindow + revealWindow;
        if (block.timestamp >= closesAt) revert ReportWindowClosed(closesAt);
        snapshot = _secondBefore(uint64(block.timestamp));
        stake = _activeStake[msg.sender].upperLookupRecent(snapshot);
        if (stake == 0) revert NoStakeAtSnapshot(snapshot);
        _checkEvidence(node, epoch, evidence);
        uint256 existing = _reportIds[node][evidence.requestHash][msg.sender];
        if (existing != 0) revert FaultAlreadyReported(existing);
        uint256 proven = _provenBy[node][evidence.requestHash];
        if (proven != 0) revert FaultAlreadyProven(proven);
    }

    /// @dev Checks that `node` is registered and signed, for `epoch`, an answer other than the one the caller's
    ///      root for `epoch` commits to. The node signed the answer alone (`Response`, empty `answerProof`) or
    ///      signed the root its `answerProof` folds `answerLeaf` into (`Responses`, non-empty `answerProof`).
    function _checkEvidence(address node, uint64 epoch, Evidence calldata evidence) private view {
        bytes32 root = _challengeRoots[msg.sender][epoch];
        if (root == bytes32(0)) revert NoChallengeRoot();
        if (!registry.isRegistered(node)) revert NodeNotRegistered(node);
        if (evidence.outputHash == evidence.expectedOutputHash) revert OutputMatchesExpected();
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(evidence.requestHash, evidence.expectedOutputHash))));
        if (!MerkleProof.verifyCalldata(evidence.proof, root, leaf)) revert InvalidProof();
        bytes32 digest = evidence.answerProof.length == 0
            ? responseDigest(evidence.requestHash, evidence.outputHash, epoch)
            : responsesDigest(
                MerkleProof.processProofCalldata(
                    evidence.answerProof, answerLeaf(evidence.requestHash, evidence.outputHash)
                ),
                epoch
            );
        (address signer, ECDSA.RecoverError error,) = ECDSA.tryRecover(digest, evidence.nodeSignature);
        if (error != ECDSA.RecoverError.NoError || signer != node) revert InvalidNodeSignature();
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

    /// @dev Convicts once the guilty stake is a quorum of the snapshot total, rejects once the innocent stake is.
    ///      With `quorumBps > 5000` at most one of the two can happen.
    function _resolve(uint256 reportId, FaultReport storage report) private {
        uint256 total = report.snapshotTotal;
        if (_reachesQuorum(report.guiltyStake, total)) _convict(reportId, report);
        else if (_reachesQuorum(report.innocentStake, total)) _reject(reportId, report);
    }

    function _convict(uint256 reportId, FaultReport storage report) private {
        address node = report.node;
        bytes32 requestHash = report.requestHash;
        if (_provenBy[node][requestHash] != 0) {
            // Another reporter's report about the same answer convicted first: the fault is slashed once.
            _supersede(reportId, report);
            return;
        }
        report.status = FAULT_GUILTY;
        _provenBy[node][requestHash] = reportId;
        // The registry caps a slash at stake + unbonding, which `slashed` never exceeds, so it takes exactly this.
        uint256 slashed = registry.slashableStake(node) * slashBps / BPS;
        uint256 reward = slashed * reporterRewardBps / BPS;
        NodeRecord storage record = _records[node];
        record.reputationBps = 0;
        record.faults += 1;
        record.totalSlashed += slashed;
        emit FaultFinalized(reportId, true, slashed, reward);

        if (slashed != 0) registry.slash(node, slashed, address(this));
        // A node that withdrew everything and deregistered has nothing left to jail.
        if (registry.isRegistered(node)) registry.jail(node);
        if (reward + reportBond != 0) token.safeTransfer(report.reporter, reward + reportBond);
        if (slashed != reward) token.safeTransfer(treasury, slashed - reward);
    }

    /// @dev Closes a report about an answer another report has already proven wrong: no slash, the bond returns.
    function _supersede(uint256 reportId, FaultReport storage report) private {
        report.status = FAULT_SUPERSEDED;
        emit FaultFinalized(reportId, true, 0, 0);

        if (reportBond != 0) token.safeTransfer(report.reporter, reportBond);
    }

    function _reject(uint256 reportId, FaultReport storage report) private {
        report.status = FAULT_REJECTED;
        emit FaultFinalized(reportId, false, 0, 0);

        if (reportBond != 0) token.safeTransfer(treasury, reportBond);
    }
}
