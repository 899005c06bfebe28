//! The cluster's records in etcd (keys in `cluster.proto`): reading them,
//! compare-and-swap on the layout, node registrations under leases.
//!
//! Every record is a protobuf message with a `format` field; a record of
//! a format this code does not know is refused, never guessed at.

use std::collections::HashMap;
use std::time::Duration;

use cairn_proto::v1;
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp};
use prost::Message;

use super::layout::FORMAT;

/// A control-plane failure.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// etcd could not be reached or refused the call.
    #[error("etcd ({endpoints}): {source}")]
    Etcd {
        /// The endpoints tried.
        endpoints: String,
        /// What the client said.
        source: etcd_client::Error,
    },
    /// A record that does not decode, or of an unknown format.
    #[error("etcd record {key}: {detail}")]
    Record {
        /// The key.
        key: String,
        /// What is wrong.
        detail: String,
    },
    /// Another writer changed the record first.
    #[error("{0} changed meanwhile (another operator or node wrote it); retry")]
    Conflict(String),
}

/// A record and the etcd revision it was last written at (0: absent).
#[derive(Debug, Clone, Default)]
pub struct Versioned<T> {
    /// The record (its default when absent).
    pub value: T,
    /// etcd's mod revision of the key.
    pub revision: i64,
}

/// A connection to the cluster's etcd, under one key prefix.
#[derive(Clone)]
pub struct Etcd {
    client: Client,
    prefix: String,
    endpoints: String,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Etcd({} {})", self.endpoints, self.prefix)
    }
}

/// How long an etcd call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

fn decode<T: Message + Default>(
    key: &str,
    bytes: &[u8],
    format: fn(&T) -> u32,
) -> Result<T, EtcdError> {
    let value = T::decode(bytes).map_err(|e| EtcdError::Record {
        key: key.to_string(),
        detail: e.to_string(),
    })?;
    match format(&value) {
        f if f > FORMAT => Err(EtcdError::Record {
            key: key.to_string(),
            detail: format!("format {f} is newer than this cairn-index understands ({FORMAT})"),
        }),
        _ => Ok(value),
    }
}

