//! The canonical gRPC `helloworld.Greeter` service (plus `grpc.health.v1.Health/Check`),
//! so Weft's gRPC routing, traffic shifting between versions and gRPC
//! health checking can be shown with a real tonic server and client.
//!
//! The protobuf messages and the service glue are written by hand (the same
//! shape `tonic-prost-build` generates from `proto/helloworld.proto` and
//! `proto/health.proto`): no protoc, no build script. Keep them in sync with
//! those files; the tests pin the wire encoding.
//!
//! The server answers only those two methods; anything else is
//! `UNIMPLEMENTED`. It must never panic on what a client sends.

pub mod cli;
use std::io::Write as _;
use std::sync::Arc;
use std::task::{Context, Poll};

use thiserror::Error;
use tonic::codegen::{Body, BoxFuture, Bytes, StdError, http};

/// Protobuf messages of `helloworld` and `grpc.health.v1`.
pub mod pb {
    /// `helloworld.HelloRequest`.
    #[derive(Clone, PartialEq, Eq, ::prost::Message)]
    pub struct HelloRequest {
        /// The user's name.
        #[prost(string, tag = "1")]
        pub name: ::prost::alloc::string::String,
    }

    /// `helloworld.HelloReply`.
    #[derive(Clone, PartialEq, Eq, ::prost::Message)]
    pub struct HelloReply {
        /// The greeting.
        #[prost(string, tag = "1")]
        pub message: ::prost::alloc::string::String,
    }

    /// `grpc.health.v1.HealthCheckRequest`.
    #[derive(Clone, PartialEq, Eq, ::prost::Message)]
    pub struct HealthCheckRequest {
        /// Service name; empty means the whole server.
        #[prost(string, tag = "1")]
        pub service: ::prost::alloc::string::String,
    }

    /// `grpc.health.v1.HealthCheckResponse`.
    #[derive(Clone, PartialEq, Eq, ::prost::Message)]
    pub struct HealthCheckResponse {
        /// A [`ServingStatus`].
        #[prost(enumeration = "ServingStatus", tag = "1")]
        pub status: i32,
    }

    /// `grpc.health.v1.HealthCheckResponse.ServingStatus`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::prost::Enumeration)]
    #[repr(i32)]
    pub enum ServingStatus {
        /// Unknown.
        Unknown = 0,
        /// Serving.
        Serving = 1,
        /// Not serving.
        NotServing = 2,
        /// Only used by Watch.
        ServiceUnknown = 3,
    }
}

/// The Greeter's fully-qualified service name.
pub const GREETER_SERVICE: &str = "helloworld.Greeter";
/// `SayHello`'s HTTP/2 path.
pub const SAY_HELLO_PATH: &str = "/helloworld.Greeter/SayHello";
/// `Health/Check`'s HTTP/2 path.
pub const HEALTH_CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

/// `--version` is not `v` followed by 1–3 digits.
#[derive(Debug, Error)]
#[error("invalid greeter version {0:?}: expected v1, v2, …")]
pub struct BadVersion(pub String);

/// Checks a version label (`v1`, `v2`, … `v999`).
pub fn parse_version(s: &str) -> Result<String, BadVersion> {
    let ok = s
        .strip_prefix('v')
        .is_some_and(|d| (1..=3).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(BadVersion(s.to_owned()))
    }
}

/// The greeting `version` gives `name`.
pub fn greeting(name: &str, version: &str) -> String {
    format!("Hello {name} from greeter-{version}")
}

fn log(args: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stdout().lock(), "{args}");
}

/// The gRPC server: Greeter + health, dispatched by path. Cheap to clone.
#[derive(Debug, Clone)]
pub struct GreeterServer {
    version: Arc<str>,
    log_name: Arc<str>,
}

impl GreeterServer {
    /// A server that identifies as `greeter-{version}`; logs as `log_name`.
    pub fn new(version: &str, log_name: &str) -> Self {
        GreeterServer {
            version: version.into(),
            log_name: log_name.into(),
        }
    }
}

struct SayHello(GreeterServer);

impl tonic::server::UnaryService<pb::HelloRequest> for SayHello {
    type Response = pb::HelloReply;
    type Future = BoxFuture<tonic::Response<pb::HelloReply>, tonic::Status>;

    fn call(&mut self, req: tonic::Request<pb::HelloRequest>) -> Self::Future {
        let s = self.0.clone();
        Box::pin(async move {
            let name = req.into_inner().name;
            log(format_args!("{} SayHello name={name:?} OK", s.log_name));
            Ok(tonic::Response::new(pb::HelloReply {
                message: greeting(&name, &s.version),
            }))
        })
    }
}

struct HealthCheck(GreeterServer);

