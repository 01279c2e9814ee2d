//! The event loop's side of [`STEPS_PROTOCOL`]: steps to a peer that speaks it wait in the
//! [`Outbox`] and go together, and each answer that comes back gets its proof under the
//! message's signature; messages of steps from others go to the node whole, and its sealed
//! answers go back together, in order.

use std::sync::Arc;
use std::time::Instant;

use alloy::primitives::B256;
use libp2p::PeerId;
use libp2p::request_response::{self, ResponseChannel};
use tokio::sync::oneshot;

use super::{Command, EventLoop, InMessage, Inbound, NetError, StepAnswer, outbound_error};
use crate::blocking::{STALLING_BYTES, without_stalling};
use crate::eip712::keccak256;
use crate::net::codec::{
    CodecError, ErrorCode, InferRequest, InferResponse, StepKind, WireError, payload_bytes,
};
use crate::net::outbox::StepSize;
use crate::net::steps::{STEPS_PROTOCOL, SealedAnswers, Steps};
use crate::validate::{SealMemo, answer_proofs};

/// Where the answer to one step goes.
pub(super) type StepReply = oneshot::Sender<Result<StepAnswer, NetError>>;

impl EventLoop {
    /// Sends a step with others to `peer` when it speaks [`STEPS_PROTOCOL`] (as its identify
    /// said) and is not between connections; on its own otherwise.
    pub(super) fn send_step(
        &mut self,
        peer: PeerId,
        request: InferRequest,
        request_hash: B256,
        size: StepSize,
        reply: StepReply,
    ) {
        if !self.steps_peers.contains(&peer) || self.paths.draining(&peer) {
            return self.send_request(peer, request, reply);
        }
        let session = (request.session, request.kind == StepKind::Close);
        if let Some(message) =
            self.outbox.submit(peer, session, (request, request_hash, reply), size, Instant::now())
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

    fn send_steps(&mut self, peer: PeerId, message: Vec<(InferRequest, B256, StepReply)>) {
        let (steps, replies): (Steps, Vec<(B256, StepReply)>) = message
            .into_iter()
            .map(|(request, request_hash, reply)| (Ok(request), (request_hash, reply)))
            .unzip();
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
        event: request_response::Event<Result<Steps, CodecError>, SealedAnswers>,
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
                    for (_, reply) in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
                self.next_steps(peer);
            }
            request_response::Event::ResponseSent { peer, .. }
            | request_response::Event::InboundFailure { peer, .. } => self.answered(peer),
        }
    }

    /// Hands a message of steps to the node; its sealed answers go back in one message once
    /// all are in. A message whose envelope does not decode is refused whole, with one
    /// `Malformed` answer.
    async fn answer_steps(
        &mut self,
        peer: PeerId,
        steps: Result<Steps, CodecError>,
        channel: ResponseChannel<SealedAnswers>,
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
                    .send_response(channel, SealedAnswers::refused(refusal));
                return;
            }
        };
        let count = steps.len();
        let (reply, sealed) = oneshot::channel();
        let _ = self.inbound.send(Inbound::Steps { peer, steps, reply }).await;
        let respond = self.respond.clone();
        tokio::spawn(async move {
            // A message the node dropped unanswered is still answered, step by step.
            let answers = sealed.await.unwrap_or_else(|_| SealedAnswers {
                answers: vec![
                    InferResponse::Err(WireError::new(
                        ErrorCode::Internal,
                        "the step was not answered"
                    ));
                    count
                ],
                seal: [0; 65],
            });
            let _ = respond.send(Command::RespondSteps { channel, answers }).await;
        });
    }
}

/// Gives each step its answer; answers that do not match the steps in number fail them all,
/// as a garbled response would (none is known to be whose). Each Ok answer of several gets
/// its proof under the message's seal, built from the step's request hash and the output as
/// received (the node signed the same leaves, or the seal does not check) — hashing
/// megabytes of a prefill chunk's logits off the event loop.
fn deliver(peer: PeerId, replies: Vec<(B256, StepReply)>, sealed: SealedAnswers) {
    if sealed.answers.len() != replies.len() {
        let error = NetError::Request {
            peer,
            reason: format!(
                "{} answers to a message of {} steps",
                sealed.answers.len(),
                replies.len()
            ),
            answer_lost: false,
        };
        for (_, reply) in replies {
            let _ = reply.send(Err(error.clone()));
        }
        return;
    }
    let output_bytes: usize = sealed
        .answers
        .iter()
        .map(|answer| match answer {
            InferResponse::Ok { output, .. } => output.encoded_len(),
            InferResponse::Err(_) => 0,
        })
        .sum();
    // Decode steps' outputs are hashed here; prefill chunks' logits in a task of their own.
    if output_bytes > STALLING_BYTES {
        tokio::spawn(async move { without_stalling(|| answer_each(replies, sealed)) });
    } else {
        answer_each(replies, sealed);
    }
}

