//! The accept loop the fake servers share.

use http_body_util::BodyExt;

/// Serves HTTP/1 on `listener` until the test ends, reading each request's whole body and
/// answering with `answer(head, body)`: the accept loop of the fake TeamCity and the fake
/// Bitbucket.
pub fn serve_http<A, F>(listener: tokio::net::TcpListener, answer: A)
where
    A: Fn(hyper::http::request::Parts, bytes::Bytes) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = hyper::Response<http_body_util::Full<bytes::Bytes>>>
        + Send
        + 'static,
{
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let answer = answer.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            Ok::<_, std::convert::Infallible>(answer(parts, body).await)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}
