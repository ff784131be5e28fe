//! Streaming between HTTP bodies and the appliance's blocking jobs, never whole in memory:
//! - uploads: [`upload_task`] takes a multipart request's `file` part, feeds it through a
//!   bounded channel to a job on a blocking thread (a [`std::io::Read`]), reads the request
//!   to its end before answering (HPE's SDK reads the answer only after sending
//!   everything), and answers 202 with the job's task;
//! - downloads: [`download`] runs a job writing into a [`std::io::Write`] on a blocking
//!   thread and streams what it writes as a 200 response body.

use std::io::{Read, Write};

use axum::body::{Body, Bytes};
use axum::extract::Multipart;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::{blocking, tasks, AppState};
use crate::appliance::ApplianceError;
use crate::catalog::{AssociatedResource, Catalog};

/// Chunks in flight between the request and the job (each one HTTP frame, ~16 KiB to
/// 1 MiB): enough to keep both sides busy, small enough to keep memory flat.
const CHANNEL_CHUNKS: usize = 16;

/// The multipart field holding the file (HPE's SDK sends one part named so).
pub const FILE_FIELD: &str = "file";

/// A blocking reader over chunks sent from the async side; an `Err` chunk (the client's
/// body broke off) fails the read, so a truncated upload is never taken for a whole one.
struct ChannelReader {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    cur: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

/// What an upload job is given: the file part as a reader, and a progress callback.
pub type UploadJob = Box<
    dyn FnOnce(
            &mut dyn Read,
            crate::appliance::Progress,
        ) -> Result<serde_json::Value, ApplianceError>
        + Send,
>;

/// Runs `job` on the multipart request's `file` part as task `task_name` of `owner`.
/// The job returns the resource it made (with `uri` and `name`), which becomes the task's
/// associated resource in `category`. Answers 202 once the whole request is read; 400 when
/// there is no `file` part.
pub async fn upload_task(
    st: &AppState,
    owner: &str,
    task_name: &str,
    category: &'static str,
    mut form: Multipart,
    job: UploadJob,
) -> Result<Response, ApiError> {
    let mut field = loop {
        match form.next_field().await {
            Ok(Some(f)) if f.name() == Some(FILE_FIELD) => break f,
            Ok(Some(_)) => continue,
            Ok(None) => {
                return Err(ApiError::bad_request(
                    "INVALID_UPLOAD",
                    format!("the multipart body has no part named {FILE_FIELD:?}"),
                ))
            }
            Err(e) => {
                return Err(ApiError::bad_request(
                    "INVALID_UPLOAD",
                    format!("reading the multipart body: {e}"),
                ))
            }
        }
    };
    let file_name = field.file_name().unwrap_or_default().to_owned();
    let (cat, owner2, name2) = (st.catalog.clone(), owner.to_owned(), task_name.to_owned());
    let task =
        blocking(move || Ok(cat.create_task(&name2, &owner2, AssociatedResource::default())?))
            .await?;
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    let (cat, id) = (st.catalog.clone(), task.id().to_owned());
    tracing::info!(task = %id, file = %file_name, "upload started");
    let worker = tokio::task::spawn_blocking(move || {
        let mut reader = ChannelReader {
            rx,
            cur: Bytes::new(),
        };
        let progress = |p: u8, what: &str| {
            let _ = cat.task_progress(&id, p, what);
        };
        let r = job(&mut reader, &progress);
        finish(&cat, &id, category, r.map_err(ApiError::from));
    });
    // Read the part to its end, whether the job still wants it or not (a job that failed
    // early has dropped its receiver; the rest of the body is read and dropped).
    let mut open = true;
    loop {
        match field.chunk().await {
            Ok(Some(b)) => {
                if open && tx.send(Ok(b)).await.is_err() {
                    open = false;
                }
            }
            Ok(None) => break,
            Err(e) => {
                let _ = tx
                    .send(Err(std::io::Error::other(format!(
                        "the upload broke off: {e}"
                    ))))
                    .await;
                drop(tx);
                let _ = worker.await;
                return Err(ApiError::bad_request(
                    "INVALID_UPLOAD",
                    format!("reading the upload: {e}"),
                ));
            }
        }
    }
    drop(tx);
    drop(field);
    while let Ok(Some(_)) = form.next_field().await {}
    Ok(tasks::accepted(&task))
}

/// Ends task `id` with the job's outcome, naming the resource it made.
fn finish(cat: &Catalog, id: &str, category: &str, r: Result<serde_json::Value, ApiError>) {
    let outcome = match r {
        Ok(v) => {
            let res = AssociatedResource {
                resource_name: v["name"].as_str().unwrap_or_default().into(),
                resource_uri: v["uri"].as_str().unwrap_or_default().into(),
                resource_category: category.into(),
                association_type: "MANAGED_BY".into(),
            };
            if let Err(e) = cat.set_task_resource(id, res) {
                tracing::warn!(task = %id, "naming the task's resource: {e}");
            }
            tracing::info!(task = %id, uri = %v["uri"], "task completed");
            Ok(())
        }
        Err(e) => {
            tracing::warn!(task = %id, error = %e.message, "task failed");
            Err(vec![e.task_error()])
        }
    };
    if let Err(e) = cat.finish_task(id, outcome) {
        tracing::warn!(task = %id, "finishing the task: {e}");
    }
}

/// A task's work without an upload: given a progress callback, it returns the resource it
/// made or worked on.
pub type Job =
    Box<dyn FnOnce(crate::appliance::Progress) -> Result<serde_json::Value, ApplianceError> + Send>;

/// Runs `job` on a blocking thread as task `task_name` of `owner` on `resource` (which the
/// resource `job` returns replaces), answering 202 at once. Jobs run [`AppState::jobs`] at
/// a time; the others wait, their task saying so.
pub async fn job_task(
    st: &AppState,
    owner: &str,
    task_name: &str,
    category: &'static str,
    resource: AssociatedResource,
    job: Job,
) -> Result<Response, ApiError> {
    let (cat, owner2, name2) = (st.catalog.clone(), owner.to_owned(), task_name.to_owned());
    let task = blocking(move || Ok(cat.create_task(&name2, &owner2, resource)?)).await?;
    let (cat, id) = (st.catalog.clone(), task.id().to_owned());
    let slots = st.jobs.clone();
    tokio::spawn(async move {
        // Queued until a slot is free: a thousand deploys at once run a few at a time.
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let (c, i) = (cat.clone(), id.clone());
                let _ = tokio::task::spawn_blocking(move || {
                    c.task_progress(&i, 0, "queued: waiting for a free job slot")
                })
                .await;
                match slots.acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => return,
                }
            }
        };
        let _ = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let progress = |p: u8, what: &str| {
                let _ = cat.task_progress(&id, p, what);
            };
            let r = job(&progress);
            finish(&cat, &id, category, r.map_err(ApiError::from));
        })
        .await;
    });
    Ok(tasks::accepted(&task))
}

/// A writer sending what it is given to the response body.
struct ChannelWriter {
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
}

const WRITE_CHUNK: usize = 256 << 10;

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let b = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(WRITE_CHUNK),
        ));
        self.tx
            .blocking_send(Ok(b))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client left"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= WRITE_CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// 200 with the bytes `job` writes, streamed as it writes them (`Content-Type`
/// application/octet-stream, the file name given). A job that fails midway ends the body
/// with an error, so the client sees a broken transfer rather than a short file.
pub fn download(
    file_name: &str,
    job: impl FnOnce(&mut dyn Write) -> Result<(), ApplianceError> + Send + 'static,
) -> Response {
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(CHANNEL_CHUNKS);
    tokio::task::spawn_blocking(move || {
        let mut w = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(WRITE_CHUNK),
        };
        let r = job(&mut w).and_then(|()| {
            w.flush()
                .map_err(|e| ApplianceError::Download(e.to_string()))
        });
        if let Err(e) = r {
            tracing::warn!("download failed: {e}");
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}\"", file_name.replace('"', "")),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}
