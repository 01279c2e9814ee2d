//! Which steps travel together. A step for a peer waits while a message of steps is in flight
//! to that peer, to go with every step queued meanwhile in the next message; with nothing in
//! flight it goes at once, unless other sessions that sent steps to the peer lately have not
//! sent theirs yet, for which it waits a moment ([`LINGER`]). So the sessions of a busy
//! gateway fall into step with each other and each node sees them together (as vLLM's
//! scheduler steps all running sequences at once), while a lone session's steps never wait.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use libp2p::PeerId;

use super::codec::{MAX_DRAFT_GUESSES, MAX_MESSAGE_BYTES};
use super::steps::{MAX_STEPS_PER_MESSAGE, envelope_bytes};

/// Messages of steps in flight to one peer at a time.
const MESSAGES_IN_FLIGHT: usize = 1;

/// What one message may carry, requests and (expected) answers each: half the message limit,
/// so that an answer larger than expected still fits.
const MESSAGE_BUDGET: usize = MAX_MESSAGE_BYTES / 2;

/// The longest a step waits for the steps of other sessions expected with it: a fraction of
/// a hop's round trip, and the resolution of tokio's timer.
pub const LINGER: Duration = Duration::from_millis(1);

/// A session that sent a step to a peer this recently is expected to send the next one with
/// the others.
const ACTIVE: Duration = Duration::from_millis(50);

/// The most positions a step may run to share a message: a decode step, a verify step of the
/// longest draft, a Close, a short prompt. A longer prefill goes alone, so that the decode
/// steps of other sessions do not wait for its compute.
const MOST_SHARED_POSITIONS: usize = MAX_DRAFT_GUESSES as usize + 1;

/// A step's positions, its encoded request, and the size its answer is expected to have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepSize {
    pub positions: usize,
    pub request: usize,
    pub answer: usize,
}

impl StepSize {
    /// Whether a step may share a message at all; a longer or larger one travels alone on the
    /// single-step protocol.
    pub fn shares(&self) -> bool {
        let most = MESSAGE_BUDGET - envelope_bytes(1);
        self.positions <= MOST_SHARED_POSITIONS && self.request <= most && self.answer <= most
    }
}

#[derive(Debug)]
struct PeerQueue<T> {
    in_flight: usize,
    queued: VecDeque<(T, StepSize)>,
    /// The sessions that sent steps lately, with their latest: how many steps to expect.
    sessions: HashMap<u64, Instant>,
    /// When the queue goes even if not every expected step came.
    deadline: Option<Instant>,
}

impl<T> PeerQueue<T> {
    fn new() -> Self {
        Self { in_flight: 0, queued: VecDeque::new(), sessions: HashMap::new(), deadline: None }
    }

    /// The queued steps at the front that fit one message, if one may go now.
    fn next(&mut self) -> Option<Vec<T>> {
        if self.in_flight >= MESSAGES_IN_FLIGHT || self.queued.is_empty() {
            return None;
        }
        let (mut requests, mut answers) = (0, 0);
        let mut message = Vec::new();
        while let Some((_, size)) = self.queued.front() {
            let envelope = envelope_bytes(message.len() + 1);
            let full = message.len() == MAX_STEPS_PER_MESSAGE
                || (!message.is_empty()
                    && (requests + size.request + envelope > MESSAGE_BUDGET
                        || answers + size.answer + envelope > MESSAGE_BUDGET));
            if full {
                break;
            }
            requests += size.request;
            answers += size.answer;
            message.push(self.queued.pop_front().expect("looked at").0);
        }
        self.in_flight += 1;
        self.deadline = None;
        Some(message)
    }

    fn is_idle(&self) -> bool {
        self.in_flight == 0 && self.queued.is_empty()
    }
}

/// The steps waiting for each peer, and its messages in flight.
#[derive(Debug)]
pub(super) struct Outbox<T> {
    peers: HashMap<PeerId, PeerQueue<T>>,
}

impl<T> Default for Outbox<T> {
    fn default() -> Self {
        Self { peers: HashMap::new() }
    }
}