impl tonic::server::UnaryService<pb::HealthCheckRequest> for HealthCheck {
    type Response = pb::HealthCheckResponse;
    type Future = BoxFuture<tonic::Response<pb::HealthCheckResponse>, tonic::Status>;

    fn call(&mut self, req: tonic::Request<pb::HealthCheckRequest>) -> Self::Future {
        let s = self.0.clone();
        Box::pin(async move {
            let service = req.into_inner().service;
            if service.is_empty() || service == GREETER_SERVICE {
                log(format_args!(
                    "{} Health/Check service={service:?} SERVING",
                    s.log_name
                ));
                Ok(tonic::Response::new(pb::HealthCheckResponse {
                    status: pb::ServingStatus::Serving as i32,
                }))
            } else {
                log(format_args!(
                    "{} Health/Check service={service:?} NOT_FOUND",
                    s.log_name
                ));
                Err(tonic::Status::not_found("unknown service"))
            }
        })
    }
}

impl<B> tonic::codegen::Service<http::Request<B>> for GreeterServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let me = self.clone();
        match req.uri().path() {
            SAY_HELLO_PATH => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.unary(SayHello(me), req).await)
            }),
            HEALTH_CHECK_PATH => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.unary(HealthCheck(me), req).await)
            }),
            other => {
                log(format_args!("{} {other} UNIMPLEMENTED", me.log_name));
                Box::pin(async move { Ok(tonic::Status::unimplemented("").into_http()) })
            }
        }
    }
}

impl tonic::server::NamedService for GreeterServer {
    const NAME: &'static str = GREETER_SERVICE;
}

/// A client for both methods over any tonic transport (e.g. a `Channel`).
#[derive(Debug, Clone)]
pub struct GreeterClient<T> {
    inner: tonic::client::Grpc<T>,
}

impl<T> GreeterClient<T>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<StdError>,
    T::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    /// Wraps a transport.
    pub fn new(inner: T) -> Self {
        GreeterClient {
            inner: tonic::client::Grpc::new(inner),
        }
    }

    async fn ready(&mut self) -> Result<(), tonic::Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("service not ready: {}", e.into())))
    }

    /// `helloworld.Greeter/SayHello`.
    pub async fn say_hello(
        &mut self,
        req: impl tonic::IntoRequest<pb::HelloRequest>,
    ) -> Result<tonic::Response<pb::HelloReply>, tonic::Status> {
        self.ready().await?;
        let path = http::uri::PathAndQuery::from_static(SAY_HELLO_PATH);
        self.inner
            .unary(req.into_request(), path, tonic_prost::ProstCodec::default())
            .await
    }

    /// `grpc.health.v1.Health/Check`.
    pub async fn health_check(
        &mut self,
        req: impl tonic::IntoRequest<pb::HealthCheckRequest>,
    ) -> Result<tonic::Response<pb::HealthCheckResponse>, tonic::Status> {
        self.ready().await?;
        let path = http::uri::PathAndQuery::from_static(HEALTH_CHECK_PATH);
        self.inner
            .unary(req.into_request(), path, tonic_prost::ProstCodec::default())
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn wire_encoding_matches_the_protos() {
        let req = pb::HelloRequest { name: "x".into() };
        assert_eq!(req.encode_to_vec(), [0x0a, 0x01, b'x']);
        let rep = pb::HelloReply::decode(&[0x0a, 0x02, b'h', b'i'][..]).expect("decode");
        assert_eq!(rep.message, "hi");
        let h = pb::HealthCheckResponse {
            status: pb::ServingStatus::Serving as i32,
        };
        assert_eq!(h.encode_to_vec(), [0x08, 0x01]);
        assert!(pb::HelloRequest::decode(&[0x0a, 0x05, b'x'][..]).is_err());
    }

    #[test]
    fn versions_and_greeting() {
        assert!(parse_version("v1").is_ok());
        assert!(parse_version("v22").is_ok());
        assert!(parse_version("1").is_err());
        assert!(parse_version("v").is_err());
        assert!(parse_version("vx").is_err());
        assert!(parse_version("v1234").is_err());
        assert_eq!(greeting("Ann", "v2"), "Hello Ann from greeter-v2");
    }

    #[test]
    fn proto_files_declare_what_we_serve() {
        let hw = include_str!("../proto/helloworld.proto");
        assert!(hw.contains("package helloworld;"));
        assert!(hw.contains("rpc SayHello (HelloRequest) returns (HelloReply)"));
        assert!(hw.contains("string name = 1;"));
        assert!(hw.contains("string message = 1;"));
        let health = include_str!("../proto/health.proto");
        assert!(health.contains("package grpc.health.v1;"));
        assert!(health.contains("SERVING = 1;"));
    }
}
