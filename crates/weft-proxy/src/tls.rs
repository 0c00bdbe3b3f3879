//! TLS for both directions: rustls server configs from Envoy's `DownstreamTlsContext`, client
//! configs from `UpstreamTlsContext`, and the ClientHello sniffing (SNI, ALPN) that filter-chain
//! matching needs before deciding whether to terminate TLS at all.
//!
//! Certificates are loaded once per config generation; nothing here runs per request.

use crate::config::{ConfigError, Ctx};
use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tpb;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::sync::Arc;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(ctx: &Ctx, field: &str, ds: Option<&DataSource>) -> Result<Vec<u8>, ConfigError> {
    match ds.and_then(|d| d.specifier.as_ref()) {
        Some(Specifier::Filename(p)) => std::fs::read(p)
            .map_err(|e| ctx.err(format!("{field}.filename"), format!("cannot read {p}: {e}"))),
        Some(Specifier::InlineString(s)) => Ok(s.clone().into_bytes()),
        Some(Specifier::InlineBytes(b)) => Ok(b.clone()),
        Some(Specifier::EnvironmentVariable(v)) => std::env::var(v)
            .map(String::into_bytes)
            .map_err(|_| ctx.err(field, format!("${v} is not set"))),
        None => Err(ctx.err(
            field,
            "a data source (filename, inline_string or inline_bytes) is required",
        )),
    }
}

fn certs(ctx: &Ctx, field: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut &pem[..]).collect();
    let certs = certs.map_err(|e| ctx.err(field, format!("invalid PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(ctx.err(field, "no PEM certificate found"));
    }
    Ok(certs)
}

fn key(ctx: &Ctx, field: &str, pem: &[u8]) -> Result<PrivateKeyDer<'static>, ConfigError> {
    rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|e| ctx.err(field, format!("invalid PEM private key: {e}")))?
        .ok_or_else(|| ctx.err(field, "no PEM private key found"))
}

fn cert_and_key(
    ctx: &Ctx,
    f: &str,
    common: &tpb::CommonTlsContext,
) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, ConfigError> {
    match common.tls_certificates.as_slice() {
        [] => Ok(None),
        [c] => {
            let chain = read(
                ctx,
                &format!("{f}.tls_certificates[0].certificate_chain"),
                c.certificate_chain.as_ref(),
            )?;
            let k = read(
                ctx,
                &format!("{f}.tls_certificates[0].private_key"),
                c.private_key.as_ref(),
            )?;
            Ok(Some((
                certs(
                    ctx,
                    &format!("{f}.tls_certificates[0].certificate_chain"),
                    &chain,
                )?,
                key(ctx, &format!("{f}.tls_certificates[0].private_key"), &k)?,
            )))
        }
        _ => Err(ctx.err(
            format!("{f}.tls_certificates"),
            "only one certificate per context is supported",
        )),
    }
}

fn roots(
    ctx: &Ctx,
    f: &str,
    common: &tpb::CommonTlsContext,
) -> Result<Option<rustls::RootCertStore>, ConfigError> {
    use tpb::common_tls_context::ValidationContextType as V;
    let vc = match &common.validation_context_type {
        None => return Ok(None),
        Some(V::ValidationContext(vc)) => vc,
        Some(_) => {
            return Err(ctx.err(
                format!("{f}.validation_context"),
                "only an inline validation_context is supported",
            ));
        }
    };
    let Some(ca) = &vc.trusted_ca else {
        return Ok(None);
    };
    let pem = read(ctx, &format!("{f}.validation_context.trusted_ca"), Some(ca))?;
    let mut store = rustls::RootCertStore::empty();
    for c in certs(ctx, &format!("{f}.validation_context.trusted_ca"), &pem)? {
        store.add(c).map_err(|e| {
            ctx.err(
                format!("{f}.validation_context.trusted_ca"),
                format!("unusable CA certificate: {e}"),
            )
        })?;
    }
    Ok(Some(store))
}

