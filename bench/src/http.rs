//! One raw HTTP/1.1 connection over hyper, the way a browser tab holds its poll: one request at
//! a time, on one TCP connection that stays open. No pool, so 10,000 virtual clients are exactly
//! 10,000 connections.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A client connection.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl Conn {
    /// Opens a connection to `addr`.
    pub async fn connect(addr: SocketAddr) -> Result<Conn> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP/1 handshake")?;
        // The connection's I/O runs as its own task; it ends when `sender` is dropped.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn {
            sender,
            host: addr.to_string(),
        })
    }

    /// `GET path_and_query`: the status and the whole body.
    pub async fn get(&mut self, path_and_query: &str) -> Result<(StatusCode, Bytes)> {
        self.request(Method::GET, path_and_query, None).await
    }

    /// `POST path_and_query` with `body` of type `content_type`.
    pub async fn post(
        &mut self,
        path_and_query: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes)> {
        self.request(Method::POST, path_and_query, Some((content_type, body)))
            .await
    }

    async fn request(
        &mut self,
        method: Method,
        path_and_query: &str,
        body: Option<(&str, Bytes)>,
    ) -> Result<(StatusCode, Bytes)> {
        self.sender.ready().await.context("the connection closed")?;
        let mut req = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(header::HOST, &self.host);
        let body = match body {
            Some((content_type, body)) => {
                req = req.header(header::CONTENT_TYPE, content_type);
                body
            }
            None => Bytes::new(),
        };
        let req = req.body(Full::new(body)).context("building a request")?;
        let res = self
            .sender
            .send_request(req)
            .await
            .with_context(|| format!("request to {path_and_query}"))?;
        let status = res.status();
        let body = res
            .into_body()
            .collect()
            .await
            .context("reading a response body")?
            .to_bytes();
        Ok((status, body))
    }
}

/// One request on a fresh connection, for the driver's control calls; fails on a non-2xx.
pub async fn call(addr: SocketAddr, method: Method, path_and_query: &str) -> Result<Bytes> {
    let mut conn = Conn::connect(addr).await?;
    let (status, body) = conn.request(method, path_and_query, None).await?;
    anyhow::ensure!(
        status.is_success(),
        "{path_and_query} answered {status}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok(body)
}

/// [`call`], parsing the answer as JSON.
pub async fn call_json<T: serde::de::DeserializeOwned>(
    addr: SocketAddr,
    method: Method,
    path_and_query: &str,
) -> Result<T> {
    let body = call(addr, method, path_and_query).await?;
    serde_json::from_slice(&body).with_context(|| format!("parsing the answer of {path_and_query}"))
}
