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

/// Client-side TLS (origination) for one cluster, built once per config generation.
#[derive(Debug)]
pub struct UpstreamTls {
    pub config: Arc<rustls::ClientConfig>,
    /// For a cluster that follows the downstream protocol: the same settings offering ALPN
    /// `h2`, for the connections that carry HTTP/2 (`config` then offers `http/1.1`).
    pub config_h2: Option<Arc<rustls::ClientConfig>>,
    /// `UpstreamTlsContext.sni`; None sends no SNI (Envoy sends one only when it is set).
    pub sni: Option<ServerName<'static>>,
}

impl UpstreamTls {
    /// The name to hand rustls for a connection to `ip`: the configured SNI, else the IP
    /// itself (for which rustls sends no SNI extension).
    pub fn server_name(&self, ip: std::net::IpAddr) -> ServerName<'static> {
        self.sni
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(ip.into()))
    }
}

/// Client-side TLS (origination) from an `UpstreamTlsContext`.
///
/// Envoy semantics: SNI is sent only when `sni` is set, and a `validation_context` with
/// `trusted_ca` verifies the certificate chain only. The server's name is checked only
/// through SAN matchers (`match_typed_subject_alt_names`), which Weft does not accept, so
/// the name is never checked: neither against `sni` nor against the endpoint's address.
/// `h2`: the cluster speaks HTTP/2 (ALPN `h2`); `both`: it follows the downstream protocol, so
/// HTTP/1 and HTTP/2 connections each get their own ALPN offer.
pub fn client_config(
    ctx: &Ctx,
    f: &str,
    u: &tpb::UpstreamTlsContext,
    h2: bool,
    both: bool,
) -> Result<UpstreamTls, ConfigError> {
    let common = u.common_tls_context.clone().unwrap_or_default();
    let cf = format!("{f}.common_tls_context");
    #[allow(deprecated)] // the old matcher field still means "check the name"
    if let Some(tpb::common_tls_context::ValidationContextType::ValidationContext(vc)) =
        &common.validation_context_type
        && (!vc.match_typed_subject_alt_names.is_empty() || !vc.match_subject_alt_names.is_empty())
    {
        // The verifier below never checks names; refuse rather than silently skip a matcher.
        return Err(ctx.err(
            format!("{cf}.validation_context.match_typed_subject_alt_names"),
            "subject alt name matchers are not supported",
        ));
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&versions(ctx, &cf, &common)?)
        .map_err(|e| ctx.err(&cf, e.to_string()))?;
    let builder = match roots(ctx, &cf, &common)? {
        Some(store) => {
            let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(store),
                provider(),
            )
            .build()
            .map_err(|e| ctx.err(format!("{cf}.validation_context"), e.to_string()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
        }
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
    let config_h2 = (both && common.alpn_protocols.is_empty()).then(|| {
        let mut c = cfg.clone();
        c.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(c)
    });
    let sni = if u.sni.is_empty() {
        None
    } else {
        Some(ServerName::try_from(u.sni.clone()).map_err(|_| {
            ctx.err(
                format!("{f}.sni"),
                format!("`{}` is not a valid server name", u.sni),
            )
        })?)
    };
    Ok(UpstreamTls {
        config: Arc::new(cfg),
        config_h2,
        sni,
    })
}

/// Verifies the server's chain against the trusted CAs but not its name (see
/// [`client_config`]). WebPKI checks the chain before the name, so a name mismatch is the
/// only error left once the chain is good.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use rustls::CertificateError as C;
        match self
            .0
            .verify_server_cert(end_entity, intermediates, name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                C::NotValidForName | C::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
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

    fn ca(name: &str) -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, name.to_string());
        let k = rcgen::KeyPair::generate().unwrap();
        let c = p.self_signed(&k).unwrap();
        (c, rcgen::Issuer::new(p, k))
    }

    /// A server config whose leaf certificate names `host`, signed by `issuer`.
    fn server(
        host: &str,
        issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
    ) -> Arc<rustls::ServerConfig> {
        let p = rcgen::CertificateParams::new(vec![host.to_string()]).unwrap();
        let k = rcgen::KeyPair::generate().unwrap();
        let c = p.signed_by(&k, issuer).unwrap();
        let key = PrivateKeyDer::try_from(k.serialize_der()).unwrap();
        Arc::new(
            rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![c.der().clone()], key)
                .unwrap(),
        )
    }

    fn upstream(ca_pem: Option<&str>, sni: &str) -> Result<UpstreamTls, ConfigError> {
        let mut common = tpb::CommonTlsContext::default();
        if let Some(pem) = ca_pem {
            common.validation_context_type = Some(
                tpb::common_tls_context::ValidationContextType::ValidationContext(
                    tpb::CertificateValidationContext {
                        trusted_ca: Some(DataSource {
                            specifier: Some(Specifier::InlineString(pem.to_string())),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ),
            );
        }
        let u = tpb::UpstreamTlsContext {
            common_tls_context: Some(common),
            sni: sni.to_string(),
            ..Default::default()
        };
        client_config(
            &Ctx::new("cluster", "outbound|443||x.example"),
            "transport_socket.typed_config",
            &u,
            false,
            false,
        )
    }

    /// A cluster that follows the downstream protocol offers `h2` on the connections that carry
    /// HTTP/2 and `http/1.1` on the others; an explicit ALPN list is used for both as given.
    #[test]
    fn downstream_protocol_clusters_get_an_h2_alpn_config() {
        let ctx = Ctx::new("cluster", "c");
        let u = tpb::UpstreamTlsContext::default();
        let t = client_config(&ctx, "ts", &u, false, true).unwrap();
        assert_eq!(t.config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let h2 = t.config_h2.expect("an h2 config");
        assert_eq!(h2.alpn_protocols, vec![b"h2".to_vec()]);
        let t = client_config(&ctx, "ts", &u, false, false).unwrap();
        assert!(t.config_h2.is_none());
        let explicit = tpb::UpstreamTlsContext {
            common_tls_context: Some(tpb::CommonTlsContext {
                alpn_protocols: vec!["h2".into(), "http/1.1".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let t = client_config(&ctx, "ts", &explicit, false, true).unwrap();
        assert!(t.config_h2.is_none());
        assert_eq!(t.config.alpn_protocols.len(), 2);
    }

    /// Runs a handshake in memory; returns the SNI the server saw, or the client's error.
    fn handshake(
        client: &UpstreamTls,
        server: Arc<rustls::ServerConfig>,
    ) -> Result<Option<String>, rustls::Error> {
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        let mut c = rustls::ClientConnection::new(client.config.clone(), client.server_name(ip))?;
        let mut s = rustls::ServerConnection::new(server).unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap();
            if !buf.is_empty() {
                s.read_tls(&mut &buf[..]).unwrap();
                // A server-side failure shows up as the client's alert below.
                let _ = s.process_new_packets();
            }
            let mut buf = Vec::new();
            s.write_tls(&mut buf).unwrap();
            if !buf.is_empty() {
                c.read_tls(&mut &buf[..]).unwrap();
                c.process_new_packets()?;
            }
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(s.server_name().map(str::to_string));
            }
        }
        panic!("handshake did not finish");
    }

    #[test]
    fn trusted_ca_verifies_the_chain_but_not_the_name_and_sends_no_sni_by_default() {
        let (ca_cert, issuer) = ca("test CA");
        let client = upstream(Some(&ca_cert.pem()), "").unwrap();
        assert!(client.sni.is_none());
        // The backend's certificate names another host; the connection is to an IP.
        let seen = handshake(&client, server("backend.other.example", &issuer)).unwrap();
        assert_eq!(seen, None, "no SNI is sent when `sni` is unset");
    }

    #[test]
    fn configured_sni_is_sent_and_not_checked_against_the_certificate() {
        let (ca_cert, issuer) = ca("test CA");
        let client = upstream(Some(&ca_cert.pem()), "api.example.com").unwrap();
        let seen = handshake(&client, server("backend.other.example", &issuer)).unwrap();
        assert_eq!(seen.as_deref(), Some("api.example.com"));
    }

    #[test]
    fn a_certificate_from_another_ca_is_refused() {
        let (ca_cert, _) = ca("trusted CA");
        let (_, other) = ca("other CA");
        let client = upstream(Some(&ca_cert.pem()), "").unwrap();
        let err = handshake(&client, server("backend.example", &other)).unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
            ),
            "{err:?}"
        );
    }

    #[test]
    fn without_a_validation_context_anything_is_accepted() {
        let (_, other) = ca("other CA");
        let client = upstream(None, "").unwrap();
        assert!(handshake(&client, server("whatever.example", &other)).is_ok());
    }

    #[test]
    fn san_matchers_are_refused_rather_than_ignored() {
        let (ca_cert, _) = ca("test CA");
        let u = tpb::UpstreamTlsContext {
            common_tls_context: Some(tpb::CommonTlsContext {
                validation_context_type: Some(
                    tpb::common_tls_context::ValidationContextType::ValidationContext(
                        tpb::CertificateValidationContext {
                            trusted_ca: Some(DataSource {
                                specifier: Some(Specifier::InlineString(ca_cert.pem())),
                                ..Default::default()
                            }),
                            match_typed_subject_alt_names: vec![
                                tpb::SubjectAltNameMatcher::default(),
                            ],
                            ..Default::default()
                        },
                    ),
                ),
                ..Default::default()
            }),
            ..Default::default()
        };
        let e = client_config(&Ctx::new("cluster", "c"), "ts", &u, false, false).unwrap_err();
        assert!(e.to_string().contains("subject alt name"), "{e}");
    }

    #[test]
    fn an_invalid_explicit_sni_is_a_config_error_naming_sni() {
        let e = upstream(None, "outbound|443||x").err().unwrap();
        assert!(e.to_string().contains("sni"), "{e}");
    }
}
