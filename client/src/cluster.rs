//! Several servers as one shuffle service: where each partition lives, and how a map attempt spread over
//! several servers is committed so that every server serves the same attempt.
//!
//! - [`assign`]: bounded-load rendezvous hashing of a shuffle's partitions onto the server list. It is
//!   the Spark plugin's placement (`Rendezvous.java`), bit for bit: FNV-1a 64 of the address, SplitMix64
//!   mixing of the address hash with the (shuffle, partition) key, and each partition taking its
//!   highest-scoring server that still has room (every server owns the floor or the ceiling of its share).
//! - [`Cluster`] / [`ClusterPusher`]: one [`MapPusher`] per server; the commit goes to the map's leader
//!   server (`map_index % servers`) first, with the attempt's promises on the other servers (`peers`),
//!   then to every other server. An attempt that loses on the leader commits the winner everywhere else
//!   with the winner's recorded promises (PROTOCOL.md section 6.1). Every server gets a commit for every
//!   map (with no partitions where the attempt pushed nothing), so a fetch of any map range works on
//!   every server.

use crate::{Client, ClientError, ClientOptions, CommitOutcome, MapPusher, PushStats, Result};
use bytes::Bytes;
use croupier_proto::v1 as pb;

/// FNV-1a, 64 bits, of the address's UTF-8 bytes.
pub fn fnv1a64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// SplitMix64 finalizer.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Score of one server for one partition. Compared as signed 64-bit integers, as Java does.
fn score(seed: u64, shuffle_id: u32, partition: u32) -> i64 {
    let key = (u64::from(shuffle_id) << 32) | u64::from(partition);
    mix64(seed ^ mix64(0x9e37_79b9_7f4a_7c15u64.wrapping_mul(key.wrapping_add(1)))) as i64
}

/// Owner (index into `servers`) of every partition of shuffle `shuffle_id`: bounded-load rendezvous
/// hashing, the same as the Spark plugin's. Every server owns `floor` or `ceil` of
/// `num_partitions / servers.len()`. Panics on an empty server list.
pub fn assign(servers: &[String], shuffle_id: u32, num_partitions: u32) -> Vec<usize> {
    assert!(!servers.is_empty(), "placement needs at least one server");
    let seeds: Vec<u64> = servers.iter().map(|s| fnv1a64(s)).collect();
    let n = seeds.len() as u32;
    let floor = num_partitions / n;
    let mut extra = num_partitions % n; // servers that may own floor + 1
    let mut load = vec![0u32; seeds.len()];
    let mut owner = Vec::with_capacity(num_partitions as usize);
    for p in 0..num_partitions {
        let mut best: Option<(usize, i64)> = None;
        for (i, seed) in seeds.iter().enumerate() {
            if load[i] > floor || (load[i] == floor && extra == 0) {
                continue;
            }
            let s = score(*seed, shuffle_id, p);
            if best.is_none_or(|(_, b)| s > b) {
                best = Some((i, s));
            }
        }
        let (i, _) = best.expect("floor * servers + extra == partitions: some server has room");
        if load[i] == floor {
            extra -= 1;
        }
        load[i] += 1;
        owner.push(i);
    }
    owner
}

/// Clients of every server of a cluster, in the order of the server list.
#[derive(Clone)]
pub struct Cluster {
    pub servers: Vec<String>,
    clients: Vec<Client>,
}

impl Cluster {
    pub async fn connect(servers: &[String], options: &ClientOptions) -> Result<Cluster> {
        if servers.is_empty() {
            return Err(ClientError::Protocol("no server given".into()));
        }
        let mut clients = Vec::with_capacity(servers.len());
        for s in servers {
            clients.push(Client::connect(s, options.clone()).await?);
        }
        Ok(Cluster {
            servers: servers.to_vec(),
            clients,
        })
    }

    pub fn client(&self, server: usize) -> &Client {
        &self.clients[server]
    }

    /// Registers the shuffle on every server.
    pub async fn register_shuffle(
        &self,
        app: &str,
        shuffle: u32,
        num_maps: u32,
        num_partitions: u32,
    ) -> Result<()> {
        for c in &self.clients {
            c.register_shuffle(app, shuffle, num_maps, num_partitions)
                .await?;
        }
        Ok(())
    }

    pub fn pusher(
        &self,
        app: &str,
        shuffle: u32,
        num_partitions: u32,
        map_index: u32,
        attempt_id: u64,
    ) -> ClusterPusher {
        ClusterPusher {
            cluster: self.clone(),
            owners: assign(&self.servers, shuffle, num_partitions),
            pushers: self
                .clients
                .iter()
                .map(|c| c.pusher(app, shuffle, map_index, attempt_id))
                .collect(),
            app: app.into(),
            shuffle,
            map_index,
            attempt_id,
        }
    }
}

