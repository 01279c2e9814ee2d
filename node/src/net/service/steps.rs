//! The event loop's side of [`STEPS_PROTOCOL`]: steps to a peer that speaks it wait in the
//! [`Outbox`] and go together; messages of steps from others are handed to the node one step
//! at a time, as single requests are, and their answers go back together, in order.

use std::sync::Arc;
use std::time::Instant;

use libp2p::PeerId;
use libp2p::request_response::{self, ResponseChannel};
use tokio::sync::oneshot;

use super::{Command, EventLoop, Inbound, NetError, outbound_error};
use crate::net::codec::{CodecError, ErrorCode, InferRequest, InferResponse, StepKind, WireError};
use crate::net::outbox::StepSize;
use crate::net::steps::{AnswerRoom, STEPS_PROTOCOL, Steps};

/// Where the answer to one step goes.
pub(super) type StepReply = oneshot::Sender<Result<InferResponse, NetError>>;

impl EventLoop {
    /// Sends a step with others to `peer` when it speaks [`STEPS_PROTOCOL`] (as its identify
    /// said) and is not between connections; on its own otherwise.
    pub(super) fn send_step(
        &mut self,
        peer: PeerId,
        request: InferRequest,
        size: StepSize,
        reply: StepReply,
    ) {
        if !self.steps_peers.contains(&peer) || self.paths.draining(&peer) {
            return self.send_request(peer, request, reply);
        }
        let session = (request.session, request.kind == StepKind::Close);
        if let Some(message) =
            self.outbox.submit(peer, session, (request, reply), size, Instant::now())
        {
            self.send_steps(peer, message);
        }
    }

    /// Sends the messages whose wait for other sessions' steps is over.
    pub(super) fn send_lingering(&mut self) {
        for (peer, message) in self.outbox.due(Instant::now()) {
            self.send_steps(peer, message);
        }
    }

    fn send_steps(&mut self, peer: PeerId, message: Vec<(InferRequest, StepReply)>) {
        let (steps, replies): (Steps, Vec<StepReply>) =
            message.into_iter().map(|(request, reply)| (Ok(request), reply)).unzip();
        tracing::trace!(%peer, steps = steps.len(), "sending steps together");
        self.steps_sent.count(steps.len());
        let id = self.swarm.behaviour_mut().steps.send_request(&peer, Ok(steps));
        self.pending_steps.insert(id, (peer, replies));
    }

    /// A message of steps to `peer` is done with: the steps queued for it meanwhile go.
    fn next_steps(&mut self, peer: PeerId) {
        if let Some(message) = self.outbox.answered(&peer) {
            self.send_steps(peer, message);
        }
        self.drop_superseded(peer);
    }

    pub(super) async fn on_steps(
        &mut self,
        event: request_response::Event<Result<Steps, CodecError>, Vec<InferResponse>>,
    ) {
        match event {
            request_response::Event::Message {
                peer,
                message: request_response::Message::Request { request, channel, .. },
                ..
            } => {
                *self.answering.entry(peer).or_default() += 1;
                self.answer_steps(peer, request, channel).await;
            }
            request_response::Event::Message {
                peer,
                message: request_response::Message::Response { request_id, response },
                ..
            } => {
                if let Some((_, replies)) = self.pending_steps.remove(&request_id) {
                    deliver(peer, replies, response);
                }
                self.next_steps(peer);
            }
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                if let Some((_, replies)) = self.pending_steps.remove(&request_id) {
                    let error = outbound_error(peer, error, &STEPS_PROTOCOL);
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
                self.next_steps(peer);
            }
            request_response::Event::ResponseSent { peer, .. }
            | request_response::Event::InboundFailure { peer, .. } => self.answered(peer),
        }
    }

    /// Hands each step of a message to the node as a request of its own; their answers go
    /// back in one message once all are in. A message whose envelope does not decode is
    /// refused whole, with one `Malformed` answer.
    async fn answer_steps(
        &mut self,
        peer: PeerId,
        steps: Result<Steps, CodecError>,
        channel: ResponseChannel<Vec<InferResponse>>,
    ) {
        let steps = match steps {
            Ok(steps) => steps,
            Err(e) => {
                let refusal =
                    WireError::new(ErrorCode::Malformed, format!("malformed request: {e}"));
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .steps
                    .send_response(channel, vec![InferResponse::Err(refusal)]);
                return;
            }
        };
        let mut answers = Vec::with_capacity(steps.len());
        let room = Arc::new(AnswerRoom::default());
        for request in steps {
            let (reply, answer) = oneshot::channel();
            answers.push(answer);
            let room = Some(room.clone());
            let _ = self.inbound.send(Inbound::Request { peer, request, reply, room }).await;
        }
        let respond = self.respond.clone();
        tokio::spawn(async move {
            let mut responses = Vec::with_capacity(answers.len());
            for answer in answers {
                // A step the node dropped unanswered still has its place in the message.
                responses.push(answer.await.unwrap_or_else(|_| {
                    InferResponse::Err(WireError::new(
                        ErrorCode::Internal,
                        "the step was not answered",
                    ))
                }));
            }
            let _ = respond.send(Command::RespondSteps { channel, responses }).await;
        });
    }
}

/// Gives each step its answer; answers that do not match the steps in number fail them all,
/// as a garbled response would (none is known to be whose).
fn deliver(peer: PeerId, replies: Vec<StepReply>, answers: Vec<InferResponse>) {
    if answers.len() != replies.len() {
        let error = NetError::Request {
            peer,
            reason: format!("{} answers to a message of {} steps", answers.len(), replies.len()),
            answer_lost: false,
        };
        for reply in replies {
            let _ = reply.send(Err(error.clone()));
        }
        return;
    }
    for (reply, answer) in replies.into_iter().zip(answers) {
        let _ = reply.send(Ok(answer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::codec::Payload;

    fn answer(id: i64) -> InferResponse {
        InferResponse::Ok { output: Payload::Tokens(vec![id]), signature: [0; 65], account: None }
    }

    #[test]
    fn each_step_gets_its_own_answer_or_all_fail_together() {
        let peer = PeerId::random();
        let (replies, mut answers): (Vec<_>, Vec<_>) = (0..2).map(|_| oneshot::channel()).unzip();
        deliver(peer, replies, vec![answer(1), answer(2)]);
        assert_eq!(answers[0].try_recv().unwrap().unwrap(), answer(1));
        assert_eq!(answers[1].try_recv().unwrap().unwrap(), answer(2));

        // One answer to two steps: neither is known to be whose, and neither was lost.
        let (replies, answers): (Vec<_>, Vec<_>) = (0..2).map(|_| oneshot::channel()).unzip();
        deliver(peer, replies, vec![answer(1)]);
        for mut answer in answers {
            let error = answer.try_recv().unwrap().unwrap_err();
            assert!(!error.may_have_run(), "{error}");
            assert!(error.to_string().contains("1 answers to a message of 2 steps"), "{error}");
        }
    }
}