/// Sends each step its answer, with what checking it against the message's seal takes when it
/// is one of several Ok answers.
fn answer_each(replies: Vec<(B256, StepReply)>, sealed: SealedAnswers) {
    let SealedAnswers { answers, seal } = sealed;
    let oks = answers.iter().filter(|a| matches!(a, InferResponse::Ok { .. })).count();
    // One Ok answer is signed alone: its seal is its own `Response` signature.
    let mut in_message = if oks > 1 {
        let signed: Vec<(B256, B256)> = replies
            .iter()
            .zip(&answers)
            .filter_map(|((request_hash, _), answer)| match answer {
                InferResponse::Ok { output, .. } => {
                    Some((*request_hash, keccak256(&payload_bytes(output))))
                }
                InferResponse::Err(_) => None,
            })
            .collect();
        let memo = Arc::new(SealMemo::default());
        let proofs = answer_proofs(&signed).into_iter();
        signed
            .into_iter()
            .zip(proofs)
            .map(|((_, output_hash), proof)| InMessage { proof, output_hash, memo: memo.clone() })
            .collect()
    } else {
        Vec::new()
    }
    .into_iter();
    for ((_, reply), mut response) in replies.into_iter().zip(answers) {
        let mut answer_in_message = None;
        if let InferResponse::Ok { signature, .. } = &mut response {
            *signature = seal;
            answer_in_message = in_message.next();
        }
        let _ = reply.send(Ok(StepAnswer { response, in_message: answer_in_message }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::codec::Payload;

    fn answer(id: i64) -> InferResponse {
        InferResponse::Ok { output: Payload::Tokens(vec![id]), signature: [0; 65], account: None }
    }

    fn sealed(answers: Vec<InferResponse>) -> SealedAnswers {
        SealedAnswers { answers, seal: [9; 65] }
    }

    fn leaf(hash: B256, id: i64) -> B256 {
        crate::validate::ResponseAttestation {
            request_hash: hash,
            output_hash: keccak256(&payload_bytes(&Payload::Tokens(vec![id]))),
            epoch: 0,
        }
        .leaf()
    }

    /// Replies to steps of the given request hashes, and where their answers arrive.
    type Arrivals = Vec<oneshot::Receiver<Result<StepAnswer, NetError>>>;

    fn steps(hashes: &[B256]) -> (Vec<(B256, StepReply)>, Arrivals) {
        hashes
            .iter()
            .map(|&hash| {
                let (reply, answer) = oneshot::channel();
                ((hash, reply), answer)
            })
            .unzip()
    }

    #[test]
    fn each_step_gets_its_own_answer_and_proof_or_all_fail_together() {
        use crate::validate::fold_proof;
        let peer = PeerId::random();
        let busy = InferResponse::Err(WireError::new(ErrorCode::Overloaded, "busy"));
        let hashes = [B256::repeat_byte(1), B256::repeat_byte(2), B256::repeat_byte(3)];
        let (replies, mut answers) = steps(&hashes);
        deliver(peer, replies, sealed(vec![answer(1), busy.clone(), answer(3)]));
        let mut got: Vec<StepAnswer> =
            answers.iter_mut().map(|a| a.try_recv().unwrap().unwrap()).collect();
        // The refusal is not signed and is in no tree; each Ok answer carries the message's
        // seal, its output's hash, a proof that folds its own leaf to the same root, and the
        // message's one memo.
        assert_eq!(got[1].response, busy);
        assert!(got[1].in_message.is_none());
        let third = got.remove(2);
        let first = got.remove(0);
        for answer in [&first, &third] {
            assert!(
                matches!(answer.response, InferResponse::Ok { signature, .. } if signature == [9; 65])
            );
        }
        let (first, third) = (first.in_message.unwrap(), third.in_message.unwrap());
        assert_eq!(first.output_hash, keccak256(&payload_bytes(&Payload::Tokens(vec![1]))));
        assert_eq!(first.proof, vec![leaf(hashes[2], 3)]);
        assert_eq!(
            fold_proof(leaf(hashes[0], 1), &first.proof),
            fold_proof(leaf(hashes[2], 3), &third.proof)
        );
        assert!(Arc::ptr_eq(&first.memo, &third.memo));

        // One Ok answer among refusals is signed alone: no proof to give.
        let (replies, mut answers) = steps(&hashes[..2]);
        deliver(peer, replies, sealed(vec![busy.clone(), answer(2)]));
        let lone = answers[1].try_recv().unwrap().unwrap();
        assert!(lone.in_message.is_none());
        assert!(
            matches!(lone.response, InferResponse::Ok { signature, .. } if signature == [9; 65])
        );

        // One answer to two steps: neither is known to be whose, and neither was lost.
        let (replies, answers) = steps(&[B256::ZERO; 2]);
        deliver(peer, replies, sealed(vec![answer(1)]));
        for mut answer in answers {
            let error = answer.try_recv().unwrap().unwrap_err();
            assert!(!error.may_have_run(), "{error}");
            assert!(error.to_string().contains("1 answers to a message of 2 steps"), "{error}");
        }
    }
}
