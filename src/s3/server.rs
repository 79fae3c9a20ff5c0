//! The endpoint's HTTP side: a small tokio runtime on threads of its own (2 async workers,
//! blocking threads for the file work), HTTP/1.1 connections served by hyper into s3s's
//! service, with the limits applied before s3s sees a request: head size and header count
//! (431), requests in flight (503 SlowDown), open connections, idle clients.

use super::keys::KeyRing;
use super::limits::Limits;
use super::service::Ferry;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use s3s::service::{S3Service, S3ServiceBuilder};
use s3s::{S3Error, S3ErrorCode};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// How long a stop waits for requests in flight.
const DRAIN: Duration = Duration::from_secs(10);

/// A running endpoint; `stop` ends it.
pub struct Endpoint {
    pub addr: SocketAddr,
    /// Client requests' latencies (request in to last response byte out), a window at a
    /// time: the agent's rebalance yields to them.
    pub latency: Arc<crate::latency::Window>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Endpoint {
    /// Stops accepting, lets requests in flight finish (up to DRAIN), joins the threads.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The objects an endpoint serves: the object layer (in a cell, swapped when the topology
/// changes) and, in a cluster, the other nodes.
pub struct Objects {
    pub cell: Arc<super::remote::ClusterCell>,
    pub remote: Option<Arc<dyn super::remote::Remote>>,
}

fn service(objects: Objects, keys: KeyRing, limits: &Limits) -> S3Service {
    let mut b = S3ServiceBuilder::new(Ferry {
        cell: objects.cell,
        remote: objects.remote,
        limits: limits.clone(),
    });
    // With an auth provider s3s refuses unsigned requests (AccessDenied) and checks SigV4.
    b.set_auth(keys);
    let mut cfg = s3s::config::S3Config::default();
    cfg.xml_max_body_size = limits.max_xml_body;
    b.set_config(Arc::new(s3s::config::StaticConfigProvider::new(Arc::new(
        cfg,
    ))));
    b.build()
}

/// Serves S3 on `listener` until stopped.
pub fn start(
    listener: std::net::TcpListener,
    objects: Objects,
    keys: KeyRing,
    limits: Limits,
) -> std::io::Result<Endpoint> {
    assert!(limits.check().is_ok(), "limits are checked by the caller");
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(2 * limits.max_inflight + 4)
        .thread_name("ferry-s3")
        .enable_all()
        .build()?;
    let svc = service(objects, keys, &limits);
    let latency = Arc::new(crate::latency::Window::default());
    let lat = latency.clone();
    let (stop, stopped) = watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("ferry-s3-accept".into())
        .spawn(move || {
            rt.block_on(serve(listener, svc, limits, lat, stopped));
            rt.shutdown_timeout(Duration::from_secs(1));
        })?;
    Ok(Endpoint {
        addr,
        latency,
        stop,
        thread: Some(thread),
    })
}

async fn serve(
    l: std::net::TcpListener,
    svc: S3Service,
    limits: Limits,
    latency: Arc<crate::latency::Window>,
    mut stop: watch::Receiver<bool>,
) {
    let l = match tokio::net::TcpListener::from_std(l) {
        Ok(l) => l,
        Err(e) => return eprintln!("ferry s3: listener: {e}"),
    };
    let inflight = Arc::new(Semaphore::new(limits.max_inflight));
    let conns = Arc::new(Semaphore::new(limits.max_connections));
    let mut h = hyper::server::conn::http1::Builder::new();
    h.timer(TokioTimer::new())
        .header_read_timeout(limits.idle)
        .max_headers(limits.max_headers)
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(8192) + (64 << 10));
    loop {
        let permit = tokio::select! {
            p = conns.clone().acquire_owned() => p.expect("never closed"),
            _ = stop.changed() => break,
        };
        let stream = tokio::select! {
            r = l.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    eprintln!("ferry s3: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let (svc, inflight, lat) = (svc.clone(), inflight.clone(), latency.clone());
        let conn = h.serve_connection(
            TokioIo::new(stream),
            hyper::service::service_fn(move |req| {
                let timed = (std::time::Instant::now(), lat.clone());
                handle(svc.clone(), inflight.clone(), req, timed)
            }),
        );
        tokio::spawn(async move {
            let _held = permit;
            let _ = conn.await;
        });
    }
    drop(l);
    // Requests in flight end (or DRAIN passes) before the runtime goes.
    let all = u32::try_from(limits.max_inflight).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(DRAIN, inflight.acquire_many(all)).await;
}

async fn handle(
    svc: S3Service,
    inflight: Arc<Semaphore>,
    req: hyper::Request<Incoming>,
    timed: Timed,
) -> Result<hyper::Response<Held>, s3s::HttpError> {
    let Ok(permit) = inflight.try_acquire_owned() else {
        let e = S3Error::with_message(S3ErrorCode::SlowDown, "too many requests in flight; retry");
        let resp = e
            .to_http_response()
            .map_err(|e| s3s::HttpError::new(Box::new(e)))?;
        return Ok(resp.map(|b| Held {
            inner: b,
            _permit: None,
            timed: Some(timed),
        }));
    };
    let resp = svc.call(req.map(s3s::Body::from)).await?;
    // The permit lives as long as the response body: a GET counts until its last byte.
    Ok(resp.map(|b| Held {
        inner: b,
        _permit: Some(permit),
        timed: Some(timed),
    }))
}

/// When a request came in, and where its latency goes.
type Timed = (std::time::Instant, Arc<crate::latency::Window>);

/// A response body holding its request's in-flight permit; its latency is recorded when it
/// is dropped (the last byte sent, or the client gone).
pub struct Held {
    inner: s3s::Body,
    _permit: Option<OwnedSemaphorePermit>,
    timed: Option<Timed>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some((t, w)) = self.timed.take() {
            w.record(t.elapsed());
        }
    }
}

impl Body for Held {
    type Data = bytes::Bytes;
    type Error = <s3s::Body as Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