impl Etcd {
    /// Connects to `endpoints` (client URLs); keys live under `prefix`.
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self, EtcdError> {
        let joined = endpoints.join(",");
        let options = ConnectOptions::new()
            .with_connect_timeout(CALL_TIMEOUT)
            .with_timeout(CALL_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), CALL_TIMEOUT);
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|source| EtcdError::Etcd {
                endpoints: joined.clone(),
                source,
            })?;
        let mut prefix = prefix.to_string();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(Self {
            client,
            prefix,
            endpoints: joined,
        })
    }

    fn err(&self, source: etcd_client::Error) -> EtcdError {
        EtcdError::Etcd {
            endpoints: self.endpoints.clone(),
            source,
        }
    }

    /// The full key of `rest`.
    pub fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    /// A handle on the client, for calls this module does not wrap.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The key prefix (ends with `/`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    async fn get_one<T: Message + Default>(
        &self,
        rest: &str,
        format: fn(&T) -> u32,
    ) -> Result<Versioned<T>, EtcdError> {
        let key = self.key(rest);
        let r = self
            .client
            .clone()
            .get(key.clone(), None)
            .await
            .map_err(|e| self.err(e))?;
        match r.kvs().first() {
            None => Ok(Versioned::default()),
            Some(kv) => Ok(Versioned {
                value: decode(&key, kv.value(), format)?,
                revision: kv.mod_revision(),
            }),
        }
    }

    async fn get_all<T: Message + Default>(
        &self,
        rest: &str,
        format: fn(&T) -> u32,
    ) -> Result<HashMap<String, T>, EtcdError> {
        let key = self.key(rest);
        let r = self
            .client
            .clone()
            .get(key.clone(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.err(e))?;
        let mut out = HashMap::new();
        for kv in r.kvs() {
            let full = String::from_utf8_lossy(kv.key()).into_owned();
            let id = full[key.len()..].to_string();
            out.insert(id, decode(&full, kv.value(), format)?);
        }
        Ok(out)
    }

    /// The applied layout.
    pub async fn layout(&self) -> Result<Versioned<v1::Layout>, EtcdError> {
        self.get_one("layout", |l: &v1::Layout| l.format).await
    }

    /// The staged changes.
    pub async fn staged(&self) -> Result<Versioned<v1::StagedLayout>, EtcdError> {
        self.get_one("layout-staged", |s: &v1::StagedLayout| s.format)
            .await
    }

    /// Registrations of the nodes that are up, by id.
    pub async fn registrations(&self) -> Result<HashMap<String, v1::Registration>, EtcdError> {
        self.get_all("nodes/", |r: &v1::Registration| r.format)
            .await
    }

    /// Sync progress of every node, by id.
    pub async fn sync_progress(&self) -> Result<HashMap<String, v1::SyncProgress>, EtcdError> {
        self.get_all("sync/", |s: &v1::SyncProgress| s.format).await
    }

    /// Writes `value` at `rest` if the key is still at `revision` (0: if
    /// it is absent); with `delete`, also deletes that key in the same
    /// transaction under the same condition on it.
    pub async fn put_if_unchanged(
        &self,
        rest: &str,
        value: &impl Message,
        revision: i64,
        delete: Option<(&str, i64)>,
    ) -> Result<(), EtcdError> {
        let key = self.key(rest);
        let mut when = vec![Compare::mod_revision(
            key.clone(),
            CompareOp::Equal,
            revision,
        )];
        let mut ops = vec![TxnOp::put(key.clone(), value.encode_to_vec(), None)];
        if let Some((other, rev)) = delete {
            let other = self.key(other);
            when.push(Compare::mod_revision(other.clone(), CompareOp::Equal, rev));
            ops.push(TxnOp::delete(other, None));
        }
        let r = self
            .client
            .clone()
            .txn(Txn::new().when(when).and_then(ops))
            .await
            .map_err(|e| self.err(e))?;
        if r.succeeded() {
            Ok(())
        } else {
            Err(EtcdError::Conflict(key))
        }
    }

    /// Writes `value` at `rest`, under `lease` when given.
    pub async fn put(
        &self,
        rest: &str,
        value: &impl Message,
        lease: Option<i64>,
    ) -> Result<(), EtcdError> {
        let options = lease.map(|l| PutOptions::new().with_lease(l));
        self.client
            .clone()
            .put(self.key(rest), value.encode_to_vec(), options)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// A new lease of `ttl` seconds.
    pub async fn grant(&self, ttl: i64) -> Result<i64, EtcdError> {
        let r = self
            .client
            .clone()
            .lease_grant(ttl, None)
            .await
            .map_err(|e| self.err(e))?;
        Ok(r.id())
    }

    /// Renews `lease` once; `false` when it has expired.
    pub async fn keep_alive_once(&self, lease: i64) -> Result<bool, EtcdError> {
        let (mut keeper, mut stream) = self
            .client
            .clone()
            .lease_keep_alive(lease)
            .await
            .map_err(|e| self.err(e))?;
        keeper.keep_alive().await.map_err(|e| self.err(e))?;
        match stream.message().await.map_err(|e| self.err(e))? {
            Some(r) => Ok(r.ttl() > 0),
            None => Ok(false),
        }
    }

    /// Revokes `lease` (its keys go at once).
    pub async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        self.client
            .clone()
            .lease_revoke(lease)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The cluster's peer secret, created on first use.
    pub async fn peer_secret(&self) -> Result<Vec<u8>, EtcdError> {
        let key = self.key("peer-secret");
        let fresh = cairn_chunk_store::crypto::random_bytes::<32>().to_vec();
        let r = self
            .client
            .clone()
            .txn(
                Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key.clone(), fresh.clone(), None)])
                    .or_else([TxnOp::get(key.clone(), None)]),
            )
            .await
            .map_err(|e| self.err(e))?;
        if r.succeeded() {
            return Ok(fresh);
        }
        for op in r.op_responses() {
            if let etcd_client::TxnOpResponse::Get(g) = op
                && let Some(kv) = g.kvs().first()
            {
                return Ok(kv.value().to_vec());
            }
        }
        Err(EtcdError::Record {
            key,
            detail: "missing".into(),
        })
    }

    /// Waits until something under the prefix changes, or `timeout`.
    pub async fn changed(&self, timeout: Duration) -> Result<(), EtcdError> {
        let mut watch = self
            .client
            .clone()
            .watch(
                self.prefix.clone(),
                Some(etcd_client::WatchOptions::new().with_prefix()),
            )
            .await
            .map_err(|e| self.err(e))?;
        // The stream opens with etcd's confirmation that the watch exists,
        // and may carry progress notices: neither is a change. (Taking the
        // confirmation for one made every member re-read etcd and recompute
        // its placements in a loop, half a core each while idle.)
        let change = async {
            while let Ok(Some(r)) = watch.message().await {
                if !r.events().is_empty() || r.canceled() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(timeout, change).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// The etcd the test script started; `None` (the test is skipped, saying
    /// why) in a plain `cargo test`.
    fn test_etcd() -> Option<Vec<String>> {
        match std::env::var("CAIRN_TEST_ETCD") {
            Ok(urls) => Some(urls.split(',').map(str::to_string).collect()),
            Err(_) => {
                assert!(
                    std::env::var_os("CAIRN_TEST_REQUIRE_SERVICES").is_none(),
                    "CAIRN_TEST_ETCD is not set, but every service should have been started"
                );
                eprintln!(
                    "skipped: needs etcd (CAIRN_TEST_ETCD is not set); scripts/test-all.sh starts it"
                );
                None
            }
        }
    }

    #[tokio::test]
    async fn changed_waits_for_a_change_under_the_prefix() {
        let Some(urls) = test_etcd() else { return };
        let prefix = format!(
            "/cairn-test-changed-{}-{}/",
            std::process::id(),
            cairn_chunk_store::now_unix_nanos()
        );
        let etcd = Etcd::connect(&urls, &prefix).await.unwrap();

        // Nothing under the prefix changes: the whole timeout passes.
        let quiet = Duration::from_millis(700);
        let start = Instant::now();
        etcd.changed(quiet).await.unwrap();
        assert!(
            start.elapsed() >= quiet,
            "returned after {:?} with nothing changed",
            start.elapsed()
        );

        // A change ends the wait long before the timeout. The writer keeps
        // writing, so a change made before the watch existed cannot be the
        // only one.
        let writer = Etcd::connect(&urls, &prefix).await.unwrap();
        let writes = tokio::spawn(async move {
            for i in 0u64.. {
                writer.put("probe", &i, None).await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let start = Instant::now();
        etcd.changed(Duration::from_secs(60)).await.unwrap();
        writes.abort();
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "a change under the prefix did not end the wait ({:?})",
            start.elapsed()
        );
    }
}
