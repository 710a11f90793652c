//! Go `net/rpc` client framing over gob: a `Request{ServiceMethod, Seq}` header and the
//! argument out, a `Response{ServiceMethod, Seq, Error}` header and the reply back.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::gob::{Decoder, Encoder, GobError, Type, Value};

/// Replies larger than this are refused (Go allows 1 GiB; nothing the CLI sends comes close).
const MAX_MESSAGE: u64 = 16 << 20;
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("cannot reach the cf CLI on 127.0.0.1:{port}: {source}")]
    Connect { port: u16, source: std::io::Error },
    #[error("talking to the cf CLI failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the cf CLI sent bytes this plugin cannot read: {0}")]
    Gob(#[from] GobError),
    /// The method ran and returned an error (or does not exist on this CLI).
    #[error("{0}")]
    Server(String),
    #[error("the cf CLI answered {method} with an unexpected reply")]
    Reply { method: String },
    #[error("the cf CLI did not answer within {0:?}")]
    Timeout(Duration),
}

fn request_type() -> Type {
    Type::strukt("Request", &[("ServiceMethod", Type::String), ("Seq", Type::Uint)])
}

/// One connection to the CLI's RPC server.
pub struct Connection {
    stream: TcpStream,
    encoder: Encoder,
    decoder: Decoder,
    seq: u64,
}

impl Connection {
    pub async fn connect(port: u16) -> Result<Connection, RpcError> {
        let stream =
            TcpStream::connect(("127.0.0.1", port)).await.map_err(|source| RpcError::Connect { port, source })?;
        stream.set_nodelay(true)?;
        Ok(Connection { stream, encoder: Encoder::new(), decoder: Decoder::new(), seq: 0 })
    }

    async fn read_uint(&mut self) -> Result<u64, RpcError> {
        let first = self.stream.read_u8().await?;
        if first < 128 {
            return Ok(u64::from(first));
        }
        let n = 256 - usize::from(first);
        if n > 8 {
            return Err(GobError::Corrupt(format!("invalid length byte {first:#x}")).into());
        }
        let mut buf = [0u8; 8];
        self.stream.read_exact(&mut buf[8 - n..]).await?;
        Ok(u64::from_be_bytes(buf))
    }

    /// Reads messages until one carries a value (definitions are absorbed on the way).
    async fn next_value(&mut self) -> Result<Value, RpcError> {
        loop {
            let len = self.read_uint().await?;
            if len > MAX_MESSAGE {
                return Err(GobError::TooLarge(len).into());
            }
            let mut body = vec![0u8; len as usize];
            self.stream.read_exact(&mut body).await?;
            if let Some(v) = self.decoder.message(&body)? {
                return Ok(v);
            }
        }
    }

    /// Calls `CliRpcCmd.<method>` and returns the reply.
    pub async fn call(&mut self, method: &str, arg_type: &Type, arg: &Value) -> Result<Value, RpcError> {
        tokio::time::timeout(CALL_TIMEOUT, self.call_inner(method, arg_type, arg))
            .await
            .map_err(|_| RpcError::Timeout(CALL_TIMEOUT))?
    }

    async fn call_inner(&mut self, method: &str, arg_type: &Type, arg: &Value) -> Result<Value, RpcError> {
        let service_method = format!("CliRpcCmd.{method}");
        let seq = self.seq;
        self.seq += 1;
        let header = Value::Struct(vec![
            ("ServiceMethod".into(), Value::String(service_method.clone())),
            ("Seq".into(), Value::Uint(seq)),
        ]);
        let mut out = self.encoder.encode(&request_type(), &header)?;
        out.extend(self.encoder.encode(arg_type, arg)?);
        self.stream.write_all(&out).await?;
        let response = self.next_value().await?;
        let body = self.next_value().await?;
        let got_seq = match response.field("Seq") {
            None => 0,
            Some(Value::Uint(s)) => *s,
            Some(_) => return Err(RpcError::Reply { method: service_method }),
        };
        if got_seq != seq {
            return Err(RpcError::Reply { method: service_method });
        }
        let error = response.str_field("Error");
        if !error.is_empty() {
            return Err(RpcError::Server(error));
        }
        Ok(body)
    }
}