impl<T> Outbox<T> {
    /// A step of `session` for `peer` (which [`StepSize::shares`]); `last` when the session
    /// sends the peer nothing after it (its Close). The message to send now, or `None` when it
    /// waits for the message in flight, or for the other active sessions' steps until
    /// [`Outbox::next_deadline`].
    pub fn submit(
        &mut self,
        peer: PeerId,
        (session, last): (u64, bool),
        step: T,
        size: StepSize,
        now: Instant,
    ) -> Option<Vec<T>> {
        let queue = self.peers.entry(peer).or_insert_with(PeerQueue::new);
        queue.queued.push_back((step, size));
        queue.sessions.retain(|_, last| now.duration_since(*last) < ACTIVE);
        if last {
            queue.sessions.remove(&session);
        } else {
            queue.sessions.insert(session, now);
        }
        if queue.in_flight >= MESSAGES_IN_FLIGHT {
            return None;
        }
        if queue.queued.len() >= queue.sessions.len().clamp(1, MAX_STEPS_PER_MESSAGE) {
            return queue.next();
        }
        queue.deadline.get_or_insert(now + LINGER);
        None
    }

    /// A message to `peer` was answered or failed: the next message to send, if steps were
    /// queued meanwhile (they have waited already).
    pub fn answered(&mut self, peer: &PeerId) -> Option<Vec<T>> {
        let queue = self.peers.get_mut(peer)?;
        queue.in_flight = queue.in_flight.saturating_sub(1);
        let next = queue.next();
        if queue.is_idle() && queue.sessions.is_empty() {
            self.peers.remove(peer);
        }
        next
    }

    /// The messages whose wait for other sessions' steps is over at `now`.
    pub fn due(&mut self, now: Instant) -> Vec<(PeerId, Vec<T>)> {
        let mut due = Vec::new();
        for (peer, queue) in &mut self.peers {
            if queue.deadline.is_some_and(|deadline| deadline <= now)
                && let Some(message) = queue.next()
            {
                due.push((*peer, message));
            }
        }
        // Peers idle long enough to have no active session are forgotten.
        self.peers.retain(|_, queue| {
            queue.sessions.retain(|_, last| now.duration_since(*last) < ACTIVE);
            !(queue.is_idle() && queue.sessions.is_empty())
        });
        due
    }

