//! Config sources behind one interface: a watched directory of YAML/JSON files (edits apply
//! live; a broken file is reported with file, line and field and its previous content keeps
//! serving) and an in-memory store fed by the API (`weft apply`). Kubernetes and etcd sources
//! implement the same `Source` trait later.

use crate::translate::Res;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// A key that identifies a resource: (kind, namespace, name).
pub type Key = (String, String, String);

/// A stored resource and where it came from.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Stored {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub source: String,
    pub line: usize,
    /// The whole resource as the user wrote it (apiVersion, kind, metadata, spec).
    pub object: serde_json::Value,
}

impl Stored {
    pub fn key(&self) -> Key {
        (self.kind.clone(), self.namespace.clone(), self.name.clone())
    }
    pub fn res(&self) -> Res {
        Res {
            kind: self.kind.clone(),
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            spec: self
                .object
                .get("spec")
                .cloned()
                .unwrap_or(serde_json::Value::Null),
        }
    }
}

/// What a source currently holds; `changed` tells whether the last poll changed anything.
pub trait Source: Send {
    /// Re-reads the source; returns true if its resources changed.
    fn poll(&mut self) -> bool;
    fn resources(&self) -> Vec<Stored>;
    /// Current problems (file:line: resource: field: message), for the API and logs.
    fn errors(&self) -> Vec<String>;
}

/// Parses text into stored resources, or the list of errors (each naming file, line, field).
pub fn parse(source: &str, text: &str) -> Result<Vec<Stored>, Vec<String>> {
    match weft_api::parse_documents(source, text) {
        Ok(docs) => Ok(docs.iter().map(stored).collect()),
        Err(errs) => Err(errs.into_iter().map(|e| e.to_string()).collect()),
    }
}

/// A parsed resource as the store keeps it.
pub fn stored(p: &weft_api::Parsed) -> Stored {
    let object = serde_json::to_value(&p.resource).unwrap_or(serde_json::Value::Null);
    let (kind, namespace, name) = p.resource.key();
    // The Gateway API's Gateway shares Istio's kind name; keep them apart.
    let kind = if kind == weft_api::Kind::KubernetesGateway {
        "KubernetesGateway".to_string()
    } else {
        kind.to_string()
    };
    Stored {
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
        source: p.source.clone(),
        line: p.line,
        object,
    }
}

#[derive(Debug)]
struct FileState {
    stamp: (SystemTime, u64),
    resources: Vec<Stored>,
    error: Option<Vec<String>>,
}

/// A directory of YAML/JSON files, polled for changes.
#[derive(Debug)]
pub struct DirSource {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
}

impl DirSource {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            files: BTreeMap::new(),
        }
    }

    fn scan(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with('.') {
                continue;
            }
            if p.is_dir() {
                Self::scan(&p, out);
            } else if matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            ) {
                out.push(p);
            }
        }
    }
}

impl Source for DirSource {
    fn poll(&mut self) -> bool {
        let mut found = Vec::new();
        Self::scan(&self.dir, &mut found);
        let mut changed = false;
        let before = self.files.len();
        let present: std::collections::HashSet<&PathBuf> = found.iter().collect();
        self.files.retain(|p, _| present.contains(p));
        changed |= self.files.len() != before;
        for path in found {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let stamp = (
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                meta.len(),
            );
            if self.files.get(&path).is_some_and(|f| f.stamp == stamp) {
                continue;
            }
            let name = path.display().to_string();
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(file = %name, error = %e, "cannot read config file");
                    continue;
                }
            };
            match parse(&name, &text) {
                Ok(resources) => {
                    tracing::info!(file = %name, resources = resources.len(), "config file loaded");
                    self.files.insert(
                        path,
                        FileState {
                            stamp,
                            resources,
                            error: None,
                        },
                    );
                    changed = true;
                }
                Err(errs) => {
                    for e in &errs {
                        tracing::error!("{e} (the previous content of this file keeps serving)");
                    }
                    let previous = self
                        .files
                        .remove(&path)
                        .map(|f| f.resources)
                        .unwrap_or_default();
                    self.files.insert(
                        path,
                        FileState {
                            stamp,
                            resources: previous,
                            error: Some(errs),
                        },
                    );
                }
            }
        }
        changed
    }

    fn resources(&self) -> Vec<Stored> {
        self.files
            .values()
            .flat_map(|f| f.resources.iter().cloned())
            .collect()
    }

    fn errors(&self) -> Vec<String> {
        self.files
            .values()
            .filter_map(|f| f.error.clone())
            .flatten()
            .collect()
    }
}

/// Resources applied through the API.
#[derive(Debug, Default)]
pub struct MemorySource {
    items: BTreeMap<Key, Stored>,
    dirty: bool,
}

impl MemorySource {
    /// Inserts or replaces; returns "created" or "configured" per resource.
    pub fn apply(&mut self, resources: Vec<Stored>) -> Vec<String> {
        self.dirty = true;
        resources
            .into_iter()
            .map(|r| {
                let what = format!("{} {}/{}", r.kind, r.namespace, r.name);
                let verb = if self.items.insert(r.key(), r).is_some() {
                    "configured"
                } else {
                    "created"
                };
                format!("{what} {verb}")
            })
            .collect()
    }

    pub fn delete(&mut self, key: &Key) -> bool {
        let removed = self.items.remove(key).is_some();
        self.dirty |= removed;
        removed
    }
}

impl Source for MemorySource {
    fn poll(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }
    fn resources(&self) -> Vec<Stored> {
        self.items.values().cloned().collect()
    }
    fn errors(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Merges sources: later sources override earlier ones for the same key.
pub fn merged(sources: &[&dyn Source]) -> Vec<Stored> {
    let mut out: BTreeMap<Key, Stored> = BTreeMap::new();
    for s in sources {
        for r in s.resources() {
            out.insert(r.key(), r);
        }
    }
    out.into_values().collect()
}
