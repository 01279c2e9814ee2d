//! The libp2p request-response codec carrying [`InferRequest`]s and [`InferResponse`]s.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

use super::codec::{CodecError, InferRequest, InferResponse, MAX_MESSAGE_BYTES};

/// The versioned protocol id.
pub const INFER_PROTOCOL: StreamProtocol = StreamProtocol::new("/infergrid/infer/2");

/// Reads a whole stream (one message per stream) up to the size limit. A request that does
/// not parse is still delivered, as an error, so the node can answer it with a typed refusal.
#[derive(Debug, Clone, Default)]
pub struct InferCodec;

async fn read_limited<T: AsyncRead + Unpin + Send>(io: &mut T) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    io.take(MAX_MESSAGE_BYTES as u64 + 1).read_to_end(&mut buf).await?;
    Ok(buf)
}

impl libp2p::request_response::Codec for InferCodec {
    type Protocol = StreamProtocol;
    type Request = Result<InferRequest, CodecError>;
    type Response = InferResponse;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Self::Request> {
        Ok(InferRequest::decode(&read_limited(io).await?))
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Self::Response> {
        InferResponse::decode(&read_limited(io).await?)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Self::Request,
    ) -> std::io::Result<()> {
        let request =
            request.map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        io.write_all(&request.encode()).await?;
        io.close().await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: Self::Response,
    ) -> std::io::Result<()> {
        io.write_all(&response.encode()).await?;
        io.close().await
    }
}
