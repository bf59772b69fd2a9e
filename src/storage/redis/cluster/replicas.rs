//! Replica acknowledgement on a cluster (see the shared [`replicas`](super::super::replicas)
//! module for what and why): the write and its `WAIT` go as one pipeline to the master of the
//! write's slot. A `WAIT` sent apart could reach another node (the slot moved in between) and
//! count the replicas of nothing.

use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use redis::{ScriptInvocation, Value};

use super::super::replicas::WriteTarget;

/// The master of `key`'s slot, over the cluster's connection to it.
pub(super) struct SlotMaster<'a> {
    pub(super) conn: &'a mut ClusterConnection,
    pub(super) key: &'a str,
}

impl WriteTarget for SlotMaster<'_> {
    async fn send(&mut self, pipe: redis::Pipeline) -> redis::RedisResult<Vec<Value>> {
        let route =
            SingleNodeRoutingInfo::SpecificNode(Route::with_key(self.key, SlotAddr::Master));
        self.conn.route_pipeline(pipe, 0, 2, route).await
    }

    async fn load(&mut self, invocation: &ScriptInvocation<'_>) -> redis::RedisResult<String> {
        // `SCRIPT LOAD` goes to every master: the script is then known wherever the slot is.
        invocation.load_async(self.conn).await
    }
}
