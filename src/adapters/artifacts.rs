//! The artifact store: what a request leaves besides its result (its
//! transcript, its patch, the files its preset declares), in a local folder
//! or an S3-compatible bucket behind one interface (`object_store`).
//!
//! Layout: `data/<folder>/<name>` holds each artifact and
//! `index/<folder>.json` the list the result gave (name, size, sha256,
//! URI), `<folder>` being [`artifact_folder`] of the request id. Retention
//! deletes every object older than the setting, index and data alike.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, PutPayload};
use sha2::Digest;

use crate::model::workspace::{artifact_folder, is_artifact_name, ArtifactRecord};

/// What a URI's path segment escapes (RFC 3986 unreserved characters stay).
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The store refused or could not be reached.
    #[error("artifact store: {0}")]
    Store(#[from] object_store::Error),
    /// No such request or artifact.
    #[error("no artifact {name:?} of request {request_id:?}")]
    NotFound {
        /// The request.
        request_id: String,
        /// The name asked for.
        name: String,
    },
    /// The name is not one an artifact can have.
    #[error("{0:?} is not an artifact name")]
    BadName(String),
    /// The store's settings are wrong.
    #[error("artifact store settings: {0}")]
    Settings(String),
}

/// Where artifacts live.
#[derive(Clone)]
pub struct Artifacts {
    store: Arc<dyn ObjectStore>,
    /// What URIs start with: `http://<addr>` (served by the daemon) or
    /// `s3://bucket/prefix`.
    uri_base: String,
    /// Served under `/v1/artifacts/` (a local folder), or named in place.
    served: bool,
}

impl std::fmt::Debug for Artifacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Artifacts")
            .field("uri_base", &self.uri_base)
            .finish()
    }
}

