//! An axum app served on loopback and a hyper client for it, for the end-to-end tests.

use std::net::SocketAddr;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub struct Server {
    pub addr: SocketAddr,
    pub client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl Server {
    /// An app that answers `GET /` with the caller's `openai` key (empty without one),
    /// the caller named by the `x-user` header, served through `vault`.
    pub async fn serve_openai(vault: &tower_byok::Vault) -> Self {
        use axum::routing::get;
        use tower_byok::resolve::FromHeader;
        use tower_byok::{ByokLayer, UserKeys};

        let app = axum::Router::new()
            .route(
                "/",
                get(|keys: UserKeys| async move {
                    keys.get("openai")
                        .map(|k| k.expose_secret().to_owned())
                        .unwrap_or_default()
                }),
            )
            .layer(ByokLayer::new(vault.clone(), FromHeader::new("x-user")));
        Self::start(app).await
    }

    pub async fn start(router: axum::Router) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        let client = Client::builder(TokioExecutor::new()).build_http();
        Self { addr, client }
    }

    /// `GET path`, as `user` (the `x-user` header) if given: status, headers and body.
    pub async fn get(
        &self,
        path: &str,
        user: Option<&str>,
    ) -> (StatusCode, http::HeaderMap, String) {
        self.get_as(path, "x-user", user).await
    }

    /// `GET path`, naming `user` in the header `user_header` if given.
    pub async fn get_as(
        &self,
        path: &str,
        user_header: &str,
        user: Option<&str>,
    ) -> (StatusCode, http::HeaderMap, String) {
        let mut req = http::Request::get(format!("http://{}{path}", self.addr));
        if let Some(user) = user {
            req = req.header(user_header, user);
        }
        let res = self
            .client
            .request(req.body(Full::default()).unwrap())
            .await
            .unwrap();
        let (parts, body) = res.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }
}

/// Sends `request` with `client` and reads the whole answer: its status and body. For
/// the soaks, which count each way a request can end.
pub async fn exchange(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    request: http::Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), Box<dyn std::error::Error + Send + Sync>> {
    let response = client.request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}
