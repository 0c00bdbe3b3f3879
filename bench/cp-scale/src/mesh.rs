//! The benchmark's mesh, written as Istio YAML into the directory `weft up` watches: one
//! ServiceEntry per service (`svc-N.bench.svc.cluster.local`, port 8080 HTTP, STATIC, inline
//! endpoints in 127.1.x.y labelled v1/v2), a DestinationRule with subsets v1/v2 and a
//! VirtualService splitting traffic between them for the first services.
//!
//! It exists so the scale is a parameter and the edits the benchmark makes (a weight, an
//! endpoint) are the same text generator, never hand-written YAML. It must not write anything
//! outside the directory it is given, and every edit is atomic (write a dot-file, rename): the
//! control plane polls the directory and must never read half a file. The endpoint addresses are
//! never contacted by anyone.

use anyhow::{Context, Result, bail};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// Namespace of every generated resource and of the simulated proxies.
pub const NAMESPACE: &str = "bench";
/// The one service port.
pub const PORT: u16 = 8080;
/// Addresses available in 127.1.0.1–127.1.249.250 (the last octet stays 1..=250).
const MAX_ENDPOINTS: usize = 250 * 250;
/// Third octet of the replacement address the endpoint-change step writes (outside the range
/// generated endpoints use).
const MOVED_OCTET: u8 = 254;

/// The size of the generated mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scale {
    pub services: usize,
    pub endpoints_per_service: usize,
    /// Services 0..with_subsets get a DestinationRule with subsets v1 and v2.
    pub with_subsets: usize,
    /// Services 0..with_routes get a VirtualService (weighted v1/v2).
    pub with_routes: usize,
}

impl Scale {
    pub fn validate(&self) -> Result<()> {
        if self.services == 0 || self.endpoints_per_service == 0 {
            bail!("need at least one service with one endpoint");
        }
        if self.services.saturating_mul(self.endpoints_per_service) > MAX_ENDPOINTS {
            bail!("at most {MAX_ENDPOINTS} endpoints fit in 127.1.0.0/16 as generated");
        }
        if self.with_subsets > self.services || self.with_routes > self.services {
            bail!("subsets/routes are for existing services only");
        }
        if self.with_routes > self.with_subsets {
            bail!("VirtualServices route to subsets: --routes must not exceed --subsets");
        }
        if self.with_routes == 0 {
            bail!("the change runs edit a VirtualService: need --routes ≥ 1");
        }
        Ok(())
    }

    pub fn endpoints(&self) -> usize {
        self.services * self.endpoints_per_service
    }

    /// Outbound clusters a sidecar gets: one per service, plus one per subset.
    pub fn clusters(&self) -> usize {
        self.services + 2 * self.with_subsets
    }
}

/// `svc-N.bench.svc.cluster.local`.
pub fn host(i: usize) -> String {
    format!("svc-{i}.{NAMESPACE}.svc.cluster.local")
}

/// Istio's outbound cluster name for service `i` (`subset` empty for the service itself).
pub fn cluster(i: usize, subset: &str) -> String {
    format!("outbound|{PORT}|{subset}|{}", host(i))
}

/// Address of endpoint `j` of service `i`: 127.1.x.y, distinct for every (i, j).
pub fn endpoint_ip(scale: &Scale, i: usize, j: usize) -> Ipv4Addr {
    let k = i * scale.endpoints_per_service + j;
    // k < MAX_ENDPOINTS (validated), so both octets fit.
    let x = u8::try_from(k / 250).unwrap_or(u8::MAX);
    let y = u8::try_from(k % 250 + 1).unwrap_or(u8::MAX);
    Ipv4Addr::new(127, 1, x, y)
}

/// Subset label of endpoint `j`: even ones v1, odd ones v2.
pub fn version_of(j: usize) -> &'static str {
    if j.is_multiple_of(2) { "v1" } else { "v2" }
}

/// The ServiceEntry of service `i`. `moved` replaces endpoint 0's address with 127.1.254.`moved`
/// (the endpoint-change step).
pub fn service_entry(scale: &Scale, i: usize, moved: Option<u8>) -> String {
    let mut s = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: svc-{i}\n  namespace: {NAMESPACE}\nspec:\n  hosts: [{}]\n  location: MESH_INTERNAL\n  ports: [{{number: {PORT}, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints:\n",
        host(i)
    );
    for j in 0..scale.endpoints_per_service {
        let ip = match moved {
            Some(m) if j == 0 => Ipv4Addr::new(127, 1, MOVED_OCTET, m),
            _ => endpoint_ip(scale, i, j),
        };
        let _ = writeln!(
            s,
            "  - {{address: {ip}, labels: {{app: svc-{i}, version: {}}}}}",
            version_of(j)
        );
    }
    s
}

/// The DestinationRule of service `i`: subsets v1 and v2 by `version` label.
pub fn destination_rule(i: usize) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: svc-{i}\n  namespace: {NAMESPACE}\nspec:\n  host: {h}\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n",
        h = host(i)
    )
}

