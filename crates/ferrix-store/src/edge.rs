//! The store from async code: every [`Store`] operation runs on a blocking thread (SQLite and
//! file system work belong there), and NARs stream through pipes between the two sides, never
//! held whole. This is the edge substituters, remote builders and servers use.

use std::io;
use std::sync::Arc;

use ferrix_format::StorePath;
use tokio::io::AsyncRead;
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

use crate::error::{Result, StoreError};
use crate::path_info::ValidPathInfo;
use crate::store::Store;

/// An async handle on a store; cheap to clone.
#[derive(Debug)]
pub struct AsyncStore<S> {
    inner: Arc<S>,
}

impl<S> Clone for AsyncStore<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

fn pipe_err(e: io::Error) -> StoreError {
    StoreError::Io {
        what: "streaming a NAR",
        path: Default::default(),
        source: e,
    }
}

impl<S: Store + Send + Sync + 'static> AsyncStore<S> {
    pub fn new(inner: Arc<S>) -> Self {
        Self { inner }
    }

    /// The store itself, for synchronous callers.
    pub fn inner(&self) -> &Arc<S> {
        &self.inner
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&S) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| pipe_err(io::Error::other(e.to_string())))?
    }

    pub async fn is_valid_path(&self, p: StorePath) -> Result<bool> {
        self.blocking(move |s| s.is_valid_path(&p)).await
    }

    pub async fn query_path_info(&self, p: StorePath) -> Result<Option<ValidPathInfo>> {
        self.blocking(move |s| s.query_path_info(&p)).await
    }

    /// The NAR of a valid path as a stream, and the task writing it: a stream that ends
    /// early means the task failed, and its result says why.
    pub fn nar_from_path(
        &self,
        p: StorePath,
    ) -> Result<(impl AsyncRead + Unpin + Send, JoinHandle<Result<()>>)> {
        let (reader, mut writer) = io::pipe().map_err(pipe_err)?;
        let rx = pipe::Receiver::from_owned_fd(reader.into()).map_err(pipe_err)?;
        let inner = self.inner.clone();
        let task = tokio::task::spawn_blocking(move || inner.nar_from_path(&p, &mut writer));
        Ok((rx, task))
    }

    /// Add a path from a NAR stream (see [`Store::add_to_store`]). A stream that is not a
    /// valid NAR of the claimed hash leaves the store as it was and the error says so.
    pub async fn add_to_store(
        &self,
        info: ValidPathInfo,
        mut nar: impl AsyncRead + Unpin + Send,
    ) -> Result<()> {
        let (mut reader, writer) = io::pipe().map_err(pipe_err)?;
        let mut tx = pipe::Sender::from_owned_fd(writer.into()).map_err(pipe_err)?;
        let inner = self.inner.clone();
        let adding = tokio::task::spawn_blocking(move || inner.add_to_store(&info, &mut reader));
        let copied = async move {
            let r = tokio::io::copy(&mut nar, &mut tx).await;
            drop(tx); // the end of the stream, for the adder
            r
        }
        .await;
        // The adder's error is the cause when it stopped reading (the copy then fails too).
        let added = adding
            .await
            .map_err(|e| pipe_err(io::Error::other(e.to_string())))?;
        added?;
        copied.map(drop).map_err(pipe_err)
    }
}