fn versions(
    ctx: &Ctx,
    f: &str,
    common: &tpb::CommonTlsContext,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, ConfigError> {
    // TlsProtocol: TLS_AUTO 0, TLSv1_0 1, TLSv1_1 2, TLSv1_2 3, TLSv1_3 4.
    let (min, max) = common.tls_params.as_ref().map_or((0, 0), |p| {
        (
            p.tls_minimum_protocol_version,
            p.tls_maximum_protocol_version,
        )
    });
    let min = if min == 0 { 3 } else { min };
    let max = if max == 0 { 4 } else { max };
    if min < 3 {
        return Err(ctx.err(
            format!("{f}.tls_params.tls_minimum_protocol_version"),
            "TLS below 1.2 is not supported",
        ));
    }
    let mut v = Vec::new();
    if min <= 4 && max >= 4 {
        v.push(&rustls::version::TLS13);
    }
    if min <= 3 && max >= 3 {
        v.push(&rustls::version::TLS12);
    }
    if v.is_empty() {
        return Err(ctx.err(
            format!("{f}.tls_params"),
            "no TLS version left between minimum and maximum",
        ));
    }
    Ok(v)
}

/// Server-side TLS from a `DownstreamTlsContext`.
pub fn server_config(
    ctx: &Ctx,
    f: &str,
    d: &tpb::DownstreamTlsContext,
) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let common = d.common_tls_context.clone().unwrap_or_default();
    let cf = format!("{f}.common_tls_context");
    let (chain, key) = cert_and_key(ctx, &cf, &common)?.ok_or_else(|| {
        ctx.err(
            format!("{cf}.tls_certificates"),
            "a server certificate is required",
        )
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&versions(ctx, &cf, &common)?)
        .map_err(|e| ctx.err(&cf, e.to_string()))?;
    let require_client = d
        .require_client_certificate
        .as_ref()
        .is_some_and(|b| b.value);
    let builder = match roots(ctx, &cf, &common)? {
        Some(store) => {
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(store),
                provider(),
            );
            let v = if require_client {
                v
            } else {
                v.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(
                v.build()
                    .map_err(|e| ctx.err(format!("{cf}.validation_context"), e.to_string()))?,
            )
        }
        None if require_client => {
            return Err(ctx.err(
                format!("{f}.require_client_certificate"),
                "requires a validation_context with trusted_ca",
            ));
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(chain, key)
        .map_err(|e| ctx.err(format!("{cf}.tls_certificates[0]"), e.to_string()))?;
    cfg.alpn_protocols = common
        .alpn_protocols
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    Ok(Arc::new(cfg))
}

/// Client-side TLS (origination) from an `UpstreamTlsContext`: returns the config and the SNI.
pub fn client_config(
    ctx: &Ctx,
    f: &str,
    u: &tpb::UpstreamTlsContext,
    fallback_sni: &str,
    h2: bool,
) -> Result<(Arc<rustls::ClientConfig>, ServerName<'static>), ConfigError> {
    let common = u.common_tls_context.clone().unwrap_or_default();
    let cf = format!("{f}.common_tls_context");
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&versions(ctx, &cf, &common)?)
        .map_err(|e| ctx.err(&cf, e.to_string()))?;
    let builder = match roots(ctx, &cf, &common)? {
        Some(store) => builder.with_root_certificates(store),
        // Envoy does not verify the server when no validation context is given.
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider()))),
    };
    let mut cfg = match cert_and_key(ctx, &cf, &common)? {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| ctx.err(format!("{cf}.tls_certificates[0]"), e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = if common.alpn_protocols.is_empty() {
        if h2 {
            vec![b"h2".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        }
    } else {
        common
            .alpn_protocols
            .iter()
            .map(|p| p.as_bytes().to_vec())
            .collect()
    };
    let sni = if u.sni.is_empty() {
        fallback_sni
    } else {
        &u.sni
    };
    let name = ServerName::try_from(sni.to_string()).map_err(|_| {
        ctx.err(
            format!("{f}.sni"),
            format!("`{sni}` is not a valid server name"),
        )
    })?;
    Ok((Arc::new(cfg), name))
}

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What a ClientHello says, for filter-chain matching.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Hello {
    pub sni: Option<String>,
    pub alpn: Vec<String>,
}

/// Outcome of parsing the start of a TLS connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Sniff {
    NeedMore,
    NotTls,
    Hello(Hello),
}

/// Parses a ClientHello from the first bytes of a connection (one record; enough in practice).
pub fn parse_client_hello(b: &[u8]) -> Sniff {
    if b.is_empty() {
        return Sniff::NeedMore;
    }
    if b[0] != 0x16 {
        return Sniff::NotTls;
    }
    if b.len() < 5 {
        return Sniff::NeedMore;
    }
    let rec_len = u16::from_be_bytes([b[3], b[4]]) as usize;
    if b.len() < 5 + rec_len {
        return if rec_len > 16 * 1024 + 2048 {
            Sniff::NotTls
        } else {
            Sniff::NeedMore
        };
    }
    let hs = &b[5..5 + rec_len];
    parse_handshake(hs).map_or(Sniff::NotTls, Sniff::Hello)
}

fn parse_handshake(hs: &[u8]) -> Option<Hello> {
    let mut r = Reader(hs);
    if r.u8()? != 1 {
        return None;
    }
    let _len = r.u24()?;
    r.skip(2 + 32)?; // version, random
    let sid = r.u8()? as usize;
    r.skip(sid)?;
    let cs = r.u16()? as usize;
    r.skip(cs)?;
    let cm = r.u8()? as usize;
    r.skip(cm)?;
    let mut hello = Hello::default();
    if r.0.is_empty() {
        return Some(hello);
    }
    let ext_len = r.u16()? as usize;
    let mut ext = Reader(r.take(ext_len)?);
    while !ext.0.is_empty() {
        let ty = ext.u16()?;
        let len = ext.u16()? as usize;
        let mut body = Reader(ext.take(len)?);
        match ty {
            0 => {
                let _list = body.u16()?;
                while !body.0.is_empty() {
                    let kind = body.u8()?;
                    let n = body.u16()? as usize;
                    let name = body.take(n)?;
                    if kind == 0 {
                        hello.sni = std::str::from_utf8(name)
                            .ok()
                            .map(|s| s.to_ascii_lowercase());
                    }
                }
            }
            16 => {
                let _list = body.u16()?;
                while !body.0.is_empty() {
                    let n = body.u8()? as usize;
                    let p = body.take(n)?;
                    hello.alpn.push(String::from_utf8_lossy(p).into_owned());
                }
            }
            _ => {}
        }
    }
    Some(hello)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Option<u32> {
        self.take(3)
            .map(|b| u32::from_be_bytes([0, b[0], b[1], b[2]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sni_and_alpn_from_a_real_client_hello() {
        // Produce a real ClientHello with rustls itself.
        let cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
            .with_no_client_auth();
        let mut cfg = cfg;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut conn = rustls::ClientConnection::new(
            Arc::new(cfg),
            ServerName::try_from("Example.COM").unwrap(),
        )
        .unwrap();
        let mut buf = Vec::new();
        conn.write_tls(&mut buf).unwrap();
        assert_eq!(parse_client_hello(&buf[..3]), Sniff::NeedMore);
        assert_eq!(
            parse_client_hello(&buf),
            Sniff::Hello(Hello {
                sni: Some("example.com".into()),
                alpn: vec!["h2".into(), "http/1.1".into()]
            })
        );
        assert_eq!(parse_client_hello(b"GET / HTTP/1.1\r\n"), Sniff::NotTls);
    }
}