    /// When the next queue stops waiting for other sessions' steps, if one waits.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.peers.values().filter_map(|queue| queue.deadline).min()
    }

    /// Whether steps to `peer` are in flight or waiting.
    pub fn is_busy(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|queue| !queue.is_idle())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: StepSize = StepSize { positions: 1, request: 100, answer: 2048 };

    #[test]
    fn a_lone_session_never_waits_and_steps_wait_for_the_message_in_flight() {
        let (mut outbox, peer, other) = (Outbox::default(), PeerId::random(), PeerId::random());
        let now = Instant::now();
        assert_eq!(outbox.submit(peer, (1, false), 'a', SMALL, now), Some(vec!['a']));
        assert!(outbox.is_busy(&peer));
        assert_eq!(outbox.submit(peer, (2, false), 'b', SMALL, now), None);
        assert_eq!(outbox.submit(peer, (3, false), 'c', SMALL, now), None);
        // Another peer's steps do not wait for this one's.
        assert_eq!(outbox.submit(other, (1, false), 'z', SMALL, now), Some(vec!['z']));
        assert_eq!(outbox.answered(&peer), Some(vec!['b', 'c']));
        assert_eq!(outbox.answered(&peer), None);
        assert!(!outbox.is_busy(&peer));
        assert_eq!(outbox.next_deadline(), None);
        assert_eq!(outbox.answered(&PeerId::random()), None, "an unknown peer changes nothing");
    }

    #[test]
    fn a_step_waits_a_moment_for_the_other_active_sessions() {
        let (mut outbox, peer) = (Outbox::default(), PeerId::random());
        let now = Instant::now();
        // Three sessions active: the first message carried one, the next two wait for it.
        assert_eq!(outbox.submit(peer, (1, false), 1, SMALL, now), Some(vec![1]));
        assert_eq!(outbox.submit(peer, (2, false), 2, SMALL, now), None);
        assert_eq!(outbox.submit(peer, (3, false), 3, SMALL, now), None);
        assert_eq!(outbox.answered(&peer), Some(vec![2, 3]));
        assert_eq!(outbox.answered(&peer), None);
        // Nothing in flight: session 1's next step waits for sessions 2 and 3.
        let later = now + Duration::from_millis(5);
        assert_eq!(outbox.submit(peer, (1, false), 4, SMALL, later), None);
        assert_eq!(outbox.next_deadline(), Some(later + LINGER));
        assert_eq!(outbox.submit(peer, (2, false), 5, SMALL, later), None);
        assert_eq!(
            outbox.submit(peer, (3, false), 6, SMALL, later),
            Some(vec![4, 5, 6]),
            "all came"
        );
        assert_eq!(outbox.next_deadline(), None);
        assert_eq!(outbox.answered(&peer), None);
        // Session 3 is gone without a word: the others go when the wait is over, not before.
        let later = later + Duration::from_millis(5);
        assert_eq!(outbox.submit(peer, (1, false), 7, SMALL, later), None);
        assert_eq!(outbox.submit(peer, (2, false), 8, SMALL, later), None);
        assert!(outbox.due(later).is_empty());
        assert_eq!(outbox.due(later + LINGER), vec![(peer, vec![7, 8])]);
        assert_eq!(outbox.answered(&peer), None);
        // Session 2 closes: it is not waited for any more.
        assert_eq!(outbox.submit(peer, (2, true), 0, SMALL, later), None);
        assert_eq!(outbox.submit(peer, (1, false), 1, SMALL, later), Some(vec![0, 1]));
        assert_eq!(outbox.answered(&peer), None);
        // A session silent for longer than ACTIVE is not waited for.
        let much_later = later + ACTIVE;
        assert_eq!(outbox.submit(peer, (1, false), 9, SMALL, much_later), Some(vec![9]));
        assert_eq!(outbox.answered(&peer), None);
        assert!(outbox.due(much_later + ACTIVE).is_empty());
        assert!(outbox.peers.is_empty(), "an idle peer is forgotten");
    }

    #[test]
    fn a_message_holds_at_most_its_count_and_budget() {
        let (mut outbox, peer) = (Outbox::default(), PeerId::random());
        let now = Instant::now();
        assert_eq!(outbox.submit(peer, (0, false), 0, SMALL, now), Some(vec![0]));
        let last = MAX_STEPS_PER_MESSAGE + 2;
        for step in 1..=last {
            assert_eq!(outbox.submit(peer, (step as u64, false), step, SMALL, now), None);
        }
        let first = outbox.answered(&peer).unwrap();
        assert_eq!(first, (1..=MAX_STEPS_PER_MESSAGE).collect::<Vec<_>>());
        assert_eq!(outbox.answered(&peer), Some(vec![last - 1, last]));
        assert_eq!(outbox.answered(&peer), None);

        // Answers expected to be large: as many as the budget holds, and at least one.
        let (mut outbox, peer) = (Outbox::default(), PeerId::random());
        let large = StepSize { positions: 1, request: 100, answer: MESSAGE_BUDGET / 3 };
        assert!(large.shares());
        assert_eq!(outbox.submit(peer, (0, false), 0, SMALL, now), Some(vec![0]));
        for step in 1..=4 {
            assert_eq!(outbox.submit(peer, (step as u64, false), step, large, now), None);
        }
        assert_eq!(outbox.answered(&peer), Some(vec![1, 2]));
        assert_eq!(outbox.answered(&peer), Some(vec![3, 4]));
        assert!(!StepSize { positions: 1, request: MESSAGE_BUDGET, answer: 0 }.shares());
        let prefill = StepSize { positions: MOST_SHARED_POSITIONS + 1, request: 100, answer: 100 };
        assert!(!prefill.shares(), "a long prefill goes alone");
    }
}