/// The VirtualService of service `i`: `v1_weight`% to v1, the rest to v2.
pub fn virtual_service(i: usize, v1_weight: u32) -> String {
    let w = v1_weight.min(100);
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: svc-{i}\n  namespace: {NAMESPACE}\nspec:\n  hosts: [{h}]\n  http:\n  - route:\n    - destination: {{host: {h}, subset: v1}}\n      weight: {w}\n    - destination: {{host: {h}, subset: v2}}\n      weight: {}\n",
        100 - w,
        h = host(i)
    )
}

/// Initial v1 weight of every VirtualService.
pub const INITIAL_WEIGHT: u32 = 90;

pub fn se_path(dir: &Path, i: usize) -> PathBuf {
    dir.join("serviceentries").join(format!("svc-{i}.yaml"))
}

pub fn vs_path(dir: &Path, i: usize) -> PathBuf {
    dir.join("virtualservices").join(format!("svc-{i}.yaml"))
}

fn dr_path(dir: &Path, i: usize) -> PathBuf {
    dir.join("destinationrules").join(format!("svc-{i}.yaml"))
}

/// Writes `text` to `path` through a dot-file in the same directory and a rename, so a poller
/// sees the old file or the new one, never a partial write (and never the dot-file: the
/// control plane skips names starting with `.`).
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// Writes the whole mesh into `dir` (created; must be empty or absent). Returns the number of
/// files written.
pub fn write_all(dir: &Path, scale: &Scale) -> Result<usize> {
    scale.validate()?;
    for sub in ["serviceentries", "destinationrules", "virtualservices"] {
        std::fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("creating {}", dir.join(sub).display()))?;
    }
    let mut files = 0;
    for i in 0..scale.services {
        write_atomic(&se_path(dir, i), &service_entry(scale, i, None))?;
        files += 1;
    }
    for i in 0..scale.with_subsets {
        write_atomic(&dr_path(dir, i), &destination_rule(i))?;
        files += 1;
    }
    for i in 0..scale.with_routes {
        write_atomic(&vs_path(dir, i), &virtual_service(i, INITIAL_WEIGHT))?;
        files += 1;
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const FULL: Scale = Scale {
        services: 1000,
        endpoints_per_service: 5,
        with_subsets: 100,
        with_routes: 100,
    };

    #[test]
    fn endpoint_addresses_are_distinct_and_in_127_1() {
        let mut seen = HashSet::new();
        for i in 0..FULL.services {
            for j in 0..FULL.endpoints_per_service {
                let ip = endpoint_ip(&FULL, i, j);
                assert_eq!(ip.octets()[..2], [127, 1]);
                assert_ne!(ip.octets()[3], 0);
                assert!(ip.octets()[2] < MOVED_OCTET);
                assert!(seen.insert(ip), "duplicate {ip}");
            }
        }
        assert_eq!(seen.len(), 5000);
        assert_eq!(FULL.clusters(), 1200);
    }

    #[test]
    fn generated_yaml_has_what_the_bench_counts_on() {
        let se = service_entry(&FULL, 7, None);
        assert!(se.contains("hosts: [svc-7.bench.svc.cluster.local]"));
        assert!(se.contains("resolution: STATIC"));
        assert_eq!(se.matches("address: 127.1.").count(), 5);
        assert_eq!(se.matches("version: v1").count(), 3);
        let moved = service_entry(&FULL, 7, Some(3));
        assert!(moved.contains("address: 127.1.254.3,"));
        assert_eq!(moved.matches("address: 127.1.").count(), 5);
        let vs = virtual_service(7, 70);
        assert!(vs.contains("weight: 70\n") && vs.contains("weight: 30\n"));
        assert!(destination_rule(7).contains("{name: v2, labels: {version: v2}}"));
        assert_eq!(
            cluster(7, "v1"),
            "outbound|8080|v1|svc-7.bench.svc.cluster.local"
        );
    }

    #[test]
    fn scale_validation() {
        assert!(FULL.validate().is_ok());
        let bad = Scale {
            with_routes: 200,
            ..FULL
        };
        assert!(bad.validate().is_err());
        let huge = Scale {
            services: 100_000,
            ..FULL
        };
        assert!(huge.validate().is_err());
    }

    #[test]
    fn write_all_and_atomic_edit() {
        let dir = std::env::temp_dir().join(format!("cp-scale-gen-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let small = Scale {
            services: 3,
            endpoints_per_service: 2,
            with_subsets: 2,
            with_routes: 1,
        };
        assert_eq!(write_all(&dir, &small).expect("writes"), 6);
        write_atomic(&vs_path(&dir, 0), &virtual_service(0, 10)).expect("edit");
        let text = std::fs::read_to_string(vs_path(&dir, 0)).expect("reads");
        assert!(text.contains("weight: 10\n"));
        let leftovers: Vec<_> = std::fs::read_dir(dir.join("virtualservices"))
            .expect("lists")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "no temp file left behind");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
