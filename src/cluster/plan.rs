//! `ferry plan`: what a topology change moves, without touching data. Partition level always;
//! with a scan, the real objects and bytes found on the disks.

use super::placement::{PARTITIONS, PartitionTable, Strategy, disk_in_set, partition_of};
use super::topology::{SetState, Topology};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

#[derive(Debug, Serialize)]
pub struct SetRow {
    pub id: String,
    pub state_before: Option<SetState>,
    pub state_after: Option<SetState>,
    pub partitions_before: u64,
    pub share_before: f64,
    pub partitions_after: u64,
    pub share_after: f64,
    /// Partitions this set receives / gives away (primary owner).
    pub gains: u64,
    pub losses: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct DiskScan {
    pub disk: String,
    pub path: PathBuf,
    pub present: bool,
    pub objects: u64,
    pub bytes: u64,
    pub misplaced_objects: u64,
    pub misplaced_bytes: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct ScanReport {
    pub objects: u64,
    pub bytes: u64,
    pub misplaced_objects: u64,
    pub misplaced_bytes: u64,
    /// Objects on disks that are gone (removed sets whose paths no longer exist are counted
    /// as missing disks; their objects cannot be seen).
    pub missing_disks: Vec<String>,
    pub disks: Vec<DiskScan>,
    pub errors: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct PlanReport {
    pub strategy: Strategy,
    pub generation_from: u64,
    pub generation_to: u64,
    pub partitions: u64,
    /// Partitions whose primary owner set changes.
    pub moved_partitions: u64,
    pub moved_fraction: f64,
    /// The least that must move to reach the new weights: sum of share increases.
    pub ideal_fraction: f64,
    /// moved / ideal (1.0 is perfect).
    pub moved_vs_ideal: f64,
    /// Partitions whose primary (set, disk) changes, including moves between disks of a set.
    pub moved_partitions_disk_level: u64,
    /// Replica copies that must be made: owners after that were not owners before.
    pub replica_moves: u64,
    pub hottest_vs_fair_before: f64,
    pub hottest_vs_fair_after: f64,
    pub sets: Vec<SetRow>,
    pub scan: Option<ScanReport>,
}

/// The fair share of each active set (weight / total).
fn fair_shares(t: &Topology) -> HashMap<&str, f64> {
    let total: f64 = t.active_sets().map(|s| s.weight).sum();
    t.active_sets()
        .map(|s| (s.id.as_str(), s.weight / total))
        .collect()
}

/// One row per set of either topology, with its state before and after.
fn set_rows(old: &Topology, new: &Topology) -> BTreeMap<String, SetRow> {
    let mut rows: BTreeMap<String, SetRow> = BTreeMap::new();
    for (t, before) in [(old, true), (new, false)] {
        for s in t.sets() {
            let r = rows.entry(s.id.clone()).or_insert_with(|| SetRow {
                id: s.id.clone(),
                state_before: None,
                state_after: None,
                partitions_before: 0,
                share_before: 0.0,
                partitions_after: 0,
                share_after: 0.0,
                gains: 0,
                losses: 0,
            });
            if before {
                r.state_before = Some(s.state);
            } else {
                r.state_after = Some(s.state);
            }
        }
    }
    rows
}

pub fn plan(old: &Topology, new: &Topology, strategy: Strategy, vnodes: u32) -> PlanReport {
    let (a, b) = (
        PartitionTable::build(old, strategy, vnodes),
        PartitionTable::build(new, strategy, vnodes),
    );
    let mut rows = set_rows(old, new);
    let (mut moved, mut moved_disk, mut replica_moves) = (0u64, 0u64, 0u64);
    for p in 0..=u16::MAX {
        let (oa, ob) = (a.owner_id(p), b.owner_id(p));
        rows.get_mut(oa).expect("known set").partitions_before += 1;
        rows.get_mut(ob).expect("known set").partitions_after += 1;
        if oa != ob {
            moved += 1;
            moved_disk += 1;
            rows.get_mut(oa).expect("known set").losses += 1;
            rows.get_mut(ob).expect("known set").gains += 1;
        } else {
            let (sa, sb) = (old.set(oa).expect("set"), new.set(ob).expect("set"));
            if sa.disks[disk_in_set(p, sa)].id != sb.disks[disk_in_set(p, sb)].id {
                moved_disk += 1;
            }
        }
        let before: Vec<&str> = a
            .owners(p)
            .iter()
            .map(|&i| a.candidates.ids[i as usize].as_str())
            .collect();
        replica_moves += b
            .owners(p)
            .iter()
            .filter(|&&i| !before.contains(&b.candidates.ids[i as usize].as_str()))
            .count() as u64;
    }
    for r in rows.values_mut() {
        r.share_before = r.partitions_before as f64 / PARTITIONS as f64;
        r.share_after = r.partitions_after as f64 / PARTITIONS as f64;
    }
    let (fa, fb) = (fair_shares(old), fair_shares(new));
    let ideal: f64 = fb
        .iter()
        .map(|(id, &s)| (s - fa.get(id).copied().unwrap_or(0.0)).max(0.0))
        .sum();
    let moved_fraction = moved as f64 / PARTITIONS as f64;
    PlanReport {
        strategy,
        generation_from: old.generation,
        generation_to: new.generation,
        partitions: PARTITIONS as u64,
        moved_partitions: moved,
        moved_fraction,
        ideal_fraction: ideal,
        moved_vs_ideal: if ideal > 0.0 {
            moved_fraction / ideal
        } else if moved == 0 {
            1.0
        } else {
            f64::INFINITY
        },
        moved_partitions_disk_level: moved_disk,
        replica_moves,
        hottest_vs_fair_before: a.hottest_vs_fair(),
        hottest_vs_fair_after: b.hottest_vs_fair(),
        sets: rows.into_values().collect(),
        scan: None,
    }
}

/// Walks every disk of both topologies and counts the objects whose disk is not an owner
/// under `new` (with replicas, not one of the owners' disks).
pub fn scan(old: &Topology, new: &Topology, table: &PartitionTable) -> ScanReport {
    let mut rep = ScanReport::default();
    let mut seen = std::collections::HashSet::new();
    for t in [old, new] {
        for set in t.sets() {
            for d in &set.disks {
                if !seen.insert(d.path.clone()) {
                    continue;
                }
                let key = super::topology::disk_key(set, d);
                let mut ds = DiskScan {
                    disk: key.clone(),
                    path: d.path.clone(),
                    present: d.path.is_dir(),
                    ..Default::default()
                };
                if !ds.present {
                    rep.missing_disks.push(key);
                    rep.disks.push(ds);
                    continue;
                }
                super::store::walk_objects(&d.path, &mut rep.errors, &mut |bucket, key, size| {
                    let p = partition_of(bucket.as_bytes(), key);
                    let owned = table.owners(p).iter().any(|&i| {
                        let id = &table.candidates.ids[i as usize];
                        let s = new.set(id).expect("candidate set");
                        s.id == set.id && s.disks[disk_in_set(p, s)].id == d.id
                    });
                    ds.objects += 1;
                    ds.bytes += size;
                    if !owned {
                        ds.misplaced_objects += 1;
                        ds.misplaced_bytes += size;
                    }
                });
                rep.objects += ds.objects;
                rep.bytes += ds.bytes;
                rep.misplaced_objects += ds.misplaced_objects;
                rep.misplaced_bytes += ds.misplaced_bytes;
                rep.disks.push(ds);
            }
        }
    }
    rep
}

impl PlanReport {
    /// The human table.
    pub fn render(&self) -> String {
        let mut s = format!(
            "plan {} -> {} ({}): {} of {} partitions move ({:.2} %), ideal {:.2} %, moved/ideal {:.3}\n",
            self.generation_from,
            self.generation_to,
            serde_json::to_string(&self.strategy)
                .unwrap_or_default()
                .trim_matches('"'),
            self.moved_partitions,
            self.partitions,
            self.moved_fraction * 100.0,
            self.ideal_fraction * 100.0,
            self.moved_vs_ideal
        );
        s += &format!(
            "disk level: {} partitions change disk; replica copies to make: {}; hottest set vs fair share: {:.3} -> {:.3}\n",
            self.moved_partitions_disk_level,
            self.replica_moves,
            self.hottest_vs_fair_before,
            self.hottest_vs_fair_after
        );
        s += &format!(
            "{:<20} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8}\n",
            "set", "before", "after", "share0%", "share1%", "gains", "losses"
        );
        let st = |x: Option<SetState>| match x {
            None => "-",
            Some(SetState::Active) => "active",
            Some(SetState::Draining) => "draining",
            Some(SetState::Removed) => "removed",
        };
        for r in &self.sets {
            s += &format!(
                "{:<20} {:>9} {:>9} {:>8.2} {:>8.2} {:>8} {:>8}  {} -> {}\n",
                r.id,
                r.partitions_before,
                r.partitions_after,
                r.share_before * 100.0,
                r.share_after * 100.0,
                r.gains,
                r.losses,
                st(r.state_before),
                st(r.state_after)
            );
        }
        if let Some(sc) = &self.scan {
            s += &format!(
                "scan: {} objects, {} bytes; misplaced under the new topology: {} objects, {} bytes\n",
                sc.objects, sc.bytes, sc.misplaced_objects, sc.misplaced_bytes
            );
            for d in &sc.missing_disks {
                s += &format!("scan: disk {d} is missing: its objects cannot be moved\n");
            }
            for e in &sc.errors {
                s += &format!("scan: error: {e}\n");
            }
        }
        s
    }
}