/// One map attempt's pushes to all the servers of a cluster.
pub struct ClusterPusher {
    cluster: Cluster,
    owners: Vec<usize>,
    pushers: Vec<MapPusher>,
    app: String,
    shuffle: u32,
    map_index: u32,
    attempt_id: u64,
}

impl ClusterPusher {
    /// Pushes one block of `partition` to the server that owns it.
    pub async fn push(&mut self, partition: u32, data: Bytes) -> Result<()> {
        let Some(&server) = self.owners.get(partition as usize) else {
            return Err(ClientError::Protocol(format!(
                "partition {partition} is out of range ({} partitions)",
                self.owners.len()
            )));
        };
        self.pushers[server].push(partition, data).await
    }

    /// Waits for every ack, then commits on the leader and on every other server. Returns the outcome
    /// on the leader (`committed_attempt_id` is the map's winner everywhere) and the summed push stats.
    pub async fn commit(mut self) -> Result<(CommitOutcome, PushStats)> {
        let n = self.pushers.len();
        let mut stats = PushStats::default();
        let mut counts = Vec::with_capacity(n);
        for p in &mut self.pushers {
            p.finish().await?;
            let s = &p.stats;
            stats.blocks += s.blocks;
            stats.bytes += s.bytes;
            stats.batches += s.batches;
            stats.retry_later += s.retry_later;
            stats.stream_restarts += s.stream_restarts;
            stats.duplicate_blocks += s.duplicate_blocks;
            counts.push(p.partition_counts());
        }
        let servers = &self.cluster.servers;
        let leader = self.map_index as usize % n;
        let peers: Vec<pb::PeerPromise> = (0..n)
            .filter(|&s| s != leader && !counts[s].is_empty())
            .map(|s| pb::PeerPromise {
                server: servers[s].clone(),
                partitions: counts[s].clone(),
            })
            .collect();
        let outcome = self
            .cluster
            .client(leader)
            .commit_with_peers(
                &self.app,
                self.shuffle,
                self.map_index,
                self.attempt_id,
                counts[leader].clone(),
                peers,
            )
            .await?;
        let winner = outcome.committed_attempt_id;
        if let Some(unknown) = outcome
            .winner_peers
            .iter()
            .find(|p| !servers.contains(&p.server))
        {
            return Err(ClientError::Protocol(format!(
                "map {}: the winning attempt {winner} pushed to {}, which is not in the server list {servers:?}",
                self.map_index, unknown.server
            )));
        }
        for s in (0..n).filter(|&s| s != leader) {
            // Our own counts when we won; the winner's recorded promise (nothing, when it pushed
            // nothing there) when another attempt did.
            let partitions = if outcome.committed {
                counts[s].clone()
            } else {
                outcome
                    .winner_peers
                    .iter()
                    .find(|p| p.server == servers[s])
                    .map(|p| p.partitions.clone())
                    .unwrap_or_default()
            };
            let r = self
                .cluster
                .client(s)
                .commit(&self.app, self.shuffle, self.map_index, winner, partitions)
                .await?;
            if !r.committed || r.committed_attempt_id != winner {
                return Err(ClientError::Protocol(format!(
                    "map {}: server {} committed attempt {}, but the leader {} decided for attempt {winner}",
                    self.map_index, servers[s], r.committed_attempt_id, servers[leader]
                )));
            }
        }
        Ok((outcome, stats))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn placement_matches_the_spark_plugins_pinned_vectors() {
        // The same vectors as RendezvousTest.fixedVectors in client/spark.
        assert_eq!(fnv1a64(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(
            assign(&list(&["127.0.0.1:19870", "127.0.0.1:19872"]), 0, 8),
            vec![0, 1, 0, 0, 0, 1, 1, 1]
        );
    }

    #[test]
    fn every_server_owns_floor_or_ceil_of_its_share_and_order_does_not_matter() {
        for trial in 0u32..500 {
            let n = 2 + (trial % 4) as usize;
            let servers: Vec<String> = (0..n)
                .map(|i| format!("10.1.{}.{}:19870", trial % 7, i * 13 + trial as usize % 5))
                .collect();
            let partitions = 1 + trial % 40;
            let owner = assign(&servers, trial, partitions);
            let mut count = vec![0u32; n];
            for &o in &owner {
                count[o] += 1;
            }
            let floor = partitions / n as u32;
            let ceil = partitions.div_ceil(n as u32);
            assert!(count.iter().all(|&c| c == floor || c == ceil), "{count:?}");
            let mut reversed = servers.clone();
            reversed.reverse();
            let again = assign(&reversed, trial, partitions);
            for p in 0..partitions as usize {
                assert_eq!(servers[owner[p]], reversed[again[p]]);
            }
        }
    }
}
