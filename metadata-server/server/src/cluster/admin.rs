//! What `cairn-index layout` and `cairn-index status` do, against etcd:
//! stage changes, apply them as the next version (compare-and-swap, so
//! two operators cannot race), and read the cluster's state.

use cairn_proto::v1;

use super::etcd::{Etcd, EtcdError};
use super::layout::{self, LayoutError};
use super::status::{Status, status};

/// A failed layout command.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// etcd failed or another writer raced this one.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// The change cannot be made.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// A node to add has not registered.
    #[error(
        "node {0} is not registered in etcd: start it with `cairn-index serve --node-id {0} --etcd ...` first"
    )]
    NotRegistered(String),
}

/// Stages adding nodes `ids` (with the capacity and address they
/// registered with) and, optionally, a new replication factor.
pub async fn stage_add(
    etcd: &Etcd,
    ids: &[String],
    replication: Option<u32>,
) -> Result<v1::StagedLayout, AdminError> {
    let registered = etcd.registrations().await?;
    let mut nodes = Vec::new();
    for id in ids {
        let r = registered
            .get(id)
            .ok_or_else(|| AdminError::NotRegistered(id.clone()))?;
        nodes.push(v1::LayoutNode {
            id: id.clone(),
            address: r.address.clone(),
            capacity: r.capacity.max(1),
        });
    }
    let mut staged = etcd.staged().await?;
    layout::stage_add(&mut staged.value, nodes, replication);
    etcd.put_if_unchanged("layout-staged", &staged.value, staged.revision, None)
        .await?;
    Ok(staged.value)
}

/// Stages removing nodes `ids`: they drain (their partitions move to the
/// others) once the change is applied, then hold nothing.
pub async fn stage_remove(etcd: &Etcd, ids: &[String]) -> Result<v1::StagedLayout, AdminError> {
    let current = etcd.layout().await?;
    let mut staged = etcd.staged().await?;
    layout::stage_remove(&mut staged.value, &current.value, ids)?;
    etcd.put_if_unchanged("layout-staged", &staged.value, staged.revision, None)
        .await?;
    Ok(staged.value)
}

/// Applies the staged changes as the next version; returns the new layout.
pub async fn apply(etcd: &Etcd) -> Result<v1::Layout, AdminError> {
    let current = etcd.layout().await?;
    let staged = etcd.staged().await?;
    let next = layout::apply(&current.value, &staged.value)?;
    etcd.put_if_unchanged(
        "layout",
        &next,
        current.revision,
        Some(("layout-staged", staged.revision)),
    )
    .await?;
    Ok(next)
}

/// The applied layout and the staged changes.
pub async fn show(etcd: &Etcd) -> Result<(v1::Layout, v1::StagedLayout), AdminError> {
    Ok((etcd.layout().await?.value, etcd.staged().await?.value))
}

/// The cluster's state.
pub async fn cluster_status(etcd: &Etcd) -> Result<Status, AdminError> {
    let layout = etcd.layout().await?.value;
    let staged = etcd.staged().await?.value;
    let regs = etcd.registrations().await?;
    let sync = etcd.sync_progress().await?;
    Ok(status(&layout, &staged, &regs, &sync))
}