impl Artifacts {
    /// A store in the local folder `dir` (made if missing), its artifacts'
    /// URIs under `http_base` (the daemon's HTTP address).
    pub fn local(dir: &std::path::Path, http_base: &str) -> Result<Artifacts, ArtifactError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            ArtifactError::Settings(format!("artifacts_dir {}: {e}", dir.display()))
        })?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir)?;
        Ok(Artifacts {
            store: Arc::new(store),
            uri_base: http_base.trim_end_matches('/').to_string(),
            served: true,
        })
    }

    /// A store in the bucket of `url` (`s3://bucket[/prefix]`), configured
    /// by the `AWS_*` variables of the daemon's environment
    /// (`AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, `AWS_REGION`, keys).
    pub fn s3(url: &str) -> Result<Artifacts, ArtifactError> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| ArtifactError::Settings(format!("{url:?} is not an s3:// URL")))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(ArtifactError::Settings(format!("{url:?} names no bucket")));
        }
        let s3 = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()?;
        let prefix = prefix.trim_matches('/');
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(s3, prefix))
        };
        Ok(Artifacts {
            store,
            uri_base: format!(
                "s3://{bucket}{}",
                if prefix.is_empty() {
                    String::new()
                } else {
                    format!("/{prefix}")
                }
            ),
            served: false,
        })
    }

    fn data_path(request_id: &str, name: &str) -> StorePath {
        let folder = artifact_folder(request_id);
        StorePath::from_iter(["data", folder.as_str()].into_iter().chain(name.split('/')))
    }

    fn index_path(request_id: &str) -> StorePath {
        StorePath::from_iter(["index", &format!("{}.json", artifact_folder(request_id))])
    }

    /// The URI of artifact `name` of `request_id`.
    pub fn uri(&self, request_id: &str, name: &str) -> String {
        if self.served && !self.uri_base.starts_with("file://") {
            let enc = |s: &str| percent_encoding::utf8_percent_encode(s, SEGMENT).to_string();
            let name: Vec<String> = name.split('/').map(enc).collect();
            format!(
                "{}/v1/artifacts/{}/{}",
                self.uri_base,
                enc(request_id),
                name.join("/")
            )
        } else {
            format!("{}/{}", self.uri_base, Self::data_path(request_id, name))
        }
    }

    /// Stores `bytes` as artifact `name` of `request_id`.
    pub async fn put(
        &self,
        request_id: &str,
        name: &str,
        bytes: Vec<u8>,
    ) -> Result<ArtifactRecord, ArtifactError> {
        if !is_artifact_name(name) {
            return Err(ArtifactError::BadName(name.to_string()));
        }
        let record = ArtifactRecord {
            name: name.to_string(),
            size: bytes.len() as u64,
            sha256: hex::encode(sha2::Sha256::digest(&bytes)),
            uri: self.uri(request_id, name),
        };
        self.store
            .put(&Self::data_path(request_id, name), PutPayload::from(bytes))
            .await?;
        Ok(record)
    }

    /// Records the list of `request_id`'s artifacts (what `ls` shows).
    pub async fn write_index(
        &self,
        request_id: &str,
        records: &[ArtifactRecord],
    ) -> Result<(), ArtifactError> {
        let body = serde_json::json!({"request_id": request_id, "artifacts": records});
        self.store
            .put(
                &Self::index_path(request_id),
                PutPayload::from(body.to_string().into_bytes()),
            )
            .await?;
        Ok(())
    }

    /// The artifacts of `request_id`, as its result listed them.
    pub async fn list(&self, request_id: &str) -> Result<Vec<ArtifactRecord>, ArtifactError> {
        let got = match self.store.get(&Self::index_path(request_id)).await {
            Err(object_store::Error::NotFound { .. }) => {
                return Err(ArtifactError::NotFound {
                    request_id: request_id.into(),
                    name: String::new(),
                })
            }
            other => other?,
        };
        let bytes = got.bytes().await?;
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        Ok(serde_json::from_value(v["artifacts"].clone()).unwrap_or_default())
    }

    /// The content of artifact `name` of `request_id`.
    pub async fn get(&self, request_id: &str, name: &str) -> Result<bytes::Bytes, ArtifactError> {
        if !is_artifact_name(name) {
            return Err(ArtifactError::BadName(name.to_string()));
        }
        match self.store.get(&Self::data_path(request_id, name)).await {
            Ok(r) => Ok(r.bytes().await?),
            Err(object_store::Error::NotFound { .. }) => Err(ArtifactError::NotFound {
                request_id: request_id.into(),
                name: name.into(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes every object older than `retention`; how many went.
    pub async fn sweep(&self, retention: Duration) -> Result<usize, ArtifactError> {
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
        let mut old = Vec::new();
        let mut listing = self.store.list(None);
        while let Some(meta) = listing.next().await {
            let meta = meta?;
            if meta.last_modified < cutoff {
                old.push(meta.location);
            }
        }
        drop(listing);
        let mut gone = 0;
        for path in old {
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => gone += 1,
                Err(e) => {
                    tracing::warn!(path = %path, error = %e, "deleting an old artifact failed")
                }
            }
        }
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_local_store_keeps_lists_serves_and_sweeps() {
        let dir = tempfile::tempdir().unwrap();
        let a = Artifacts::local(dir.path(), "http://127.0.0.1:9090/").unwrap();
        let r = a
            .put("req-1", "reports/a b.txt", b"hello".to_vec())
            .await
            .unwrap();
        assert_eq!(r.size, 5);
        assert_eq!(
            r.sha256,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(
            r.uri,
            "http://127.0.0.1:9090/v1/artifacts/req-1/reports/a%20b.txt"
        );
        a.write_index("req-1", std::slice::from_ref(&r))
            .await
            .unwrap();
        assert_eq!(a.list("req-1").await.unwrap(), vec![r]);
        assert_eq!(
            &a.get("req-1", "reports/a b.txt").await.unwrap()[..],
            b"hello"
        );
        assert!(matches!(
            a.get("req-1", "../../etc/passwd").await,
            Err(ArtifactError::BadName(_))
        ));
        assert!(matches!(
            a.get("req-1", "nope").await,
            Err(ArtifactError::NotFound { .. })
        ));
        assert!(matches!(
            a.list("other").await,
            Err(ArtifactError::NotFound { .. })
        ));
        assert_eq!(a.sweep(Duration::from_secs(3600)).await.unwrap(), 0);
        assert_eq!(a.sweep(Duration::ZERO).await.unwrap(), 2);
        assert!(a.list("req-1").await.is_err());
    }
}
