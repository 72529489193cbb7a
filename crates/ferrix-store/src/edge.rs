//! The store from async code: every [`Store`] operation runs on a blocking thread (SQLite,
//! files and ssh pipes belong there), and NARs stream through pipes between the two sides,
//! never held whole. This is the edge the Engine, servers and the daemon use.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::Arc;

use ferrix_format::StorePath;
use tokio::io::AsyncRead;
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

use crate::copy::{copy_paths, CopyOptions};
use crate::error::{Result, StoreError};
use crate::local::LocalStore;
use crate::path_info::ValidPathInfo;
use crate::store::{CopyError, Store};

/// An async handle on a store; cheap to clone.
#[derive(Debug)]
pub struct AsyncStore<S: ?Sized> {
    inner: Arc<S>,
}

impl<S: ?Sized> Clone for AsyncStore<S> {
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

fn joined(e: tokio::task::JoinError) -> io::Error {
    io::Error::other(e)
}

impl<S: Store + ?Sized + 'static> AsyncStore<S> {
    pub fn new(inner: Arc<S>) -> Self {
        Self { inner }
    }

    /// The store itself, for synchronous callers.
    pub fn inner(&self) -> &Arc<S> {
        &self.inner
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&S) -> Result<T, CopyError> + Send + 'static,
    ) -> Result<T, CopyError> {
        let inner = self.inner.clone();
        match tokio::task::spawn_blocking(move || f(&inner)).await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(CopyError::Cancelled {
                store: self.inner.uri(),
            }),
        }
    }

    /// See [`Store::query_valid`].
    pub async fn query_valid(
        &self,
        paths: BTreeSet<StorePath>,
        substitute: bool,
    ) -> Result<BTreeSet<StorePath>, CopyError> {
        self.run(move |s| s.query_valid(&paths, substitute)).await
    }

    /// See [`Store::query_infos`].
    pub async fn query_infos(
        &self,
        paths: BTreeSet<StorePath>,
    ) -> Result<BTreeMap<StorePath, ValidPathInfo>, CopyError> {
        self.run(move |s| s.query_infos(&paths)).await
    }
}

impl AsyncStore<dyn Store> {
    /// Copy the closure of `paths` from this store to `to` ([`copy_paths`]).
    pub async fn copy_to(
        &self,
        to: &AsyncStore<dyn Store>,
        paths: BTreeSet<StorePath>,
        opts: CopyOptions,
    ) -> Result<Vec<StorePath>, CopyError> {
        let to = to.inner.clone();
        self.run(move |from| copy_paths(from, &*to, &paths, &opts))
            .await
    }
}

impl AsyncStore<LocalStore> {
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&LocalStore) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| pipe_err(joined(e)))?
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

    /// Add a path from a NAR stream (see [`LocalStore::add_nar`]). A stream that is not a
    /// valid NAR of the claimed hash leaves the store as it was and the error says so.
    pub async fn add_to_store(
        &self,
        info: ValidPathInfo,
        mut nar: impl AsyncRead + Unpin + Send,
    ) -> Result<()> {
        let (mut reader, writer) = io::pipe().map_err(pipe_err)?;
        let mut tx = pipe::Sender::from_owned_fd(writer.into()).map_err(pipe_err)?;
        let inner = self.inner.clone();
        let adding = tokio::task::spawn_blocking(move || inner.add_nar(&info, &mut reader));
        let copied = async move {
            let r = tokio::io::copy(&mut nar, &mut tx).await;
            drop(tx); // the end of the stream, for the adder
            r
        }
        .await;
        // The adder's error is the cause when it stopped reading (the copy then fails too).
        let added = adding.await.map_err(|e| pipe_err(joined(e)))?;
        added?;
        copied.map(drop).map_err(pipe_err)
    }
}
